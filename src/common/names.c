/* SPDX-License-Identifier: MIT */
/*
 * The names of evsteer's enums, both ways: for people (path reports, the
 * preload's JSON, logs) and for the environment (EVSTEER_POLICY=hash). One
 * table per enum; nothing else spells these strings.
 */
#include <string.h>

#include "common/names.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *const policy[] = {"least-pending", "hash", "round-robin",
				     "cpu"};
static const char *const bpf_mode[] = {"auto", "off", "require"};
static const char *const accept_mode[] = {"auto", "event", "uring"};
static const char *const steering[] = {"none", "kernel-hash", "bpf", "cbpf"};
static const char *const engine[] = {"event", "uring", "uring-direct"};
static const char *const log_level[] = {"error", "warn", "info", "debug"};

static const char *name_of(const char *const *t, size_t n, unsigned int v)
{
	return v < n ? t[v] : NULL;
}

static int parse(const char *const *t, size_t n, const char *s)
{
	for (size_t i = 0; s && i < n; i++)
		if (!strcmp(s, t[i]))
			return (int)i;
	return -1;
}

const char *evsteer_policy_str(enum evsteer_policy v)
{
	return name_of(policy, COUNT(policy), (unsigned int)v);
}

const char *evsteer_bpf_mode_str(enum evsteer_bpf_mode v)
{
	return name_of(bpf_mode, COUNT(bpf_mode), (unsigned int)v);
}

const char *evsteer_accept_mode_str(enum evsteer_accept_mode v)
{
	return name_of(accept_mode, COUNT(accept_mode), (unsigned int)v);
}

const char *evsteer_steering_str(enum evsteer_steering v)
{
	return name_of(steering, COUNT(steering), (unsigned int)v);
}

const char *evsteer_engine_str(enum evsteer_engine v)
{
	return name_of(engine, COUNT(engine), (unsigned int)v);
}

const char *evsteer_log_level_str(enum evsteer_log_level v)
{
	return name_of(log_level, COUNT(log_level), (unsigned int)v);
}

/* The 0.1.0 name: "?" rather than NULL for a value it does not know. */
const char *evsteer_policy_name(enum evsteer_policy v)
{
	const char *s = evsteer_policy_str(v);
	return s ? s : "?";
}

int evst_policy_parse(const char *s)
{
	return parse(policy, COUNT(policy), s);
}

int evst_bpf_mode_parse(const char *s)
{
	return parse(bpf_mode, COUNT(bpf_mode), s);
}

int evst_accept_mode_parse(const char *s)
{
	return parse(accept_mode, COUNT(accept_mode), s);
}

int evst_log_level_parse(const char *s)
{
	return parse(log_level, COUNT(log_level), s);
}

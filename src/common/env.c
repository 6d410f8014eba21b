/* SPDX-License-Identifier: MIT */
/* The environment (env.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/env.h"
#include "common/names.h"

static const char *get(const char *name)
{
	const char *e = getenv(name);
	return e && *e ? e : NULL;
}

/* e is a decimal number in [lo, hi], the whole of it */
static bool parse_long(const char *e, long lo, long hi, long *v)
{
	char *end;
	*v = strtol(e, &end, 10);
	return !*end && *v >= lo && *v <= hi;
}

enum evsteer_bpf_mode evst_env_bpf(enum evsteer_bpf_mode opt)
{
	const char *e = get("EVSTEER_BPF");
	if (opt != EVSTEER_BPF_AUTO || !e)
		return opt;
	/* 0 and 1, as a shell user types them */
	int v = !strcmp(e, "0") ? EVSTEER_BPF_OFF :
		!strcmp(e, "1") ? EVSTEER_BPF_REQUIRE :
				  evst_bpf_mode_parse(e);
	if (v < 0) {
		evst_warn("EVSTEER_BPF=%s: expected auto, off or require; using "
			  "auto", e);
		return opt;
	}
	return (enum evsteer_bpf_mode)v;
}

enum evsteer_accept_mode evst_env_accept(enum evsteer_accept_mode opt)
{
	const char *e = get("EVSTEER_ACCEPT");
	if (opt != EVSTEER_ACCEPT_AUTO || !e)
		return opt;
	int v = evst_accept_mode_parse(e);
	if (v < 0) {
		evst_warn("EVSTEER_ACCEPT=%s: expected auto, event or uring; "
			  "using auto", e);
		return opt;
	}
	return (enum evsteer_accept_mode)v;
}

enum evsteer_policy evst_env_policy(enum evsteer_policy opt)
{
	const char *e = get("EVSTEER_POLICY");
	if (opt != EVSTEER_POLICY_LEAST_PENDING || !e)
		return opt;
	int v = evst_policy_parse(e);
	if (v < 0) {
		evst_warn("EVSTEER_POLICY=%s: expected least-pending, hash, "
			  "round-robin or cpu", e);
		return opt;
	}
	return (enum evsteer_policy)v;
}

int evst_env_stall_us(int opt)
{
	const char *e = get("EVSTEER_STALL_US");
	long v;
	if (opt || !e)
		return opt;
	if (!parse_long(e, -1, 60000000, &v)) {
		evst_warn("EVSTEER_STALL_US=%s: expected microseconds or -1", e);
		return opt;
	}
	return (int)v;
}

unsigned int evst_env_max_accepts(unsigned int opt)
{
	const char *e = get("EVSTEER_MAX_ACCEPTS");
	long v;
	if (opt || !e)
		return opt;
	if (!parse_long(e, 0, 1000000, &v)) {
		evst_warn("EVSTEER_MAX_ACCEPTS=%s: expected a count (0: the "
			  "default)", e);
		return opt;
	}
	return (unsigned int)v;
}

int evst_env_log_level(void)
{
	return evst_log_level_parse(getenv("EVSTEER_LOG"));
}

void evst_env_listen(struct evst_env_listen *out)
{
	out->pid = getenv("LISTEN_PID");
	out->fds = getenv("LISTEN_FDS");
	out->fdnames = getenv("LISTEN_FDNAMES");
}

unsigned int evst_env_test_mask(void)
{
	static const struct {
		const char *name;
		unsigned int bit;
	} names[] = {
		{"accept_dontwait", EVST_MASK_ACCEPT_DONTWAIT},
		{"fixed_fd_install", EVST_MASK_FIXED_FD_INSTALL},
		{"sock_nonempty", EVST_MASK_SOCK_NONEMPTY},
		{"bpf", EVST_MASK_BPF},
		{"cbpf", EVST_MASK_CBPF},
	};
	const char *e = get("EVSTEER_TEST_MASK");
	unsigned int mask = 0;
	while (e && *e) {
		size_t n = strcspn(e, ", ");
		size_t i;
		for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (strlen(names[i].name) == n &&
			    !strncmp(e, names[i].name, n))
				break;
		if (i < sizeof(names) / sizeof(names[0]))
			mask |= names[i].bit;
		else if (n)
			evst_warn("EVSTEER_TEST_MASK: unknown feature '%.*s' "
				  "(accept_dontwait, fixed_fd_install, "
				  "sock_nonempty, bpf, cbpf)",
				  (int)n, e);
		e += n;
		e += strspn(e, ", ");
	}
	return mask;
}

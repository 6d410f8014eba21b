/* SPDX-License-Identifier: MIT */
/*
 * The environment, read once, at the first evconnlistener call: every
 * getenv() of the shim is here. evsteer-run sets these variables; the core
 * reads its own (EVSTEER_POLICY, EVSTEER_ACCEPT, EVSTEER_BPF, ...) itself.
 */
#include <stdlib.h>
#include <string.h>

#include "preload.h"

/* EVSTEER_LOG=error|warn|info|debug; anything else is warn. */
static enum evsteer_log_level log_level(const char *e)
{
	for (int i = EVSTEER_LOG_ERROR; e && pl_level_name(i); i++)
		if (!strcmp(e, pl_level_name(i)))
			return (enum evsteer_log_level)i;
	return EVSTEER_LOG_WARN;
}

/*
 * EVSTEER_GROUP_PORTS="3478,5349": ports whose SO_REUSEPORT listeners form
 * a steering group. Parsing stops at the first bad port, which the caller
 * is told about (env->group_ports_bad); the ports before it count.
 */
static void group_ports(struct pl_env *env, const char *e)
{
	while (e && *e) {
		char *end;
		unsigned long p = strtoul(e, &end, 10);
		if (end == e || p == 0 || p > 65535 || (*end && *end != ',')) {
			env->group_ports_bad = e;
			return;
		}
		if (env->ngroup_ports <
		    sizeof(env->group_ports) / sizeof(*env->group_ports))
			env->group_ports[env->ngroup_ports++] = (uint16_t)p;
		e = *end ? end + 1 : end;
	}
}

/* EVSTEER_DEFER_ACCEPT=SECONDS: 0 (off) to 3600; unset (-1): evhttp's
 * sockets only; anything else is told about and left unset. */
static void defer_accept(struct pl_env *env, const char *e)
{
	env->defer_accept_s = -1;
	if (!e || !*e)
		return;
	char *end;
	long s = strtol(e, &end, 10);
	if (*end || s < 0 || s > 3600)
		env->defer_accept_bad = e;
	else
		env->defer_accept_s = (int)s;
}

void pl_env_read(struct pl_env *env)
{
	env->log_level = log_level(getenv("EVSTEER_LOG"));
	const char *st = getenv("EVSTEER_STATS");
	env->stats_path = st && *st ? st : NULL;
	group_ports(env, getenv("EVSTEER_GROUP_PORTS"));
	defer_accept(env, getenv("EVSTEER_DEFER_ACCEPT"));
	const char *pol = getenv("EVSTEER_POLICY");
	env->policy_set = pol && *pol;
}

/* SPDX-License-Identifier: MIT */
/*
 * The decision, taken once, at the first evconnlistener call: read the
 * environment, find libevent's own functions and check them, load the
 * core. Only then are new listeners evsteer's; until then, and for good
 * when anything does not fit, every call passes through to libevent.
 */
#include <pthread.h>
#include <stdlib.h>

#include "preload.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void)
{
	pl_env_read(&pl.env);
	if (pl.env.group_ports_bad)
		pl_say(EVSTEER_LOG_WARN, "EVSTEER_GROUP_PORTS: expected ports "
		       "separated by commas, got \"%s\"", pl.env.group_ports_bad);
	if (pl.env.defer_accept_bad)
		pl_say(EVSTEER_LOG_WARN, "EVSTEER_DEFER_ACCEPT: expected seconds "
		       "(0-3600), got \"%s\": left to its default",
		       pl.env.defer_accept_bad);

	struct pl_libevent lib = {NULL, NULL};
	pl.mode = pl_resolve(&pl.real, &lib);
	if (pl.mode == MODE_ACTIVE && !(pl.core = pl_core_load()))
		pl.mode = MODE_PASS;
	if (pl.mode != MODE_ACTIVE)
		return;
	if (pl.env.stats_path)
		atexit(pl_report_at_exit);
	pl_say(EVSTEER_LOG_DEBUG, "evsteer %s on %s (libevent %s)",
	       pl.core->version(), lib.path, lib.version ? lib.version : "?");
}

void pl_init(void)
{
	pthread_once(&init_once, init);
}

/* SPDX-License-Identifier: MIT */
/*
 * libevsteer-preload.so: put it in LD_PRELOAD of an unmodified libevent 2.1
 * program (evsteer-run does) and the program's evconnlistener_* calls land
 * here, its own and evhttp's inside libevent too (libevent calls them through
 * its PLT, so the loader binds them to the first definition: ours).
 *
 * Nothing of libevent is linked in. The real functions are found with
 * dlsym(RTLD_NEXT), and evsteer itself (libevsteer-preload-core.so, next to
 * this file) is dlopen()ed only at the first evconnlistener call, once the
 * program's libevent is known to be 2.1: a process that never makes a
 * listener (a shell, a child of a wrapper script) loads this small file and
 * nothing else. When anything does not fit, every call passes through to
 * libevent unchanged, and stderr says so once.
 *
 * The program gets evsteer listeners as its `struct evconnlistener *`: it
 * never looks inside one, and neither does evhttp (it only stores the
 * pointer and calls evconnlistener_set_cb/get_fd/free on it). The listeners
 * made here are kept in a registry; any other pointer is a listener libevent
 * made (a call we handed to it) and goes back to libevent.
 *
 * This file holds the shim's state and, until it moves out, the rest;
 * preload.h declares the state and says which file does what.
 */
#include <pthread.h>
#include <stdlib.h>

#include "preload.h"

struct pl_state pl;

/* ==== init ================================================================ */
/*
 * The decision, taken once, at the first evconnlistener call: read the
 * environment, find libevent's own functions and check them, load the
 * core. Only then are new listeners evsteer's; until then, and for good
 * when anything does not fit, every call passes through to libevent.
 */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void)
{
	pl_env_read(&pl.env);
	if (pl.env.group_ports_bad)
		pl_say(EVSTEER_LOG_WARN, "EVSTEER_GROUP_PORTS: expected ports "
		       "separated by commas, got \"%s\"", pl.env.group_ports_bad);

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

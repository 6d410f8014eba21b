/* SPDX-License-Identifier: MIT */
/*
 * The core (libevsteer-preload-core.so, core.c): evsteer itself, dlopen()ed
 * RTLD_LOCAL from next to this file, only once the program's libevent is
 * known to be 2.1, and used only if its table is the one this shim was
 * built with.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"

#define CORE_FILE "libevsteer-preload-core.so"

/*
 * The core sits next to this file, wherever that was installed. Found at
 * load time: LD_PRELOAD may name this file by a relative path, and a daemon
 * has often changed directory by the time it makes its first listener.
 */
static char core_path[4096];

__attribute__((constructor)) static void find_core(void)
{
	Dl_info self;
	char *dir = NULL;
	if (dladdr((void *)find_core, &self) && self.dli_fname)
		dir = realpath(self.dli_fname, NULL);
	char *slash = dir ? strrchr(dir, '/') : NULL;
	if (slash)
		slash[1] = '\0';
	snprintf(core_path, sizeof(core_path), "%s%s", slash ? dir : "",
		 CORE_FILE);
	free(dir);
}

const struct evst_preload_core *pl_core_load(void)
{
	const char *path = core_path;
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	const struct evst_preload_core *c =
		h ? dlsym(h, EVST_PRELOAD_CORE_SYMBOL) : NULL;
	if (!c || c->abi != EVST_PRELOAD_CORE_ABI || c->size < sizeof(*c)) {
		const char *err = dlerror();
		if (err)
			pl_say(EVSTEER_LOG_WARN, "cannot load evsteer: %s; "
			       "evconnlistener calls pass through to libevent "
			       "unchanged", err);
		else
			pl_say(EVSTEER_LOG_WARN, "%s is not the core this preload "
			       "was built with; evconnlistener calls pass through "
			       "to libevent unchanged", path);
		if (h)
			dlclose(h);
		return NULL;
	}
	c->set_log(pl_core_log, NULL, pl.env.log_level);
	return c;
}

/* SPDX-License-Identifier: MIT */
/*
 * libevent's own functions, which every call we do not take passes through
 * to: the definitions after ours in the global scope (RTLD_NEXT), or, when
 * libevent is not in the global scope (loaded RTLD_LOCAL by a plugin), the
 * caller's. And whether evsteer may take over at all: only a libevent 2.1
 * whose event calls evsteer's own will reach.
 */
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "preload.h"

/* *real from the global scope; false if any is missing. */
static bool find_real(struct pl_real *real)
{
	bool missing = false;
#define X(f)                                                                   \
	real->f = (__typeof__(f) *)dlsym(RTLD_NEXT, #f);                       \
	missing |= !real->f;
	PL_REAL_FUNCS(X)
#undef X
	return !missing;
}

/* The version of the library at path: its number (0 if none), *str. */
static uint32_t version_of(const char *path, const char **str)
{
	void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
	ev_uint32_t (*vnum)(void) =
		h ? (ev_uint32_t (*)(void))dlsym(h, "event_get_version_number") : NULL;
	const char *(*vstr)(void) =
		h ? (const char *(*)(void))dlsym(h, "event_get_version") : NULL;
	if (h)
		dlclose(h);
	*str = vstr ? vstr() : NULL;
	return vnum ? (uint32_t)vnum() : 0;
}

enum pl_mode pl_resolve(struct pl_real *real, struct pl_libevent *lib)
{
	if (!find_real(real)) {
		pl_say(EVSTEER_LOG_WARN, "libevent's evconnlistener functions are "
		       "not in the program's global scope (libevent loaded with "
		       "RTLD_LOCAL?); calls pass through to the caller's libevent "
		       "unchanged");
		return MODE_PASS_CALLER;
	}
	Dl_info li, ei;
	if (!dladdr((void *)real->evconnlistener_new, &li) || !li.dli_fname) {
		pl_say(EVSTEER_LOG_WARN, "cannot tell which library defines "
		       "evconnlistener_new; calls pass through to it unchanged");
		return MODE_PASS;
	}
	/* The version of the library that defines the real listener... */
	lib->path = li.dli_fname;
	if ((version_of(lib->path, &lib->version) >> 16) != 0x0201) {
		pl_say(EVSTEER_LOG_WARN, "%s is libevent %s, not the 2.1 ABI "
		       "evsteer was built for; evconnlistener calls pass through "
		       "to it unchanged", lib->path,
		       lib->version ? lib->version : "(no version)");
		return MODE_PASS;
	}
	/* ...and it must be the one evsteer's own event calls will reach. */
	void *evnew = dlsym(RTLD_DEFAULT, "event_new");
	if (!evnew || !dladdr(evnew, &ei) || ei.dli_fbase != li.dli_fbase) {
		pl_say(EVSTEER_LOG_WARN, "event_new does not come from %s, which "
		       "defines evconnlistener_new; evconnlistener calls pass "
		       "through to it unchanged", lib->path);
		return MODE_PASS;
	}
	return MODE_ACTIVE;
}

/* name's definition in the object at path itself (not a dependency's). */
static void *defined_in(const char *path, const char *name, void *self)
{
	void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
	if (!h)
		return NULL;
	void *f = dlsym(h, name);
	dlclose(h);
	Dl_info di;
	if (!f || f == self || !dladdr(f, &di) || !di.dli_fname ||
	    strcmp(di.dli_fname, path))
		return NULL;
	return f;
}

struct objects {
	unsigned int n;
	char *names[256];
};

static int collect(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct objects *o = arg;
	(void)size;
	if (info->dlpi_name && *info->dlpi_name &&
	    o->n < sizeof(o->names) / sizeof(*o->names))
		o->names[o->n++] = strdup(info->dlpi_name);
	return 0;
}

/* The first loaded object that defines name itself. */
static void *first_defining(const char *name, void *self)
{
	void *f = NULL;
	/* names first: no dlopen() inside dl_iterate_phdr's lock */
	struct objects o = {.n = 0};
	dl_iterate_phdr(collect, &o);
	for (unsigned int i = 0; i < o.n; i++) {
		if (!f && o.names[i])
			f = defined_in(o.names[i], name, self);
		free(o.names[i]);
	}
	return f;
}

/*
 * The libevent function a call passes through to: the global one, or, when
 * libevent is not in the global scope, the caller's: the library the call
 * came from defines it, or one of its dependencies does. A tail call hides
 * the caller (evhttp_bound_socket_get_fd jumps to evconnlistener_get_fd);
 * then the first loaded library that defines it, which with one libevent in
 * the process is that one.
 */
void *pl_real_for(void *global, const char *name, void *self, const void *ra)
{
	if (pl.mode != MODE_PASS_CALLER)
		return global;
	void *f = NULL;
	Dl_info di;
	if (dladdr(ra, &di) && di.dli_fname && *di.dli_fname) {
		void *h = dlopen(di.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
		if (h) {
			f = dlsym(h, name);
			dlclose(h);
		}
		if (f == self)
			f = NULL;
	}
	if (!f)
		f = first_defining(name, self);
	if (!f)
		pl_say(EVSTEER_LOG_ERROR, "%s: no libevent to pass the call to", name);
	return f;
}

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
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>

#include <event2/event.h>

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

/* ==== interpose =========================================================== */
/*
 * The nine evconnlistener_* functions libevent 2.1 exports on Linux, the
 * only symbols the shim exports. In active mode a new listener is evsteer's
 * (made by the core, kept in the registry), and a call on one of ours goes
 * to the core; everything else goes to libevent (resolve.c) unchanged.
 */

#define EXPORT __attribute__((visibility("default")))

/* ---- creating ----------------------------------------------------------- */

/*
 * Both constructors end here, with a listener made disabled: it goes into
 * the registry before it can deliver (a callback on another thread may call
 * evconnlistener_* on it at once), then is enabled as the program asked.
 */
static struct evconnlistener *adopt(struct evsteer_listener *lev,
				    unsigned int flags, bool close_on_fail)
{
	const struct evst_preload_core *c = pl.core;
	if (!lev)
		return NULL;
	int fd = c->listener_get_fd(lev);
	struct pl_entry *e = calloc(1, sizeof(*e));
	if (!e) {
		c->listener_free(lev);
		if (close_on_fail)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	e->lev = lev;
	pl_format_addr(fd, e->addr, sizeof(e->addr));
	pl_report_made(e);
	pl_reg_insert(e);
	if (!(flags & LEV_OPT_DISABLED) && c->listener_enable(lev) < 0) {
		int err = errno;
		pl_say(EVSTEER_LOG_WARN, "listener %s: enable: %s", e->addr,
		       strerror(err));
		free(pl_reg_remove(lev));
		c->listener_free(lev);
		if (close_on_fail)
			close(fd);
		errno = err;
		return NULL;
	}
	return (struct evconnlistener *)lev;
}

/* libevent ignores bits it does not know; so do we, rather than fail. */
static unsigned int known_flags(unsigned int flags)
{
	if (flags & ~EVSTEER_OPT_ALL)
		pl_say(EVSTEER_LOG_DEBUG, "ignoring unknown LEV_OPT bits 0x%x",
		       flags & ~EVSTEER_OPT_ALL);
	return flags & EVSTEER_OPT_ALL;
}

/*
 * Programs that make their own sockets set SO_REUSEPORT for many reasons:
 * coturn sets it on its two per-thread listeners of the service port (one
 * group would steer between them) but also on the listener it makes for
 * each TCP relay allocation (a group of one: a BPF program loaded, ~5 ms,
 * for nothing). Which port is a worker group is the user's call:
 * EVSTEER_GROUP_PORTS (evsteer-run --group). A listener the program made
 * with LEV_OPT_REUSEABLE_PORT is a group member anyway, as with compat.h.
 */
static bool group_port(int fd)
{
	if (!pl.env.ngroup_ports || !pl_has_reuseport(fd))
		return false;
	int port = pl_local_port(fd);
	for (unsigned int i = 0; i < pl.env.ngroup_ports; i++)
		if (pl.env.group_ports[i] == port)
			return true;
	return false;
}

EXPORT struct evconnlistener *
evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr,
		   unsigned flags, int backlog, evutil_socket_t fd)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	/* A NULL base (libevent then uses event_init()'s global base) or
	 * something that is not a socket: libevent's own answer. */
	if (pl.mode == MODE_ACTIVE && base && pl_is_socket(fd)) {
		unsigned int f = known_flags(flags);
		if (group_port(fd))
			f |= LEV_OPT_REUSEABLE_PORT;
		/* libevent takes any socket here (a datagram one fails
		 * every accept): so does evsteer in compat mode */
		EVSTEER_LISTENER_OPTS(o, .libevent_compat = 1);
		pl_creating(true);
		struct evsteer_listener *lev = pl.core->listener_new(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, fd, &o);
		struct evconnlistener *r = adopt(lev, f, false);
		pl_creating(false);
		return r;
	}
	__typeof__(evconnlistener_new) *real = PL_REAL(evconnlistener_new, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(base, cb, ptr, flags, backlog, fd);
}

EXPORT struct evconnlistener *
evconnlistener_new_bind(struct event_base *base, evconnlistener_cb cb,
			void *ptr, unsigned flags, int backlog,
			const struct sockaddr *sa, int socklen)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	/*
	 * The families evsteer binds itself. Anything else (no address:
	 * libevent then fails with EAFNOSUPPORT; another family; backlog 0,
	 * which libevent refuses) goes to libevent, whose new_bind then calls
	 * evconnlistener_new, i.e. us, with the socket it made.
	 */
	if (pl.mode == MODE_ACTIVE && base && sa && socklen > 0 && backlog != 0 &&
	    (sa->sa_family == AF_INET || sa->sa_family == AF_INET6 ||
	     sa->sa_family == AF_UNIX)) {
		unsigned int f = known_flags(flags);
		pl_creating(true);
		struct evsteer_listener *lev = pl.core->listener_new_bind(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, sa, (socklen_t)socklen, NULL);
		/* on failure libevent closes the socket it made */
		struct evconnlistener *r =
			adopt(lev, f, !(f & LEV_OPT_CLOSE_ON_FREE));
		pl_creating(false);
		return r;
	}
	__typeof__(evconnlistener_new_bind) *real =
		PL_REAL(evconnlistener_new_bind, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(base, cb, ptr, flags, backlog, sa, socklen);
}

/* ---- the rest: ours to the core, anything else to libevent --------------- */

/* In active mode NULL is ours too: evsteer answers it with an error where
 * libevent would crash. */
static bool ours(const void *lev)
{
	return pl.mode == MODE_ACTIVE && (!lev || pl_reg_has(lev));
}

EXPORT void evconnlistener_free(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (pl.mode == MODE_ACTIVE) {
		struct pl_entry *e = lev ? pl_reg_remove(lev) : NULL;
		if (e || !lev) {
			if (e)
				pl_report_free(e);
			pl.core->listener_free((struct evsteer_listener *)lev);
			free(e);
			return;
		}
	}
	__typeof__(evconnlistener_free) *real = PL_REAL(evconnlistener_free, ra);
	if (real)
		real(lev);
}

EXPORT int evconnlistener_enable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_enable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_enable) *real =
		PL_REAL(evconnlistener_enable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT int evconnlistener_disable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_disable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_disable) *real =
		PL_REAL(evconnlistener_disable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT struct event_base *evconnlistener_get_base(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_get_base((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_base) *real =
		PL_REAL(evconnlistener_get_base, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(lev);
}

EXPORT evutil_socket_t evconnlistener_get_fd(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_get_fd((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_fd) *real =
		PL_REAL(evconnlistener_get_fd, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT void evconnlistener_set_cb(struct evconnlistener *lev,
				  evconnlistener_cb cb, void *arg)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev)) {
		pl.core->listener_set_cb((struct evsteer_listener *)lev,
					 (evsteer_accept_cb)cb, arg);
		return;
	}
	__typeof__(evconnlistener_set_cb) *real =
		PL_REAL(evconnlistener_set_cb, ra);
	if (real)
		real(lev, cb, arg);
}

EXPORT void evconnlistener_set_error_cb(struct evconnlistener *lev,
					evconnlistener_errorcb errorcb)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev)) {
		pl.core->listener_set_error_cb((struct evsteer_listener *)lev,
					       (evsteer_error_cb)errorcb);
		return;
	}
	__typeof__(evconnlistener_set_error_cb) *real =
		PL_REAL(evconnlistener_set_error_cb, ra);
	if (real)
		real(lev, errorcb);
}

/* ==== resolve ============================================================= */
/*
 * libevent's own functions, which every call we do not take passes through
 * to: the definitions after ours in the global scope (RTLD_NEXT), or, when
 * libevent is not in the global scope (loaded RTLD_LOCAL by a plugin), the
 * caller's. And whether evsteer may take over at all: only a libevent 2.1
 * whose event calls evsteer's own will reach.
 */

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

/* ==== core_load =========================================================== */
/*
 * The core (libevsteer-preload-core.so, core.c): evsteer itself, dlopen()ed
 * RTLD_LOCAL from next to this file, only once the program's libevent is
 * known to be 2.1, and used only if its table is the one this shim was
 * built with.
 */

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

/* ==== report ============================================================== */
/*
 * What the shim says about a listener it made: one info line when it is
 * made (EVSTEER_LOG=info), and one JSON line of its path and counters
 * appended to EVSTEER_STATS when it is freed or, still open, at exit.
 */

/* ---- names -------------------------------------------------------------- */

/* until the core exports evsteer_*_str() (issue 19) */
static const char *steering_str(enum evsteer_steering s)
{
	return s == EVSTEER_STEER_BPF ? "bpf" :
	       s == EVSTEER_STEER_KERNEL_HASH ? "kernel-hash" : "none";
}

static const char *engine_str(enum evsteer_engine e)
{
	return e == EVSTEER_ENGINE_URING ? "uring" :
	       e == EVSTEER_ENGINE_URING_DIRECT ? "uring-direct" : "event";
}

static const char *policy_str(enum evsteer_policy p)
{
	return pl.core->policy_name(p);
}

/* ---- the info line ------------------------------------------------------ */

/* The listener's slot in its group (the group API speaks slots), or -1. */
static int group_slot(struct evsteer_listener *lev, struct evsteer_group **gp)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_group *g = c->listener_get_group(lev);
	int fd = c->listener_get_fd(lev);
	*gp = g;
	if (!g)
		return -1;
	for (unsigned int i = 0, n = c->group_size(g); i < n; i++)
		if (c->group_get_fd(g, i) == fd)
			return (int)i;
	return -1;
}

void pl_report_made(const struct pl_entry *e)
{
	if (pl.env.log_level < EVSTEER_LOG_INFO)
		return;
	struct evsteer_listener *lev = e->lev;
	EVSTEER_PATH_OPTS(p);
	if (pl.core->listener_get_path(lev, &p) < 0)
		return;
	char why[400] = "";
	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	if (p.steering == EVSTEER_STEER_BPF)
		snprintf(why, sizeof(why), "bpf steering, policy %s, worker %d",
			 policy_str(p.policy), slot);
	else if (p.steering == EVSTEER_STEER_KERNEL_HASH)
		snprintf(why, sizeof(why), "%s, worker %d", p.steering_reason,
			 slot);
	else
		snprintf(why, sizeof(why), "%s", p.steering_reason);
	if (*p.engine_reason) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; %s", p.engine_reason);
	}
	int fd = pl.core->listener_get_fd(lev), port;
	if (p.steering == EVSTEER_STEER_NONE && pl_has_reuseport(fd) &&
	    (port = pl_local_port(fd)) > 0) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; SO_REUSEPORT is set: "
			 "evsteer-run --group %d makes the port's listeners one "
			 "steering group", port);
	}
	pl_say(EVSTEER_LOG_INFO, "listener %s fd %d: path %s (%s)", e->addr, fd,
	       p.name, why);
}

/* ---- the JSON line ------------------------------------------------------ */

/* A JSON line; truncated rather than overflowing. */
struct jbuf {
	char b[2048];
	size_t n;
};

__attribute__((format(printf, 2, 3)))
static void jraw(struct jbuf *j, const char *fmt, ...)
{
	if (j->n >= sizeof(j->b))
		return;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(j->b + j->n, sizeof(j->b) - j->n, fmt, ap);
	va_end(ap);
	if (m > 0)
		j->n += (size_t)m;
	if (j->n > sizeof(j->b))
		j->n = sizeof(j->b);
}

/* ,"key":"s" with s escaped */
static void jstr(struct jbuf *j, const char *key, const char *s)
{
	jraw(j, ",\"%s\":\"", key);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			jraw(j, "\\%c", c);
		else if (c < 0x20)
			jraw(j, "\\u%04x", c);
		else
			jraw(j, "%c", c);
	}
	jraw(j, "\"");
}

static void jnum(struct jbuf *j, const char *key, uint64_t v)
{
	jraw(j, ",\"%s\":%llu", key, (unsigned long long)v);
}

/* The listener's own fields, or false if the core cannot tell them. */
static bool json_listener(struct jbuf *j, const struct pl_entry *e,
			  const char *when)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_listener *lev = e->lev;
	EVSTEER_PATH_OPTS(p);
	EVSTEER_STATS_OPTS(st);
	if (c->listener_get_path(lev, &p) < 0 ||
	    c->listener_get_stats(lev, &st) < 0)
		return false;

	jraw(j, "{\"evsteer\":\"%s\",\"pid\":%ld", c->version(), (long)getpid());
	jstr(j, "program", program_invocation_short_name);
	jstr(j, "event", when);
	jstr(j, "address", e->addr);
	jnum(j, "fd", (uint64_t)c->listener_get_fd(lev));
	jstr(j, "path", p.name);
	jstr(j, "steering", steering_str(p.steering));
	jstr(j, "engine", engine_str(p.engine));
	if (p.steering == EVSTEER_STEER_BPF)
		jstr(j, "policy", policy_str(p.policy));
	jstr(j, "steering_reason", p.steering_reason);
	jstr(j, "engine_reason", p.engine_reason);
	jnum(j, "accepted", st.accepted);
	jnum(j, "wakeups", st.wakeups);
	jnum(j, "capped_wakeups", st.capped_wakeups);
	jnum(j, "accept_errors", st.accept_errors);
	jnum(j, "exhausted_episodes", st.exhausted_episodes);
	jnum(j, "exhausted_retries", st.exhausted_retries);
	jnum(j, "held", st.held);
	jnum(j, "rearms", st.rearms);
	return true;
}

/* "group":{...} for a member of a worker group. */
static void json_group(struct jbuf *j, struct evsteer_listener *lev)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	EVSTEER_WORKER_STATS_OPTS(w);
	if (slot < 0 || c->group_worker_stats(g, (unsigned int)slot, &w) != 0)
		return;
	jraw(j, ",\"group\":{\"slot\":%d,\"workers\":%u", slot, c->group_size(g));
	jnum(j, "steered", w.steered);
	jnum(j, "accepted", w.accepted);
	jnum(j, "stolen", w.stolen);
	jnum(j, "stolen_from", w.stolen_from);
	jnum(j, "migrated", w.migrated);
	jraw(j, "}");
}

/* Appended with one write(2), so lines of threads and processes stay whole. */
static void append(struct jbuf *j)
{
	if (j->n >= sizeof(j->b)) { /* truncated: keep it one valid-looking line */
		j->n = sizeof(j->b) - 1;
		j->b[j->n - 1] = '\n';
	}
	const char *path = pl.env.stats_path;
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, j->b, j->n) != (ssize_t)j->n) {
		static bool told;
		if (!__atomic_exchange_n(&told, true, __ATOMIC_RELAXED))
			pl_say(EVSTEER_LOG_WARN, "EVSTEER_STATS=%s: %s", path,
			       strerror(errno));
	}
	if (fd >= 0)
		close(fd);
}

static void report(struct pl_entry *e, const char *when)
{
	if (!pl.env.stats_path || e->reported)
		return;
	struct jbuf j = {.n = 0};
	if (!json_listener(&j, e, when))
		return;
	json_group(&j, e->lev);
	jraw(&j, "}\n");
	append(&j);
}

void pl_report_free(struct pl_entry *e)
{
	report(e, "free");
}

static void report_exit(struct pl_entry *e)
{
	report(e, "exit");
	e->reported = true;
}

/* Listeners still open at exit get their line now. Runs before the loader
 * unmaps anything, while the program's other threads may still run: the
 * registry lock keeps a concurrent free from taking an entry away. */
void pl_report_at_exit(void)
{
	pl_reg_each(report_exit);
}

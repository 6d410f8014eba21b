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
 */
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "core.h"

#define EXPORT __attribute__((visibility("default")))
#define CORE_FILE "libevsteer-preload-core.so"

/* What libevent 2.1 exports on Linux (evconnlistener_new_async is Windows'). */
#define REAL_FUNCS(X)                                                          \
	X(evconnlistener_new)                                                  \
	X(evconnlistener_new_bind)                                             \
	X(evconnlistener_free)                                                 \
	X(evconnlistener_enable)                                               \
	X(evconnlistener_disable)                                              \
	X(evconnlistener_get_base)                                             \
	X(evconnlistener_get_fd)                                               \
	X(evconnlistener_set_cb)                                               \
	X(evconnlistener_set_error_cb)

enum mode {
	MODE_ACTIVE,      /* new listeners are evsteer's */
	MODE_PASS,        /* every call goes to libevent */
	MODE_PASS_CALLER, /* ... to the caller's libevent: none is global */
};

static struct {
	enum mode mode;
	const struct evst_preload_core *core;
	enum evsteer_log_level log_level;
	const char *stats_path;
	unsigned int ngroup_ports;
	uint16_t group_ports[64]; /* EVSTEER_GROUP_PORTS */
#define X(f) __typeof__(f) *real_##f;
	REAL_FUNCS(X)
#undef X
} S;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* ---- stderr ------------------------------------------------------------ */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* One write(2) per line, so lines from threads do not interleave. */
static void vsay(enum evsteer_log_level level, const char *fmt, va_list ap)
{
	if (level > S.log_level)
		return;
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "evsteer: %s: ", level_names[level]);
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t r = write(STDERR_FILENO, buf, (size_t)n);
	(void)r;
}

__attribute__((format(printf, 2, 3)))
static void say(enum evsteer_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(level, fmt, ap);
	va_end(ap);
}

static enum evsteer_log_level env_log_level(void)
{
	const char *e = getenv("EVSTEER_LOG");
	for (unsigned int i = 0; e && i < sizeof(level_names) / sizeof(*level_names);
	     i++)
		if (!strcmp(e, level_names[i]))
			return (enum evsteer_log_level)i;
	return EVSTEER_LOG_WARN;
}

/*
 * While this thread creates a listener, the core's info lines (its path
 * line, the reason BPF or io_uring is not used) are dropped: the line we
 * print says the same and names the address too, so the user gets one line
 * per listener.
 */
static _Thread_local bool creating;

static void core_log(enum evsteer_log_level level, const char *msg, void *arg)
{
	(void)arg;
	if (creating && level == EVSTEER_LOG_INFO)
		return;
	say(level, "%s", msg);
}

/* ---- the registry of our listeners -------------------------------------- */

struct entry {
	struct evsteer_listener *lev;
	struct entry *next;
	bool reported; /* its stats line was written at exit */
	char addr[128];
};

#define NBUCKETS 256
static struct entry *buckets[NBUCKETS];
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned int bucket_of(const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 21;
	x *= 0x9e3779b97f4a7c15ull;
	return (unsigned int)(x >> 56);
}

static void reg_insert(struct entry *e)
{
	unsigned int b = bucket_of(e->lev);
	pthread_mutex_lock(&reg_lock);
	e->next = buckets[b];
	buckets[b] = e;
	pthread_mutex_unlock(&reg_lock);
}

static bool reg_has(const void *lev)
{
	bool found = false;
	pthread_mutex_lock(&reg_lock);
	for (struct entry *e = buckets[bucket_of(lev)]; e && !found; e = e->next)
		found = e->lev == lev;
	pthread_mutex_unlock(&reg_lock);
	return found;
}

static struct entry *reg_remove(const void *lev)
{
	pthread_mutex_lock(&reg_lock);
	struct entry **pp = &buckets[bucket_of(lev)];
	while (*pp && (*pp)->lev != lev)
		pp = &(*pp)->next;
	struct entry *e = *pp;
	if (e)
		*pp = e->next;
	pthread_mutex_unlock(&reg_lock);
	return e;
}

/* ---- what a listener is: address, path, counters ------------------------ */

static void format_addr(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		snprintf(out, len, "fd %d (getsockname: %s)", fd, strerror(errno));
		return;
	}
	switch (ss.ss_family) {
	case AF_INET: {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
		break;
	}
	case AF_UNIX: {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
		size_t n = sl > offsetof(struct sockaddr_un, sun_path) ?
				   sl - offsetof(struct sockaddr_un, sun_path) : 0;
		if (!n)
			snprintf(out, len, "unix:(unnamed)");
		else if (sun->sun_path[0] == '\0')
			snprintf(out, len, "unix:@%.*s", (int)(n - 1), sun->sun_path + 1);
		else
			snprintf(out, len, "unix:%.*s", (int)strnlen(sun->sun_path, n),
				 sun->sun_path);
		break;
	}
	default:
		snprintf(out, len, "family %d", ss.ss_family);
	}
}

static bool has_reuseport(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);
	return getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, &len) == 0 && on;
}

static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

static const char *steering_name(enum evsteer_steering s)
{
	return s == EVSTEER_STEER_BPF ? "bpf" :
	       s == EVSTEER_STEER_KERNEL_HASH ? "kernel-hash" : "none";
}

static const char *engine_name(enum evsteer_engine e)
{
	return e == EVSTEER_ENGINE_URING ? "uring" :
	       e == EVSTEER_ENGINE_URING_DIRECT ? "uring-direct" : "event";
}

/* The listener's slot in its group (the group API speaks slots), or -1. */
static int group_slot(struct evsteer_listener *lev, struct evsteer_group **gp)
{
	const struct evst_preload_core *c = S.core;
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

static void log_listener(struct evsteer_listener *lev, const char *addr)
{
	if (S.log_level < EVSTEER_LOG_INFO)
		return;
	EVSTEER_PATH_OPTS(p);
	if (S.core->listener_get_path(lev, &p) < 0)
		return;
	char why[400] = "";
	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	if (p.steering == EVSTEER_STEER_BPF)
		snprintf(why, sizeof(why), "bpf steering, policy %s, worker %d",
			 S.core->policy_name(p.policy), slot);
	else if (p.steering == EVSTEER_STEER_KERNEL_HASH)
		snprintf(why, sizeof(why), "%s, worker %d", p.steering_reason,
			 slot);
	else
		snprintf(why, sizeof(why), "%s", p.steering_reason);
	if (*p.engine_reason) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; %s", p.engine_reason);
	}
	int fd = S.core->listener_get_fd(lev), port;
	if (p.steering == EVSTEER_STEER_NONE && has_reuseport(fd) &&
	    (port = local_port(fd)) > 0) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; SO_REUSEPORT is set: "
			 "evsteer-run --group %d makes the port's listeners one "
			 "steering group", port);
	}
	say(EVSTEER_LOG_INFO, "listener %s fd %d: path %s (%s)", addr, fd,
	    p.name, why);
}

/* A JSON string, escaped; truncated rather than overflowing. */
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

/* EVSTEER_STATS: one line per listener, appended with one write(2). */
static void report(struct entry *e, const char *when)
{
	if (!S.stats_path || e->reported)
		return;
	const struct evst_preload_core *c = S.core;
	struct evsteer_listener *lev = e->lev;
	EVSTEER_PATH_OPTS(p);
	EVSTEER_STATS_OPTS(st);
	if (c->listener_get_path(lev, &p) < 0 ||
	    c->listener_get_stats(lev, &st) < 0)
		return;

	struct jbuf j = {.n = 0};
	jraw(&j, "{\"evsteer\":\"%s\",\"pid\":%ld", c->version(), (long)getpid());
	jstr(&j, "program", program_invocation_short_name);
	jstr(&j, "event", when);
	jstr(&j, "address", e->addr);
	jnum(&j, "fd", (uint64_t)c->listener_get_fd(lev));
	jstr(&j, "path", p.name);
	jstr(&j, "steering", steering_name(p.steering));
	jstr(&j, "engine", engine_name(p.engine));
	if (p.steering == EVSTEER_STEER_BPF)
		jstr(&j, "policy", c->policy_name(p.policy));
	jstr(&j, "steering_reason", p.steering_reason);
	jstr(&j, "engine_reason", p.engine_reason);
	jnum(&j, "accepted", st.accepted);
	jnum(&j, "wakeups", st.wakeups);
	jnum(&j, "capped_wakeups", st.capped_wakeups);
	jnum(&j, "accept_errors", st.accept_errors);
	jnum(&j, "exhausted_episodes", st.exhausted_episodes);
	jnum(&j, "exhausted_retries", st.exhausted_retries);
	jnum(&j, "held", st.held);
	jnum(&j, "rearms", st.rearms);

	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	EVSTEER_WORKER_STATS_OPTS(w);
	if (slot >= 0 && c->group_worker_stats(g, (unsigned int)slot, &w) == 0) {
		jraw(&j, ",\"group\":{\"slot\":%d,\"workers\":%u", slot,
		     c->group_size(g));
		jnum(&j, "steered", w.steered);
		jnum(&j, "accepted", w.accepted);
		jnum(&j, "stolen", w.stolen);
		jnum(&j, "stolen_from", w.stolen_from);
		jnum(&j, "migrated", w.migrated);
		jraw(&j, "}");
	}
	jraw(&j, "}\n");
	if (j.n >= sizeof(j.b)) { /* truncated: keep it one valid-looking line */
		j.n = sizeof(j.b) - 1;
		j.b[j.n - 1] = '\n';
	}

	int fd = open(S.stats_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, j.b, j.n) != (ssize_t)j.n) {
		static bool told;
		if (!__atomic_exchange_n(&told, true, __ATOMIC_RELAXED))
			say(EVSTEER_LOG_WARN, "EVSTEER_STATS=%s: %s", S.stats_path,
			    strerror(errno));
	}
	if (fd >= 0)
		close(fd);
}

/* Listeners still open at exit get their line now. Runs before the loader
 * unmaps anything, while the program's other threads may still run: the
 * registry lock keeps a concurrent free from taking an entry away. */
static void report_at_exit(void)
{
	pthread_mutex_lock(&reg_lock);
	for (unsigned int b = 0; b < NBUCKETS; b++)
		for (struct entry *e = buckets[b]; e; e = e->next) {
			report(e, "exit");
			e->reported = true;
		}
	pthread_mutex_unlock(&reg_lock);
}

/* ---- deciding what to do, once ------------------------------------------ */

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

static bool load_core(void)
{
	const char *path = core_path;
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	const struct evst_preload_core *c =
		h ? dlsym(h, EVST_PRELOAD_CORE_SYMBOL) : NULL;
	if (!c || c->abi != EVST_PRELOAD_CORE_ABI || c->size < sizeof(*c)) {
		const char *err = dlerror();
		if (err)
			say(EVSTEER_LOG_WARN, "cannot load evsteer: %s; "
			    "evconnlistener calls pass through to libevent "
			    "unchanged", err);
		else
			say(EVSTEER_LOG_WARN, "%s is not the core this preload "
			    "was built with; evconnlistener calls pass through "
			    "to libevent unchanged", path);
		if (h)
			dlclose(h);
		return false;
	}
	S.core = c;
	c->set_log(core_log, NULL, S.log_level);
	return true;
}

/* "3478,5349": ports whose SO_REUSEPORT listeners form a steering group. */
static void parse_group_ports(const char *e)
{
	while (e && *e) {
		char *end;
		unsigned long p = strtoul(e, &end, 10);
		if (end == e || p == 0 || p > 65535 || (*end && *end != ',')) {
			say(EVSTEER_LOG_WARN, "EVSTEER_GROUP_PORTS: expected ports "
			    "separated by commas, got \"%s\"", e);
			return;
		}
		if (S.ngroup_ports < sizeof(S.group_ports) / sizeof(*S.group_ports))
			S.group_ports[S.ngroup_ports++] = (uint16_t)p;
		e = *end ? end + 1 : end;
	}
}

static void init(void)
{
	S.log_level = env_log_level();
	const char *st = getenv("EVSTEER_STATS");
	S.stats_path = st && *st ? st : NULL;
	parse_group_ports(getenv("EVSTEER_GROUP_PORTS"));

	bool missing = false;
#define X(f)                                                                   \
	S.real_##f = (__typeof__(f) *)dlsym(RTLD_NEXT, #f);                    \
	missing |= !S.real_##f;
	REAL_FUNCS(X)
#undef X
	if (missing) {
		S.mode = MODE_PASS_CALLER;
		say(EVSTEER_LOG_WARN, "libevent's evconnlistener functions are not "
		    "in the program's global scope (libevent loaded with "
		    "RTLD_LOCAL?); calls pass through to the caller's libevent "
		    "unchanged");
		return;
	}

	S.mode = MODE_PASS;
	Dl_info li, ei;
	if (!dladdr((void *)S.real_evconnlistener_new, &li) || !li.dli_fname) {
		say(EVSTEER_LOG_WARN, "cannot tell which library defines "
		    "evconnlistener_new; calls pass through to it unchanged");
		return;
	}
	/* The version of the library that defines the real listener... */
	void *h = dlopen(li.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
	ev_uint32_t (*vnum)(void) =
		h ? (ev_uint32_t (*)(void))dlsym(h, "event_get_version_number") : NULL;
	const char *(*vstr)(void) =
		h ? (const char *(*)(void))dlsym(h, "event_get_version") : NULL;
	if (h)
		dlclose(h);
	uint32_t v = vnum ? (uint32_t)vnum() : 0;
	if ((v >> 16) != 0x0201) {
		say(EVSTEER_LOG_WARN, "%s is libevent %s, not the 2.1 ABI evsteer "
		    "was built for; evconnlistener calls pass through to it "
		    "unchanged", li.dli_fname, vstr ? vstr() : "(no version)");
		return;
	}
	/* ...and it must be the one evsteer's own event calls will reach. */
	void *evnew = dlsym(RTLD_DEFAULT, "event_new");
	if (!evnew || !dladdr(evnew, &ei) || ei.dli_fbase != li.dli_fbase) {
		say(EVSTEER_LOG_WARN, "event_new does not come from %s, which "
		    "defines evconnlistener_new; evconnlistener calls pass "
		    "through to it unchanged", li.dli_fname);
		return;
	}
	if (!load_core())
		return;
	if (S.stats_path)
		atexit(report_at_exit);
	S.mode = MODE_ACTIVE;
	say(EVSTEER_LOG_DEBUG, "evsteer %s on %s (libevent %s)", S.core->version(),
	    li.dli_fname, vstr ? vstr() : "?");
}

static inline void ensure_init(void)
{
	pthread_once(&init_once, init);
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

/*
 * The libevent function a call passes through to: the global one, or, when
 * libevent is not in the global scope, the caller's: the library the call
 * came from defines it, or one of its dependencies does. A tail call hides
 * the caller (evhttp_bound_socket_get_fd jumps to evconnlistener_get_fd);
 * then the first loaded library that defines it, which with one libevent in
 * the process is that one.
 */
static void *real_for(void *global, const char *name, void *self,
		      const void *ra)
{
	if (S.mode != MODE_PASS_CALLER)
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
	if (!f) {
		/* names first: no dlopen() inside dl_iterate_phdr's lock */
		struct objects o = {.n = 0};
		dl_iterate_phdr(collect, &o);
		for (unsigned int i = 0; i < o.n; i++) {
			if (!f && o.names[i])
				f = defined_in(o.names[i], name, self);
			free(o.names[i]);
		}
	}
	if (!f)
		say(EVSTEER_LOG_ERROR, "%s: no libevent to pass the call to", name);
	return f;
}

#define REAL(f, ra) ((__typeof__(f) *)real_for((void *)S.real_##f, #f, (void *)f, ra))

/* ---- creating ----------------------------------------------------------- */

/*
 * Both constructors end here, with a listener made disabled: it goes into
 * the registry before it can deliver (a callback on another thread may call
 * evconnlistener_* on it at once), then is enabled as the program asked.
 */
static struct evconnlistener *adopt(struct evsteer_listener *lev,
				    unsigned int flags, bool close_on_fail)
{
	const struct evst_preload_core *c = S.core;
	if (!lev)
		return NULL;
	int fd = c->listener_get_fd(lev);
	struct entry *e = calloc(1, sizeof(*e));
	if (!e) {
		c->listener_free(lev);
		if (close_on_fail)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	e->lev = lev;
	format_addr(fd, e->addr, sizeof(e->addr));
	log_listener(lev, e->addr);
	reg_insert(e);
	if (!(flags & LEV_OPT_DISABLED) && c->listener_enable(lev) < 0) {
		int err = errno;
		say(EVSTEER_LOG_WARN, "listener %s: enable: %s", e->addr,
		    strerror(err));
		free(reg_remove(lev));
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
		say(EVSTEER_LOG_DEBUG, "ignoring unknown LEV_OPT bits 0x%x",
		    flags & ~EVSTEER_OPT_ALL);
	return flags & EVSTEER_OPT_ALL;
}

static bool is_socket(int fd)
{
	int type;
	socklen_t len = sizeof(type);
	return fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
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
	if (!S.ngroup_ports || !has_reuseport(fd))
		return false;
	int port = local_port(fd);
	for (unsigned int i = 0; i < S.ngroup_ports; i++)
		if (S.group_ports[i] == port)
			return true;
	return false;
}

EXPORT struct evconnlistener *
evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr,
		   unsigned flags, int backlog, evutil_socket_t fd)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	/* A NULL base (libevent then uses event_init()'s global base) or
	 * something that is not a socket: libevent's own answer. */
	if (S.mode == MODE_ACTIVE && base && is_socket(fd)) {
		unsigned int f = known_flags(flags);
		if (group_port(fd))
			f |= LEV_OPT_REUSEABLE_PORT;
		/* libevent takes any socket here (a datagram one fails
		 * every accept): so does evsteer in compat mode */
		EVSTEER_LISTENER_OPTS(o, .libevent_compat = 1);
		creating = true;
		struct evsteer_listener *lev = S.core->listener_new(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, fd, &o);
		struct evconnlistener *r = adopt(lev, f, false);
		creating = false;
		return r;
	}
	__typeof__(evconnlistener_new) *real = REAL(evconnlistener_new, ra);
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
	ensure_init();
	/*
	 * The families evsteer binds itself. Anything else (no address:
	 * libevent then fails with EAFNOSUPPORT; another family; backlog 0,
	 * which libevent refuses) goes to libevent, whose new_bind then calls
	 * evconnlistener_new, i.e. us, with the socket it made.
	 */
	if (S.mode == MODE_ACTIVE && base && sa && socklen > 0 && backlog != 0 &&
	    (sa->sa_family == AF_INET || sa->sa_family == AF_INET6 ||
	     sa->sa_family == AF_UNIX)) {
		unsigned int f = known_flags(flags);
		creating = true;
		struct evsteer_listener *lev = S.core->listener_new_bind(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, sa, (socklen_t)socklen, NULL);
		/* on failure libevent closes the socket it made */
		struct evconnlistener *r =
			adopt(lev, f, !(f & LEV_OPT_CLOSE_ON_FREE));
		creating = false;
		return r;
	}
	__typeof__(evconnlistener_new_bind) *real =
		REAL(evconnlistener_new_bind, ra);
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
	return S.mode == MODE_ACTIVE && (!lev || reg_has(lev));
}

EXPORT void evconnlistener_free(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (S.mode == MODE_ACTIVE) {
		struct entry *e = lev ? reg_remove(lev) : NULL;
		if (e || !lev) {
			if (e)
				report(e, "free");
			S.core->listener_free((struct evsteer_listener *)lev);
			free(e);
			return;
		}
	}
	__typeof__(evconnlistener_free) *real = REAL(evconnlistener_free, ra);
	if (real)
		real(lev);
}

EXPORT int evconnlistener_enable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (ours(lev))
		return S.core->listener_enable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_enable) *real = REAL(evconnlistener_enable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT int evconnlistener_disable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (ours(lev))
		return S.core->listener_disable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_disable) *real =
		REAL(evconnlistener_disable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT struct event_base *evconnlistener_get_base(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (ours(lev))
		return S.core->listener_get_base((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_base) *real =
		REAL(evconnlistener_get_base, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(lev);
}

EXPORT evutil_socket_t evconnlistener_get_fd(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (ours(lev))
		return S.core->listener_get_fd((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_fd) *real = REAL(evconnlistener_get_fd, ra);
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
	ensure_init();
	if (ours(lev)) {
		S.core->listener_set_cb((struct evsteer_listener *)lev,
					(evsteer_accept_cb)cb, arg);
		return;
	}
	__typeof__(evconnlistener_set_cb) *real = REAL(evconnlistener_set_cb, ra);
	if (real)
		real(lev, cb, arg);
}

EXPORT void evconnlistener_set_error_cb(struct evconnlistener *lev,
					evconnlistener_errorcb errorcb)
{
	const void *ra = __builtin_return_address(0);
	ensure_init();
	if (ours(lev)) {
		S.core->listener_set_error_cb((struct evsteer_listener *)lev,
					      (evsteer_error_cb)errorcb);
		return;
	}
	__typeof__(evconnlistener_set_error_cb) *real =
		REAL(evconnlistener_set_error_cb, ra);
	if (real)
		real(lev, errorcb);
}

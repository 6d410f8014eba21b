/* SPDX-License-Identifier: MIT */
/*
 * What the files of libevsteer-preload.so share. Internal: every name here
 * is hidden (meson builds the shim with hidden visibility and preload.map
 * exports only the evconnlistener_* names interpose.c defines).
 *
 *   preload.c    how the shim works; the state below
 *   interpose.c  the nine evconnlistener_* functions the program calls
 *   init.c       the decision, once, at the first call
 *   registry.c   which listeners were made here
 *   resolve.c    libevent's own functions, the pass-through modes
 *   core_load.c  the core next to this file, dlopen()ed
 *   report.c     what is said about a listener: its line, its JSON line
 *   sock.c       what is asked of a socket
 *   say.c        stderr, ours and the core's
 *   env.c        the EVSTEER_* variables the shim reads
 *
 * The shim links neither libevent nor libevsteer: libevent's headers give
 * it types, the core (core.h) its table of native calls.
 */
#ifndef EVSTEER_PRELOAD_H
#define EVSTEER_PRELOAD_H

#include <stdbool.h>
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/listener.h>

#include "core.h"

/* What libevent 2.1 exports on Linux (evconnlistener_new_async is Windows'). */
#define PL_REAL_FUNCS(X)                                                       \
	X(evconnlistener_new)                                                  \
	X(evconnlistener_new_bind)                                             \
	X(evconnlistener_free)                                                 \
	X(evconnlistener_enable)                                               \
	X(evconnlistener_disable)                                              \
	X(evconnlistener_get_base)                                             \
	X(evconnlistener_get_fd)                                               \
	X(evconnlistener_set_cb)                                               \
	X(evconnlistener_set_error_cb)

enum pl_mode {
	MODE_ACTIVE,      /* new listeners are evsteer's */
	MODE_PASS,        /* every call goes to libevent */
	MODE_PASS_CALLER, /* ... to the caller's libevent: none is global */
};

/* The variables the shim reads itself; the core reads its own. */
struct pl_env {
	enum evsteer_log_level log_level; /* EVSTEER_LOG; warn if unset */
	const char *stats_path;           /* EVSTEER_STATS; NULL if unset or "" */
	unsigned int ngroup_ports;
	uint16_t group_ports[64];         /* EVSTEER_GROUP_PORTS */
	const char *group_ports_bad;      /* its rest from the first bad port */
	int defer_accept_s;               /* EVSTEER_DEFER_ACCEPT; -1: unset
					     (evhttp's sockets only), 0: off */
	const char *defer_accept_bad;     /* the value, when not 0-3600 */
	bool policy_set;                  /* EVSTEER_POLICY named one (the core
					     reads it; deferred_policy() must
					     not choose over it) */
};

/* libevent's own functions: the definitions after ours (RTLD_NEXT). */
struct pl_real {
#define X(f) __typeof__(f) *f;
	PL_REAL_FUNCS(X)
#undef X
};

/*
 * The shim's state (preload.c). Written once, by init() (init.c) under
 * pthread_once, before any interposer goes on, from what the file named
 * finds; read without a lock afterwards.
 */
struct pl_state {
	enum pl_mode mode;                    /* resolve.c, core_load.c */
	struct pl_env env;                    /* env.c */
	struct pl_real real;                  /* resolve.c */
	const struct evst_preload_core *core; /* core_load.c; set when active */
};
extern struct pl_state pl;

/* init.c: decide, once; every interposer calls this first. */
void pl_init(void);

/* env.c: fill *env from the environment (the shim's only getenv()s). */
void pl_env_read(struct pl_env *env);

/* resolve.c */
struct pl_libevent {
	const char *path;    /* the library that defines evconnlistener_new */
	const char *version; /* its event_get_version(), or NULL */
};
/*
 * Fill *real and check the libevent behind it. MODE_ACTIVE: it is 2.1, in
 * the global scope, and evsteer's own event calls reach it (*lib says which
 * it is); otherwise the mode to pass through in, said once on stderr.
 */
enum pl_mode pl_resolve(struct pl_real *real, struct pl_libevent *lib);
/* The libevent function a call passes through to (NULL: said why). */
void *pl_real_for(void *global, const char *name, void *self, const void *ra);
#define PL_REAL(f, ra)                                                         \
	((__typeof__(f) *)pl_real_for((void *)pl.real.f, #f, (void *)f, ra))

/* core_load.c: the core built with this shim, its log sink set; or NULL,
 * said why. */
const struct evst_preload_core *pl_core_load(void);

/* registry.c: the listeners made here. */
struct pl_entry {
	struct evsteer_listener *lev; /* interpose.c */
	struct pl_entry *next;        /* registry.c, under its lock */
	bool reported;                /* report.c: its line was written at exit */
	pid_t pid;                    /* registry.c: the process that made it */
	char addr[128];               /* interpose.c: its address, in words */
};
void pl_reg_insert(struct pl_entry *e);
bool pl_reg_has(const void *lev);
struct pl_entry *pl_reg_remove(const void *lev);
/* fn on every entry, under the registry lock. */
void pl_reg_each(void (*fn)(struct pl_entry *e));

/* report.c */
void pl_report_made(const struct pl_entry *e); /* the info line */
void pl_report_free(struct pl_entry *e);        /* EVSTEER_STATS */
void pl_report_at_exit(void);                   /* EVSTEER_STATS, atexit */

/* sock.c */
bool pl_is_socket(int fd);
bool pl_has_reuseport(int fd);
int pl_local_port(int fd); /* -1 unless AF_INET or AF_INET6 */
void pl_format_addr(int fd, char *out, size_t len);

/* say.c: "evsteer: LEVEL: ..." on stderr, one write(2) a line, up to
 * pl.env.log_level. */
__attribute__((format(printf, 2, 3)))
void pl_say(enum evsteer_log_level level, const char *fmt, ...);
const char *pl_level_name(enum evsteer_log_level level); /* NULL if none */
/* The core's log sink: its lines go out as ours. */
void pl_core_log(enum evsteer_log_level level, const char *msg, void *arg);
/* While on, this thread's core info lines are dropped (see say.c). */
void pl_creating(bool on);

#endif /* EVSTEER_PRELOAD_H */

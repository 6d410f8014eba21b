/* SPDX-License-Identifier: MIT */
/*
 * Test helpers shared by every test file: the path table (each behaviour
 * test runs once per path: event now; io_uring and BPF-steered groups add
 * rows), loopback clients, bounded event-loop waits, fd accounting.
 */
#ifndef EVSTEER_TLIB_H
#define EVSTEER_TLIB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <linux/audit.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <event2/event.h>
#include <evsteer/evsteer.h>

/* Generous: CI machines are shared 2-core boxes. */
#define TL_TIMEOUT_MS 10000

struct tl_path {
	const char *name;     /* what evsteer_listener_path_name() reports */
	const char *feature;  /* EVSTEER_TEST_REQUIRE token: "bpf", "uring" */
	/* NULL when the path can run here, else why not (a skip). */
	const char *(*unavailable)(void);
	/* Adjust creation options for this path. */
	void (*opts)(struct evsteer_listener_opts *o);
	/* Flags added to every inet new_bind on this path. */
	unsigned int extra_flags;
};

/* NULL when BPF steering / the io_uring engine works here, else why not. */
const char *tl_bpf_unavailable(void);
const char *tl_uring_unavailable(void);
/* The current path accepts with io_uring. */
bool tl_uring(void);
/* Connections waiting for a listener: queued in the kernel, or (io_uring)
 * accepted and held for delivery. Either way not lost. */
int tl_waiting(struct evsteer_listener *lev);

/* The path the current group of tests runs on. */
extern const struct tl_path *tl_path;

/*
 * Run `tests` once per path in the table (EVSTEER_TEST_PATHS=a,b limits it).
 * A path that cannot run here is skipped, or fails when EVSTEER_TEST_REQUIRE
 * names its feature or "all". Returns the process exit code.
 */
int tl_run_paths(const char *file, const struct CMUnitTest *tests, size_t n);
/* Same, for tests that do not depend on the path: run them once. */
int tl_run_once(const char *file, const struct CMUnitTest *tests, size_t n);

/* Does EVSTEER_TEST_REQUIRE name this feature (or "all")? */
bool tl_required(const char *feature);
/* Skip (or fail under EVSTEER_TEST_REQUIRE) a test whose feature is absent. */
void tl_skip_unless(bool have, const char *feature, const char *why);
/* The same for BPF steering ("bpf"), the io_uring engine ("uring") and an
 * IPv6 loopback ("ipv6": ::1 can be bound). */
void tl_need_bpf(void);
void tl_need_uring(void);
void tl_need_ipv6(void);

/* Listener creation through the current path's options. */
struct evsteer_listener *tl_new_bind(struct event_base *base,
				     evsteer_accept_cb cb, void *arg,
				     unsigned int flags, int backlog,
				     const struct sockaddr *sa, socklen_t len);
struct evsteer_listener *tl_new_bind_opts(struct event_base *base,
					  evsteer_accept_cb cb, void *arg,
					  unsigned int flags, int backlog,
					  const struct sockaddr *sa,
					  socklen_t len,
					  struct evsteer_listener_opts *o);
struct evsteer_listener *tl_new(struct event_base *base, evsteer_accept_cb cb,
				void *arg, unsigned int flags, int backlog,
				int fd);

/* Addresses. */
socklen_t tl_addr_loopback(int family, struct sockaddr_storage *ss);
socklen_t tl_addr_unix(struct sockaddr_storage *ss); /* fresh path in /tmp */
/* The address a listener (or any socket) is bound to. */
socklen_t tl_sockname(int fd, struct sockaddr_storage *ss);
/* The port fd is bound to (IPv4 or IPv6), asserted. */
int tl_port_of(int fd);

/* Blocking connect to the address `fd` listens on; returns the client fd. */
int tl_connect_to(int listen_fd);
/* n clients at once; fds written to out. */
void tl_connect_n(int listen_fd, int *out, int n);
void tl_close_n(int *fds, int n);

/*
 * Run the loop until *counter >= want or TL_TIMEOUT_MS passes; returns true
 * when reached. Waits for events, never sleeps.
 */
bool tl_loop_until(struct event_base *base, const int *counter, int want);
/* Same, until done(arg) is true. */
bool tl_loop_until_fn(struct event_base *base, bool (*done)(void *), void *arg);
/* Run the loop for ms milliseconds of wall time (to observe idleness). */
void tl_loop_for(struct event_base *base, int ms);
/* event_base_dispatch() with a watchdog; false if the watchdog fired. */
bool tl_dispatch_returns(struct event_base *base);

/* An integer from /proc/sys (path under it), or def if unreadable. */
int tl_sysctl_int(const char *path, int def);

/* Open descriptors of this process (from /proc/self/fd). */
int tl_count_fds(void);

/* fd properties */
bool tl_is_nonblocking(int fd);
bool tl_is_cloexec(int fd);
int tl_sockopt_int(int fd, int level, int name);

/* Log capture through evsteer_set_log(). */
void tl_log_capture_start(void);
/* How many times `needle` occurs in what was captured so far. */
int tl_log_capture_count(const char *needle);
void tl_log_capture_stop(void);

/* A fresh (thread-aware) event_base. */
struct event_base *tl_base(void);

#endif

/*
 * A recording server: the accept callback stores each fd and peer, and can
 * act on the listener when the count reaches a mark.
 */
#define TL_MAX 256
struct tl_srv {
	struct evsteer_listener *lev;
	int n;                 /* connections delivered */
	int fds[TL_MAX];       /* kept open unless close_now */
	struct sockaddr_storage peer[TL_MAX];
	int peerlen[TL_MAX];
	void *arg_seen;
	bool wrong_listener;   /* callback got a listener other than lev */
	bool close_now;        /* close each fd at once (long runs) */
	int disable_at, free_at, setnull_at; /* act when n reaches this */
	int errors, last_errno;
	int free_on_error;     /* free the listener from the error callback */
};
void tl_srv_accept_cb(struct evsteer_listener *lev, int fd,
		      struct sockaddr *sa, int len, void *arg);
void tl_srv_error_cb(struct evsteer_listener *lev, void *arg);
void tl_srv_close(struct tl_srv *s);
/* s listening on a loopback port through the current path (tl_new_bind,
 * flags as given), asserted; returns the listening fd. */
int tl_srv_listen(struct tl_srv *s, struct event_base *base, unsigned int flags);
/* The usual end: close the n clients and s's connections, free s's
 * listener and the base. */
void tl_srv_done(struct tl_srv *s, struct event_base *base, int *c, int n);

/* Every CPU (of the first 256, the program's map) steers to the group's
 * slot under policy cpu; each mapping asserted. */
void tl_steer_all_to(struct evsteer_group *g, unsigned int slot);

/* Wait (bounded) until a TCP listener has n connections queued; no-op for
 * other families, whose connect() queues synchronously. */
void tl_wait_queued(int listen_fd, int n);
/* Connections queued on a TCP listener right now. */
int tl_queued(int listen_fd);

/*
 * For a child that runs as an unprivileged uid: copy this binary and the
 * libevsteer it uses into a fresh directory under /tmp that anyone can
 * traverse (the build tree may be under /root or another 0700 directory).
 * dir gets the directory (for tl_unstage), exe the staged binary, libdir the
 * staged library's directory (for LD_LIBRARY_PATH). 0 or -errno.
 */
int tl_stage_self(char *dir, size_t dlen, char *exe, size_t elen,
		  char *libdir, size_t llen);
void tl_unstage(const char *dir);

/* ---- for forked children (tlib_child.c: no cmocka there) */

/* This build's seccomp audit arch; 0 where unknown (seccomp tests skip). */
#if defined(__x86_64__)
#define TL_SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TL_SECCOMP_ARCH AUDIT_ARCH_AARCH64
#else
#define TL_SECCOMP_ARCH 0
#endif
/* A seccomp filter (with no_new_privs) under which syscall nr fails with
 * err; 0, or -1 with errno. */
int tl_deny_syscall(long nr, int err);
/* CLOCK_MONOTONIC in milliseconds: deadlines that load cannot stretch. */
uint64_t tl_now_ms(void);
/* fork(), for a child that goes on to allocate and make threads. Under
 * ASan it first waits (up to 10 s) until every other thread of this
 * process sleeps: ASan's allocator keeps its locks across fork (GCC 12's
 * runtime registers no fork handlers), so a thread that was inside it at
 * that moment, typically one still starting, leaves a lock held for ever
 * in the child. Elsewhere it is fork(). */
pid_t tl_fork(void);
/* Wait for a child: its exit code, 128 + the signal that killed it, or -1
 * (ETIMEDOUT: not gone 60 s on; what its threads waited in is printed and
 * it is killed). */
int tl_wait_status(pid_t pid);

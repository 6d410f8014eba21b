/* SPDX-License-Identifier: MIT */
/*
 * evsteer: a connection listener with libevent's evconnlistener semantics.
 *
 * The native API. Programs written for <event2/listener.h> use
 * <evsteer/compat.h> instead, which maps the evconnlistener names onto this.
 *
 * Conventions (libbpf's): int functions return 0 or -errno and also set errno;
 * pointer functions return NULL and set errno; options structs start with
 * `size_t sz` and are declared with their *_OPTS() macro so they can grow.
 */
#ifndef EVSTEER_EVSTEER_H
#define EVSTEER_EVSTEER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h> /* memset(), memcpy() in the *_OPTS() macros */
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EVSTEER_API __attribute__((visibility("default")))

struct event_base;
struct evsteer_listener;

/*
 * Listener flags. Values and meaning are libevent 2.1's LEV_OPT_* exactly.
 */
/* Accepted sockets stay blocking (default: they are made non-blocking). */
#define EVSTEER_OPT_LEAVE_SOCKETS_BLOCKING (1u << 0)
/* evsteer_listener_free() closes the listening socket. */
#define EVSTEER_OPT_CLOSE_ON_FREE          (1u << 1)
/* Listening socket (new_bind) and accepted sockets get FD_CLOEXEC. */
#define EVSTEER_OPT_CLOSE_ON_EXEC          (1u << 2)
/* new_bind sets SO_REUSEADDR. */
#define EVSTEER_OPT_REUSEABLE              (1u << 3)
/*
 * The listener takes a recursive lock, so enable, disable, set_cb and free
 * may be called from any thread. The lock is never held while user callbacks
 * run, and free from another thread waits (without the lock) for a running
 * accept callback to return, so it cannot deadlock with it. As with libevent,
 * the event_base must be thread-aware (evthread_use_pthreads() before
 * event_base_new()) for cross-thread calls.
 */
#define EVSTEER_OPT_THREADSAFE             (1u << 4)
/* Created disabled; call evsteer_listener_enable() to start accepting. */
#define EVSTEER_OPT_DISABLED               (1u << 5)
/* new_bind sets TCP_DEFER_ACCEPT (TCP only: fails on AF_UNIX, as libevent). */
#define EVSTEER_OPT_DEFERRED_ACCEPT        (1u << 6)
/* new_bind sets SO_REUSEPORT, so several listeners can share the address. */
#define EVSTEER_OPT_REUSEABLE_PORT         (1u << 7)
/* new_bind sets IPV6_V6ONLY (IPv6 only: fails on other families, as libevent). */
#define EVSTEER_OPT_BIND_IPV6ONLY          (1u << 8)
/* Every flag this version knows; any other bit is rejected with EINVAL. */
#define EVSTEER_OPT_ALL                    0x1ffu

/*
 * Called with each accepted connection: its fd (now owned by the callback),
 * the peer address and its length, and the user pointer. The callback may
 * disable or free its own listener; delivery stops at once.
 */
typedef void (*evsteer_accept_cb)(struct evsteer_listener *lev, int fd,
				  struct sockaddr *addr, int socklen, void *arg);
/*
 * Called when accepting fails for a reason other than EAGAIN, EINTR or
 * ECONNABORTED; errno holds the error. Descriptor exhaustion (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM) is reported once per episode: the listener then
 * pauses with a bounded back-off and resumes by itself, leaving the
 * connections queued in the kernel. Without an error callback a warning is
 * logged instead.
 */
typedef void (*evsteer_error_cb)(struct evsteer_listener *lev, void *arg);

/*
 * Steering policies for a worker group (see evsteer_group_new()).
 */
enum evsteer_policy {
	/* The worker with the fewest connections steered to it but not yet
	 * accepted (weighted); ties rotate. The default. */
	EVSTEER_POLICY_LEAST_PENDING = 0,
	/* Flow hash over live workers (weighted). */
	EVSTEER_POLICY_HASH = 1,
	/* Exact rotation over live workers (weighted). */
	EVSTEER_POLICY_ROUND_ROBIN = 2,
	/* The worker assigned to the CPU the connection arrived on
	 * (evsteer_group_set_cpu(); default cpu % workers), else least-pending. */
	EVSTEER_POLICY_CPU = 3,
};

/* Whether to use BPF steering. The EVSTEER_BPF environment variable
 * (auto|off|require) applies when the option is AUTO. */
enum evsteer_bpf_mode {
	EVSTEER_BPF_AUTO = 0,    /* BPF if the kernel allows, else kernel hash */
	EVSTEER_BPF_OFF,         /* kernel SO_REUSEPORT hash */
	EVSTEER_BPF_REQUIRE,     /* creation fails if BPF cannot be used */
};

/* Which engine accepts. The EVSTEER_ACCEPT environment variable
 * (auto|event|uring) applies when the option is AUTO. */
enum evsteer_accept_mode {
	/* the event engine, with or without BPF steering: accept4() costs
	 * less CPU per connection than io_uring's accept at nearly every
	 * load measured (docs/uring.md); io_uring only when asked for */
	EVSTEER_ACCEPT_AUTO = 0,
	EVSTEER_ACCEPT_EVENT,  /* event_base + accept4() */
	EVSTEER_ACCEPT_URING,  /* io_uring, also without BPF */
};

/*
 * Options for listener creation. Declare with EVSTEER_LISTENER_OPTS(); a
 * zero field means "the default". NULL opts means all defaults.
 */
struct evsteer_listener_opts {
	size_t sz;
	/* Accepts per wake-up before yielding to the loop. 0: 128; for a
	 * member of a group with stall detection and another socket in this
	 * process, 1, doubled while a backlog stands, and held at 1 for five
	 * seconds after its loop blocked (docs/groups.md, "One connection per
	 * pass"); on the event engine, past that one at a time up to 128
	 * while its loop holds no event but the listener's. A look at stuck
	 * siblings takes no more than this cap either (docs/groups.md, "A thief takes what its own accepts may
	 * take in a pass"). */
	unsigned int max_accepts_per_wakeup;
	/* Back-off cap (ms) while descriptors are exhausted. 0: 250 ms. */
	unsigned int backoff_max_ms;
	/*
	 * For a listener with EVSTEER_OPT_REUSEABLE_PORT on a TCP address: the
	 * listeners on the same address form one group (the one-base-per-thread
	 * pattern), with those of other processes of the same user too; the
	 * first member's settings apply.
	 * bpf: EVSTEER_BPF env when AUTO; policy: EVSTEER_POLICY env
	 * (least-pending|hash|round-robin|cpu) when 0; stall_us: see groups.
	 */
	enum evsteer_bpf_mode bpf;
	enum evsteer_policy policy;
	int stall_us;
	/* The accept engine; if io_uring cannot be used (no io_uring_setup
	 * under the container's seccomp profile, kernel.io_uring_disabled...),
	 * the event engine, with the reason in the path report. */
	enum evsteer_accept_mode accept;
	/*
	 * Non-zero: accept what libevent 2.1 accepts (compat.h sets it):
	 * evsteer_listener_new() on a socket that is not a stream socket is
	 * created, with a warning, and every accept on it fails, instead of
	 * EINVAL.
	 */
	int libevent_compat;
	/*
	 * For a protocol whose client speaks first (HTTP), a group member only:
	 * seconds (1-30) of TCP_DEFER_ACCEPT that the member's socket takes on
	 * when its loop blocks (a pass away 10 ms or more, from which a
	 * sibling took its queue), until its first pass five seconds or more
	 * after its last block (the window of one connection per pass).
	 * Connections are then handed over with their first bytes, so one
	 * accepted just before a handler blocks is not read behind it
	 * (docs/groups.md, "Deferred accept after a block"). Never before a
	 * block: deferring costs a loopback client about a wake-up's time per
	 * connection, the server no longer waking while the client writes. A
	 * socket that defers already is left as it is. 0: never; socket not
	 * TCP: EINVAL.
	 */
	int defer_accept_after_block;
};
/*
 * The *_OPTS() macros for input structs declare NAME zeroed, its padding
 * included, with sz and the given fields set. The library refuses a
 * non-zero byte past the last field it knows (to it, an option from a
 * newer header), and a plain initializer does not promise zero padding:
 * GCC leaves stack bytes in the tail padding of a struct whose every field
 * is named (at -O2, and at -O0 even through libbpf's memset-then-assign
 * LIBBPF_OPTS()). So the fields are copied in up to the end of the last
 * one, and NAME's own zeroed bytes are what initialize it. A struct
 * declared any other way must be memset() to 0 first.
 */
#define EVSTEER_OPTS_DECLARE_(TYPE, LAST, NAME, ...)                           \
	struct TYPE NAME = __extension__({                                     \
		struct TYPE evsteer_opts_init_ = {.sz = sizeof(struct TYPE),   \
						  __VA_ARGS__};                \
		*(struct TYPE *)memcpy(                                        \
			memset(&NAME, 0, sizeof(struct TYPE)),                 \
			&evsteer_opts_init_,                                   \
			offsetof(struct TYPE, LAST) +                          \
				sizeof(evsteer_opts_init_.LAST));              \
	})
#define EVSTEER_LISTENER_OPTS(NAME, ...)                                       \
	EVSTEER_OPTS_DECLARE_(evsteer_listener_opts, defer_accept_after_block, \
			      NAME, __VA_ARGS__)

/*
 * An options struct larger than this is refused (EINVAL) unread: a newer
 * caller's struct may be larger than ours, but not without bound. Within
 * sz, every byte past the end of the last field this library knows must be
 * zero (libbpf's rule), the struct's tail padding included: a newer
 * caller's option that an older library does not have is refused (EINVAL,
 * with a warning naming the struct), never silently ignored. A smaller sz
 * (an older caller) gets the defaults for the fields it does not cover.
 */
#define EVSTEER_OPTS_MAX_SZ 4096

/* listen() backlog for backlog < 0; the kernel clamps it to net.core.somaxconn. */
#define EVSTEER_DEFAULT_BACKLOG SOMAXCONN
#define EVSTEER_DEFAULT_MAX_ACCEPTS 128
#define EVSTEER_DEFAULT_BACKOFF_MAX_MS 250

/*
 * Listen on an existing socket fd. backlog > 0 calls listen(fd, backlog),
 * backlog < 0 calls listen(fd, EVSTEER_DEFAULT_BACKLOG) (libevent uses
 * 128, which drops SYNs under bursts), 0 means the caller
 * already listened. A blocking fd is made non-blocking. cb may be NULL: the
 * listener then accepts nothing until evsteer_listener_set_cb() arms it.
 * Errors: EINVAL (NULL base, fd < 0, unknown flags, bad opts: an enum out
 * of range or sz > EVSTEER_OPTS_MAX_SZ; a socket that is not a stream
 * socket), EBADF, ENOTSOCK, whatever listen() says. With backlog 0 on a
 * socket that is not listening a warning is logged (every accept would
 * fail). The fd is not closed on failure.
 */
EVSTEER_API struct evsteer_listener *
evsteer_listener_new(struct event_base *base, evsteer_accept_cb cb, void *arg,
		     unsigned int flags, int backlog, int fd,
		     const struct evsteer_listener_opts *opts);

/*
 * Create a non-blocking stream socket (SO_KEEPALIVE, plus the options the
 * flags ask for), bind it to addr and listen. addr may be NULL with len 0:
 * the socket is then AF_INET and the kernel picks the port when listen()
 * runs (libevent 2.1 fails there with EAFNOSUPPORT). backlog 0 is EINVAL
 * (nothing would listen). On any
 * failure the socket is closed and NULL returned with errno set.
 */
EVSTEER_API struct evsteer_listener *
evsteer_listener_new_bind(struct event_base *base, evsteer_accept_cb cb,
			  void *arg, unsigned int flags, int backlog,
			  const struct sockaddr *addr, socklen_t len,
			  const struct evsteer_listener_opts *opts);

/*
 * Disable and release. Closes the socket only with EVSTEER_OPT_CLOSE_ON_FREE.
 * May be called from the listener's own callbacks. NULL is a no-op.
 */
EVSTEER_API void evsteer_listener_free(struct evsteer_listener *lev);

/* Start (or resume) accepting. Returns 0 or -errno. */
EVSTEER_API int evsteer_listener_enable(struct evsteer_listener *lev);
/*
 * Stop accepting; queued connections stay in the kernel's backlog. Once every
 * listener on a base is disabled or freed, event_base_dispatch() returns.
 */
EVSTEER_API int evsteer_listener_disable(struct evsteer_listener *lev);

/* Replace the accept callback and its argument (NULL cb disarms). */
EVSTEER_API void evsteer_listener_set_cb(struct evsteer_listener *lev,
					 evsteer_accept_cb cb, void *arg);
/* Replace the error callback (it gets the accept callback's argument). */
EVSTEER_API void evsteer_listener_set_error_cb(struct evsteer_listener *lev,
					       evsteer_error_cb errcb);

/* The listener's event_base, or NULL (errno EINVAL) for NULL. */
EVSTEER_API struct event_base *
evsteer_listener_get_base(const struct evsteer_listener *lev);
/* The listening socket, or -1 (errno EINVAL) for NULL. */
EVSTEER_API int evsteer_listener_get_fd(const struct evsteer_listener *lev);

/*
 * The path a listener uses: how connections are steered between worker
 * sockets and which engine accepts them, with the reason for each fallback.
 */
enum evsteer_steering {
	EVSTEER_STEER_NONE = 0,   /* one socket, nothing to steer */
	EVSTEER_STEER_KERNEL_HASH, /* SO_REUSEPORT: the kernel's flow hash */
	EVSTEER_STEER_BPF,         /* our SK_REUSEPORT program */
	/* eBPF refused (no CAP_BPF, seccomp, a user namespace): a classic
	 * BPF reuseport program (SO_ATTACH_REUSEPORT_CBPF, no capability
	 * needed) hashes over the healthy workers of this process and is
	 * re-attached whenever they change; steering_reason says why not
	 * eBPF. Path names "cbpf+event", "cbpf+uring", "cbpf+uring-direct".
	 * policy reports what it applies: hash, or cpu. */
	EVSTEER_STEER_CBPF,
};
enum evsteer_engine {
	EVSTEER_ENGINE_EVENT = 0, /* event_base + accept4(), libevent's way */
	EVSTEER_ENGINE_URING,     /* io_uring multishot accept into fds */
	EVSTEER_ENGINE_URING_DIRECT, /* io_uring multishot accept, direct slots */
};
struct evsteer_path {
	size_t sz;
	enum evsteer_steering steering;
	enum evsteer_engine engine;
	/* Short name: "event" for the plain event_base path; "bpf+..." with
	 * eBPF steering, "cbpf+..." with classic BPF steering. */
	const char *name;
	/* Why steering is not BPF / the engine is not io_uring ("" if it is).
	 * On an io_uring engine, engine_reason may instead name the kernel
	 * features it does without and what that changes, e.g. "io_uring:
	 * the kernel lacks IORING_ACCEPT_DONTWAIT (Linux 6.10): direct
	 * workers do not steal from stalled siblings".
	 * Static strings, valid for the life of the process. */
	const char *steering_reason;
	const char *engine_reason;
	/* The group's policy (meaningful with EVSTEER_STEER_BPF). */
	enum evsteer_policy policy;
};
#define EVSTEER_PATH_OPTS(NAME) \
	struct evsteer_path NAME = {.sz = sizeof(struct evsteer_path)}

/*
 * Fill *out (out->sz set by the caller). Output structs are written up to
 * the end of the last field this library knows, or out->sz if smaller;
 * bytes past that (a newer caller's fields, even in our tail padding) keep
 * the value the caller gave them (0 with the *_OPTS() macros). The same
 * holds for every struct the library fills. Returns 0 or -errno.
 */
EVSTEER_API int evsteer_listener_get_path(const struct evsteer_listener *lev,
					  struct evsteer_path *out);
/* The path's short name ("event", "bpf+event", "cbpf+event", ...), "" for
 * NULL. */
EVSTEER_API const char *
evsteer_listener_path_name(const struct evsteer_listener *lev);

/*
 * Counters, cheap to read from any thread at any time (relaxed atomics).
 */
struct evsteer_listener_stats {
	size_t sz;
	uint64_t accepted;        /* connections handed to the callback */
	uint64_t wakeups;         /* times the engine found the socket ready */
	uint64_t capped_wakeups;  /* wake-ups that stopped at the accept cap */
	uint64_t accept_errors;   /* failed accepts other than EAGAIN */
	uint64_t exhausted_episodes; /* descriptor-exhaustion episodes */
	uint64_t exhausted_retries;  /* back-off retries during those */
	uint64_t closed_on_free;  /* accepted by io_uring, never delivered,
				     closed by free */
	uint64_t held;   /* now: accepted by io_uring, waiting for delivery
			    (e.g. while disabled) */
	uint64_t table_full; /* direct: connections the kernel closed because
				the fixed-file table was full */
	uint64_t rearms;     /* io_uring: multishot accepts re-armed after the
				kernel ended one (error, full CQ, ...) */
	uint64_t handed_off; /* io_uring, in a group: accepted, not delivered
				when this listener was freed, and given to a
				live sibling (instead of closed_on_free) */
};
#define EVSTEER_STATS_OPTS(NAME) \
	struct evsteer_listener_stats NAME = { \
		.sz = sizeof(struct evsteer_listener_stats)}

/* Fill *out (out->sz set by the caller). Returns 0 or -errno. */
EVSTEER_API int
evsteer_listener_get_stats(const struct evsteer_listener *lev,
			   struct evsteer_listener_stats *out);

/*
 * Worker groups: N listening sockets on one address, one per worker
 * event_base (thread), with a BPF SK_REUSEPORT program choosing the socket
 * for each new connection by policy. Workers that stall (connections
 * pending, no progress of their loop for stall_us: a callback blocked in a
 * system call, a thread the scheduler left waiting, a pass busy with many
 * ready events) get no new connections while a sibling keeps up (its
 * queue younger by stall_us), and their queued ones are accepted
 * by healthy siblings of the same process ("stolen") and handed to the
 * sibling's callback; a worker stolen from gets connections again as soon
 * as its loop runs. A thread per process (the stall watch) wakes a healthy
 * sibling when nothing else would, so a connection waits on a stuck worker
 * about 2 x stall_us plus the time the sibling takes to run, at most; what
 * the program already took from a worker that then blocks waits for it.
 * A worker that leaves has its queued connections
 * migrated to the others instead of reset. Without BPF (no CAP_BPF,
 * seccomp, EVSTEER_BPF=off, not built) the group runs on the kernel's
 * SO_REUSEPORT hash; evsteer_group_get_path() says which, and why.
 *
 * Listeners made by evsteer_listener_new_bind() with
 * EVSTEER_OPT_REUSEABLE_PORT on the same TCP address form such a group by
 * themselves, so evconnlistener code with one base per thread is steered
 * unchanged.
 */
struct evsteer_group;

struct evsteer_group_opts {
	size_t sz;
	/* EVSTEER_POLICY env (least-pending|hash|round-robin|cpu) when 0 */
	enum evsteer_policy policy;
	/* EVSTEER_BPF env (auto|off|require) when AUTO */
	enum evsteer_bpf_mode bpf;
	/* A worker with pending connections and no progress for this long is
	 * stalled. 0: EVSTEER_STALL_US env, else 2000 us; < 0: stall
	 * detection off. */
	int stall_us;
	/* Passed to each worker's listener (see evsteer_listener_opts). */
	unsigned int max_accepts_per_wakeup;
	unsigned int backoff_max_ms;
	enum evsteer_accept_mode accept;
	/* TCP_DEFER_ACCEPT after a block: evsteer_listener_opts. */
	int defer_accept_after_block;
};
/* Declares NAME zeroed, padding included (see EVSTEER_LISTENER_OPTS()). */
#define EVSTEER_GROUP_OPTS(NAME, ...)                                          \
	EVSTEER_OPTS_DECLARE_(evsteer_group_opts, defer_accept_after_block,    \
			      NAME, __VA_ARGS__)

/*
 * Workers of one address, in every process together (threads and member
 * processes): evsteer_group_new()'s nworkers, evsteer_group_from_fds()'s
 * n, slots, and evsteer_group_global_size() are at most this. It was 64
 * in 0.1.0 and 0.2.0 (an API change, not an ABI one: no type or symbol
 * changed; a program built against 64 that sizes an array by it must not
 * fill it from evsteer_group_global_size() of a group that other
 * processes grew past 64). Processes of that version and of this one do not share a
 * group (their shared layouts differ): a newcomer of the other version
 * falls back to the kernel's hash, and says so.
 */
#define EVSTEER_MAX_WORKERS 1024
#define EVSTEER_DEFAULT_STALL_US 2000

/*
 * Bind nworkers sockets (SO_REUSEPORT, plus what flags ask for, as new_bind)
 * to addr (TCP over IPv4 or IPv6), listen, and set up steering. Connections
 * queue on the sockets until workers attach. flags are applied to every
 * worker's listener; the group owns the sockets (CLOSE_ON_FREE is implied).
 * When the address is steered already, by another group or REUSEABLE_PORT
 * listeners of this process or of another process of the same user, the
 * new workers join that steering (one address, one group; its policy
 * applies) and the group's own slots are still numbered 0..nworkers-1.
 * Errors: EINVAL, EAFNOSUPPORT, socket/bind errors, and with
 * EVSTEER_BPF_REQUIRE the BPF error (EPERM without CAP_BPF, ENOSYS...).
 */
EVSTEER_API struct evsteer_group *
evsteer_group_new(const struct sockaddr *addr, socklen_t len,
		  unsigned int nworkers, unsigned int flags, int backlog,
		  const struct evsteer_group_opts *opts);

/*
 * Serve slot with a listener on base (call it from the worker's thread or
 * before starting it). Freeing the listener makes the worker leave: its
 * socket closes and what was queued on it migrates to the others.
 * Errors: EINVAL (bad slot), EBUSY (slot already served), ENOENT (slot left).
 */
EVSTEER_API struct evsteer_listener *
evsteer_group_attach(struct evsteer_group *g, unsigned int slot,
		     struct event_base *base, evsteer_accept_cb cb, void *arg);

/* Add a worker socket at run time; returns its slot, or -errno (ENOSPC). */
EVSTEER_API int evsteer_group_add_worker(struct evsteer_group *g);

/*
 * Drop the creator's reference: slots no listener serves are closed (their
 * queues migrate); the group lives on while listeners are attached.
 */
EVSTEER_API void evsteer_group_free(struct evsteer_group *g);

/*
 * A graceful leave, e.g. before a restart: no new connection is steered to
 * this group's workers any more (the other members of the address, in this
 * process or another, get them all), while they keep accepting what was
 * already steered to them. Wait until evsteer_group_pending() is 0 (with a
 * bound: a handshake that never completes counts until the next empty
 * pass), then free the listeners: nothing is left on their sockets, and
 * what still arrives there migrates. Retired workers do not come back on
 * enable. With classic BPF (no CAP_BPF) beside another process's
 * listeners, a program sends every new connection to them while this
 * process's kernel indexes are known (docs/groups.md). With the kernel's
 * hash (no BPF) there is no table to leave: the kernel keeps picking these
 * sockets until they close, and what is queued on them then is reset
 * unless net.ipv4.tcp_migrate_req=1. 0 or -errno.
 */
EVSTEER_API int evsteer_group_retire(struct evsteer_group *g);
/* Connections steered to this group's workers and not yet handed to a
 * callback (queued on their sockets, or accepted by io_uring and held);
 * or -errno. */
EVSTEER_API int evsteer_group_pending(const struct evsteer_group *g);

/* A policy's name ("least-pending", "hash", "round-robin", "cpu"), "?"
 * for an unknown one; evsteer_policy_str() (below) is the newer form. */
EVSTEER_API const char *evsteer_policy_name(enum evsteer_policy policy);

/* Switch policy while running (no re-attach). 0 or -errno. */
EVSTEER_API int evsteer_group_set_policy(struct evsteer_group *g,
					 enum evsteer_policy policy);
/* Relative weight of a worker, 1..16 (default 1). 0 or -errno. */
EVSTEER_API int evsteer_group_set_weight(struct evsteer_group *g,
					 unsigned int slot, unsigned int weight);
/* Route connections arriving on cpu to slot (EVSTEER_POLICY_CPU). */
EVSTEER_API int evsteer_group_set_cpu(struct evsteer_group *g,
				      unsigned int cpu, unsigned int slot);

/* The group's listening socket for slot, or -1 (errno). */
EVSTEER_API int evsteer_group_get_fd(const struct evsteer_group *g,
				     unsigned int slot);
/* Number of slots (used or not) so far. */
EVSTEER_API unsigned int evsteer_group_size(const struct evsteer_group *g);
/* The group a listener belongs to, or NULL. */
EVSTEER_API struct evsteer_group *
evsteer_listener_get_group(const struct evsteer_listener *lev);

/* Steering in use and why (engine fields describe the worker default). */
EVSTEER_API int evsteer_group_get_path(const struct evsteer_group *g,
				       struct evsteer_path *out);

/*
 * Socket activation (systemd's LISTEN_FDS protocol; no libsystemd needed).
 *
 * evsteer_listen_fds() collects the listening sockets passed to this
 * process: descriptors 3 .. 3+$LISTEN_FDS-1 when $LISTEN_PID is this
 * process, those whose $LISTEN_FDNAMES entry (FileDescriptorName= in the
 * .socket unit; "unknown" when unnamed) equals name, or all of them for a
 * NULL name. At most max are written to fds. Every passed descriptor gets
 * FD_CLOEXEC, as sd_listen_fds() does. Returns how many matched (0 when
 * nothing was passed, or it was passed to another process), or -errno:
 * EINVAL (NULL fds with max > 0, malformed variables), EBADF (a passed
 * descriptor is not open), ENOSPC (more than max matched; the first max
 * are written).
 * With unset_env, LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed
 * from the environment whatever the outcome, so child processes do not
 * take them for theirs (not thread-safe: call it before starting threads).
 */
EVSTEER_API int evsteer_listen_fds(const char *name, int *fds, unsigned int max,
				   int unset_env);

/*
 * A worker group made of n listening sockets the caller already has, e.g.
 * from evsteer_listen_fds() (a .socket unit with ReusePort=yes and one
 * ListenStream= per worker, all on one address): slot i serves fds[i].
 * Each must be a listening TCP socket (IPv4 or IPv6) with SO_REUSEPORT,
 * all bound to the same address. They are made non-blocking, and the group
 * owns them from then on (closed when their worker leaves, or by
 * evsteer_group_free() if never attached), as with evsteer_group_new().
 * flags and opts are evsteer_group_new()'s (bind-time flags apply only to
 * sockets evsteer_group_add_worker() binds later). Errors (the sockets are
 * then left open): EINVAL (NULL, n not in 1..EVSTEER_MAX_WORKERS, bad
 * flags or opts, a socket not listening, without SO_REUSEPORT, or bound to
 * another address), ENOTSOCK, EAFNOSUPPORT, EPROTONOSUPPORT (not TCP), and
 * with EVSTEER_BPF_REQUIRE the BPF error.
 */
EVSTEER_API struct evsteer_group *
evsteer_group_from_fds(const int *fds, unsigned int n, unsigned int flags,
		       const struct evsteer_group_opts *opts);

/* Queue-wait buckets (struct evsteer_worker_stats): bucket k holds waits
 * below 1024 << k ns (about 1 us, 2 us, ... 4.3 s; the last, above). */
#define EVSTEER_WAIT_BUCKETS 24
#define EVSTEER_WAIT_BUCKET_NS(k) (1024ull << (k))

struct evsteer_worker_stats {
	size_t sz;
	uint64_t steered;   /* connections the program chose this socket for */
	uint64_t accepted;  /* accepted by this worker from its own socket */
	uint64_t pending;   /* steered but not yet taken off the socket */
	uint64_t stolen;    /* accepted by this worker from stalled siblings */
	uint64_t stolen_from; /* taken off this socket by siblings */
	uint64_t migrated;  /* moved here from a sibling that left */
	uint64_t heartbeat_age_ns; /* since this worker last made progress */
	int live;           /* attached, enabled, in the steering table */
	/* Across processes (evsteer_group_global_stats()): the process that
	 * owns the slot (its getpid(); 0 when the slot is free), the slot's
	 * number in the whole group (-1 when free), and whether it is one of
	 * this group's own workers. */
	int pid;
	int global_slot;
	int mine;
	/* Queue wait (0.3): from the steering program's decision (the SYN,
	 * or a migration from a sibling that closed) to the accept that took
	 * the connection off this worker's socket, by whoever took it (the
	 * worker or a thief); the handshake's round trip is part of it.
	 * wait_hist[k] counts waits below EVSTEER_WAIT_BUCKET_NS(k) and at or
	 * above the bucket below's bound; the last bucket has no upper bound.
	 * wait_untimed: taken with no steering time known (more than 32
	 * steered after it before it was taken). All 0 without BPF steering:
	 * the kernel's hash has no moment to time from. */
	uint64_t wait_hist[EVSTEER_WAIT_BUCKETS];
	uint64_t wait_sum_ns;
	uint64_t wait_untimed;
};
#define EVSTEER_WORKER_STATS_OPTS(NAME) \
	struct evsteer_worker_stats NAME = { \
		.sz = sizeof(struct evsteer_worker_stats)}

/* Per-worker counters; cheap (no system call). 0 or -errno. */
EVSTEER_API int evsteer_group_worker_stats(const struct evsteer_group *g,
					   unsigned int slot,
					   struct evsteer_worker_stats *out);

/*
 * The whole group across processes. Every group and REUSEABLE_PORT
 * listener on one address, in this process and in any other process of the
 * same user in the same network namespace, is steered as one group (see
 * README "Several processes"); its slots are numbered 0..global_size-1
 * across all of them, and each member's workers take the free ones. Any
 * member reads any slot's counters (shared memory, no system call); a free
 * slot reads as zeros with pid 0. With the kernel hash (no BPF) the group
 * spans this process only.
 */
EVSTEER_API unsigned int evsteer_group_global_size(const struct evsteer_group *g);
EVSTEER_API int evsteer_group_global_stats(const struct evsteer_group *g,
					   unsigned int global_slot,
					   struct evsteer_worker_stats *out);

/*
 * Direct descriptors: for applications that do their I/O through io_uring.
 * Connections are accepted straight into the ring's registered (fixed) file
 * table, with no file descriptor per connection; the callback gets the slot
 * and the ring, and evsteer_uring_send/recv/close work on the slot with
 * completion callbacks. A slot becomes a real fd with
 * evsteer_uring_fd_install() (IORING_OP_FIXED_FD_INSTALL, Linux 6.8+).
 *
 * All evsteer_uring_* calls belong to the base's loop thread (e.g. inside
 * the callbacks); their completion callbacks run there too.
 */
struct evsteer_uring;

typedef void (*evsteer_direct_cb)(struct evsteer_listener *lev,
				  struct evsteer_uring *ring, int slot,
				  void *arg);
/* res: bytes, 0, a new fd (fd_install), or -errno. */
typedef void (*evsteer_io_cb)(struct evsteer_uring *ring, int slot, int res,
			      void *arg);

/*
 * As evsteer_listener_new_bind(), delivering slots instead of fds. Needs
 * io_uring: fails (NULL, errno, the reason logged) where it is unavailable.
 * table_size is the sparse fixed-file table registered on the base's ring
 * the first time (0: 4096; the kernel caps it at RLIMIT_NOFILE, and so do
 * we, with an info line); when it is full, the kernel closes the
 * connection it could not place: counted (stats.table_full), reported to
 * the error callback once per episode (errno ENFILE), and accepting pauses
 * with the usual back-off until slots are closed.
 */
EVSTEER_API struct evsteer_listener *
evsteer_listener_new_bind_direct(struct event_base *base, evsteer_direct_cb cb,
				 void *arg, unsigned int flags, int backlog,
				 const struct sockaddr *addr, socklen_t len,
				 unsigned int table_size,
				 const struct evsteer_listener_opts *opts);

/* The ring a direct listener delivers on. */
EVSTEER_API struct evsteer_uring *
evsteer_listener_get_uring(const struct evsteer_listener *lev);

/* Queue a send / recv / close on a slot. 0 or -errno (EINVAL, EBUSY when
 * the submission queue cannot take it, ENOMEM). cb may be NULL. */
EVSTEER_API int evsteer_uring_send(struct evsteer_uring *ring, int slot,
				   const void *buf, size_t len,
				   evsteer_io_cb cb, void *arg);
/*
 * Send buf, then close the slot, as one linked chain in the ring: the usual
 * end of a request/response exchange, with no system call of its own (the
 * chain is submitted with everything else the loop queued in this round).
 * The close runs whether the send succeeds, fails or is short; cb (may be
 * NULL) gets the send's result (bytes or -errno). The slot is not the
 * caller's any more once this returns 0: its number may belong to a new
 * connection by the time cb runs. Without cb nothing comes back to the
 * ring unless the send fails, and a failure is only counted. buf must
 * stay valid until cb runs (until the send completes when cb is NULL: a
 * static or long-lived buffer). 0 or -errno as evsteer_uring_send().
 */
EVSTEER_API int evsteer_uring_send_and_close(struct evsteer_uring *ring,
					     int slot, const void *buf,
					     size_t len, evsteer_io_cb cb,
					     void *arg);
EVSTEER_API int evsteer_uring_recv(struct evsteer_uring *ring, int slot,
				   void *buf, size_t len, evsteer_io_cb cb,
				   void *arg);
EVSTEER_API int evsteer_uring_close(struct evsteer_uring *ring, int slot,
				    evsteer_io_cb cb, void *arg);
/*
 * Install the slot's file as a regular fd (res of the callback), with
 * FD_CLOEXEC unless cloexec is 0. The slot stays open: close it too.
 * -EOPNOTSUPP where the kernel lacks IORING_OP_FIXED_FD_INSTALL.
 */
EVSTEER_API int evsteer_uring_fd_install(struct evsteer_uring *ring, int slot,
					 int cloexec, evsteer_io_cb cb,
					 void *arg);
/* Slots accepted and not yet closed (a leak check). */
EVSTEER_API unsigned int evsteer_uring_slots_in_use(const struct evsteer_uring *ring);

/*
 * Logging. One process-wide callback for evsteer's own messages (never
 * libevent's or libbpf's). Messages carry no trailing newline. The default
 * writes "evsteer: <level>: <msg>" to stderr for levels up to WARN.
 */
enum evsteer_log_level {
	EVSTEER_LOG_ERROR = 0,
	EVSTEER_LOG_WARN,
	EVSTEER_LOG_INFO,
	EVSTEER_LOG_DEBUG,
};
typedef void (*evsteer_log_fn)(enum evsteer_log_level level, const char *msg,
			       void *arg);
/*
 * Install fn (NULL restores the default) with arg; messages above max_level
 * are not formatted at all. Returns the previous callback (NULL if it was the
 * default). A max_level out of range changes nothing: NULL, errno EINVAL.
 */
EVSTEER_API evsteer_log_fn evsteer_set_log(evsteer_log_fn fn, void *arg,
					   enum evsteer_log_level max_level);

/* The library's version string, e.g. "0.3.0". */
EVSTEER_API const char *evsteer_version(void);

/*
 * Names of enum values, as the path report, the log, evsteer-run's
 * --stats JSON and the EVSTEER_* environment variables spell them
 * ("least-pending", "kernel-hash", "uring-direct", ...); NULL for a value
 * this library does not know (libbpf's *_str() rule). Static strings.
 * evsteer_policy_name() is the 0.1 spelling of evsteer_policy_str() and
 * returns "?" rather than NULL.
 */
EVSTEER_API const char *evsteer_policy_str(enum evsteer_policy policy);
EVSTEER_API const char *evsteer_bpf_mode_str(enum evsteer_bpf_mode mode);
EVSTEER_API const char *evsteer_accept_mode_str(enum evsteer_accept_mode mode);
EVSTEER_API const char *evsteer_steering_str(enum evsteer_steering steering);
EVSTEER_API const char *evsteer_engine_str(enum evsteer_engine engine);
EVSTEER_API const char *evsteer_log_level_str(enum evsteer_log_level level);

#ifdef __cplusplus
}
#endif
#endif /* EVSTEER_EVSTEER_H */

/* SPDX-License-Identifier: MIT */
#ifndef EVSTEER_INTERNAL_H
#define EVSTEER_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include <evsteer/evsteer.h>
#include <event2/util.h>

struct event; /* event2/event.h: the engines and listener.c include it */

struct evst_worker;
struct evsteer_uring;

/* An accepted connection not yet delivered. */
struct evst_conn {
	int fd;        /* or a direct slot of `ring` */
	socklen_t len; /* 0: no address (a direct slot) */
	struct evsteer_uring *ring; /* direct: the ring whose slot fd is */
	struct sockaddr_storage ss;
};

#define EVST_HIDDEN __attribute__((visibility("hidden")))

/* The native API's error returns: -errno (errno set too), or NULL. */
static inline int evst_fail(int err)
{
	errno = err;
	return -err;
}

static inline void *evst_fail_null(int err)
{
	errno = err;
	return NULL;
}

/* log.c */
EVST_HIDDEN void evst_log(enum evsteer_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define evst_err(...) evst_log(EVSTEER_LOG_ERROR, __VA_ARGS__)
#define evst_warn(...) evst_log(EVSTEER_LOG_WARN, __VA_ARGS__)
#define evst_info(...) evst_log(EVSTEER_LOG_INFO, __VA_ARGS__)
#define evst_debug(...) evst_log(EVSTEER_LOG_DEBUG, __VA_ARGS__)

/*
 * An accept engine, libevent's evconnlistener_ops: one table per engine
 * (engine/event.c, engine/uring_fd.c, engine/uring_direct.c), chosen once
 * by listener.c (start_engine) and never asked which it is. The listener
 * is alive for every op. "The lock" is the listener's (held only with
 * EVSTEER_OPT_THREADSAFE); the group's is g->lock (group/group.h).
 */
struct evst_engine_ops {
	enum evsteer_engine kind; /* the path report's (evst_fill_path) */
	const char *name;     /* path name without BPF steering */
	const char *bpf_name; /* path name with it */
	const char *cbpf_name; /* path name with classic BPF steering */
	/*
	 * evst_listener_create(), the creating thread, before the listener
	 * is published (no lock needed, none taken): allocate the engine's
	 * state on lev->engine. 0, or -errno with lev->engine_reason saying
	 * why (listener.c then falls back to the event engine, except for a
	 * direct listener).
	 */
	int (*init)(struct evsteer_listener *lev);
	/* evsteer_listener_enable() and set_cb() arming it, any thread, the
	 * lock held: start delivering (enabled with a callback). 0 or -errno. */
	int (*enable)(struct evsteer_listener *lev);
	/* evsteer_listener_disable(), _free() and set_cb(NULL), any thread,
	 * the lock held: stop delivering; must not block (the loop thread
	 * may be waiting for the lock inside an engine callback). 0 or
	 * -errno. */
	int (*disable)(struct evsteer_listener *lev);
	/*
	 * evsteer_listener_free(), the freeing thread, without the lock,
	 * after the final disable: return only once no engine callback for
	 * lev runs on another thread and nothing in flight still uses the
	 * socket, so that dropping the last reference (and closing) is safe.
	 */
	void (*quiesce)(struct evsteer_listener *lev);
	/* The last reference dropped (evst_decref_and_unlock(), the lock
	 * held; any thread), or a failed creation (no lock): release the
	 * engine's state; what it accepted and did not deliver goes to the
	 * group (evst_group_handoff()) or is closed and counted. */
	void (*destroy)(struct evsteer_listener *lev);
	/*
	 * evsteer_listener_free() in a child of fork() on a listener the
	 * parent made (common/process.h), after the member's forget: release
	 * the engine's memory, its events (the child has re-initialised the
	 * base) and the child's copies of its descriptors. No lock (a
	 * parent's thread may have held it), no system call on anything the
	 * parent still uses: no ring request, no cancel, no reap.
	 */
	void (*forget)(struct evsteer_listener *lev);
	/*
	 * Optional (NULL: nothing to give). group/steal.c, a thief's loop thread,
	 * the group's lock held, lev's lock NOT held, lev live (a stalled
	 * worker): hand over one connection the engine accepted but has not
	 * delivered, or -1.
	 */
	int (*steal)(struct evsteer_listener *lev);
	/*
	 * Optional (NULL: takes nothing). group/steal.c, the thread of a leaving
	 * sibling's destroy (its lock held, not lev's), the group's lock
	 * held, lev live: take n connections the sibling had accepted and
	 * not delivered, and deliver them from lev's own loop. Returns how
	 * many it took (the caller closes the rest).
	 */
	unsigned int (*adopt)(struct evsteer_listener *lev,
			      const struct evst_conn *c, unsigned int n);
	/*
	 * Optional (NULL: cannot). group/steal.c, the loop thread of lev, lev's
	 * lock and the group's held: take up to max connections from a
	 * stalled sibling (victim, when it is a listener of this process:
	 * what its ring already accepted) and from its listening socket
	 * into lev's own delivery (a direct listener: into its own table).
	 * Returns how many it took, or -1 when it cannot.
	 */
	int (*steal_from)(struct evsteer_listener *lev,
			  struct evsteer_listener *victim, int sock_fd,
			  unsigned int max);
	/*
	 * Optional, for the stall watch (group/member.c, when lev goes live, the
	 * lock held): a descriptor that turns readable (an edge) when the
	 * engine has connections the loop has not taken yet (io_uring: the
	 * ring's eventfd), besides the listening socket; -1.
	 */
	int (*signal_fd)(struct evsteer_listener *lev);
};

struct evst_counters {
	atomic_uint_fast64_t accepted;
	atomic_uint_fast64_t wakeups;
	atomic_uint_fast64_t capped_wakeups;
	atomic_uint_fast64_t accept_errors;
	atomic_uint_fast64_t exhausted_episodes;
	atomic_uint_fast64_t exhausted_retries;
	atomic_uint_fast64_t closed_on_free;
	atomic_int_fast64_t held; /* a gauge */
	atomic_uint_fast64_t table_full;
	atomic_uint_fast64_t rearms;
	atomic_uint_fast64_t handed_off;
};

#define evst_count(lev, field) \
	atomic_fetch_add_explicit(&(lev)->counters.field, 1, memory_order_relaxed)

/*
 * The user's connection callback. A listener delivers fds or, made by
 * evsteer_listener_new_bind_direct(), direct slots (then direct_table is
 * not 0) for its whole life: the tag says which member is the callback.
 */
enum evst_cb_kind { EVST_CB_FD, EVST_CB_DIRECT };
struct evst_user_cb {
	enum evst_cb_kind kind;
	union {
		evsteer_accept_cb fd;       /* evst_deliver() */
		evsteer_direct_cb direct;   /* evst_deliver_direct() */
	};
};

struct evsteer_listener {
	const struct evst_engine_ops *ops;
	void *engine;
	const char *engine_reason; /* why not io_uring ("" if it is) */
	unsigned int direct_table; /* direct listener: fixed-table size; else 0 */
	struct event_base *base;
	int fd;
	unsigned int flags;
	int accept4_flags;
	unsigned int max_accepts; /* the option; 0: evst_accept_cap */
	unsigned int batch; /* a member's cap: 1, doubled under a backlog */
	unsigned int backoff_max_ms;
	int defer_after_block; /* TCP_DEFER_ACCEPT seconds after a block; 0 */
	unsigned int gen; /* made in this process generation (fork) */

	/* Everything below is guarded by lock (with EVSTEER_OPT_THREADSAFE). */
	pthread_mutex_t lock;
	bool locking;
	int refcnt;
	bool enabled;   /* what the user asked for */
	bool freeing;   /* evsteer_listener_free() has been called */
	bool in_episode; /* a run of failed accepts; errcb told once */
	unsigned int backoff_ms; /* current back-off within the episode */
	struct evst_user_cb cb; /* the kind is fixed at creation */
	evsteer_error_cb errcb;
	void *arg;

	struct evst_counters counters;

	/* Worker-group membership (group/, through `member`); NULL: a lone
	 * listener. */
	const struct evst_member_ops *member;
	struct evsteer_group *group;
	unsigned int slot;
	struct evst_worker *ws;     /* this socket's shared counters */
	struct evst_member_state *ms; /* the member's own (group/member.c) */
};

static inline void evst_lock(struct evsteer_listener *lev)
{
	if (lev->locking)
		pthread_mutex_lock(&lev->lock);
}

static inline void evst_unlock(struct evsteer_listener *lev)
{
	if (lev->locking)
		pthread_mutex_unlock(&lev->lock);
}

/* listener.c: what every engine shares. */

/* Drop one reference, destroying lev at zero; the lock is released. */
EVST_HIDDEN void evst_decref_and_unlock(struct evsteer_listener *lev);

/*
 * Hand one accepted connection to the user callback. Called with the lock
 * held and a reference taken; releases the lock around the callback. Returns
 * true when delivery may go on, false when the callback disabled or freed the
 * listener (or there is no callback any more).
 */
EVST_HIDDEN bool evst_deliver(struct evsteer_listener *lev, int fd,
			      struct sockaddr *sa, socklen_t len);

/* The listener has a callback of its kind. Lock held. */
static inline bool evst_has_cb(const struct evsteer_listener *lev)
{
	return lev->cb.kind == EVST_CB_DIRECT ? lev->cb.direct != NULL :
						lev->cb.fd != NULL;
}

/* True while the listener should be delivering. Lock held. */
static inline bool evst_active(const struct evsteer_listener *lev)
{
	return lev->enabled && evst_has_cb(lev) && !lev->freeing;
}

/* Classify an accept errno. */
enum evst_accept_err {
	EVST_ERR_AGAIN,     /* nothing queued: stop the loop */
	EVST_ERR_RETRY,     /* EINTR, ECONNABORTED: try the next one */
	EVST_ERR_EXHAUSTED, /* out of descriptors or memory: back off */
	EVST_ERR_OTHER,     /* report and back off */
};
EVST_HIDDEN enum evst_accept_err evst_classify_accept_errno(int err);

/*
 * A failed accept (not AGAIN/RETRY): count it, start or continue an episode,
 * and tell the error callback (or log) once per episode with errno = err.
 * Lock held and reference taken; the lock is released around the callback.
 */
EVST_HIDDEN void evst_report_accept_error(struct evsteer_listener *lev, int err);
/* An accept went through (or found the queue empty): the episode is over. */
EVST_HIDDEN void evst_end_episode(struct evsteer_listener *lev);
/* Double the episode's back-off (1 ms first), capped at backoff_max_ms. */
EVST_HIDDEN unsigned int evst_next_backoff_ms(struct evsteer_listener *lev);

/* sockutil.c */
EVST_HIDDEN int evst_validate_sockaddr(const struct sockaddr *sa, socklen_t len);
/* SO_KEEPALIVE and the options the LEV_OPT flags ask for. 0 or -errno. */
EVST_HIDDEN int evst_apply_sockopts(int fd, unsigned int flags);
/* SO_COOKIE / SO_NETNS_COOKIE of a socket, 0 if unknown. */
EVST_HIDDEN uint64_t evst_sock_cookie(int fd);
EVST_HIDDEN uint64_t evst_netns_cookie(int fd);
struct evst_sock_info {
	uint64_t cookie, inode;
	uint32_t uid;
};
EVST_HIDDEN int evst_list_listeners(const struct sockaddr *sa,
				    struct evst_sock_info *out, int max);
/* The cookies of the handshakes in flight (request sockets) to sa's port,
 * any listener's: how many (maybe more than max) or -errno. */
EVST_HIDDEN int evst_list_handshakes(const struct sockaddr *sa, uint64_t *out,
				     int max);
/*
 * The listen order: held around a listen() and the claim of that socket
 * by a steering group, and around the close of a group's socket. Classic
 * BPF steering (steering/cbpf.c) indexes the kernel's array of a port's
 * sockets, appended at listen() and reordered at each close; with this
 * lock no close falls between a listen and its claim, so the order it
 * keeps is the kernel's. Outermost of evsteer's locks (common/process.c
 * takes it first at fork).
 */
EVST_HIDDEN void evst_listen_order_lock(void);
/* Without waiting (a caller holding later locks); true when taken. */
EVST_HIDDEN bool evst_listen_order_trylock(void);
EVST_HIDDEN void evst_listen_order_unlock(void);

/*
 * What a listener knows of its group: this member interface, which group/member.c
 * implements. listener.c never calls group/ by name, so the layers read one way:
 *  create.c (the public constructors) -> group/ -> listener.c -> engine/.
 */
struct evst_steering {
	enum evsteer_steering steering;
	const char *reason; /* "" with BPF */
	enum evsteer_policy policy;
};
/* member->takers: what a member leaves queued, who takes it */
enum evst_takers {
	EVST_TAKERS_NONE,    /* nobody (alone here, or no stall detection):
				the pass drains, as libevent's does */
	EVST_TAKERS,         /* a sibling: one per pass, doubled while a
				backlog stands */
	EVST_TAKERS_BLOCKED, /* and lev's loop blocked lately: one per pass */
};
struct evst_member_ops {
	/* At creation, before the engine starts (ctx: the caller's). 0 with
	 * lev->member set, or 0 with the listener left alone, or -errno. */
	int (*join)(struct evsteer_listener *lev, void *ctx,
		    const struct evsteer_listener_opts *opts);
	/* The engine took a connection off lev's socket (evst_took). */
	void (*took)(struct evsteer_listener *lev, uint64_t now);
	/* lev's loop ran a pass of its engine (evst_loop_ran). */
	void (*alive)(struct evsteer_listener *lev, uint64_t now);
	/* The engine found nothing queued for lev (evst_queue_empty). */
	void (*empty)(struct evsteer_listener *lev, uint64_t now);
	/* Just after a take: the steering program's count says nothing is
	 * left queued on lev's socket (evst_queue_counted_empty). */
	bool (*counted_empty)(struct evsteer_listener *lev);
	/* Lock held, reference taken: a wake-up; look at stalled siblings
	 * (evst_group_steal). */
	void (*steal)(struct evsteer_listener *lev);
	/* No lock: while lev's loop is busy, is what stays queued on its
	 * socket seen as pending and taken by a sibling (stall detection
	 * on)? Fixed once the member has joined; engines ask at creation.
	 * (evst_queue_watched) */
	bool (*watched)(const struct evsteer_listener *lev);
	/* No lock, on the loop thread, on every pass: would a sibling of
	 * this process take what lev leaves queued while its loop is busy
	 * (watched, and another socket of the group here), and has lev's
	 * loop blocked lately? (evst_accept_cap) */
	enum evst_takers (*takers)(const struct evsteer_listener *lev,
				   uint64_t now);
	/* Loop thread, lev live: how many events of lev's loop are the
	 * member's own (evst_accept_alone). */
	unsigned int (*base_events)(const struct evsteer_listener *lev);
	/* lev's lock held: give what lev's engine accepted and never
	 * delivered to live siblings (evst_group_handoff); how many taken. */
	unsigned int (*handoff)(struct evsteer_listener *lev,
				const struct evst_conn *c, unsigned int n);
	/* Last reference (or a failed creation): leave; close_fd false keeps
	 * the socket open whoever owns it. */
	void (*leave)(struct evsteer_listener *lev, bool close_fd);
	/* The listener was inherited over fork and is freed in the child
	 * (engine ops' forget says what may be touched): drop it from the
	 * group in memory only, closing the child's copy of the socket as
	 * leave would. The group's slot stays the parent's. */
	void (*forget)(struct evsteer_listener *lev);
	/* Listener lock held: steer to this worker only while it delivers. */
	void (*sync_live)(struct evsteer_listener *lev);
	/* Listener lock held, must not block: out of the steering table, no
	 * stealing timer (disable, free). */
	void (*stop)(struct evsteer_listener *lev);
	/* No lock, after a final stop: return once no member callback for
	 * lev runs on another thread. */
	void (*quiesce)(struct evsteer_listener *lev);
	void (*steering)(const struct evsteer_listener *lev,
			 struct evst_steering *out);
};

/* listener.c */
/*
 * A listener on fd, delivering with cb: an fd listener (direct_table 0),
 * or a direct one (cb.kind EVST_CB_DIRECT and a table size; EINVAL when
 * the two disagree).
 */
EVST_HIDDEN struct evsteer_listener *
evst_listener_create_cb(struct event_base *base, struct evst_user_cb cb,
			void *arg, unsigned int flags, int backlog, int fd,
			const struct evsteer_listener_opts *opts,
			const struct evst_member_ops *member, void *member_ctx,
			unsigned int direct_table);
/* evst_listener_create_cb() for an fd listener's callback: direct_table
 * is 0, as group/ passes it (the parameter goes with that call). */
EVST_HIDDEN struct evsteer_listener *
evst_listener_create(struct event_base *base, evsteer_accept_cb cb, void *arg,
		     unsigned int flags, int backlog, int fd,
		     const struct evsteer_listener_opts *opts,
		     const struct evst_member_ops *member, void *member_ctx,
		     unsigned int direct_table);
/* evst_deliver() for a direct listener: the slot on ring. */
EVST_HIDDEN bool evst_deliver_direct(struct evsteer_listener *lev,
				     struct evsteer_uring *ring, int slot);
/* st NULL: a lone listener. */
EVST_HIDDEN int evst_fill_path(const struct evst_steering *st,
			       const struct evst_engine_ops *ops,
			       const char *engine_reason, struct evsteer_path *out);

/* listener.c: what the engines call for a listener, passed on to its
 * group through the member interface. An engine took one connection off
 * lev's socket: the episode is over and a member counts it (dequeued,
 * heartbeat, accepted). */
EVST_HIDDEN void evst_took(struct evsteer_listener *lev, uint64_t now);
/* A pass of the engine ran (the loop is alive), with nothing to say of
 * the queue. */
EVST_HIDDEN void evst_loop_ran(struct evsteer_listener *lev, uint64_t now);
/* A pass of the engine found nothing queued on lev's socket (accept4
 * said EAGAIN; every io_uring accept armed and nothing completed). */
EVST_HIDDEN void evst_queue_empty(struct evsteer_listener *lev, uint64_t now);
/*
 * After a take: true when the steering program's count says nothing more
 * is queued on lev's socket, so the accept4() that would find EAGAIN can
 * be saved. Only for a level-triggered socket: the count can miss a
 * connection (one the kernel migrated here from a closed sibling), which
 * the socket's next readiness then brings. False whenever unsure.
 */
EVST_HIDDEN bool evst_queue_counted_empty(struct evsteer_listener *lev);
/* A wake-up: a member looks at stalled siblings. */
EVST_HIDDEN void evst_group_steal(struct evsteer_listener *lev);
/* No lock: connections left queued on lev's socket while its loop is busy
 * are taken by a sibling (a member with stall detection on). */
EVST_HIDDEN bool evst_queue_watched(const struct evsteer_listener *lev);
/* Lock held: accepts this pass (at now) may take: the option, else a
 * member's batch (1 unless a backlog stands; 1 for a while after its loop
 * blocked) or 128 (listener.c). The engine then
 * says how the pass ended: it stopped at the cap with more queued (more),
 * or found nothing more (drained). */
EVST_HIDDEN unsigned int evst_accept_cap(struct evsteer_listener *lev,
					 uint64_t now);
/* Lock held, loop thread, a member's pass at its cap after a delivery:
 * does lev's loop hold no event but the engine's ev (its socket's) and the
 * member's? Then the pass may take one more (listener.c). */
EVST_HIDDEN bool evst_accept_alone(struct evsteer_listener *lev,
				   const struct event *ev);
EVST_HIDDEN void evst_accept_more(struct evsteer_listener *lev);
EVST_HIDDEN void evst_accept_drained(struct evsteer_listener *lev);
/*
 * lev is leaving with n connections its engine accepted and never
 * delivered: its member gives them to live siblings of this process that
 * can take them (in order, spread over them). Returns how many were taken;
 * the caller closes the rest. lev's lock held; takes the group's.
 */
EVST_HIDDEN unsigned int evst_group_handoff(struct evsteer_listener *lev,
					    const struct evst_conn *c,
					    unsigned int n);

/*
 * listener.c: what the member layer (group/) may ask of a listener's
 * engine; group code never calls an engine op itself. Locks as the ops
 * above say (take_held, adopt: any thread, the group's lock held;
 * take_from: lev's loop thread, the group's lock held).
 */
/* One connection lev's engine accepted and has not delivered, or -1. */
EVST_HIDDEN int evst_listener_take_held(struct evsteer_listener *lev);
/* lev (direct) takes up to max of victim's connections into its own
 * table; how many, or -1 when it cannot. */
EVST_HIDDEN int evst_listener_take_from(struct evsteer_listener *lev,
					struct evsteer_listener *victim,
					int sock_fd, unsigned int max);
/* `to` can take what `from`'s engine accepted (same kind of engine). */
EVST_HIDDEN bool evst_listener_adopts(const struct evsteer_listener *to,
				      const struct evsteer_listener *from);
EVST_HIDDEN unsigned int evst_listener_adopt(struct evsteer_listener *lev,
					     const struct evst_conn *c,
					     unsigned int n);
/* accept4() on sock_fd with the flags lev's connections get. */
EVST_HIDDEN int evst_listener_accept_on(const struct evsteer_listener *lev,
					int sock_fd,
					struct sockaddr_storage *ss,
					socklen_t *len);
EVST_HIDDEN bool evst_listener_is_direct(const struct evsteer_listener *lev);
/* Accepted by the engine and not yet delivered. */
EVST_HIDDEN uint64_t evst_listener_held(const struct evsteer_listener *lev);
/* The engine's signal_fd op, or -1. */
EVST_HIDDEN int evst_listener_signal_fd(struct evsteer_listener *lev);

/* group/member.c: the member interface. */
extern EVST_HIDDEN const struct evst_member_ops evst_group_member;
struct evst_attach {
	struct evsteer_group *g;
	unsigned int slot;
};
#define EVST_SLOT_CLAIMED ((struct evsteer_listener *)1)

/* The clock of every heartbeat, stall and back-off: CLOCK_MONOTONIC, ns
 * (the program compares it with bpf_ktime_get_ns(), the same clock). */
static inline uint64_t evst_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* Called from a callback of base's loop: true when no other callback is
 * active in this pass (engine/event.c). A member that accepts last in a
 * pass (evst_queue_watched) then has nothing to wait behind, and accepts
 * at once instead of through an event made active for it. */
EVST_HIDDEN bool evst_pass_alone(struct event_base *base);

/* A group of existing listening sockets (socket activation); it owns them
 * once made. NULL with errno, the sockets left open, on failure. */
EVST_HIDDEN struct evsteer_group *
evst_group_adopt(const int *fds, unsigned int n, unsigned int flags,
		 const struct evsteer_group_opts *opts);

/* engine/event.c, engine/uring_fd.c, engine/uring_direct.c */
extern EVST_HIDDEN const struct evst_engine_ops evst_event_engine;
extern EVST_HIDDEN const struct evst_engine_ops evst_uring_engine;
extern EVST_HIDDEN const struct evst_engine_ops evst_uring_direct_engine;

/*
 * Options struct helpers, libbpf's rule (OPTS_VALID): every byte of the
 * caller's struct past the end of the last field this library knows, up to
 * the caller's sz, is zero. Past the end of the last *field*, not past
 * sizeof: a field a newer header adds in today's tail padding keeps sizeof,
 * and an older library must refuse it set rather than ignore it.
 */
#define evst_offsetofend(type, field)                                          \
	(offsetof(type, field) + sizeof(((type *)0)->field))
/* false (after a warning naming the struct) if opts is not acceptable. */
EVST_HIDDEN bool evst_opts_valid(const void *opts, size_t known_end,
				 const char *type_name, const char *last_field);
#define EVST_OPTS_VALID(opts, type, last_field)                                \
	evst_opts_valid((opts), evst_offsetofend(type, last_field), #type,     \
			#last_field)
/* The last field of each input options struct: move these, and the one
 * evsteer.h's *_OPTS() macro names, when a field is added (the abi test
 * flags the struct change). */
#define EVST_LISTENER_OPTS_VALID(opts)                                         \
	EVST_OPTS_VALID(opts, struct evsteer_listener_opts,                    \
			defer_accept_after_block)
#define EVST_GROUP_OPTS_VALID(opts)                                            \
	EVST_OPTS_VALID(opts, struct evsteer_group_opts,                       \
			defer_accept_after_block)
/* A field, or def when it is zero or beyond the caller's sz. */
#define EVST_OPT(opts, type, field, def)                                      \
	(((opts) && (opts)->sz >= evst_offsetofend(type, field) &&             \
	  (opts)->field) ? (opts)->field : (def))
/*
 * Output structs (path, stats): write the fields we know that fit in the
 * caller's sz, and nothing else: not our tail padding, where a newer
 * caller's field may live (it keeps the value the caller gave it, 0 with
 * the *_OPTS() macros), nor anything past it.
 */
#define EVST_COPY_OUT(out, src, type, last_field)                              \
	memcpy((out), (src),                                                   \
	       (out)->sz < evst_offsetofend(type, last_field) ?                \
		       (out)->sz :                                             \
		       evst_offsetofend(type, last_field))
/* The last field of each output struct (as above: move them with it). */
#define EVST_PATH_COPY_OUT(out, src)                                           \
	EVST_COPY_OUT(out, src, struct evsteer_path, policy)
#define EVST_LISTENER_STATS_COPY_OUT(out, src)                                 \
	EVST_COPY_OUT(out, src, struct evsteer_listener_stats, handed_off)
#define EVST_WORKER_STATS_COPY_OUT(out, src)                                   \
	EVST_COPY_OUT(out, src, struct evsteer_worker_stats, wait_untimed)

#endif /* EVSTEER_INTERNAL_H */

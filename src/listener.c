/* SPDX-License-Identifier: MIT */
/*
 * The public listener object: refcount, optional lock, enabled state, user
 * callbacks, and an accept engine behind an ops table (libevent's listener.c
 * shape). The engine never calls user code directly: it goes through
 * evst_deliver() and evst_report_accept_error(), which drop the lock around
 * the callback while the engine's reference keeps the listener alive.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "internal.h"
#include "common/env.h"
#include "common/process.h"

static const char *const steering_reason_none =
	"single socket: no worker group to steer across";
static const char *path_name(const struct evst_engine_ops *ops,
			     enum evsteer_steering st)
{
	return st == EVSTEER_STEER_BPF	? ops->bpf_name :
	       st == EVSTEER_STEER_CBPF ? ops->cbpf_name :
					  ops->name;
}

/*
 * Pick and start the engine. io_uring when asked for; in auto mode the
 * event engine, with or without BPF steering: accept4() cost at most what
 * the ring's accept cost in CPU per connection at 27 of 30 points (1 to 64
 * connections in flight, with and without work) of three side-by-side
 * sets on kernel 6.18, the other three within their spread
 * (bench/JOURNAL.md, "The engine auto picks"; the design card's rule was
 * io_uring whenever BPF steers). The event engine too when the ring
 * cannot be had, with the reason recorded.
 */
static int start_engine(struct evsteer_listener *lev,
			const struct evsteer_listener_opts *opts)
{
	enum evsteer_accept_mode mode = evst_env_accept(EVST_OPT(
		opts, struct evsteer_listener_opts, accept, EVSTEER_ACCEPT_AUTO));

	if (lev->direct_table) {
#if EVSTEER_HAVE_LIBURING
		lev->ops = &evst_uring_direct_engine;
		lev->engine_reason = "";
		int err = lev->ops->init(lev);
		if (err < 0)
			evst_warn("direct listener: %s", lev->engine_reason);
		return err;
#else
		evst_warn("direct listener: io_uring engine not built");
		return -EOPNOTSUPP;
#endif
	}

	if (mode == EVSTEER_ACCEPT_EVENT) {
		lev->engine_reason = "accept: event (EVSTEER_ACCEPT=event or the option)";
	} else if (mode == EVSTEER_ACCEPT_AUTO) {
		lev->engine_reason =
			"accept: auto mode accepts with accept4(), which costs "
			"less CPU per connection than io_uring's accept "
			"(EVSTEER_ACCEPT=uring to use io_uring)";
	} else {
#if EVSTEER_HAVE_LIBURING
		lev->ops = &evst_uring_engine;
		lev->engine_reason = "";
		int err = lev->ops->init(lev);
		if (!err)
			return 0;
		/* init left the reason in lev->engine_reason */
		evst_debug("listener fd %d: %s", lev->fd, lev->engine_reason);
#else
		lev->engine_reason = "accept: io_uring engine not built (meson -During)";
#endif
	}
	lev->ops = &evst_event_engine;
	return lev->ops->init(lev);
}

static void member_sync(struct evsteer_listener *lev)
{
	if (lev->member)
		lev->member->sync_live(lev);
}

static void member_stop(struct evsteer_listener *lev)
{
	if (lev->member)
		lev->member->stop(lev);
}


/* Everything after the argument checks: shared by the constructors
 * (create.c) and evsteer_group_attach(); member joins a group. Longer
 * than 80 lines: the steps of a creation in their order (socket, object,
 * lock, group, engine, enable), undone by one goto ladder. */
struct evsteer_listener *
evst_listener_create_cb(struct event_base *base, struct evst_user_cb cb,
			void *arg, unsigned int flags, int backlog, int fd,
			const struct evsteer_listener_opts *opts,
			const struct evst_member_ops *member, void *member_ctx,
			unsigned int direct_table)
{
	int err;

	if ((cb.kind == EVST_CB_DIRECT) != (direct_table != 0))
		return evst_fail_null(EINVAL);

	/* TCP_DEFER_ACCEPT after a block is a TCP socket's option */
	int defer = EVST_OPT(opts, struct evsteer_listener_opts,
			     defer_accept_after_block, 0);
	int proto = 0;
	socklen_t plen = sizeof(proto);
	if (defer && (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) < 0 ||
		      proto != IPPROTO_TCP)) {
		evst_warn("listener fd %d: defer_accept_after_block: not a TCP "
			  "socket", fd);
		return evst_fail_null(EINVAL);
	}
	if (defer && !member)
		evst_info("listener fd %d: defer_accept_after_block: not in a "
			  "worker group, where blocks are seen: it never defers",
			  fd);

	/* The accept loop drains until EAGAIN: a blocking socket would hang
	 * the whole event loop on the last accept. */
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return NULL;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return NULL;

	struct evsteer_listener *lev = calloc(1, sizeof(*lev));
	if (!lev)
		return evst_fail_null(ENOMEM);
	lev->base = base;
	lev->fd = fd;
	lev->flags = flags;
	lev->cb = cb;
	lev->arg = arg;
	lev->refcnt = 1;
	lev->gen = evst_process_gen();
	lev->accept4_flags =
		(flags & EVSTEER_OPT_LEAVE_SOCKETS_BLOCKING ? 0 : SOCK_NONBLOCK) |
		(flags & EVSTEER_OPT_CLOSE_ON_EXEC ? SOCK_CLOEXEC : 0);
	/* 0: the default, decided on each pass (evst_accept_cap) */
	lev->max_accepts = evst_env_max_accepts(EVST_OPT(
		opts, struct evsteer_listener_opts, max_accepts_per_wakeup, 0));
	lev->batch = 1;
	lev->backoff_max_ms = EVST_OPT(opts, struct evsteer_listener_opts,
				       backoff_max_ms,
				       EVSTEER_DEFAULT_BACKOFF_MAX_MS);
	lev->defer_after_block = defer;
	lev->ops = &evst_event_engine;
	lev->direct_table = direct_table;
	if (direct_table) /* the kernel rejects CLOEXEC for direct accept */
		lev->accept4_flags &= ~SOCK_CLOEXEC;

	if (flags & EVSTEER_OPT_THREADSAFE) {
		pthread_mutexattr_t attr;
		pthread_mutexattr_init(&attr);
		pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
		err = pthread_mutex_init(&lev->lock, &attr);
		pthread_mutexattr_destroy(&attr);
		if (err) {
			free(lev);
			return evst_fail_null(err);
		}
		lev->locking = true;
	}

	/* listen() and the join in one step of the listen order: classic BPF
	 * steering knows which index the kernel gave the socket only if no
	 * socket of the group closes in between (sockutil.c) */
	if (member)
		evst_listen_order_lock();
	err = backlog != 0 &&
			      listen(fd, backlog > 0 ? backlog :
						       EVSTEER_DEFAULT_BACKLOG) < 0 ?
		      -errno :
		      0;
	if (!err && member)
		err = member->join(lev, member_ctx, opts);
	if (member)
		evst_listen_order_unlock();
	if (err < 0)
		goto err_lock;

	err = start_engine(lev, opts);
	if (err < 0)
		goto err_group;

	if (!(flags & EVSTEER_OPT_DISABLED)) {
		err = evsteer_listener_enable(lev);
		if (err < 0)
			goto err_engine;
	}
	EVSTEER_PATH_OPTS(path);
	evsteer_listener_get_path(lev, &path);
	evst_info("listener fd %d: path %s (%s%s%s)", fd, path.name,
		  *path.steering_reason ? path.steering_reason : "bpf steering",
		  *path.engine_reason ? "; " : "", path.engine_reason);
	return lev;

err_engine:
	lev->ops->destroy(lev);
err_group:
	if (lev->member)
		lev->member->leave(lev, false);
err_lock:
	if (lev->locking)
		pthread_mutex_destroy(&lev->lock);
	free(lev);
	return evst_fail_null(-err);
}

struct evsteer_listener *
evst_listener_create(struct event_base *base, evsteer_accept_cb cb, void *arg,
		     unsigned int flags, int backlog, int fd,
		     const struct evsteer_listener_opts *opts,
		     const struct evst_member_ops *member, void *member_ctx,
		     unsigned int direct_table)
{
	struct evst_user_cb ucb = {.kind = EVST_CB_FD, .fd = cb};
	return evst_listener_create_cb(base, ucb, arg, flags, backlog, fd, opts,
				       member, member_ctx, direct_table);
}

void evst_decref_and_unlock(struct evsteer_listener *lev)
{
	if (--lev->refcnt > 0) {
		evst_unlock(lev);
		return;
	}
	lev->ops->destroy(lev);
	if (lev->member)
		lev->member->leave(lev, true); /* closes as the group says */
	else if (lev->flags & EVSTEER_OPT_CLOSE_ON_FREE)
		close(lev->fd);
	evst_unlock(lev);
	if (lev->locking)
		pthread_mutex_destroy(&lev->lock);
	free(lev);
}

/*
 * Lock held. evsteer_listener_set_cb() is typed for fd listeners only, and
 * a direct listener has no setter of its own. On a direct listener the
 * pointer is stored as its direct callback and called as one, as it always
 * was: an evsteer_direct_cb the caller cast to evsteer_accept_cb works (a
 * new argument, or re-arming after NULL); a real accept callback would be
 * called with a direct callback's arguments. NULL disarms either kind.
 */
static void set_user_cb(struct evsteer_listener *lev, evsteer_accept_cb cb)
{
	if (lev->cb.kind == EVST_CB_DIRECT)
		lev->cb.direct = (evsteer_direct_cb)(void (*)(void))cb;
	else
		lev->cb.fd = cb;
}

/*
 * A child of fork() frees a listener its parent made (common/process.h).
 * The lock is not taken (a thread of the parent may have held it; that
 * thread does not exist here) nor is the reference count looked at (a
 * callback of the parent's may have held one). What stays the parent's:
 * the socket, the group's slot and the program's entry for it, the ring's
 * requests. What goes: memory, events, the child's copies of descriptors.
 */
static void listener_forget(struct evsteer_listener *lev)
{
	evst_debug("listener fd %d: freed in a child of fork(); the parent "
		   "keeps serving it",
		   lev->fd);
	if (lev->engine)
		lev->ops->forget(lev);
	if (lev->member)
		lev->member->forget(lev);
	else if (lev->flags & EVSTEER_OPT_CLOSE_ON_FREE)
		close(lev->fd);
	free(lev);
}

void evsteer_listener_free(struct evsteer_listener *lev)
{
	if (!lev)
		return;
	if (evst_inherited(lev->gen)) {
		listener_forget(lev);
		return;
	}
	evst_lock(lev);
	if (lev->freeing) {
		evst_unlock(lev);
		evst_warn("evsteer_listener_free: listener freed twice");
		return;
	}
	lev->freeing = true;
	lev->enabled = false;
	set_user_cb(lev, NULL);
	lev->errcb = NULL;
	lev->ops->disable(lev);
	member_stop(lev);
	evst_unlock(lev);

	/*
	 * libevent issue #1224: freeing from another thread while the accept
	 * callback runs deadlocked, because event_del() waited for the callback
	 * with the listener lock held while the callback waited for that lock.
	 * Here the wait happens without the lock; the callback sees `freeing`,
	 * stops, and drops its reference.
	 */
	lev->ops->quiesce(lev);
	if (lev->member)
		lev->member->quiesce(lev);

	evst_lock(lev);
	evst_decref_and_unlock(lev);
}

int evsteer_listener_enable(struct evsteer_listener *lev)
{
	if (!lev)
		return evst_fail(EINVAL);
	EVST_REFUSE_INHERITED(lev->gen, -EINVAL);
	int r = 0;
	evst_lock(lev);
	if (lev->freeing) {
		r = -EINVAL;
	} else {
		lev->enabled = true;
		if (evst_has_cb(lev))
			r = lev->ops->enable(lev);
		member_sync(lev);
	}
	evst_unlock(lev);
	return r < 0 ? evst_fail(-r) : 0;
}

int evsteer_listener_disable(struct evsteer_listener *lev)
{
	if (!lev)
		return evst_fail(EINVAL);
	EVST_REFUSE_INHERITED(lev->gen, -EINVAL);
	evst_lock(lev);
	lev->enabled = false;
	int r = lev->ops->disable(lev);
	member_stop(lev);
	evst_unlock(lev);
	return r < 0 ? evst_fail(-r) : 0;
}

void evsteer_listener_set_cb(struct evsteer_listener *lev, evsteer_accept_cb cb,
			     void *arg)
{
	if (!lev)
		return;
	EVST_REFUSE_INHERITED(lev->gen, );
	evst_lock(lev);
	if (!lev->freeing) {
		bool had = evst_has_cb(lev);
		set_user_cb(lev, cb);
		lev->arg = arg;
		/*
		 * libevent keeps a listener armed when cb becomes NULL and then
		 * accepts-and-closes connections; we disarm instead so nothing
		 * queued is lost.
		 */
		if (lev->enabled && !had && cb) {
			lev->ops->enable(lev);
			member_sync(lev);
		} else if (lev->enabled && had && !cb) {
			lev->ops->disable(lev);
			member_stop(lev);
		}
	}
	evst_unlock(lev);
}

void evsteer_listener_set_error_cb(struct evsteer_listener *lev,
				   evsteer_error_cb errcb)
{
	if (!lev)
		return;
	evst_lock(lev);
	if (!lev->freeing)
		lev->errcb = errcb;
	evst_unlock(lev);
}

struct event_base *evsteer_listener_get_base(const struct evsteer_listener *lev)
{
	return lev ? lev->base : evst_fail_null(EINVAL);
}

int evsteer_listener_get_fd(const struct evsteer_listener *lev)
{
	if (!lev) {
		errno = EINVAL;
		return -1;
	}
	return lev->fd;
}

int evst_fill_path(const struct evst_steering *st,
		   const struct evst_engine_ops *ops, const char *engine_reason,
		   struct evsteer_path *out)
{
	bool bpf = st && st->steering == EVSTEER_STEER_BPF;
	if (!ops) /* a group: its listeners each report their engine */
		ops = &evst_event_engine;
	struct evsteer_path p = {
		.sz = out->sz,
		.steering = st ? st->steering : EVSTEER_STEER_NONE,
		.engine = ops->kind,
		.name = path_name(ops, st ? st->steering : EVSTEER_STEER_NONE),
		.steering_reason = bpf ? "" :
				   st  ? st->reason :
					 steering_reason_none,
		.engine_reason = engine_reason ? engine_reason : "",
		.policy = st ? st->policy : EVSTEER_POLICY_LEAST_PENDING,
	};
	EVST_PATH_COPY_OUT(out, &p);
	return 0;
}

int evsteer_listener_get_path(const struct evsteer_listener *lev,
			      struct evsteer_path *out)
{
	if (!lev || !out || out->sz < sizeof(out->sz))
		return evst_fail(EINVAL);
	struct evst_steering st;
	if (lev->member)
		lev->member->steering(lev, &st);
	return evst_fill_path(lev->member ? &st : NULL, lev->ops,
			      lev->engine_reason, out);
}

const char *evsteer_listener_path_name(const struct evsteer_listener *lev)
{
	if (!lev)
		return "";
	struct evst_steering st = {.steering = EVSTEER_STEER_NONE};
	if (lev->member)
		lev->member->steering(lev, &st);
	return path_name(lev->ops, st.steering);
}

int evsteer_listener_get_stats(const struct evsteer_listener *lev,
			       struct evsteer_listener_stats *out)
{
	if (!lev || !out || out->sz < sizeof(out->sz))
		return evst_fail(EINVAL);
#define LOAD(f) atomic_load_explicit(&lev->counters.f, memory_order_relaxed)
	struct evsteer_listener_stats s = {
		.sz = out->sz,
		.accepted = LOAD(accepted),
		.wakeups = LOAD(wakeups),
		.capped_wakeups = LOAD(capped_wakeups),
		.accept_errors = LOAD(accept_errors),
		.exhausted_episodes = LOAD(exhausted_episodes),
		.exhausted_retries = LOAD(exhausted_retries),
		.closed_on_free = LOAD(closed_on_free),
		.held = (uint64_t)LOAD(held),
		.table_full = LOAD(table_full),
		.rearms = LOAD(rearms),
		.handed_off = LOAD(handed_off),
	};
#undef LOAD
	EVST_LISTENER_STATS_COPY_OUT(out, &s);
	return 0;
}

void evst_took(struct evsteer_listener *lev, uint64_t now)
{
	evst_end_episode(lev);
	if (lev->member)
		lev->member->took(lev, now);
}

/* ---- what the member layer asks of a listener's engine (group/ never
 * calls an engine op itself: internal.h, "downcalls") */

int evst_listener_take_held(struct evsteer_listener *lev)
{
	return lev->ops->steal ? lev->ops->steal(lev) : -1;
}

int evst_listener_take_from(struct evsteer_listener *lev,
			    struct evsteer_listener *victim, int sock_fd,
			    unsigned int max)
{
	return lev->ops->steal_from ?
		       lev->ops->steal_from(lev, victim, sock_fd, max) :
		       -1;
}

bool evst_listener_adopts(const struct evsteer_listener *to,
			  const struct evsteer_listener *from)
{
	/* fds to an fd engine, direct slots to a direct one */
	return to->ops->adopt && !to->direct_table == !from->direct_table;
}

unsigned int evst_listener_adopt(struct evsteer_listener *lev,
				 const struct evst_conn *c, unsigned int n)
{
	return lev->ops->adopt(lev, c, n);
}

int evst_listener_accept_on(const struct evsteer_listener *lev, int sock_fd,
			    struct sockaddr_storage *ss, socklen_t *len)
{
	*len = sizeof(*ss);
	return accept4(sock_fd, (struct sockaddr *)ss, len, lev->accept4_flags);
}

bool evst_listener_is_direct(const struct evsteer_listener *lev)
{
	return lev->direct_table != 0;
}

uint64_t evst_listener_held(const struct evsteer_listener *lev)
{
	int64_t h = atomic_load_explicit(&lev->counters.held,
					 memory_order_relaxed);
	return h > 0 ? (uint64_t)h : 0;
}

int evst_listener_signal_fd(struct evsteer_listener *lev)
{
	return lev->ops->signal_fd ? lev->ops->signal_fd(lev) : -1;
}

void evst_loop_ran(struct evsteer_listener *lev, uint64_t now)
{
	if (lev->member)
		lev->member->alive(lev, now);
}

void evst_queue_empty(struct evsteer_listener *lev, uint64_t now)
{
	if (lev->member)
		lev->member->empty(lev, now);
}

bool evst_queue_counted_empty(struct evsteer_listener *lev)
{
	return lev->member && lev->member->counted_empty(lev);
}

void evst_group_steal(struct evsteer_listener *lev)
{
	if (lev->member)
		lev->member->steal(lev);
}

bool evst_queue_watched(const struct evsteer_listener *lev)
{
	return lev->member && lev->member->watched(lev);
}

/*
 * The option's cap; by default, a member whose queue siblings of this
 * process take while its loop is busy accepts one connection per pass of
 * its loop (after the pass's other events: the engines). What it leaves
 * queued stays theirs to take if the next pass runs long, where a batch
 * taken at once would wait in the application's hands: an evhttp request
 * accepted along with one whose handler blocks. Under a standing backlog
 * one per pass would cost a poll of the loop per connection, so the cap
 * doubles with each pass that stops at it with more queued and falls back
 * to 1 when a pass finds the queue empty (evst_accept_more/_drained).
 * Except after its loop blocked (a sibling took its queue after a pass
 * of 10 ms or more: group/member.c): a program that blocked once likely
 * blocks again, so for five seconds the cap stays at one whatever stands
 * queued, and a poll per connection buys a shorter tail. Alone, a
 * listener drains what is queued in one pass, as libevent's does. A
 * member whose loop holds nothing else goes on past the cap (the event
 * engine: evst_accept_alone).
 */
unsigned int evst_accept_cap(struct evsteer_listener *lev, uint64_t now)
{
	if (lev->max_accepts)
		return lev->max_accepts;
	switch (lev->member ? lev->member->takers(lev, now) : EVST_TAKERS_NONE) {
	case EVST_TAKERS_BLOCKED:
		lev->batch = 1; /* and no doubling meanwhile */
		return 1;
	case EVST_TAKERS:
		return lev->batch;
	default:
		return EVSTEER_DEFAULT_MAX_ACCEPTS;
	}
}

/*
 * One connection per pass is for the loop's other events: a connection
 * accepted now would otherwise wait behind them in the application's
 * hands (an evhttp request behind a handler that blocks), where left
 * queued a sibling can take it. A loop with no event but ours (the
 * engine's socket, the member's poke: asked of libevent, since an
 * event_add() can fail) has nothing to run
 * between two accepts: what the callback does with a connection it does
 * before it returns (serve it, hand it to another thread), the next
 * accept comes after that either way, and what is still queued meanwhile
 * stays the siblings' to take. A pass of the loop in between would only
 * cost a poll per connection: at 64 connections in flight on the bench
 * server, 0.43 epoll_wait() a connection without work and ~4% of its CPU
 * with 50 us (bench/JOURNAL.md, "Alone in the loop"). libevent 2.1 counts an
 * event that is added (and once more while it is active: asked for too,
 * so that this holds where it did not) and the virtual ones that keep a
 * loop alive; one active in this pass is another's. The count is read
 * after each delivery: a callback that adds an event (a bufferevent for
 * the connection) ends the pass. The window after a block is no
 * exception: its cap of one is for the loop's other events too.
 */
bool evst_accept_alone(struct evsteer_listener *lev, const struct event *ev)
{
	if (lev->max_accepts || !lev->member)
		return false;
	int n = event_base_get_num_events(lev->base, EVENT_BASE_COUNT_ADDED |
							     EVENT_BASE_COUNT_ACTIVE |
							     EVENT_BASE_COUNT_VIRTUAL);
	/* more than ours could be (2: the socket's and the poke's), as in a
	 * loop with its connections' events at each capped pass: no need to
	 * ask which are ours */
	if (n > 2)
		return false;
	unsigned int own = lev->member->base_events(lev) +
			   (event_pending(ev, EV_READ, NULL) ? 1 : 0);
	return n <= (int)own;
}

void evst_accept_more(struct evsteer_listener *lev)
{
	if (lev->batch < EVSTEER_DEFAULT_MAX_ACCEPTS)
		lev->batch *= 2;
}

void evst_accept_drained(struct evsteer_listener *lev)
{
	lev->batch = 1;
}

unsigned int evst_group_handoff(struct evsteer_listener *lev,
				const struct evst_conn *c, unsigned int n)
{
	return lev->member ? lev->member->handoff(lev, c, n) : 0;
}

bool evst_deliver(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		  socklen_t len)
{
	evsteer_accept_cb cb = lev->cb.fd;
	void *arg = lev->arg;

	evst_count(lev, accepted);
	evst_unlock(lev);
	cb(lev, fd, sa, (int)len, arg);
	evst_lock(lev);
	return evst_active(lev);
}

bool evst_deliver_direct(struct evsteer_listener *lev,
			 struct evsteer_uring *ring, int slot)
{
	evsteer_direct_cb cb = lev->cb.direct;
	void *arg = lev->arg;

	evst_count(lev, accepted);
	evst_unlock(lev);
	cb(lev, ring, slot, arg);
	evst_lock(lev);
	return evst_active(lev);
}

enum evst_accept_err evst_classify_accept_errno(int err)
{
	switch (err) {
	case EAGAIN:
#if EWOULDBLOCK != EAGAIN
	case EWOULDBLOCK:
#endif
		return EVST_ERR_AGAIN;
	case EINTR:
	case ECONNABORTED:
		return EVST_ERR_RETRY;
	case EMFILE:
	case ENFILE:
	case ENOBUFS:
	case ENOMEM:
		return EVST_ERR_EXHAUSTED;
	default:
		return EVST_ERR_OTHER;
	}
}

unsigned int evst_next_backoff_ms(struct evsteer_listener *lev)
{
	lev->backoff_ms = lev->backoff_ms ? lev->backoff_ms * 2 : 1;
	if (lev->backoff_ms > lev->backoff_max_ms)
		lev->backoff_ms = lev->backoff_max_ms;
	return lev->backoff_ms;
}

void evst_end_episode(struct evsteer_listener *lev)
{
	lev->in_episode = false;
	lev->backoff_ms = 0;
}

void evst_report_accept_error(struct evsteer_listener *lev, int err)
{
	evst_count(lev, accept_errors);
	if (lev->in_episode)
		return;
	lev->in_episode = true;
	bool exhausted = evst_classify_accept_errno(err) == EVST_ERR_EXHAUSTED;
	if (exhausted)
		evst_count(lev, exhausted_episodes);

	evsteer_error_cb errcb = lev->errcb;
	void *arg = lev->arg;
	if (!errcb) {
		evst_warn("listener fd %d: accept: %s%s", lev->fd, strerror(err),
			  exhausted ? " (pausing with back-off; connections stay queued)" :
				      "");
		return;
	}
	evst_unlock(lev);
	errno = err;
	errcb(lev, arg);
	evst_lock(lev);
}

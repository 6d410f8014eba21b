/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine. Completions carry real fds (made non-blocking /
 * CLOEXEC by the kernel as the flags ask) and are queued on the engine; the
 * loop thread hands them to the callback with exactly the event engine's
 * semantics: a cap per wake-up, delivery stops when the callback disables or
 * frees the listener, what was already accepted waits for enable (or is
 * closed and counted on free), and failures pause with the same bounded
 * back-off.
 *
 * How it accepts. A listener that delivers fds keeps a few single-shot
 * accepts in flight, each with its own address buffer, so the callback gets
 * the exact peer address without a getpeername() per connection; they are
 * re-armed with the ring's batched submission at the end of each round (one
 * io_uring_enter() for all of them), and a re-armed accept on a socket with
 * connections queued completes inside that same call. A direct listener
 * has no address to pass on and keeps one multishot accept instead. (Both
 * were measured: see README, "The io_uring accept engine".)
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "uring/ring.h"

/* IORING_ACCEPT_DONTWAIT (Linux 6.10): -EAGAIN instead of waiting for a
 * connection. liburing 2.3 does not know it. */
#define EVST_ACCEPT_DONTWAIT (1U << 1)

/* Single-shot accepts in flight per fd listener, topped up when no more
 * than ACCEPT_REFILL are left: one submission per few connections, not one
 * per connection, while enough stay armed to take a burst. */
#define ACCEPT_SLOTS 16
#define ACCEPT_REFILL 8

struct uring_engine;

/* One single-shot accept and the address it fills. */
struct accept_slot {
	struct evst_uop op;
	struct uring_engine *e;
	bool armed;
	socklen_t len;
	struct sockaddr_storage ss;
};

struct uring_engine {
	struct evst_uop op;          /* ready(); the multishot's user_data */
	struct evsteer_listener *lev;
	struct evsteer_uring *r;
	struct event *timer;         /* back-off before re-arming */
	bool multishot;              /* direct: one multishot accept */

	/* ring lock */
	bool want;        /* should be armed */
	unsigned int armed; /* accepts in flight */
	bool cancel_sent; /* until every one in flight has ended */
	bool backing_off;
	bool ended;       /* the kernel ended the multishot (not our cancel) */
	bool probing;     /* after a failure: one accept until one succeeds */
	bool orphaned;    /* the thread that armed them exited: re-arm all */
	int err;          /* an accept error for ready() to report */
	unsigned long gen; /* the ring's wake-up the count below belongs to */
	unsigned int done; /* delivered in that wake-up (the accept cap) */
	/* accepted, not yet delivered: a ring buffer that grows, so a burst
	 * larger than any fixed size (or a CQ overflow) loses nothing */
	struct evst_conn *held;
	unsigned int cap, head, count;
	struct accept_slot slots[ACCEPT_SLOTS];
	/* direct: slots a leaving sibling sends into this ring's table
	 * (IORING_OP_MSG_RING) arrive as completions for recv_op; the engine
	 * outlives its listener until every one announced has arrived */
	struct evst_uop recv_op;
	unsigned int msgs_in;
	bool released;
	/* direct: accepts from a stalled sibling's socket (ring lock) */
	unsigned int steals_in, stolen_now;
	bool no_dontwait; /* the kernel refused IORING_ACCEPT_DONTWAIT */
};

static inline struct uring_engine *engine_of(struct evsteer_listener *lev)
{
	return lev->engine;
}

/* Ring lock held: close an accepted connection that will not be
 * delivered (a direct slot of this ring, or an fd). */
static void conn_close(struct uring_engine *e, int fd)
{
	if (e->lev->direct_table)
		evst_ring_close_slot(e->r, fd);
	else
		close(fd);
}

/* Ring lock held. */
static int held_grow(struct uring_engine *e)
{
	unsigned int ncap = e->cap ? e->cap * 2 : 64;
	struct evst_conn *n = malloc(ncap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	for (unsigned int i = 0; i < e->count; i++)
		n[i] = e->held[(e->head + i) % e->cap];
	free(e->held);
	e->held = n;
	e->cap = ncap;
	e->head = 0;
	return 0;
}

/* Ring lock held: queue an accepted connection, or close it (out of memory:
 * never silently). */
static void held_push(struct uring_engine *e, int fd,
		      const struct sockaddr_storage *ss, socklen_t len)
{
	if (e->count == e->cap && held_grow(e) < 0) {
		conn_close(e, fd);
		evst_count(e->lev, accept_errors);
		return;
	}
	struct evst_conn *h = &e->held[(e->head + e->count++) % e->cap];
	h->fd = fd;
	h->len = len;
	if (len)
		memcpy(&h->ss, ss, len);
	atomic_fetch_add_explicit(&e->lev->counters.held, 1, memory_order_relaxed);
}

/* Ring lock held: take up to max from the front. */
static unsigned int held_pop(struct uring_engine *e, struct evst_conn *out,
			     unsigned int max)
{
	unsigned int k = 0;
	while (k < max && e->count) {
		out[k++] = e->held[e->head];
		e->head = (e->head + 1) % e->cap;
		e->count--;
	}
	atomic_fetch_sub_explicit(&e->lev->counters.held, k, memory_order_relaxed);
	return k;
}

/* Ring lock held: put k back at the front, in order. Completions reaped
 * (or a sibling's hand-over) since they were taken may have used the room
 * they left: grow if so; without memory, close them (counted). */
static void held_push_front(struct uring_engine *e, const struct evst_conn *c,
			    unsigned int k)
{
	while (e->count + k > e->cap && held_grow(e) == 0)
		;
	for (unsigned int i = k; i-- > 0;) {
		if (e->count == e->cap) {
			conn_close(e, c[i].fd);
			evst_count(e->lev, accept_errors);
			continue;
		}
		e->head = (e->head + e->cap - 1) % e->cap;
		e->held[e->head] = c[i];
		e->count++;
		atomic_fetch_add_explicit(&e->lev->counters.held, 1,
					  memory_order_relaxed);
	}
}

/* Ring lock held. Arm from the loop thread only (see uring.h); the SQEs go
 * out with the round's batched submission. */
static void arm(struct uring_engine *e)
{
	struct evsteer_listener *lev = e->lev;
	/* after a failure (EMFILE...) one accept at a time finds out whether
	 * it is over; a batch would only fail as many times */
	unsigned int want = e->multishot || e->probing ? 1 : ACCEPT_SLOTS;
	bool rearm = e->ended;

	for (unsigned int i = 0; i < ACCEPT_SLOTS && e->armed < want; i++) {
		struct accept_slot *s = &e->slots[i];
		if (!e->multishot && s->armed)
			continue;
		struct io_uring_sqe *sqe = evst_ring_sqe(e->r);
		if (!sqe)
			break;
		if (e->multishot) {
			if (lev->direct_table)
				io_uring_prep_multishot_accept_direct(
					sqe, lev->fd, NULL, NULL,
					lev->accept4_flags);
			else
				io_uring_prep_multishot_accept(
					sqe, lev->fd, NULL, NULL,
					lev->accept4_flags);
			io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&e->op);
		} else {
			s->len = sizeof(s->ss);
			io_uring_prep_accept(sqe, lev->fd, (struct sockaddr *)&s->ss,
					     &s->len, lev->accept4_flags);
			io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&s->op);
		}
		if (evst_ring_submit(e->r, 1) < 0)
			break;
		s->armed = true;
		e->armed++;
	}
	if (e->armed < want) {
		evst_ring_mark_later(e->r, &e->op); /* try again next pass */
		if (!e->armed)
			return;
	}
	if (rearm)
		evst_count(lev, rearms);
	e->ended = false;
}

/* Ring lock held: one accept in flight ended. */
static void accept_ended(struct uring_engine *e, struct accept_slot *s)
{
	s->armed = false;
	e->armed--;
	if (!e->armed)
		e->cancel_sent = false;
	evst_ring_done(e->r);
}

/* Ring lock held; any thread. An accept the loop thread staged and has not
 * submitted yet is just dropped. */
static void cancel(struct uring_engine *e)
{
	if (!e->armed || e->cancel_sent)
		return;
	unsigned int n = e->multishot ? 1 : ACCEPT_SLOTS;
	bool failed = false;
	for (unsigned int i = 0; i < n; i++) {
		struct accept_slot *s = &e->slots[i];
		if (!s->armed)
			continue;
		uint64_t key = e->multishot ? (uint64_t)(uintptr_t)&e->op :
					      (uint64_t)(uintptr_t)&s->op;
		int r = evst_ring_cancel(e->r, key);
		if (r == 1)
			accept_ended(e, s);
		else if (r < 0)
			failed = true;
	}
	/* until every accept in flight has ended (a failed cancel is tried
	 * again by the caller's next call) */
	e->cancel_sent = e->armed > 0 && !failed;
}

/* Ring lock held: an accept completed with res (fd, slot or -errno). */
static void accept_result(struct uring_engine *e, int res,
			  const struct sockaddr_storage *ss, socklen_t len)
{
	if (res >= 0) {
		if (e->lev->direct_table)
			evst_ring_slot_opened(e->r);
		held_push(e, res, ss, len);
		e->probing = false;
		return;
	}
	if (res == -ENFILE && e->lev->direct_table)
		/* the table is full and the kernel closed that connection */
		evst_count(e->lev, table_full);
	if (res == -ECANCELED) {
		/* ours, or the kernel's: the thread that armed it exited, and
		 * another thread runs the loop now. Then the others it armed
		 * are dead too (each would cost a connection's wake-up): the
		 * loop thread cancels them all and arms afresh; no error. */
		if (!e->cancel_sent && !e->orphaned) {
			evst_debug("listener fd %d: accept cancelled by the kernel "
				   "(the thread that armed it exited): re-arming",
				   e->lev->fd);
			e->orphaned = true;
		}
		return;
	}
	e->err = -res;
	e->probing = true;
}

static struct evst_uop *multishot_complete(struct evst_uop *op,
					   const struct io_uring_cqe *cqe)
{
	struct uring_engine *e = (struct uring_engine *)op;
	bool cancelled = e->cancel_sent;

	accept_result(e, cqe->res, NULL, 0);
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		/* the multishot ended: cancelled, an error (-EMFILE...), or
		 * the kernel's own reasons; ready() re-arms if still wanted */
		e->ended = !cancelled;
		accept_ended(e, &e->slots[0]);
	}
	return op;
}

static struct evst_uop *slot_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct accept_slot *s = (struct accept_slot *)op;
	struct uring_engine *e = s->e;

	accept_result(e, cqe->res, &s->ss, cqe->res >= 0 ? s->len : 0);
	accept_ended(e, s);
	return &e->op;
}

static void backoff_timer_cb(evutil_socket_t fd, short what, void *arg);

/* Loop thread, lock held: hand held connections to the callback, up to the
 * cap of this wake-up. */
static void deliver_held(struct uring_engine *e)
{
	struct evsteer_listener *lev = e->lev;

	/* The ring drains in rounds; the cap is per wake-up. */
	unsigned long gen = evst_ring_wake_gen(e->r);
	if (e->gen != gen) {
		e->gen = gen;
		e->done = 0;
		evst_count(lev, wakeups);
	}
	uint64_t now = lev->member ? evst_now_ns() : 0;
	unsigned int n, bi = 0, nb = 0;
	struct evst_conn batch[16];
	for (n = e->done; n < lev->max_accepts; n++) {
		if (bi == nb) {
			/* a batch per lock, not a lock per connection */
			unsigned int want = lev->max_accepts - n;
			evst_ring_lock(e->r);
			nb = held_pop(e, batch, want < 16 ? want : 16);
			evst_ring_unlock(e->r);
			bi = 0;
			if (!nb)
				break;
		}
		struct evst_conn *c = &batch[bi++];
		evst_took(lev, now);
		if (lev->direct_table) {
			if (!evst_deliver_direct(lev, e->r, c->fd))
				break;
			continue;
		}
		/* an fd listener's connections all carry the address their
		 * single-shot accept filled in (slot_complete; adopted ones
		 * come from a sibling's) */
		if (!evst_deliver(lev, c->fd, (struct sockaddr *)&c->ss, c->len))
			break;
	}
	e->done = n;
	if (bi < nb) {
		/* delivery stopped: the rest waits, in order */
		evst_ring_lock(e->r);
		held_push_front(e, batch + bi, nb - bi);
		evst_ring_unlock(e->r);
	}
	evst_ring_lock(e->r);
	if (n == lev->max_accepts && e->count) {
		evst_count(lev, capped_wakeups);
		evst_ring_mark_later(e->r, &e->op); /* yield, then more */
	}
	if (lev->member && !e->count) {
		/* The loop runs, which a worker siblings stole from must
		 * show. The queue is empty only if accepts are armed and the
		 * kernel has nothing for us: a connection already taken by an
		 * accept may wait in the CQ or as task work still. */
		if (e->armed && !e->cancel_sent && evst_ring_quiet(e->r))
			evst_queue_empty(lev, now);
		else
			evst_loop_ran(lev, now);
	}
	evst_ring_unlock(e->r);
}

/* Loop thread, no ring lock. */
static void accept_ready(struct evst_uop *op)
{
	struct uring_engine *e = (struct uring_engine *)op;
	struct evsteer_listener *lev = e->lev;

	evst_lock(lev);
	lev->refcnt++;

	if (evst_active(lev))
		deliver_held(e);

	evst_ring_lock(e->r);
	int err = e->err;
	e->err = 0;
	bool active = evst_active(lev);
	if (err && active && !e->backing_off) {
		unsigned int ms = evst_next_backoff_ms(lev);
		struct timeval tv = {.tv_sec = ms / 1000,
				     .tv_usec = (ms % 1000) * 1000};
		e->backing_off = true;
		evtimer_add(e->timer, &tv);
	}
	if (e->orphaned) {
		if (e->armed)
			cancel(e); /* from this thread; they end with ECANCELED */
		else
			e->orphaned = false;
	}
	if (active && e->want && !e->cancel_sent && !e->backing_off &&
	    !e->orphaned &&
	    (!e->armed || (!e->multishot && e->armed <= ACCEPT_REFILL)))
		arm(e);
	evst_ring_unlock(e->r);

	if (err && active)
		evst_report_accept_error(lev, err);
	if (lev->group)
		evst_group_steal(lev);
	evst_decref_and_unlock(lev);
}

static void backoff_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	struct uring_engine *e = engine_of(lev);
	(void)fd;
	(void)what;

	evst_lock(lev);
	lev->refcnt++;
	evst_ring_lock(e->r);
	e->backing_off = false;
	if (evst_active(lev) && e->want && !e->cancel_sent) {
		evst_count(lev, exhausted_retries);
		/* through the ring's wake-up, so the re-armed accepts are
		 * submitted and reaped in this same pass */
		evst_ring_mark_ready(e->r, &e->op);
	}
	evst_ring_unlock(e->r);
	evst_decref_and_unlock(lev);
}

static void engine_release(struct evst_uop *op)
{
	struct uring_engine *e = (struct uring_engine *)op;
	if (e->msgs_in) {
		e->released = true; /* the last of them frees it */
		return;
	}
	free(e->held);
	free(e);
}

/* A slot a leaving sibling sent into this ring's table (ring lock). */
static struct evst_uop *recv_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct uring_engine *e =
		(struct uring_engine *)((char *)op -
					offsetof(struct uring_engine, recv_op));
	e->msgs_in--;
	if (e->released) {
		/* the listener went meanwhile: nothing to deliver it to */
		if (cqe->res >= 0)
			evst_ring_close_slot(e->r, cqe->res);
		if (!e->msgs_in) {
			free(e->held);
			free(e);
		}
		return NULL;
	}
	if (cqe->res < 0) {
		if (cqe->res == -ENFILE)
			evst_count(e->lev, table_full);
		evst_count(e->lev, accept_errors);
		return NULL;
	}
	evst_ring_slot_opened(e->r);
	held_push(e, cqe->res, NULL, 0);
	return &e->op;
}

static int uring_init(struct evsteer_listener *lev)
{
	struct uring_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	const char *why = NULL;
	e->r = evst_ring_get(lev->base, &why);
	if (!e->r) {
		int err = errno;
		free(e);
		lev->engine_reason = why;
		return -err;
	}
	if (lev->direct_table) {
		evst_ring_lock(e->r);
		int err = evst_ring_direct_table(e->r, lev->direct_table);
		evst_ring_unlock(e->r);
		if (err < 0) {
			evst_warn("direct listener: registering a %u-slot table: %s",
				  lev->direct_table, strerror(-err));
			lev->engine_reason =
				"io_uring: cannot register the fixed-file table";
			evst_ring_put(e->r);
			free(e);
			return err;
		}
	}
	e->timer = evtimer_new(lev->base, backoff_timer_cb, lev);
	if (!e->timer) {
		evst_ring_put(e->r);
		free(e);
		return -ENOMEM;
	}
	e->op.complete = multishot_complete;
	e->recv_op.complete = recv_complete;
	e->op.ready = accept_ready;
	e->op.release = engine_release;
	e->lev = lev;
	e->multishot = lev->direct_table != 0;
	for (unsigned int i = 0; i < ACCEPT_SLOTS; i++) {
		e->slots[i].op.complete = slot_complete;
		e->slots[i].e = e;
	}
	lev->engine = e;
	return 0;
}

static int uring_enable(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	evst_ring_lock(e->r);
	e->want = true;
	/* re-try at once after enable, as the event engine does */
	if (e->backing_off) {
		event_del_noblock(e->timer);
		e->backing_off = false;
	}
	/* armed from the loop thread, in this loop pass: a connection queued
	 * before it is delivered in it, as the event engine does */
	evst_ring_mark_ready(e->r, &e->op);
	evst_ring_unlock(e->r);
	return 0;
}

static int uring_disable(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	evst_ring_lock(e->r);
	e->want = false;
	cancel(e);
	if (e->backing_off) {
		event_del_noblock(e->timer);
		e->backing_off = false;
	}
	evst_ring_unlock(e->r);
	return 0;
}

/*
 * Cancel and reap before the socket may close: a pending accept keeps a
 * listening socket alive after close. Whoever is here reaps; the loop
 * thread may reap the final completion first, which is as good.
 */
static void uring_quiesce(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	evst_ring_lock(e->r);
	for (int i = 0; e->armed && i < 10000; i++) {
		cancel(e);
		evst_ring_reap(e->r, 1000);
	}
	if (e->armed)
		evst_err("listener fd %d: accept did not end after cancel",
			 lev->fd);
	evst_ring_wait_idle(e->r, &e->op);
	evst_ring_unlock(e->r);
	event_del_block(e->timer);
}

/*
 * Accepted but never delivered. A worker leaving its group gives them to a
 * live sibling, which delivers them from its own loop: leaving loses
 * nothing, whatever its ring had already taken off the socket (what is
 * still queued on the socket migrates when it closes). A lone listener
 * closes them, as libevent would have left them in the backlog to be reset,
 * and counts them.
 */
static void uring_destroy(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	struct evsteer_uring *r = e->r;
	event_free(e->timer);

	evst_ring_lock(r);
	unsigned int n = e->count, given = 0;
	struct evst_conn *left = n ? malloc(n * sizeof(*left)) : NULL;
	if (left) {
		held_pop(e, left, n);
		for (unsigned int i = 0; i < n; i++)
			left[i].ring = r;
	}
	evst_ring_unlock(r);
	/* the sibling may share this ring: its lock is not held here */
	if (left && lev->group) {
		given = evst_group_handoff(lev, left, n);
		atomic_fetch_add_explicit(&lev->counters.handed_off, given,
					  memory_order_relaxed);
		if (given < n)
			evst_warn("listener fd %d left its group with %u accepted "
				  "connections and no live sibling to take %u of "
				  "them: closed",
				  lev->fd, n, n - given);
	}

	evst_ring_lock(r);
	for (unsigned int i = given; left && i < n; i++) {
		conn_close(e, left[i].fd);
		evst_count(lev, closed_on_free);
	}
	while (e->count) { /* no memory for the list above */
		struct evst_conn c;
		held_pop(e, &c, 1);
		conn_close(e, c.fd);
		evst_count(lev, closed_on_free);
	}
	free(left);
	evst_ring_release(r, &e->op);
	evst_ring_unlock(r);
	evst_ring_put(r);
	lev->engine = NULL;
}

static unsigned int adopt_slots(struct uring_engine *e,
				const struct evst_conn *c, unsigned int n);

/* ---- a direct worker takes a stalled sibling's queue into its table */

struct steal_op {
	struct evst_uop op;
	struct uring_engine *e;
};

static struct evst_uop *steal_complete(struct evst_uop *op,
				       const struct io_uring_cqe *cqe)
{
	struct steal_op *s = (struct steal_op *)op;
	struct uring_engine *e = s->e;
	free(s);
	e->steals_in--;
	if (cqe->res >= 0) {
		evst_ring_slot_opened(e->r);
		held_push(e, cqe->res, NULL, 0);
		e->stolen_now++;
		return &e->op;
	}
	if (cqe->res == -EINVAL && !e->no_dontwait) {
		e->no_dontwait = true;
		evst_info("listener fd %d: the kernel lacks IORING_ACCEPT_DONTWAIT "
			  "(Linux 6.10): direct workers do not steal",
			  e->lev->fd);
	}
	return NULL;
}

/*
 * Accepts that never wait (DONTWAIT: -EAGAIN when the queue is empty, so
 * nothing stays armed on the sibling's socket), submitted now and reaped
 * now, under the group's lock: the socket cannot close in between.
 */
static int uring_steal_from(struct evsteer_listener *lev,
			    struct evsteer_listener *victim, int sock_fd,
			    unsigned int max)
{
	struct uring_engine *e = engine_of(lev);
	if (!lev->direct_table || e->no_dontwait)
		return -1;
	int took = 0;
	/*
	 * First what the sibling's ring already accepted (its loop stalled
	 * with completions not yet delivered): those slots are sent into our
	 * table, as when a worker leaves.
	 */
	if (victim && victim->direct_table && victim->ops == lev->ops) {
		struct uring_engine *ve = engine_of(victim);
		struct evst_conn c[16];
		evst_ring_lock(ve->r);
		evst_ring_reap(ve->r, 0);
		unsigned int k = held_pop(ve, c, max < 16 ? max : 16);
		evst_ring_unlock(ve->r);
		for (unsigned int i = 0; i < k; i++)
			c[i].ring = ve->r;
		unsigned int sent = adopt_slots(e, c, k);
		if (sent < k) {
			/* not sent: still the sibling's, delivered by it */
			evst_ring_lock(ve->r);
			held_push_front(ve, c + sent, k - sent);
			evst_ring_unlock(ve->r);
		}
		took += (int)sent;
		max -= sent;
	}
	evst_ring_lock(e->r);
	unsigned int before = e->stolen_now, n = 0;
	for (; n < max; n++) {
		struct steal_op *s = malloc(sizeof(*s));
		struct io_uring_sqe *sqe = s ? evst_ring_sqe_now(e->r) : NULL;
		if (!sqe) {
			free(s);
			break;
		}
		*s = (struct steal_op){.op = {.complete = steal_complete}, .e = e};
		/* liburing 2.3 adds one to the index without special-casing
		 * ALLOC (later versions do): pass ALLOC - 1 so the SQE says
		 * ALLOC; plain ALLOC would wrap to 0, a regular fd */
		io_uring_prep_accept_direct(sqe, sock_fd, NULL, NULL,
					    lev->accept4_flags,
					    IORING_FILE_INDEX_ALLOC - 1);
		sqe->ioprio |= EVST_ACCEPT_DONTWAIT;
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&s->op);
		e->steals_in++;
	}
	if (n && evst_ring_submit_now(e->r) == 0)
		/* they complete inside the submission (they never wait) */
		evst_ring_reap(e->r, 0);
	for (int i = 0; e->steals_in && i < 1000; i++)
		evst_ring_reap(e->r, 1000);
	took += (int)(e->stolen_now - before);
	evst_ring_unlock(e->r);
	return took;
}

/* The stall watch also waits on the ring's eventfd: a stuck loop's ring
 * still accepts (its task work runs inside whatever call blocks it). */
static int uring_signal_fd(struct evsteer_listener *lev)
{
	return evst_ring_eventfd(engine_of(lev)->r);
}

/* A leaving direct sibling's slots: sent into this ring's table. */
static unsigned int adopt_slots(struct uring_engine *e,
				const struct evst_conn *c, unsigned int n)
{
	unsigned int k;
	for (k = 0; k < n; k++) {
		if (c[k].ring == e->r) {
			/* the same ring: the slot is already ours */
			evst_ring_lock(e->r);
			held_push(e, c[k].fd, NULL, 0);
			evst_ring_mark_ready(e->r, &e->op);
			evst_ring_unlock(e->r);
			continue;
		}
		evst_ring_lock(e->r);
		e->msgs_in++;
		evst_ring_unlock(e->r);
		int err = evst_ring_send_slot(c[k].ring, c[k].fd, e->r,
					      (uint64_t)(uintptr_t)&e->recv_op);
		evst_ring_lock(e->r);
		if (err < 0 && err != -ETIMEDOUT)
			e->msgs_in--; /* nothing will arrive */
		else
			/* it is in our CQ already: have the loop look */
			evst_ring_mark_ready(e->r, &e->op);
		evst_ring_unlock(e->r);
		if (err < 0) {
			evst_debug("listener fd %d: slot hand-over: %s",
				   e->lev->fd, strerror(-err));
			break;
		}
	}
	return k;
}

/* A leaving sibling's connections: delivered from this listener's loop,
 * before anything this one accepts later. */
static unsigned int uring_adopt(struct evsteer_listener *lev,
				const struct evst_conn *c, unsigned int n)
{
	struct uring_engine *e = engine_of(lev);
	if (lev->direct_table)
		return adopt_slots(e, c, n);
	evst_ring_lock(e->r);
	unsigned int k;
	for (k = 0; k < n; k++) {
		unsigned int before = e->count;
		held_push(e, c[k].fd, &c[k].ss, c[k].len);
		if (e->count == before)
			break; /* out of memory: it was closed and counted */
	}
	if (k)
		evst_ring_mark_ready(e->r, &e->op);
	evst_ring_unlock(e->r);
	return k < n ? k + 1 : k;
}

/* A sibling takes a connection this (stalled) worker's ring accepted. Its
 * completions may not even be reaped yet: reap them here. */
static int uring_steal(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	if (lev->direct_table)
		return -1; /* slots belong to this ring */
	struct evst_conn c;
	int fd = -1;
	evst_ring_lock(e->r);
	evst_ring_reap(e->r, 0);
	if (held_pop(e, &c, 1))
		fd = c.fd;
	evst_ring_unlock(e->r);
	return fd;
}

/* One engine; a direct listener reports itself as such (steal_from: only
 * a direct listener accepts a sibling's queue through its ring). */
#define URING_ENGINE_OPS                                                       \
	.init = uring_init, .enable = uring_enable, .disable = uring_disable,  \
	.quiesce = uring_quiesce, .destroy = uring_destroy,                    \
	.steal = uring_steal, .adopt = uring_adopt,                            \
	.steal_from = uring_steal_from, .signal_fd = uring_signal_fd

const struct evst_engine_ops evst_uring_engine = {
	.kind = EVSTEER_ENGINE_URING,
	.name = "uring",
	.bpf_name = "bpf+uring",
	URING_ENGINE_OPS,
};

const struct evst_engine_ops evst_uring_direct_engine = {
	.kind = EVSTEER_ENGINE_URING_DIRECT,
	.name = "uring-direct",
	.bpf_name = "bpf+uring-direct",
	URING_ENGINE_OPS,
};

struct evsteer_uring *evsteer_listener_get_uring(const struct evsteer_listener *lev)
{
	if (!lev || lev->ops != &evst_uring_direct_engine) {
		errno = EINVAL;
		return NULL;
	}
	return ((struct uring_engine *)lev->engine)->r;
}

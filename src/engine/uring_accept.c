/* SPDX-License-Identifier: MIT */
/*
 * What the io_uring engines share. Completions are queued on the engine
 * (the held queue); the loop thread hands them to the callback with
 * exactly the event engine's semantics: a cap per wake-up, delivery stops
 * when the callback disables or frees the listener, what was already
 * accepted waits for enable (or is handed to a sibling, or closed and
 * counted, on free), and failures pause with the same bounded back-off.
 * How each engine accepts is its own: uring_fd.c, uring_direct.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "engine/uring_accept.h"

/* Ring lock held. */
static int held_grow(struct evst_ua *e)
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

/* Out of memory: never silently. */
void evst_ua_held_push(struct evst_ua *e, int fd,
		       const struct sockaddr_storage *ss, socklen_t len)
{
	if (e->count == e->cap && held_grow(e) < 0) {
		e->ops->close_conn(e, fd);
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

unsigned int evst_ua_held_pop(struct evst_ua *e, struct evst_conn *out,
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

/* Completions reaped (or a sibling's hand-over) since they were taken may
 * have used the room they left: grow if so; without memory, close them
 * (counted). */
void evst_ua_held_push_front(struct evst_ua *e, const struct evst_conn *c,
			     unsigned int k)
{
	while (e->count + k > e->cap && held_grow(e) == 0)
		;
	for (unsigned int i = k; i-- > 0;) {
		if (e->count == e->cap) {
			e->ops->close_conn(e, c[i].fd);
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

/* Ring lock held. Arm from the loop thread only (see uring/ring.h); the
 * SQEs go out with the round's batched submission. */
static void arm(struct evst_ua *e)
{
	unsigned int want = e->ops->arm(e);
	if (e->armed < want)
		evst_ring_mark_later(e->r, &e->op); /* try again next pass */
}

void evst_ua_accept_ended(struct evst_ua *e)
{
	e->armed--;
	if (!e->armed)
		e->cancel_sent = false;
	evst_ring_done(e->r);
}

/* Ring lock held; any thread. An accept the loop thread staged and has not
 * submitted yet is just dropped. */
static void cancel(struct evst_ua *e)
{
	if (!e->armed || e->cancel_sent)
		return;
	bool failed = e->ops->cancel(e);
	/* until every accept in flight has ended (a failed cancel is tried
	 * again by the caller's next call) */
	e->cancel_sent = e->armed > 0 && !failed;
}

void evst_ua_accepted(struct evst_ua *e, int res,
		      const struct sockaddr_storage *ss, socklen_t len)
{
	if (res >= 0) {
		evst_ua_held_push(e, res, ss, len);
		e->probing = false;
		return;
	}
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

/* Loop thread, listener lock held: hand held connections to the callback,
 * up to the cap of this wake-up. Returns with the ring lock held (the
 * caller's next step needs it: one lock the fewer per wake-up). */
static void deliver_held(struct evst_ua *e)
{
	struct evsteer_listener *lev = e->lev;

	/* The ring drains in rounds; the cap is per wake-up. */
	uint64_t now = lev->member ? evst_now_ns() : 0;
	unsigned long gen = evst_ring_wake_gen(e->r);
	if (e->gen != gen) {
		e->gen = gen;
		e->done = 0;
		e->wake_cap = evst_accept_cap(lev, now);
		evst_count(lev, wakeups);
	}
	unsigned int n, bi = 0, nb = 0, cap = e->wake_cap;
	struct evst_conn batch[16];
	for (n = e->done; n < cap; n++) {
		if (bi == nb) {
			/* a batch per lock, not a lock per connection */
			unsigned int want = cap - n;
			evst_ring_lock(e->r);
			nb = evst_ua_held_pop(e, batch, want < 16 ? want : 16);
			evst_ring_unlock(e->r);
			bi = 0;
			if (!nb)
				break;
		}
		evst_took(lev, now);
		if (!e->ops->deliver(e, &batch[bi++]))
			break;
	}
	e->done = n;
	if (bi < nb) {
		/* delivery stopped: the rest waits, in order */
		evst_ring_lock(e->r);
		evst_ua_held_push_front(e, batch + bi, nb - bi);
		evst_ring_unlock(e->r);
	}
	evst_ring_lock(e->r);
	if (n >= cap && e->count) {
		evst_count(lev, capped_wakeups);
		evst_accept_more(lev);
		evst_ring_mark_later(e->r, &e->op); /* yield, then more */
	} else if (!e->count) {
		evst_accept_drained(lev);
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
}

/* Loop thread, no ring lock. */
static void accept_ready(struct evst_uop *op)
{
	struct evst_ua *e = (struct evst_ua *)op;
	struct evsteer_listener *lev = e->lev;

	evst_lock(lev);
	lev->refcnt++;

	if (evst_active(lev))
		deliver_held(e); /* returns with the ring lock held */
	else
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
	    !e->orphaned && e->armed <= e->ops->refill_at)
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
	struct evst_ua *e = evst_ua_of(lev);
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
	struct evst_ua *e = (struct evst_ua *)op;
	e->ops->free(e);
}

struct evst_ua *evst_ua_new(struct evsteer_listener *lev,
			    const struct evst_ua_ops *ops, size_t size, int *err)
{
	struct evst_ua *e = calloc(1, size);
	if (!e) {
		*err = -ENOMEM;
		return NULL;
	}
	e->wake_cap = 1; /* a delivery before the ring's first wake-up */
	const char *why = NULL;
	e->r = evst_ring_get(lev->base, &why);
	if (!e->r) {
		*err = -errno;
		lev->engine_reason = why;
		free(e);
		return NULL;
	}
	/* what the ring accepted stays stealable through a long callback */
	if (evst_queue_watched(lev))
		evst_ring_defer_wakeups(e->r);
	e->timer = evtimer_new(lev->base, backoff_timer_cb, lev);
	if (!e->timer) {
		evst_ring_put(e->r);
		free(e);
		*err = -ENOMEM;
		return NULL;
	}
	e->ops = ops;
	e->lev = lev;
	e->op.ready = accept_ready;
	e->op.release = engine_release;
	return e;
}

void evst_ua_discard(struct evst_ua *e)
{
	event_free(e->timer);
	evst_ring_put(e->r);
	free(e);
}

void evst_ua_free(struct evst_ua *e)
{
	free(e->held);
	free(e);
}

int evst_ua_enable(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
	evst_ring_lock(e->r);
	if (!e->want)
		evst_ring_want(e->r, true);
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

int evst_ua_disable(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
	evst_ring_lock(e->r);
	if (e->want)
		evst_ring_want(e->r, false);
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
void evst_ua_quiesce(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
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
void evst_ua_destroy(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
	struct evsteer_uring *r = e->r;
	event_free(e->timer);

	evst_ring_lock(r);
	unsigned int n = e->count, given = 0;
	struct evst_conn *left = n ? malloc(n * sizeof(*left)) : NULL;
	if (left) {
		evst_ua_held_pop(e, left, n);
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
		e->ops->close_conn(e, left[i].fd);
		evst_count(lev, closed_on_free);
	}
	while (e->count) { /* no memory for the list above */
		struct evst_conn c;
		evst_ua_held_pop(e, &c, 1);
		e->ops->close_conn(e, c.fd);
		evst_count(lev, closed_on_free);
	}
	free(left);
	evst_ring_release(r, &e->op);
	evst_ring_unlock(r);
	evst_ring_put(r);
	lev->engine = NULL;
}

void evst_ua_forget(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
	struct evsteer_uring *r = e->r;
	event_free(e->timer);
	/* accepted and not delivered by the parent: for the fd engine these
	 * are descriptors in this process too (the child's copies); a direct
	 * engine's are slots of the parent's table, nothing of ours */
	while (!lev->direct_table && e->count) {
		struct evst_conn c;
		evst_ua_held_pop(e, &c, 1);
		close(c.fd);
	}
	evst_ring_unready(r, &e->op);
	evst_ua_free(e);
	evst_ring_forget(r);
	lev->engine = NULL;
}

/* The stall watch also waits on the ring's eventfd: a stuck loop's ring
 * still accepts (its task work runs inside whatever call blocks it). */
int evst_ua_signal_fd(struct evsteer_listener *lev)
{
	return evst_ring_eventfd(evst_ua_of(lev)->r);
}

/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine: one multishot accept per enabled listener on its
 * base's ring. Completions carry real fds (made non-blocking / CLOEXEC by
 * the kernel as the flags ask) and are queued on the engine; the loop thread
 * hands them to the callback with exactly the event engine's semantics: a
 * cap per wake-up, delivery stops when the callback disables or frees the
 * listener, what was already accepted waits for enable (or is closed and
 * counted on free), and failures pause with the same bounded back-off.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "uring.h"


struct uring_engine {
	struct evst_uop op;          /* the multishot accept's user_data */
	struct evsteer_listener *lev;
	struct evsteer_uring *r;
	struct event *timer;         /* back-off before re-arming */

	/* ring lock */
	bool want;        /* should be armed */
	bool armed;       /* a multishot accept is in flight */
	bool cancel_sent;
	bool backing_off;
	bool ended;       /* the kernel ended the last one (not our cancel) */
	int err;          /* an accept error for ready() to report */
	/* accepted, not yet delivered: a ring buffer that grows, so a burst
	 * larger than any fixed size (or a CQ overflow) loses nothing */
	int *held;
	unsigned int cap, head, count;
	uint64_t closed_on_free;
};

static inline struct uring_engine *engine_of(struct evsteer_listener *lev)
{
	return lev->engine;
}

/* Ring lock held. Arm from the loop thread only (see uring.h). */
static void arm(struct uring_engine *e)
{
	struct io_uring_sqe *sqe = evst_ring_sqe(e->r);
	if (!sqe) {
		evst_ring_mark_ready(e->r, &e->op); /* try again next pass */
		return;
	}
	if (e->lev->direct_table)
		io_uring_prep_multishot_accept_direct(sqe, e->lev->fd, NULL, NULL,
						      e->lev->accept4_flags);
	else
		io_uring_prep_multishot_accept(sqe, e->lev->fd, NULL, NULL,
					       e->lev->accept4_flags);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&e->op);
	if (evst_ring_submit(e->r, 1) < 0) {
		evst_ring_mark_ready(e->r, &e->op);
		return;
	}
	e->armed = true;
	e->cancel_sent = false;
	if (e->ended)
		evst_count(e->lev, rearms);
	e->ended = false;
}

/* Ring lock held; any thread (a cancel completes at once). */
static void cancel(struct uring_engine *e)
{
	if (!e->armed || e->cancel_sent)
		return;
	struct io_uring_sqe *sqe = evst_ring_sqe(e->r);
	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&e->op, 0);
	io_uring_sqe_set_data64(sqe, EVST_UDATA_IGNORE);
	if (evst_ring_submit(e->r, 0) == 0)
		e->cancel_sent = true;
}

/* Ring lock held. */
static int held_grow(struct uring_engine *e)
{
	unsigned int ncap = e->cap ? e->cap * 2 : 256;
	int *n = malloc(ncap * sizeof(*n));
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

/* Ring lock held: take up to max from the front. */
static unsigned int held_pop(struct uring_engine *e, int *out, unsigned int max)
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

/* Ring lock held: put k back at the front (room is there: we took them). */
static void held_push_front(struct uring_engine *e, const int *fds, unsigned int k)
{
	for (unsigned int i = k; i-- > 0;) {
		e->head = (e->head + e->cap - 1) % e->cap;
		e->held[e->head] = fds[i];
		e->count++;
	}
	atomic_fetch_add_explicit(&e->lev->counters.held, k, memory_order_relaxed);
}

static bool accept_complete(struct evst_uop *op, const struct io_uring_cqe *cqe)
{
	struct uring_engine *e = (struct uring_engine *)op;
	bool wake = false;

	if (cqe->res >= 0 && e->lev->direct_table)
		evst_ring_slot_opened(e->r);
	if (cqe->res == -ENFILE && e->lev->direct_table)
		/* the table is full and the kernel closed that connection */
		evst_count(e->lev, table_full);
	if (cqe->res >= 0) {
		if (e->count < e->cap || held_grow(e) == 0) {
			e->held[(e->head + e->count++) % e->cap] = cqe->res;
			atomic_fetch_add_explicit(&e->lev->counters.held, 1,
						  memory_order_relaxed);
		} else {
			/* out of memory: close it, but never silently */
			if (e->lev->direct_table)
				evst_ring_close_slot(e->r, cqe->res);
			else
				close(cqe->res);
			evst_count(e->lev, accept_errors);
		}
		wake = true;
	} else if (cqe->res != -ECANCELED || !e->cancel_sent) {
		e->err = -cqe->res;
		wake = true;
	}
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		/* the multishot ended: cancelled, an error (-EMFILE...), or
		 * the kernel's own reasons; ready() re-arms if still wanted */
		e->ended = !e->cancel_sent;
		e->armed = false;
		e->cancel_sent = false;
		evst_ring_done(e->r);
		wake = true;
	}
	return wake;
}

static void backoff_timer_cb(evutil_socket_t fd, short what, void *arg);

/* Loop thread, no ring lock. */
static void accept_ready(struct evst_uop *op)
{
	struct uring_engine *e = (struct uring_engine *)op;
	struct evsteer_listener *lev = e->lev;

	evst_lock(lev);
	lev->refcnt++;

	if (evst_active(lev)) {
		evst_count(lev, wakeups);
		uint64_t now = lev->ws ? evst_now_ns() : 0;
		unsigned int n, bi = 0, nb = 0;
		int batch[32];
		for (n = 0; n < lev->max_accepts; n++) {
			if (bi == nb) {
				/* a batch per lock, not a lock per connection */
				unsigned int want = lev->max_accepts - n;
				evst_ring_lock(e->r);
				nb = held_pop(e, batch, want < 32 ? want : 32);
				evst_ring_unlock(e->r);
				bi = 0;
				if (!nb)
					break;
			}
			int fd = batch[bi++];
			evst_took(lev, now);
			if (lev->direct_table) {
				if (!evst_deliver_direct(lev, e->r, fd))
					break;
				continue;
			}
			/* multishot accept shares one address buffer between
			 * completions, so ask the socket itself */
			struct sockaddr_storage ss;
			socklen_t len = sizeof(ss);
			if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) {
				/* reset before we got to it */
				close(fd);
				continue;
			}
			if (!evst_deliver(lev, fd, (struct sockaddr *)&ss, len))
				break;
		}
		if (bi < nb) {
			/* delivery stopped: the rest waits, in order */
			evst_ring_lock(e->r);
			held_push_front(e, batch + bi, nb - bi);
			evst_ring_unlock(e->r);
		}
		evst_ring_lock(e->r);
		if (n == lev->max_accepts && e->count) {
			evst_count(lev, capped_wakeups);
			evst_ring_mark_ready(e->r, &e->op); /* yield, then more */
		}
		if (lev->ws && !e->count && e->armed)
			evst_ws_empty(lev->ws, now);
		evst_ring_unlock(e->r);
	}

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
	if (active && e->want && !e->armed && !e->backing_off)
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
	if (evst_active(lev) && e->want && !e->armed) {
		evst_count(lev, exhausted_retries);
		arm(e);
	}
	evst_ring_unlock(e->r);
	evst_decref_and_unlock(lev);
}

static void engine_release(struct evst_uop *op)
{
	free(((struct uring_engine *)op)->held);
	free(op);
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
	e->op.complete = accept_complete;
	e->op.ready = accept_ready;
	e->op.release = engine_release;
	e->lev = lev;
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
	/* armed from the loop thread: posted */
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
 * Cancel and reap before the socket may close: a pending multishot accept
 * keeps a listening socket alive after close. Whoever is here reaps; the
 * loop thread may reap the final completion first, which is as good.
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
		evst_err("listener fd %d: multishot accept did not end after "
			 "cancel",
			 lev->fd);
	evst_ring_wait_idle(e->r, &e->op);
	evst_ring_unlock(e->r);
	event_del_block(e->timer);
}

static void uring_destroy(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	struct evsteer_uring *r = e->r;
	event_free(e->timer);
	evst_ring_lock(r);
	/* accepted but never delivered: closed and counted, not leaked */
	while (e->count) {
		if (lev->direct_table)
			evst_ring_close_slot(r, e->held[e->head]);
		else
			close(e->held[e->head]);
		e->head = (e->head + 1) % e->cap;
		e->count--;
		atomic_fetch_sub_explicit(&lev->counters.held, 1,
					  memory_order_relaxed);
		evst_count(lev, closed_on_free);
	}
	evst_ring_release(r, &e->op);
	evst_ring_unlock(r);
	evst_ring_put(r);
	lev->engine = NULL;
}

/* A sibling takes a connection this (stalled) worker's ring accepted. Its
 * completions may not even be reaped yet: reap them here. */
static int uring_steal(struct evsteer_listener *lev)
{
	struct uring_engine *e = engine_of(lev);
	if (lev->direct_table)
		return -1; /* slots belong to this ring */
	int fd = -1;
	evst_ring_lock(e->r);
	evst_ring_reap(e->r, 0);
	if (!held_pop(e, &fd, 1))
		fd = -1;
	evst_ring_unlock(e->r);
	return fd;
}

const struct evst_engine_ops evst_uring_engine = {
	.kind = EVSTEER_ENGINE_URING,
	.name = "uring",
	.bpf_name = "bpf+uring",
	.init = uring_init,
	.enable = uring_enable,
	.disable = uring_disable,
	.quiesce = uring_quiesce,
	.destroy = uring_destroy,
	.steal = uring_steal,
};

struct evsteer_uring *evsteer_listener_get_uring(const struct evsteer_listener *lev)
{
	if (!lev || lev->ops != &evst_uring_engine) {
		errno = EINVAL;
		return NULL;
	}
	return ((struct uring_engine *)lev->engine)->r;
}

/* SPDX-License-Identifier: MIT */
/*
 * Driving a ring: SQEs staged and submitted (the loop thread's wait for
 * the end of its round), cancels from any thread, completions reaped and
 * routed to their owners, and the ready and later lists that say whose
 * ready() the loop runs next. Which ring a base has, its wake-ups and the
 * drain rounds are uring/rings.c; making its io_uring, uring/setup.c;
 * slots and their I/O, uring/io.c.
 *
 * How a ring is driven (the rules the engines rely on):
 *
 * Wake-ups. The loop thread runs run_loop_work() (uring/rings.c) when the
 * ring's eventfd fires, when an op was marked ready (kick_ev) or after a
 * yield (yield_ev).
 * It drains until there is nothing left, as libevent's accept loop retries
 * until EAGAIN: reap the CQ, run ready(), flush, reap again. While it drains
 * the eventfd is switched off (IORING_CQ_EVENTFD_DISABLED), so completions
 * posted meanwhile (task work runs on the exit of the callbacks' own system
 * calls under COOP_TASKRUN) are picked up by the next round instead of
 * waking the loop once more; it is switched on again, and the CQ looked at
 * once more, before returning to the loop.
 *
 * Submission. SQEs queued by the loop thread inside run_loop_work() (re-arms,
 * direct sends and closes from callbacks) are not submitted one by one: they
 * are staged in the ring's own array, and the end of each round copies them
 * into the SQ and submits them all with one io_uring_enter(), which also
 * runs pending task work (IORING_SQ_TASKRUN) so the next round sees its
 * completions. Staged, not left in the SQ: another thread's submission
 * (a cancel from disable or free) would take whatever the SQ holds with it,
 * and the kernel ties a request to the task that submitted it (its
 * completion work runs there, interrupting that thread's system calls with
 * EINTR, and it is cancelled when that thread exits). A cancel of a request
 * still staged just drops it. SQEs queued anywhere else (another thread's
 * cancel, a send from a timer callback, set-up) are submitted at once, as
 * the caller may wait for their completion.
 *
 * Fairness. Each op decides how much it does per wake-up (the accept cap,
 * keyed by evst_ring_wake_gen()); what must wait goes to the "later" list,
 * run after the loop has polled its other events. The number of rounds per
 * wake-up is bounded too.
 */
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>

#include <event2/event.h>

#include "uring/ring_impl.h"

/* user_data of a staged SQE that was cancelled before submission */
#define UDATA_DROPPED UINT64_MAX

void evst_ring_lock(struct evsteer_uring *r)
{
	pthread_mutex_lock(&r->lock);
}

void evst_ring_unlock(struct evsteer_uring *r)
{
	pthread_mutex_unlock(&r->lock);
}

struct io_uring *evst_ring_uring(struct evsteer_uring *r)
{
	return &r->ring;
}

struct event_base *evst_ring_base(struct evsteer_uring *r)
{
	return r->base;
}

/* Ring lock held: the loop thread, inside run_loop_work(). */
static bool deferring(const struct evsteer_uring *r)
{
	return r->in_work && pthread_equal(r->owner, pthread_self());
}

/* Ring lock held, loop thread: move the staged SQEs into the SQ. */
static void unstage_all(struct evsteer_uring *r)
{
	for (unsigned int i = 0; i < r->nstaged; i++) {
		if (r->stage[i].user_data == UDATA_DROPPED)
			continue;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
		if (!sqe) { /* not while other threads submit at once */
			io_uring_submit(&r->ring);
			sqe = io_uring_get_sqe(&r->ring);
		}
		*sqe = r->stage[i];
	}
	r->nstaged = 0;
}

/* Ring lock held, loop thread: no room for n more staged SQEs: submit
 * what is staged now rather than wait for the end of the round. */
static void stage_make_room(struct evsteer_uring *r, unsigned int n)
{
	if (r->nstaged + n > EVST_STAGE_MAX) {
		unstage_all(r);
		io_uring_submit(&r->ring);
	}
}

struct io_uring_sqe *evst_ring_sqe_now(struct evsteer_uring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe) {
		io_uring_submit(&r->ring);
		sqe = io_uring_get_sqe(&r->ring);
	}
	return sqe;
}

struct io_uring_sqe *evst_ring_sqe(struct evsteer_uring *r)
{
	if (!deferring(r))
		return evst_ring_sqe_now(r);
	stage_make_room(r, 1);
	struct io_uring_sqe *sqe = &r->stage[r->nstaged++];
	memset(sqe, 0, sizeof(*sqe));
	return sqe;
}

int evst_ring_submit_now(struct evsteer_uring *r)
{
	int n = io_uring_submit(&r->ring);
	return n < 0 ? n : 0;
}

int evst_ring_submit_all_now(struct evsteer_uring *r)
{
	if (deferring(r))
		unstage_all(r);
	return io_uring_submit(&r->ring);
}

void evst_ring_reserve(struct evsteer_uring *r, unsigned int n)
{
	if (deferring(r)) {
		stage_make_room(r, n);
	} else if (io_uring_sq_space_left(&r->ring) < n) {
		io_uring_submit(&r->ring);
	}
}

static int cancel_sqe(struct evsteer_uring *r, uint64_t user_data, int flags)
{
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_cancel64(sqe, user_data, flags);
	io_uring_sqe_set_data64(sqe, EVST_UDATA_IGNORE);
	return evst_ring_submit(r, 0);
}

static int cancel_req(struct evsteer_uring *r, uint64_t user_data, int flags)
{
	if (!r->owner_known || pthread_equal(r->owner, pthread_self()))
		return cancel_sqe(r, user_data, flags);
	/*
	 * Another thread: no SQE. A thread that submits to a ring is tied to
	 * it by the kernel, which interrupts that thread's system calls
	 * (EINTR) with work for the ring, down to its teardown; a
	 * synchronous cancel (io_uring_register) does not tie it. The
	 * request's completion still comes through the loop thread.
	 */
	struct io_uring_sync_cancel_reg reg = {
		.addr = user_data,
		.fd = -1,
		.flags = (__u32)flags,
		.timeout = {.tv_sec = -1, .tv_nsec = -1},
	};
	int err = io_uring_register_sync_cancel(&r->ring, &reg);
	if (err == -EINVAL || err == -EOPNOTSUPP) /* before Linux 6.0 */
		return cancel_sqe(r, user_data, flags);
	/* -ENOENT: it completed meanwhile; its CQE is on its way */
	return err == -ENOENT || err == -EALREADY ? 0 : err;
}

/* Ring lock held, any thread: drop a staged, not yet submitted, unlinked
 * request; true if it was there (it will never complete). */
static bool unstage_one(struct evsteer_uring *r, uint64_t user_data)
{
	for (unsigned int i = 0; i < r->nstaged; i++) {
		if (r->stage[i].user_data == user_data) {
			/* a dropped link head would still run as a NOP, so
			 * only unlinked requests (accepts) come here */
			r->stage[i].user_data = UDATA_DROPPED;
			return true;
		}
	}
	return false;
}

int evst_ring_cancel(struct evsteer_uring *r, uint64_t user_data)
{
	if (unstage_one(r, user_data))
		return 1;
	return cancel_req(r, user_data, 0);
}

/*
 * Ring lock held. The ring's eventfd is an event in the base while an
 * engine on the ring delivers (an enabled listener, as libevent's own
 * listener event is) or a request is in flight; then a write to the
 * eventfd is how any other thread wakes the loop, thread-aware base or
 * not. Taken out when neither holds, so the ring never keeps the loop
 * running by itself. noblock: the loop thread may be waiting for the ring
 * lock inside the event's callback (the same trap as libevent #1224).
 */
static void efd_sync(struct evsteer_uring *r)
{
	bool in = r->inflight > 0 || r->wanted > 0;
	if (in == r->efd_added)
		return;
	if (in)
		event_add(r->efd_ev, NULL);
	else
		event_del_noblock(r->efd_ev);
	r->efd_added = in;
}

int evst_ring_submit(struct evsteer_uring *r, int long_lived)
{
	if (!deferring(r)) {
		int n = io_uring_submit(&r->ring);
		if (n < 0)
			return n;
	}
	if (long_lived) {
		r->inflight++;
		efd_sync(r);
	}
	return 0;
}

static void list_push(struct evst_uop ***tail, struct evst_uop *op)
{
	op->next_ready = NULL;
	**tail = op;
	*tail = &op->next_ready;
}

/* Remove op from the list at head/tail; true if it was there. */
static bool list_remove(struct evst_uop **head, struct evst_uop ***tail,
			struct evst_uop *op)
{
	struct evst_uop **pp = head;
	while (*pp && *pp != op)
		pp = &(*pp)->next_ready;
	if (!*pp)
		return false;
	*pp = op->next_ready;
	if (*tail == &op->next_ready)
		*tail = pp;
	return true;
}

void evst_ring_done(struct evsteer_uring *r)
{
	r->inflight--;
	efd_sync(r);
}

void evst_ring_want(struct evsteer_uring *r, bool on)
{
	r->wanted += on ? 1 : -1;
	efd_sync(r);
}

void evst_ring_mark_ready(struct evsteer_uring *r, struct evst_uop *op)
{
	if (op->queued || op->detached)
		return;
	op->queued = true;
	list_push(&r->ready_tail, op);
	/* the draining loop thread looks at the list before it stops */
	if (r->in_work)
		return;
	/*
	 * From another thread (a sibling handing over connections, a reap
	 * during a steal or a free): a write to the ring's eventfd, which is
	 * in the base while any engine here delivers, wakes the loop whether
	 * or not the base was made thread-aware. Only the loop thread (or a
	 * loop not started yet) uses event_active(). Once the write is done
	 * the event stays until the loop has run: an engine cannot stop
	 * delivering (disable) from another thread without the loop seeing
	 * the op first, and a completion that empties `inflight` leaves
	 * `wanted` (issue 18: a wake-up lost when the last accept in flight
	 * was reaped by a thief after the write).
	 */
	if (r->owner_known && !pthread_equal(r->owner, pthread_self()) &&
	    r->efd_added && eventfd_write(r->efd, 1) == 0)
		return;
	event_active(r->kick_ev, EV_READ, 0);
}

void evst_ring_mark_later(struct evsteer_uring *r, struct evst_uop *op)
{
	if (op->queued || op->detached)
		return;
	op->queued = true;
	list_push(&r->later_tail, op);
	/* an active event would run in this same pass; a zero timer runs
	 * after the loop has polled its other events */
	static const struct timeval zero = {0, 0};
	evtimer_add(r->yield_ev, &zero);
}

void evst_ring_unready(struct evsteer_uring *r, struct evst_uop *op)
{
	if (!op->queued)
		return;
	if (!list_remove(&r->ready_head, &r->ready_tail, op))
		list_remove(&r->later_head, &r->later_tail, op);
	op->queued = false;
}

void evst_ring_reap(struct evsteer_uring *r, unsigned int wait_us)
{
	struct io_uring_cqe *cqes[64];

	if (wait_us) {
		/* what the loop thread deferred (a cancel from inside a
		 * callback) must be in the kernel before waiting on it */
		if (deferring(r))
			unstage_all(r);
		if (io_uring_sq_ready(&r->ring))
			io_uring_submit(&r->ring);
		struct __kernel_timespec ts = {.tv_sec = wait_us / 1000000,
					       .tv_nsec = (wait_us % 1000000) * 1000};
		struct io_uring_cqe *c;
		io_uring_wait_cqe_timeout(&r->ring, &c, &ts);
	}
	for (;;) {
		unsigned int n = io_uring_peek_batch_cqe(&r->ring, cqes, 64);
		if (!n) {
			/* completions the kernel held back on a full CQ */
			if (io_uring_cq_has_overflow(&r->ring)) {
				r->overflows++;
				evst_debug("ring: the CQ overflowed; flushing the "
					   "kernel's backlog");
				if (io_uring_get_events(&r->ring) == 0 &&
				    io_uring_cq_ready(&r->ring))
					continue;
			}
			return;
		}
		for (unsigned int i = 0; i < n; i++) {
			struct evst_uop *op =
				(struct evst_uop *)(uintptr_t)io_uring_cqe_get_data64(
					cqes[i]);
			struct evst_uop *wake = op ? op->complete(op, cqes[i]) : NULL;
			if (wake)
				evst_ring_mark_ready(r, wake);
		}
		io_uring_cq_advance(&r->ring, n);
	}
}

/*
 * Ring lock held, loop thread. Submit what the round queued and run task
 * work the kernel is holding for us, in one system call; nothing when
 * there is neither.
 */
void evst_ring_flush(struct evsteer_uring *r)
{
	unstage_all(r);
	if (!io_uring_sq_ready(&r->ring) && !evst_ring_taskrun_pending(r))
		return;
	int n = io_uring_submit_and_get_events(&r->ring);
	if (n < 0 && n != -EINTR && n != -EAGAIN && n != -EBUSY)
		evst_warn("ring: io_uring_enter: %s", strerror(-n));
}

bool evst_ring_quiet(struct evsteer_uring *r)
{
	return !io_uring_cq_ready(&r->ring) && !evst_ring_taskrun_pending(r) &&
	       !io_uring_cq_has_overflow(&r->ring);
}

int evst_ring_cancel_any(struct evsteer_uring *r)
{
	return cancel_req(r, 0, IORING_ASYNC_CANCEL_ANY);
}

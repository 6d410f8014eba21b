/* SPDX-License-Identifier: MIT */
/*
 * One io_uring per event_base, driven by the base: the ring's eventfd is an
 * event in it, so applications keep calling event_base_dispatch() and
 * nothing else.
 *
 * Threads. The ring's lock guards the submission and completion queues, so
 * any thread may submit a cancel or reap completions. Requests that live
 * long (multishot accept) are armed only from the base's loop thread: the
 * kernel runs a request's completion work on the task that submitted it,
 * and cancels its requests when that task exits. Completions are routed
 * under the ring lock to their owner's queue, never to user code; owners
 * deliver from the loop thread (ready()). How the loop drains and when
 * SQEs are submitted: the comment at the top of uring/ring.c.
 *
 * The engines' view of a ring (src/engine/uring_*.c); the files that make
 * and drive it share its struct through uring/ring_impl.h.
 */
#ifndef EVSTEER_URING_RING_H
#define EVSTEER_URING_RING_H

#include <liburing.h>

#include "internal.h"

struct evsteer_uring;

/* What a request's user_data points to. */
struct evst_uop {
	/* Ring lock held: record the completion, never call user code.
	 * Return the op whose ready() should run in the loop thread (op
	 * itself, the op of its owner), or NULL. */
	struct evst_uop *(*complete)(struct evst_uop *op,
				     const struct io_uring_cqe *cqe);
	/* Loop thread, no ring lock: deliver what complete() recorded. */
	void (*ready)(struct evst_uop *op);
	/* ready() wanted and not yet run (ring lock). */
	bool queued;
	/* Being worked on by ready() outside the ring lock (ring lock). */
	int busy;
	/* Owner destroyed during its own ready(): release() once it returns. */
	bool dead;
	/* Its owner is going away: no more ready() (ring lock). */
	bool detached;
	void (*release)(struct evst_uop *op);
	struct evst_uop *next_ready;
};

/* rings.c */

/*
 * The ring of base, created on first use (refcounted). NULL with errno and
 * *why set when io_uring is unavailable (ENOSYS, EPERM from a seccomp
 * profile, io_uring_disabled, missing opcodes); the probe runs once per
 * process.
 */
EVST_HIDDEN struct evsteer_uring *evst_ring_get(struct event_base *base,
					    const char **why);
EVST_HIDDEN void evst_ring_put(struct evsteer_uring *r);
/* In a child of fork(), r inherited (common/process.h): evst_ring_put()
 * without a lock, a cancel or a reap (the queues are memory shared with
 * the parent's ring): at the last reference the child's views are
 * unmapped and its copies of the descriptors closed. */
EVST_HIDDEN void evst_ring_forget(struct evsteer_uring *r);
/* Changes with every wake-up of the loop thread: per-wake-up budgets. */
EVST_HIDDEN unsigned long evst_ring_wake_gen(const struct evsteer_uring *r);
/*
 * Ring lock held. Wait until no ready() runs on op in another thread, then
 * detach it: ready() will not be called for it again.
 */
EVST_HIDDEN void evst_ring_wait_idle(struct evsteer_uring *r, struct evst_uop *op);
/* Ring lock held. Release op now, or after its running ready() returns
 * (when the owner is destroyed from inside it). */
EVST_HIDDEN void evst_ring_release(struct evsteer_uring *r, struct evst_uop *op);
/* The eventfd the ring signals on completions (never read by us). */
EVST_HIDDEN int evst_ring_eventfd(const struct evsteer_uring *r);

/* setup.c */

/*
 * Kernel features a ring may lack, each probed at run time once per
 * process (a kernel's answer does not change) and each with a way to do
 * without. EVSTEER_TEST_MASK hides them from rings made afterwards.
 */
enum evst_ring_feat {
	/* IORING_ACCEPT_DONTWAIT (Linux 6.10): without it, direct listeners
	 * do not steal from stalled siblings (the accept would wait) */
	EVST_FEAT_ACCEPT_DONTWAIT = 1u << 0,
	/* IORING_OP_FIXED_FD_INSTALL (Linux 6.8): without it,
	 * evsteer_uring_fd_install() fails with EOPNOTSUPP */
	EVST_FEAT_FIXED_FD_INSTALL = 1u << 1,
	/* IORING_CQE_F_SOCK_NONEMPTY on accept (Linux 6.10): probed and
	 * reported; nothing depends on it yet */
	EVST_FEAT_SOCK_NONEMPTY = 1u << 2,
};
EVST_HIDDEN bool evst_ring_has(const struct evsteer_uring *r,
			       enum evst_ring_feat f);
/* Which of feats (EVST_FEAT_* bits) r lacks, whether masked or missing,
 * and what is done without each, as a path-report reason ("io_uring:
 * ...; ..."): static, valid for the life of the process. "" when r has
 * them all. */
EVST_HIDDEN const char *evst_ring_lacks(const struct evsteer_uring *r,
					unsigned int feats);

/* ring.c */

EVST_HIDDEN void evst_ring_lock(struct evsteer_uring *r);
EVST_HIDDEN void evst_ring_unlock(struct evsteer_uring *r);
/* Ring lock held. An SQE (submitting what is queued if the SQ is full);
 * staged for the end of the round when the loop thread is draining. */
EVST_HIDDEN struct io_uring_sqe *evst_ring_sqe(struct evsteer_uring *r);
/* Ring lock held: an SQE in the SQ itself, never staged: for a request
 * that must be submitted (evst_ring_submit_now) before the lock is let go. */
EVST_HIDDEN struct io_uring_sqe *evst_ring_sqe_now(struct evsteer_uring *r);
/* Ring lock held: submit the SQ now, whatever thread and round. */
EVST_HIDDEN int evst_ring_submit_now(struct evsteer_uring *r);
/* Ring lock held: the next n evst_ring_sqe() come without a submission in
 * between (a linked chain). */
EVST_HIDDEN void evst_ring_reserve(struct evsteer_uring *r, unsigned int n);
/*
 * Ring lock held, any thread: cancel the request with user_data. 1: it was
 * staged and is dropped (no completion will come); 0: cancelled, its
 * completion (-ECANCELED, or its result if it won the race) will be
 * reaped; -errno.
 */
EVST_HIDDEN int evst_ring_cancel(struct evsteer_uring *r, uint64_t user_data);
/* Ring lock held. Submit (at the end of the round when the loop thread is
 * draining: see uring/ring.c); `long_lived` requests count as in
 * flight, which keeps the ring's event in the base. */
EVST_HIDDEN int evst_ring_submit(struct evsteer_uring *r, int long_lived);
/* Ring lock held: a long-lived request finished. */
EVST_HIDDEN void evst_ring_done(struct evsteer_uring *r);
/* Ring lock held: an engine starts (on) or stops delivering on r; while
 * any does, the ring's eventfd stays in the base (ring.c, efd_sync). */
EVST_HIDDEN void evst_ring_want(struct evsteer_uring *r, bool on);
/* From now on a wake-up drains after the other events ready in the same
 * pass of the loop (rings.c, efd_cb); any thread. */
EVST_HIDDEN void evst_ring_defer_wakeups(struct evsteer_uring *r);
/* Ring lock held. Route every completion available; with wait_us > 0 wait
 * that long for one first. */
EVST_HIDDEN void evst_ring_reap(struct evsteer_uring *r, unsigned int wait_us);
/* Ring lock held: have op->ready() run in the loop thread soon. */
EVST_HIDDEN void evst_ring_mark_ready(struct evsteer_uring *r, struct evst_uop *op);
/* Ring lock held: have op->ready() run on the next wake-up, after the loop
 * has polled its other events (a budget was used up). */
EVST_HIDDEN void evst_ring_mark_later(struct evsteer_uring *r, struct evst_uop *op);
/* Ring lock held: forget op (it is being destroyed). */
EVST_HIDDEN void evst_ring_unready(struct evsteer_uring *r, struct evst_uop *op);
/* Ring lock held: no completion waits in the CQ and no task work is
 * pending (what an armed accept took off the socket has been reaped). */
EVST_HIDDEN bool evst_ring_quiet(struct evsteer_uring *r);
EVST_HIDDEN struct io_uring *evst_ring_uring(struct evsteer_uring *r);
EVST_HIDDEN struct event_base *evst_ring_base(struct evsteer_uring *r);

/* io.c */

/*
 * Ring lock held. Register the sparse fixed-file table (once per ring; a
 * later, different size keeps the first). 0 or -errno.
 */
EVST_HIDDEN int evst_ring_direct_table(struct evsteer_uring *r, unsigned int size);
/* Ring lock held: a direct slot was accepted / is being closed by us. */
EVST_HIDDEN void evst_ring_slot_opened(struct evsteer_uring *r);
EVST_HIDDEN void evst_ring_close_slot(struct evsteer_uring *r, int slot);

/*
 * Ring lock of `from` NOT held, any thread: send direct slot `slot` of
 * `from` into the fixed-file table of `to` (IORING_OP_MSG_RING), where it
 * arrives as a completion for `to_op` with the new slot in res; then close
 * it in `from`. 0, or -errno (nothing was sent: the slot is still open).
 */
EVST_HIDDEN int evst_ring_send_slot(struct evsteer_uring *from, int slot,
				    struct evsteer_uring *to, uint64_t to_op);

/* user_data of requests whose completion nobody needs (cancels). */
#define EVST_UDATA_IGNORE 0

#endif

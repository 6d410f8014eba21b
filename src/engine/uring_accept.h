/* SPDX-License-Identifier: MIT */
/*
 * What the two io_uring accept engines share (uring_accept.c): the queue
 * of connections accepted and not yet delivered, the back-off timer,
 * enable/disable/quiesce/destroy, the ready() that delivers from the loop
 * thread with the per-wake-up cap, and the bookkeeping of accepts in
 * flight. Each engine embeds struct evst_ua first in its own struct and
 * says through struct evst_ua_ops how it arms, cancels, delivers and
 * closes: the fd engine (uring_fd.c) and the direct engine
 * (uring_direct.c). The shared code never asks which one it serves.
 */
#ifndef EVSTEER_ENGINE_URING_ACCEPT_H
#define EVSTEER_ENGINE_URING_ACCEPT_H

#include "uring/ring.h"

struct evst_ua;

/* What each io_uring engine does its own way. */
struct evst_ua_ops {
	/* Ring lock held, loop thread only (uring/ring.h): arm the accepts
	 * missing, staged for the round's one submission, counting each in
	 * e->armed. Returns how many should be in flight; with fewer the
	 * shared code tries again on the next pass. */
	unsigned int (*arm)(struct evst_ua *e);
	/* Ring lock held, any thread: cancel every accept in flight; one
	 * still staged is dropped (evst_ua_accept_ended() for it). True if
	 * a cancel failed (the caller's next call tries again). */
	bool (*cancel)(struct evst_ua *e);
	/* Loop thread, listener lock held and a reference taken, no ring
	 * lock: hand one held connection to the user (evst_deliver(),
	 * evst_deliver_direct()). False when delivery must stop. */
	bool (*deliver)(struct evst_ua *e, struct evst_conn *c);
	/* Ring lock held: close a connection that will not be delivered. */
	void (*close_conn)(struct evst_ua *e, int fd);
	/* Ring lock held: free the engine, once the ring has let go of it
	 * (evst_ring_release() ends here). */
	void (*free)(struct evst_ua *e);
	/* ready() arms again once no more than this many are in flight. */
	unsigned int refill_at;
};

struct evst_ua {
	struct evst_uop op; /* ready() and release(); an engine may use it
			     * as the user_data of its own requests */
	const struct evst_ua_ops *ops;
	struct evsteer_listener *lev;
	struct evsteer_uring *r;
	struct event *timer; /* back-off before re-arming */

	/* ring lock */
	bool want;          /* should be armed */
	unsigned int armed; /* accepts in flight */
	bool cancel_sent;   /* until every one in flight has ended */
	bool backing_off;
	bool probing;     /* after a failure: one accept until one succeeds */
	bool orphaned;    /* the thread that armed them exited: re-arm all */
	int err;          /* an accept error for ready() to report */
	unsigned long gen; /* the ring's wake-up the count below belongs to */
	unsigned int done; /* delivered in that wake-up (the accept cap) */
	unsigned int wake_cap; /* that wake-up's cap (evst_accept_cap) */
	/* accepted, not yet delivered: a ring buffer that grows, so a burst
	 * larger than any fixed size (or a CQ overflow) loses nothing */
	struct evst_conn *held;
	unsigned int cap, head, count;
};

static inline struct evst_ua *evst_ua_of(struct evsteer_listener *lev)
{
	return lev->engine;
}

static inline uint64_t evst_udata(struct evst_uop *op)
{
	return (uint64_t)(uintptr_t)op;
}

/*
 * For an engine's init op: a zeroed engine of size bytes (struct evst_ua
 * first in it) with the shared part set up: the ring of lev's base, the
 * back-off timer, ready() and release(). NULL with *err (-errno) and, when
 * io_uring is not to be had, lev->engine_reason. The caller sets
 * lev->engine once its own part is set up.
 */
EVST_HIDDEN struct evst_ua *evst_ua_new(struct evsteer_listener *lev,
					const struct evst_ua_ops *ops,
					size_t size, int *err);
/* Undo evst_ua_new() when a later step of init fails. */
EVST_HIDDEN void evst_ua_discard(struct evst_ua *e);
/* Free the held queue and the engine (ops->free of an engine with
 * nothing else to wait for). */
EVST_HIDDEN void evst_ua_free(struct evst_ua *e);

/* Ring lock held: queue an accepted connection (len 0: no address), or
 * close it and count an error when out of memory. */
EVST_HIDDEN void evst_ua_held_push(struct evst_ua *e, int fd,
				   const struct sockaddr_storage *ss,
				   socklen_t len);
/* Ring lock held: take up to max from the front. */
EVST_HIDDEN unsigned int evst_ua_held_pop(struct evst_ua *e,
					  struct evst_conn *out,
					  unsigned int max);
/* Ring lock held: put k taken ones back at the front, in order. */
EVST_HIDDEN void evst_ua_held_push_front(struct evst_ua *e,
					 const struct evst_conn *c,
					 unsigned int k);

/* Ring lock held, from a completion: one accept in flight ended. */
EVST_HIDDEN void evst_ua_accept_ended(struct evst_ua *e);
/* Ring lock held, from a completion: an accept gave res (an fd, a slot
 * the engine has counted, or -errno); queue it, or note the error for
 * ready(). */
EVST_HIDDEN void evst_ua_accepted(struct evst_ua *e, int res,
				  const struct sockaddr_storage *ss,
				  socklen_t len);

/* The engine ops both io_uring engines take as they are (internal.h says
 * who calls them, with which locks). */
EVST_HIDDEN int evst_ua_enable(struct evsteer_listener *lev);
EVST_HIDDEN int evst_ua_disable(struct evsteer_listener *lev);
EVST_HIDDEN void evst_ua_quiesce(struct evsteer_listener *lev);
EVST_HIDDEN void evst_ua_destroy(struct evsteer_listener *lev);
/* The engine op forget, for both engines (internal.h says what it may
 * touch). */
EVST_HIDDEN void evst_ua_forget(struct evsteer_listener *lev);
EVST_HIDDEN int evst_ua_signal_fd(struct evsteer_listener *lev);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine that delivers direct descriptors: slots of the
 * ring's fixed-file table (uring/io.c), never fds.
 *
 * How it accepts. A slot has no address to pass on, so one multishot
 * accept serves the listener; the kernel ends it (no IORING_CQE_F_MORE) on
 * errors such as -ENFILE when the table is full, and ready() re-arms it.
 * Slots move between rings only by IORING_OP_MSG_RING: a leaving
 * sibling's are sent into this ring's table (adopt), and so are those a
 * stalled sibling's ring accepted; from a stalled sibling's socket this
 * engine accepts straight into its own table, with accepts that never
 * wait (steal_from).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/uring_accept.h"

/* IORING_ACCEPT_DONTWAIT (Linux 6.10): -EAGAIN instead of waiting for a
 * connection. liburing 2.3 does not know it; uring/setup.c probes it. */
#define EVST_ACCEPT_DONTWAIT (1U << 1)

struct direct_engine {
	struct evst_ua ua; /* first: lev->engine points at both; ua.op is
			    * the multishot's user_data */
	/* ring lock */
	bool ended; /* the kernel ended the multishot (not our cancel) */
	/* slots a leaving sibling sends into this ring's table arrive as
	 * completions for recv_op; the engine outlives its listener until
	 * every one announced has arrived */
	struct evst_uop recv_op;
	unsigned int msgs_in;
	bool released;
	/* accepts from a stalled sibling's socket */
	unsigned int steals_in, stolen_now;
	bool no_dontwait; /* no IORING_ACCEPT_DONTWAIT (probe, mask or EINVAL) */
};

static struct direct_engine *direct_of(struct evst_ua *ua)
{
	return (struct direct_engine *)ua;
}

static unsigned int direct_arm(struct evst_ua *ua)
{
	struct direct_engine *d = direct_of(ua);
	struct evsteer_listener *lev = ua->lev;

	struct io_uring_sqe *sqe = evst_ring_sqe(ua->r);
	if (!sqe)
		return 1;
	io_uring_prep_multishot_accept_direct(sqe, lev->fd, NULL, NULL,
					      lev->accept4_flags);
	io_uring_sqe_set_data64(sqe, evst_udata(&ua->op));
	if (evst_ring_submit(ua->r, 1) < 0)
		return 1;
	ua->armed++;
	if (d->ended)
		evst_count(lev, rearms);
	d->ended = false;
	return 1;
}

static bool direct_cancel(struct evst_ua *ua)
{
	int r = evst_ring_cancel(ua->r, evst_udata(&ua->op));
	if (r == 1)
		evst_ua_accept_ended(ua);
	return r < 0;
}

/* Ring lock held: the multishot accept gave a slot or -errno. */
static struct evst_uop *multishot_complete(struct evst_uop *op,
					   const struct io_uring_cqe *cqe)
{
	struct direct_engine *d = direct_of((struct evst_ua *)op);
	bool cancelled = d->ua.cancel_sent;

	if (cqe->res >= 0)
		evst_ring_slot_opened(d->ua.r);
	else if (cqe->res == -ENFILE)
		/* the table is full and the kernel closed that connection */
		evst_count(d->ua.lev, table_full);
	evst_ua_accepted(&d->ua, cqe->res, NULL, 0);
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		/* the multishot ended: cancelled, an error (-EMFILE...), or
		 * the kernel's own reasons; ready() re-arms if still wanted */
		d->ended = !cancelled;
		evst_ua_accept_ended(&d->ua);
	}
	return op;
}

static bool direct_deliver(struct evst_ua *ua, struct evst_conn *c)
{
	return evst_deliver_direct(ua->lev, ua->r, c->fd);
}

static void direct_close_conn(struct evst_ua *ua, int slot)
{
	evst_ring_close_slot(ua->r, slot);
}

static void direct_free(struct evst_ua *ua)
{
	struct direct_engine *d = direct_of(ua);
	if (d->msgs_in) {
		d->released = true; /* the last of them frees it */
		return;
	}
	evst_ua_free(ua);
}

static const struct evst_ua_ops direct_ua_ops = {
	.arm = direct_arm,
	.cancel = direct_cancel,
	.deliver = direct_deliver,
	.close_conn = direct_close_conn,
	.free = direct_free,
	.refill_at = 0, /* one multishot: armed again once it has ended */
};

/* A slot a leaving sibling sent into this ring's table (ring lock). */
static struct evst_uop *recv_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct direct_engine *d =
		(struct direct_engine *)((char *)op -
					 offsetof(struct direct_engine, recv_op));
	d->msgs_in--;
	if (d->released) {
		/* the listener went meanwhile: nothing to deliver it to */
		if (cqe->res >= 0)
			evst_ring_close_slot(d->ua.r, cqe->res);
		if (!d->msgs_in)
			evst_ua_free(&d->ua);
		return NULL;
	}
	if (cqe->res < 0) {
		if (cqe->res == -ENFILE)
			evst_count(d->ua.lev, table_full);
		evst_count(d->ua.lev, accept_errors);
		return NULL;
	}
	evst_ring_slot_opened(d->ua.r);
	evst_ua_held_push(&d->ua, cqe->res, NULL, 0);
	return &d->ua.op;
}

static int direct_init(struct evsteer_listener *lev)
{
	int err;
	struct evst_ua *ua = evst_ua_new(lev, &direct_ua_ops,
					 sizeof(struct direct_engine), &err);
	if (!ua)
		return err;
	struct direct_engine *d = direct_of(ua);
	evst_ring_lock(d->ua.r);
	err = evst_ring_direct_table(d->ua.r, lev->direct_table);
	evst_ring_unlock(d->ua.r);
	if (err < 0) {
		evst_warn("direct listener: registering a %u-slot table: %s",
			  lev->direct_table, strerror(-err));
		lev->engine_reason =
			"io_uring: cannot register the fixed-file table";
		evst_ua_discard(ua);
		return err;
	}
	d->ua.op.complete = multishot_complete;
	d->recv_op.complete = recv_complete;
	/* Stealing from a sibling's socket needs accepts that never wait
	 * (nothing may stay armed on a socket that is not ours): without
	 * them, no stealing. The path report says so, and whether slots can
	 * become fds (evsteer_uring_fd_install()). */
	d->no_dontwait = !evst_ring_has(d->ua.r, EVST_FEAT_ACCEPT_DONTWAIT);
	lev->engine_reason = evst_ring_lacks(
		d->ua.r, EVST_FEAT_ACCEPT_DONTWAIT | EVST_FEAT_FIXED_FD_INSTALL);
	lev->engine = &d->ua;
	return 0;
}

/* A leaving direct sibling's slots, or those a stalled one's ring
 * accepted: sent into this ring's table. How many were taken. */
static unsigned int adopt_slots(struct direct_engine *d,
				const struct evst_conn *c, unsigned int n)
{
	struct evst_ua *e = &d->ua;
	unsigned int k;
	for (k = 0; k < n; k++) {
		if (c[k].ring == e->r) {
			/* the same ring: the slot is already ours */
			evst_ring_lock(e->r);
			evst_ua_held_push(e, c[k].fd, NULL, 0);
			evst_ring_mark_ready(e->r, &e->op);
			evst_ring_unlock(e->r);
			continue;
		}
		evst_ring_lock(e->r);
		d->msgs_in++;
		evst_ring_unlock(e->r);
		int err = evst_ring_send_slot(c[k].ring, c[k].fd, e->r,
					      evst_udata(&d->recv_op));
		evst_ring_lock(e->r);
		if (err < 0 && err != -ETIMEDOUT)
			d->msgs_in--; /* nothing will arrive */
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

static unsigned int direct_adopt(struct evsteer_listener *lev,
				 const struct evst_conn *c, unsigned int n)
{
	return adopt_slots(direct_of(evst_ua_of(lev)), c, n);
}

/* ---- a direct worker takes a stalled sibling's queue into its table */

struct steal_op {
	struct evst_uop op;
	struct direct_engine *d;
};

static struct evst_uop *steal_complete(struct evst_uop *op,
				       const struct io_uring_cqe *cqe)
{
	struct steal_op *s = (struct steal_op *)op;
	struct direct_engine *d = s->d;
	free(s);
	d->steals_in--;
	if (cqe->res >= 0) {
		evst_ring_slot_opened(d->ua.r);
		evst_ua_held_push(&d->ua, cqe->res, NULL, 0);
		d->stolen_now++;
		return &d->ua.op;
	}
	if (cqe->res == -EINVAL && !d->no_dontwait) {
		/* the probe said yes (a kernel that refuses it for this socket
		 * alone): stop here too */
		d->no_dontwait = true;
		evst_info("listener fd %d: IORING_ACCEPT_DONTWAIT refused "
			  "(EINVAL): direct workers do not steal",
			  d->ua.lev->fd);
	}
	return NULL;
}

/*
 * What the victim's ring already accepted (its loop stalled with
 * completions not yet delivered): those slots are sent into our table, as
 * when a worker leaves. How many were taken.
 */
static unsigned int take_accepted(struct direct_engine *d,
				  struct evst_ua *ve, unsigned int max)
{
	struct evst_conn c[16];
	evst_ring_lock(ve->r);
	evst_ring_reap(ve->r, 0);
	unsigned int k = evst_ua_held_pop(ve, c, max < 16 ? max : 16);
	evst_ring_unlock(ve->r);
	for (unsigned int i = 0; i < k; i++)
		c[i].ring = ve->r;
	unsigned int sent = adopt_slots(d, c, k);
	if (sent < k) {
		/* not sent: still the sibling's, delivered by it */
		evst_ring_lock(ve->r);
		evst_ua_held_push_front(ve, c + sent, k - sent);
		evst_ring_unlock(ve->r);
	}
	return sent;
}

/* Up to max accepts from sock_fd into our table that never wait, submitted
 * and reaped now. How many connections they took. */
static unsigned int accept_now(struct direct_engine *d, int sock_fd,
			       unsigned int max)
{
	struct evst_ua *e = &d->ua;
	evst_ring_lock(e->r);
	unsigned int before = d->stolen_now, n = 0;
	for (; n < max; n++) {
		struct steal_op *s = malloc(sizeof(*s));
		struct io_uring_sqe *sqe = s ? evst_ring_sqe_now(e->r) : NULL;
		if (!sqe) {
			free(s);
			break;
		}
		*s = (struct steal_op){.op = {.complete = steal_complete}, .d = d};
		/* liburing 2.3 adds one to the index without special-casing
		 * ALLOC (later versions do): pass ALLOC - 1 so the SQE says
		 * ALLOC; plain ALLOC would wrap to 0, a regular fd */
		io_uring_prep_accept_direct(sqe, sock_fd, NULL, NULL,
					    e->lev->accept4_flags,
					    IORING_FILE_INDEX_ALLOC - 1);
		sqe->ioprio |= EVST_ACCEPT_DONTWAIT;
		io_uring_sqe_set_data64(sqe, evst_udata(&s->op));
		d->steals_in++;
	}
	if (n && evst_ring_submit_now(e->r) == 0)
		/* they complete inside the submission (they never wait) */
		evst_ring_reap(e->r, 0);
	for (int i = 0; d->steals_in && i < 1000; i++)
		evst_ring_reap(e->r, 1000);
	unsigned int took = d->stolen_now - before;
	evst_ring_unlock(e->r);
	return took;
}

/*
 * Accepts that never wait (DONTWAIT: -EAGAIN when the queue is empty, so
 * nothing stays armed on the sibling's socket), submitted now and reaped
 * now, under the group's lock: the socket cannot close in between.
 */
static int direct_steal_from(struct evsteer_listener *lev,
			     struct evsteer_listener *victim, int sock_fd,
			     unsigned int max)
{
	struct direct_engine *d = direct_of(evst_ua_of(lev));
	/* no stealing at all, also of what the victim's ring accepted: one
	 * rule to state in the path report, and a ring whose loop stalls
	 * accepts little anyway (its task work waits for its thread) */
	if (d->no_dontwait)
		return -1;
	int took = 0;
	if (victim && victim->ops == lev->ops) {
		unsigned int sent =
			take_accepted(d, evst_ua_of(victim), max);
		took += (int)sent;
		max -= sent;
	}
	took += (int)accept_now(d, sock_fd, max);
	return took;
}

const struct evst_engine_ops evst_uring_direct_engine = {
	.kind = EVSTEER_ENGINE_URING_DIRECT,
	.name = "uring-direct",
	.bpf_name = "bpf+uring-direct",
	.cbpf_name = "cbpf+uring-direct",
	.init = direct_init,
	.enable = evst_ua_enable,
	.disable = evst_ua_disable,
	.quiesce = evst_ua_quiesce,
	.destroy = evst_ua_destroy,
	.forget = evst_ua_forget,
	.adopt = direct_adopt,
	.steal_from = direct_steal_from,
	.signal_fd = evst_ua_signal_fd,
};

struct evsteer_uring *evsteer_listener_get_uring(const struct evsteer_listener *lev)
{
	if (!lev || lev->ops != &evst_uring_direct_engine) {
		errno = EINVAL;
		return NULL;
	}
	return ((const struct evst_ua *)lev->engine)->r;
}

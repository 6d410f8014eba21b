/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine that delivers real fds (made non-blocking / CLOEXEC
 * by the kernel as the flags ask).
 *
 * How it accepts. It keeps a few single-shot accepts in flight, each with
 * its own address buffer, so the callback gets the exact peer address
 * without a getpeername() per connection (a multishot accept shares one
 * buffer between its completions); they are re-armed with the ring's
 * batched submission at the end of each round (one io_uring_enter() for all
 * of them), and a re-armed accept on a socket with connections queued
 * completes inside that same call. (Measured: see docs/uring.md.)
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/uring_accept.h"

/* Single-shot accepts in flight per listener, topped up when no more than
 * ACCEPT_REFILL are left: one submission per few connections, not one per
 * connection, while enough stay armed to take a burst. */
#define ACCEPT_SLOTS 16
#define ACCEPT_REFILL 8

struct fd_engine;

/* One single-shot accept and the address it fills. */
struct accept_slot {
	struct evst_uop op;
	struct fd_engine *e;
	bool armed; /* ring lock */
	socklen_t len;
	struct sockaddr_storage ss;
};

struct fd_engine {
	struct evst_ua ua; /* first: lev->engine points at both */
	struct accept_slot slots[ACCEPT_SLOTS];
};

static struct fd_engine *fd_of(struct evst_ua *ua)
{
	return (struct fd_engine *)ua;
}

/* Ring lock held: one accept of slot s ended. */
static void slot_ended(struct fd_engine *e, struct accept_slot *s)
{
	s->armed = false;
	evst_ua_accept_ended(&e->ua);
}

static unsigned int fd_arm(struct evst_ua *ua)
{
	struct fd_engine *e = fd_of(ua);
	struct evsteer_listener *lev = ua->lev;
	/* after a failure (EMFILE...) one accept at a time finds out whether
	 * it is over; a batch would only fail as many times */
	unsigned int want = ua->probing ? 1 : ACCEPT_SLOTS;

	for (unsigned int i = 0; i < ACCEPT_SLOTS && ua->armed < want; i++) {
		struct accept_slot *s = &e->slots[i];
		if (s->armed)
			continue;
		struct io_uring_sqe *sqe = evst_ring_sqe(ua->r);
		if (!sqe)
			break;
		s->len = sizeof(s->ss);
		io_uring_prep_accept(sqe, lev->fd, (struct sockaddr *)&s->ss,
				     &s->len, lev->accept4_flags);
		io_uring_sqe_set_data64(sqe, evst_udata(&s->op));
		if (evst_ring_submit(ua->r, 1) < 0)
			break;
		s->armed = true;
		ua->armed++;
	}
	return want;
}

static bool fd_cancel(struct evst_ua *ua)
{
	struct fd_engine *e = fd_of(ua);
	bool failed = false;
	for (unsigned int i = 0; i < ACCEPT_SLOTS; i++) {
		struct accept_slot *s = &e->slots[i];
		if (!s->armed)
			continue;
		int r = evst_ring_cancel(ua->r, evst_udata(&s->op));
		if (r == 1)
			slot_ended(e, s);
		else if (r < 0)
			failed = true;
	}
	return failed;
}

/* Ring lock held: a single-shot accept completed (an fd or -errno). */
static struct evst_uop *slot_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct accept_slot *s = (struct accept_slot *)op;
	struct fd_engine *e = s->e;

	evst_ua_accepted(&e->ua, cqe->res, &s->ss, cqe->res >= 0 ? s->len : 0);
	slot_ended(e, s);
	return &e->ua.op;
}

/* Every connection carries the address its single-shot accept filled in
 * (slot_complete; adopted ones come with a sibling's). */
static bool fd_deliver(struct evst_ua *ua, struct evst_conn *c)
{
	return evst_deliver(ua->lev, c->fd, (struct sockaddr *)&c->ss, c->len);
}

static void fd_close_conn(struct evst_ua *ua, int fd)
{
	(void)ua;
	close(fd);
}

static const struct evst_ua_ops fd_ua_ops = {
	.arm = fd_arm,
	.cancel = fd_cancel,
	.deliver = fd_deliver,
	.close_conn = fd_close_conn,
	.free = evst_ua_free,
	.refill_at = ACCEPT_REFILL,
};

static int fd_init(struct evsteer_listener *lev)
{
	int err;
	struct evst_ua *ua =
		evst_ua_new(lev, &fd_ua_ops, sizeof(struct fd_engine), &err);
	if (!ua)
		return err;
	struct fd_engine *e = fd_of(ua);
	for (unsigned int i = 0; i < ACCEPT_SLOTS; i++) {
		e->slots[i].op.complete = slot_complete;
		e->slots[i].e = e;
	}
	lev->engine = &e->ua;
	return 0;
}

/* A sibling takes a connection this (stalled) worker's ring accepted. Its
 * completions may not even be reaped yet: reap them here. */
static int fd_steal(struct evsteer_listener *lev)
{
	struct evst_ua *e = evst_ua_of(lev);
	struct evst_conn c;
	int fd = -1;
	evst_ring_lock(e->r);
	evst_ring_reap(e->r, 0);
	if (evst_ua_held_pop(e, &c, 1))
		fd = c.fd;
	evst_ring_unlock(e->r);
	return fd;
}

/* A leaving sibling's connections: delivered from this listener's loop,
 * before anything this one accepts later. */
static unsigned int fd_adopt(struct evsteer_listener *lev,
			     const struct evst_conn *c, unsigned int n)
{
	struct evst_ua *e = evst_ua_of(lev);
	evst_ring_lock(e->r);
	unsigned int k;
	for (k = 0; k < n; k++) {
		unsigned int before = e->count;
		evst_ua_held_push(e, c[k].fd, &c[k].ss, c[k].len);
		if (e->count == before)
			break; /* out of memory: it was closed and counted */
	}
	if (k)
		evst_ring_mark_ready(e->r, &e->op);
	evst_ring_unlock(e->r);
	return k < n ? k + 1 : k;
}

const struct evst_engine_ops evst_uring_engine = {
	.kind = EVSTEER_ENGINE_URING,
	.name = "uring",
	.bpf_name = "bpf+uring",
	.cbpf_name = "cbpf+uring",
	.init = fd_init,
	.enable = evst_ua_enable,
	.disable = evst_ua_disable,
	.quiesce = evst_ua_quiesce,
	.destroy = evst_ua_destroy,
	.forget = evst_ua_forget,
	.steal = fd_steal,
	.adopt = fd_adopt,
	.signal_fd = evst_ua_signal_fd,
};

/* SPDX-License-Identifier: MIT */
/*
 * The event engine: the listening socket is a persistent read event in the
 * user's event_base and an accept4() loop drains it, exactly as libevent's
 * listener does, with three changes: a cap on accepts per wake-up (the
 * socket is level-triggered, so what is left is picked up on the next loop
 * pass, after the loop's other events), a paused back-off instead of a spin
 * when accept() fails (EMFILE leaves the socket readable forever), and,
 * where our BPF program steers, no accept4() that the program's count
 * already says will find EAGAIN (at one connection per wake-up, a third of
 * the accept4() calls: evst_queue_counted_empty).
 *
 * How many a pass takes is evst_accept_cap()'s: the option, else 128, or
 * for a member with a sibling socket in this process one connection per
 * pass, doubled while a backlog stands (listener.c). A member's pass goes
 * on past that cap, one at a time up to 128, while the loop holds no event
 * but the listener's own (evst_accept_alone): then nothing of the
 * application's can run between two accepts, and a poll would only cost.
 *
 * A member of a group with stall detection accepts in a pass of its own,
 * made active from the socket's read event, so it runs after the events
 * that this pass of the loop found ready along with the socket. One of
 * those may run long (a timer that spins, a handler that blocks in a
 * system call); a connection accepted before it would wait for it in the
 * application's hands, where no sibling can take it. Left queued, it is
 * pending to the steering, and a sibling takes it after the stall
 * threshold (group/steal.c). Measured (bench/JOURNAL.md, "The event
 * engine accepts last"): one connection per stall held for the whole
 * stall before, none after.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

struct event_engine {
	struct event *ev;    /* the listening socket, EV_READ|EV_PERSIST */
	struct event *timer; /* back-off after a failed accept */
	struct event *pass;  /* a member's accept pass, made active by ev */
	bool defer;          /* accept in pass (evst_queue_watched, fixed
				at creation like the ring's: uring_accept.c) */
};

static inline struct event_engine *engine_of(struct evsteer_listener *lev)
{
	return lev->engine;
}

static void start_backoff(struct evsteer_listener *lev)
{
	struct event_engine *e = engine_of(lev);
	unsigned int ms = evst_next_backoff_ms(lev);
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

	event_del_noblock(e->ev);
	evtimer_add(e->timer, &tv);
}

/* Lock held, reference taken. */
static void accept_loop(struct evsteer_listener *lev)
{
	if (!evst_active(lev))
		return;
	evst_count(lev, wakeups);
	uint64_t now = lev->member ? evst_now_ns() : 0;
	unsigned int cap = evst_accept_cap(lev, now);

	for (unsigned int n = 0; n < cap; n++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(lev->fd, (struct sockaddr *)&ss, &len,
				 lev->accept4_flags);
		if (fd < 0) {
			int err = errno;
			switch (evst_classify_accept_errno(err)) {
			case EVST_ERR_AGAIN:
				evst_accept_drained(lev);
				evst_end_episode(lev);
				if (lev->member)
					evst_queue_empty(lev, now);
				return;
			case EVST_ERR_RETRY:
				continue;
			case EVST_ERR_EXHAUSTED:
			case EVST_ERR_OTHER:
				/* The connection stays queued in the kernel;
				 * retrying at once would only spin. */
				start_backoff(lev);
				evst_report_accept_error(lev, err);
				return;
			}
		}
		evst_took(lev, now);
		if (len == 0) {
			/* old kernels answered some scans this way (libevent) */
			close(fd);
			continue;
		}
		if (!evst_deliver(lev, fd, (struct sockaddr *)&ss, len))
			return;
		/* the last one queued, by the program's count: what the
		 * accept after it would find EAGAIN says (no resync needed:
		 * the count is exact) */
		if (evst_queue_counted_empty(lev)) {
			evst_accept_drained(lev);
			return;
		}
		/* at the cap with nothing else in the loop: one more, and the
		 * heartbeat moves on with each (evst_accept_alone; of the
		 * engine's events only the socket's can be in the loop now:
		 * the timer has fired, the pass event runs) */
		if (n + 1 == cap && cap < EVSTEER_DEFAULT_MAX_ACCEPTS &&
		    evst_accept_alone(lev, engine_of(lev)->ev)) {
			cap++;
			now = evst_now_ns();
		}
	}
	evst_count(lev, capped_wakeups);
	evst_accept_more(lev);
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	(void)fd;
	(void)what;

	evst_lock(lev);
	lev->refcnt++;
	accept_loop(lev);
	/* a wake-up is the cheap moment to look at stalled siblings */
	if (lev->group)
		evst_group_steal(lev);
	evst_decref_and_unlock(lev);
}

/*
 * libevent made every callback of this pass active before it ran the first
 * (the backend's ready descriptors, then the expired timers), and takes a
 * persistent event off the active queue before its callback: what the
 * count holds now is what would run after us in this pass (or was made
 * active for a later one, counted too: we wait behind it all the same).
 */
bool evst_pass_alone(struct event_base *base)
{
	return event_base_get_num_events(base, EVENT_BASE_COUNT_ACTIVE) == 0;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;

	/* queued behind what this pass found ready (active already: no-op);
	 * with nothing else ready, the pass is ours alone: at once, which
	 * saves making an event active and running it (a wake-up that
	 * brings one connection, at low load) */
	if (engine_of(lev)->defer && !evst_pass_alone(lev->base))
		event_active(engine_of(lev)->pass, EV_READ, 1);
	else
		pass_cb(fd, what, arg);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	(void)fd;
	(void)what;

	evst_lock(lev);
	lev->refcnt++;
	if (evst_active(lev)) {
		evst_count(lev, exhausted_retries);
		event_add(engine_of(lev)->ev, NULL);
		accept_loop(lev);
	}
	evst_decref_and_unlock(lev);
}

static int event_init(struct evsteer_listener *lev)
{
	struct event_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->ev = event_new(lev->base, lev->fd, EV_READ | EV_PERSIST, read_cb,
			  lev);
	e->timer = evtimer_new(lev->base, timer_cb, lev);
	e->pass = event_new(lev->base, -1, 0, pass_cb, lev);
	if (!e->ev || !e->timer || !e->pass) {
		if (e->ev)
			event_free(e->ev);
		if (e->timer)
			event_free(e->timer);
		if (e->pass)
			event_free(e->pass);
		free(e);
		return -ENOMEM;
	}
	e->defer = evst_queue_watched(lev);
	lev->engine = e;
	return 0;
}

static int event_enable(struct evsteer_listener *lev)
{
	struct event_engine *e = engine_of(lev);

	/* Retry at once: the caller may have freed descriptors. A failure
	 * continues the episode (doubling back-off, no second report). */
	event_del_noblock(e->timer);
	return event_add(e->ev, NULL) < 0 ? -EINVAL : 0;
}

static int event_disable(struct evsteer_listener *lev)
{
	struct event_engine *e = engine_of(lev);

	/* noblock: we hold the listener lock, and the accept callback may be
	 * waiting for it on the loop thread (libevent #1224). */
	event_del_noblock(e->timer);
	event_del_noblock(e->pass);
	return event_del_noblock(e->ev) < 0 ? -EINVAL : 0;
}

static void event_quiesce(struct evsteer_listener *lev)
{
	struct event_engine *e = engine_of(lev);

	/* Blocks only when another thread runs one of these callbacks right
	 * now (libevent waits for it); on the loop thread it returns at once. */
	event_del_block(e->ev);
	event_del_block(e->timer);
	event_del_block(e->pass);
}

static void event_destroy(struct evsteer_listener *lev)
{
	struct event_engine *e = engine_of(lev);

	event_free(e->ev);
	event_free(e->timer);
	event_free(e->pass);
	free(e);
	lev->engine = NULL;
}

const struct evst_engine_ops evst_event_engine = {
	.kind = EVSTEER_ENGINE_EVENT,
	.name = "event",
	.bpf_name = "bpf+event",
	.cbpf_name = "cbpf+event",
	.init = event_init,
	.enable = event_enable,
	.disable = event_disable,
	.quiesce = event_quiesce,
	/* freeing events is all destroy does: as safe in a fork child */
	.forget = event_destroy,
	.destroy = event_destroy,
};

/* SPDX-License-Identifier: MIT */
/*
 * The member interface (internal.h, struct evst_member_ops): what a
 * listener in a group calls, and the poke that wakes a member's loop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "common/env.h"
#include "common/process.h"
#include "group/group.h"

static void member_leave(struct evsteer_listener *lev, bool close_fd);
static bool set_defer(struct evsteer_listener *lev, int s);
static void poke_cb(evutil_socket_t fd, short what, void *arg);

/* The member's own state and its poke event; -errno. */
static int member_state_new(struct evsteer_listener *lev)
{
	struct evst_member_state *ms = calloc(1, sizeof(*ms));
	if (!ms)
		return -ENOMEM;
	ms->poke_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ms->poke_fd < 0) {
		int err = -errno;
		free(ms);
		return err;
	}
	ms->poke_ev = event_new(lev->base, ms->poke_fd, EV_READ | EV_PERSIST,
				poke_cb, lev);
	if (!ms->poke_ev) {
		close(ms->poke_fd);
		free(ms);
		return -ENOMEM;
	}
	ms->watch.poke_fd = ms->poke_fd;
	/* a socket that defers accept already (its owner's setting, or one
	 * a member that died in its window left on a socket that outlived
	 * it) is left as it is: defer_accept_after_block has nothing to add */
	int d = 0;
	socklen_t dl = sizeof(d);
	ms->defer_preset = lev->defer_after_block &&
			   getsockopt(lev->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &d,
				      &dl) == 0 && d > 0;
	if (ms->defer_preset)
		evst_info("listener fd %d: TCP_DEFER_ACCEPT is set already: "
			  "defer_accept_after_block leaves it", lev->fd);
	pthread_mutex_init(&ms->inbox_lock, NULL);
	/* siblings read lev->ms under g->lock (a poke, a hand-off) */
	pthread_mutex_lock(&lev->group->lock);
	lev->ms = ms;
	pthread_mutex_unlock(&lev->group->lock);
	return 0;
}

/* watched: still in the stall watch (not after fork: the child's watch
 * forgot its entries, member_forget). */
static void member_state_free(struct evsteer_listener *lev, bool watched)
{
	struct evst_member_state *ms = lev->ms;
	if (!ms)
		return;
	/* no hand-off (steal.c, under g->lock) finds this inbox or pokes
	 * this eventfd once ms is off lev */
	if (watched && lev->group) {
		pthread_mutex_lock(&lev->group->lock);
		lev->ms = NULL;
		pthread_mutex_unlock(&lev->group->lock);
	}
	lev->ms = NULL;
	if (watched)
		evst_watch_remove(&ms->watch);
	event_free(ms->poke_ev);
	close(ms->poke_fd);
	/* connections a leaving sibling handed here and not delivered: on
	 * to another live sibling (in a child of fork: the parent's) */
	if (ms->ninbox && watched && lev->group) {
		pthread_mutex_lock(&lev->group->lock);
		evst_inbox_give(lev->group, lev, ms->inbox, ms->ninbox);
		pthread_mutex_unlock(&lev->group->lock);
	} else {
		for (unsigned int i = 0; i < ms->ninbox; i++)
			close(ms->inbox[i]);
	}
	pthread_mutex_destroy(&ms->inbox_lock);
	free(ms->inbox);
	free(ms);
}

/*
 * member->join: called by listener creation once lev is built and before
 * it is enabled: join g at slot (native: ctx is a struct evst_attach), or
 * find/create the implicit group for the listener's address (ctx NULL).
 * Returns 0 (lev may stay ungrouped) or -errno.
 */
static int member_join(struct evsteer_listener *lev, void *ctx,
		       const struct evsteer_listener_opts *opts)
{
	struct evst_attach *at = ctx;
	struct evsteer_group *g = at ? at->g : NULL;
	unsigned int slot = at ? at->slot : 0;
	if (!g) {
		/* implicit: a TCP listener with SO_REUSEPORT */
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int type = 0, rp = 0;
		socklen_t il = sizeof(int);
		memset(&ss, 0, sizeof(ss));
		if (getsockname(lev->fd, (struct sockaddr *)&ss, &len) < 0 ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
		    getsockopt(lev->fd, SOL_SOCKET, SO_TYPE, &type, &il) < 0 ||
		    type != SOCK_STREAM ||
		    getsockopt(lev->fd, SOL_SOCKET, SO_REUSEPORT, &rp, &il) < 0 ||
		    !rp)
			return 0;
		g = evst_group_implicit(lev, &ss, len, opts);
		if (!g)
			return -errno;
		pthread_mutex_lock(&g->lock);
		int r = evst_slot_add(g, lev->fd, false);
		if (r >= 0)
			g->slots[r].lev = lev;
		pthread_mutex_unlock(&g->lock);
		if (r < 0) {
			/* e.g. SO_REUSEPORT set after bind (no kernel group to
			 * steer in), or this very socket is in the group
			 * already (EBUSY). A lone listener is still a
			 * listener. */
			bool need = evst_env_bpf(EVST_OPT(
				opts, struct evsteer_listener_opts, bpf,
				EVSTEER_BPF_AUTO)) == EVSTEER_BPF_REQUIRE;
			evst_log(need ? EVSTEER_LOG_WARN : EVSTEER_LOG_INFO,
				 "listener fd %d: cannot join the steering group "
				 "of its address: %s",
				 lev->fd, strerror(-r));
			evst_group_unref(g);
			return need ? r : 0;
		}
		slot = (unsigned int)r;
	} else {
		evst_group_ref(g);
		pthread_mutex_lock(&g->lock);
		g->slots[slot].lev = lev;
		pthread_mutex_unlock(&g->lock);
	}
	lev->member = &evst_group_member;
	lev->group = g;
	lev->slot = slot;
	lev->ws = g->slots[slot].ws;
	int err = member_state_new(lev);
	if (err < 0) {
		member_leave(lev, false);
		return err;
	}
	return 0;
}

/* The listener is going away (last reference): leave the group, closing
 * the socket when the group or the listener's CLOSE_ON_FREE owns it. The
 * kernel then migrates what was queued on it, through the program. */
static void member_leave(struct evsteer_listener *lev, bool close_fd)
{
	struct evsteer_group *g = lev->group;
	bool deferring = lev->ms && lev->ms->deferring;
	/* out of the watch first: it must never look at a freed entry */
	member_state_free(lev, true);
	pthread_mutex_lock(&g->lock);
	bool owned = g->slots[lev->slot].owned;
	pthread_mutex_unlock(&g->lock);
	bool closing = close_fd &&
		       (owned || (lev->flags & EVSTEER_OPT_CLOSE_ON_FREE));
	/* the socket goes back as it came: the caller's, or one that
	 * outlives the group's close (systemd's copy of an activated one) */
	if (deferring)
		set_defer(lev, 0);
	/* with eBPF no handshake of its own may complete during the close:
	 * out of the program since its stop (not live), still holding its
	 * slot (nobody may take the slot while its socket stays in the
	 * sockarray), it lets them finish first (steal.c) */
	if (closing)
		evst_group_leave_settle(g, lev->ws);
	pthread_mutex_lock(&g->lock);
	int fd = evst_slot_remove(g, lev->slot);
	pthread_mutex_unlock(&g->lock);
	/* with classic BPF the socket is out of the program now: its queue
	 * goes to the siblings before it closes (no migration without eBPF) */
	if (closing)
		evst_group_close_sock(g, fd);
	else
		evst_shared_keep(g->sh, fd);
	lev->group = NULL;
	lev->member = NULL;
	lev->ws = NULL;
	evst_group_unref(g);
}

/* member->forget: see evst_member_ops. The poke eventfd is the child's
 * copy. */
static void member_forget(struct evsteer_listener *lev)
{
	member_state_free(lev, false);
	struct evsteer_group *g = lev->group;
	struct evst_slot *s = &g->slots[lev->slot];
	if (s->lev == lev) {
		if (s->owned || (lev->flags & EVSTEER_OPT_CLOSE_ON_FREE))
			close(s->fd);
		/* in this copy of memory only: no longer the group's to close */
		s->owned = false;
		s->fd = -1;
		s->lev = NULL;
	}
	lev->group = NULL;
	lev->member = NULL;
	lev->ws = NULL;
	evst_group_forget_ref(g);
}

/* Listener lock held: steer to this worker only while it delivers, and
 * have the stall watch look at it (as victim or as thief) while it does. */
static void member_sync_live(struct evsteer_listener *lev)
{
	struct evsteer_group *g = lev->group;
	if (!g)
		return;
	bool live = evst_active(lev);
	pthread_mutex_lock(&g->lock);
	live = live && !g->retired;
	if (slot_used(&g->slots[lev->slot])) {
		unsigned int gs = (unsigned)g->slots[lev->slot].gslot;
		evst_shared_set_live(g->sh, gs, live);
		/* for evsteer-stat: which engine, and a restart under way */
		struct evst_slot_info *in = evst_shared_info(g->sh, gs);
		__atomic_store_n(&in->engine, (uint32_t)lev->ops->kind + 1,
				 __ATOMIC_RELAXED);
		__atomic_store_n(&in->flags, g->retired ? EVST_SLOT_RETIRED : 0u,
				 __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&g->lock);

	struct evst_member_state *ms = lev->ms;
	if (!ms)
		return;
	/* in the base only while live: a disabled listener must not keep
	 * the loop running, as libevent's does not (noblock: see stop) */
	if (!live) {
		event_del_noblock(ms->poke_ev);
		evst_watch_remove(&ms->watch);
		return;
	}
	event_add(ms->poke_ev, NULL);
	if (!ms->watch.on && lev->ws && evst_shared_stall_ns(g->sh)) {
		ms->watch.classic = evst_shared_cbpf(g->sh);
		ms->watch.group = g;
		ms->watch.ws = lev->ws;
		ms->watch.stall_ns = evst_shared_stall_ptr(g->sh);
		ms->watch.sh = g->sh;
		evst_watch_add(&ms->watch, lev->fd, evst_listener_signal_fd(lev));
	}
}

static void member_stop(struct evsteer_listener *lev)
{
	if (lev->group)
		member_sync_live(lev);
}

static void member_quiesce(struct evsteer_listener *lev)
{
	/* a poke callback on another thread finishes first */
	if (lev->ms)
		event_del_block(lev->ms->poke_ev);
}

/* the poke event, in the loop while the member is live (member_sync_live;
 * asked of libevent: an event_add() can fail) */
static unsigned int member_base_events(const struct evsteer_listener *lev)
{
	return lev->ms && event_pending(lev->ms->poke_ev, EV_READ, NULL) ? 1 : 0;
}

static void member_steering(const struct evsteer_listener *lev,
			    struct evst_steering *out)
{
	evst_group_steering(lev->group, out);
}

/* A pass that kept the loop away this long, and from which a sibling
 * took the queue, was a block (a handler in a slow system call), not a
 * thread waiting for a CPU: those stay under 5 ms here even with two
 * saturated CPUs (bench/JOURNAL.md, "One per pass after a block"). For
 * BLOCKED_WINDOW_NS after it the member accepts one connection per pass
 * (evst_accept_cap). Five seconds: with one second, an evhttp thread that
 * blocked every 400 ms on average (http-stall) met one block in sixteen
 * with the window closed and its cap doubled, and the batch it had just
 * taken waited out the block: those were the requests wrk's p99.9 shows
 * (bench/JOURNAL.md, "Where http-stall's p99.9 goes"). */
#define BLOCKED_PASS_NS 10000000ull
#define BLOCKED_WINDOW_NS 5000000000ull

/*
 * The loop was away from last to now and a sibling took its queue: was
 * that a wait for a CPU (runnable, on none) rather than a block or a spin?
 * Then the thread was not in a slow call but on a busy machine (more
 * runnable threads than CPUs), and one per pass would only cost passes: at
 * 64 connections in flight on 2 CPUs the window was open nearly all the
 * time (bench/JOURNAL.md, "The engines side by side, and saturation"). The
 * first thief of the gap read the thread's waiting and running totals
 * (steal.c); since then it waited more than it ran, and for a quarter of
 * the gap at least. A block sleeps through the gap (it waits only once
 * woken), a spin runs through it. Unsure (no reading for this gap, no
 * /proc): a block, as before.
 */
static bool waited_for_cpu(struct evsteer_listener *lev, uint64_t last,
			   uint64_t now)
{
	struct evst_member_state *ms = lev->ms;
	uint64_t wait, ran;
	if (__atomic_load_n(&ms->theft_after, __ATOMIC_ACQUIRE) != last ||
	    evst_thread_run_delay(0, &wait, &ran) < 0)
		return false;
	wait -= __atomic_load_n(&ms->theft_run_delay, __ATOMIC_RELAXED);
	ran -= __atomic_load_n(&ms->theft_on_cpu, __ATOMIC_RELAXED);
	if ((int64_t)wait <= (int64_t)ran || wait < (now - last) / 4)
		return false;
	evst_debug("listener fd %d: its loop was away %llu ms, %llu ms of it "
		   "waiting for a CPU: not a block", lev->fd,
		   (unsigned long long)(now - last) / 1000000,
		   (unsigned long long)wait / 1000000);
	return true;
}

/* TCP_DEFER_ACCEPT on the member's socket: s seconds, 0 off. False on
 * failure (logged). */
static bool set_defer(struct evsteer_listener *lev, int s)
{
	if (setsockopt(lev->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &s, sizeof(s)) < 0) {
		evst_warn("listener fd %d: TCP_DEFER_ACCEPT %d: %s", lev->fd, s,
			  strerror(errno));
		return false;
	}
	return true;
}

/*
 * The window after a block opens (on) or has closed (off): with
 * defer_accept_after_block the socket defers accept meanwhile. One
 * accepted just before a handler blocks is read in the pass after its
 * accept, before a request that came later, so it cannot wait out the
 * block in the program's hands. Not before a block: deferring makes a
 * loopback client's connection wait for a wake-up of the server that
 * would otherwise overlap the client's write (evhttp at 1 in flight: a
 * median of 56 us a request against 37-38, bench/JOURNAL.md "Deferred
 * accept only after a block").
 */
static void defer_window(struct evsteer_listener *lev, bool on)
{
	struct evst_member_state *ms = lev->ms;
	if (on == ms->deferring || ms->defer_preset)
		return;
	/* (off: not deferring whatever happens, so as not to try at every
	 * pass; on: tried again at the next block) */
	ms->deferring = set_defer(lev, on ? lev->defer_after_block : 0) && on;
	if (ms->deferring == on)
		evst_info("listener fd %d: %s", lev->fd,
			  on ? "its loop blocked: TCP_DEFER_ACCEPT while it "
			       "takes one connection per pass" :
			       "five seconds without a block: no "
			       "TCP_DEFER_ACCEPT");
}

/* The member's loop ran: its heartbeat. Held out of a classic program for
 * its health, it is let back in now (the one re-attach of the episode). */
static void progress(struct evsteer_listener *lev, uint64_t now)
{
	struct evst_worker *w = lev->ws;
	uint64_t last = evst_ld64(&w->progress_ns);
	/* (the program refreshes an idle worker's clock: last may be ahead) */
	if (lev->ms && evst_ld64(&w->stolen_ns) > last &&
	    (int64_t)(now - last) >= (int64_t)BLOCKED_PASS_NS &&
	    !waited_for_cpu(lev, last, now)) {
		if (now >= lev->ms->blocked_until)
			evst_debug("listener fd %d: its loop was away %llu ms and "
				   "a sibling took its queue: one connection "
				   "per pass for 5 s", lev->fd,
				   (unsigned long long)(now - last) / 1000000);
		lev->ms->blocked_until = now + BLOCKED_WINDOW_NS;
		if (lev->defer_after_block)
			defer_window(lev, true);
	} else if (lev->ms && lev->ms->deferring &&
		   now >= lev->ms->blocked_until) {
		defer_window(lev, false);
	}
	evst_made_progress(w, now);
	if (evst_shared_cbpf_out(lev->group->sh, lev->ws))
		evst_shared_health(lev->group->sh);
}

static void member_took(struct evsteer_listener *lev, uint64_t now)
{
	if (!lev->ws)
		return;
	uint64_t first = __atomic_fetch_add(&lev->ws->dequeued, 1, __ATOMIC_RELAXED);
	evst_shared_waited(lev->group->sh, lev->ws, first, 1, now);
	progress(lev, now);
	__atomic_fetch_add(&evst_group_counters(lev->group, lev->slot)->accepted, 1,
			   __ATOMIC_RELAXED);
	evst_group_note_thread(lev->group, lev->slot);
}

static void member_alive(struct evsteer_listener *lev, uint64_t now)
{
	if (lev->ws)
		progress(lev, now);
}

/*
 * The engine found the queue empty: whatever the program counted that
 * never arrived (handshakes that died, SYN floods) is dropped from pending
 * here, so drift cannot build up, once its SYN is older than a handshake
 * takes; connections still in their handshake stay counted
 * (evst_shared_resync).
 *
 * The count is first in, first out: a SYN that died is matched to the
 * next connection accepted, and what stays counted is then a younger one
 * that was in fact accepted. Under steady load something younger is always
 * there, and the excess would stay and turn the steering away from this
 * worker. A real handshake ends well within EVST_HANDSHAKE_GRACE_NS: an
 * excess that every empty pass for that long found again is such a stale
 * match, and is dropped whole (a handshake in flight at that moment is
 * counted once less until the next empty pass: the count before).
 */
static void member_empty(struct evsteer_listener *lev, uint64_t now)
{
	if (!lev->ws)
		return;
	progress(lev, now);
	struct evst_worker *w = lev->ws;
	evst_shared_resync(lev->group->sh, w, now);
	struct evst_member_state *ms = lev->ms;
	if (ms && !evst_worker_pending(w)) {
		ms->excess_since = 0;
	} else if (ms && !ms->excess_since) {
		ms->excess_since = now;
	} else if (ms && now - ms->excess_since >= EVST_HANDSHAKE_GRACE_NS) {
		evst_ws_drop_pending(w);
		ms->excess_since = 0;
	}
	evst_group_note_thread(lev->group, lev->slot);
	/* classic BPF: a listener of another process, once a second */
	evst_shared_cbpf_look(lev->group->sh, now);
}

/*
 * member->counted_empty. Only our eBPF program counts: each connection it
 * steers here, at its SYN, against every take, this listener's and its
 * thieves' (classic BPF counts nothing). A count of exactly zero then
 * means nothing is queued: a connection still in its handshake is counted
 * already, so the count runs ahead of the queue, not behind it. Behind it
 * only when takes outran it (the kernel migrated a closed sibling's queue
 * here), which shows as more takes than steered: unsure, so false, and the
 * accept that finds EAGAIN resyncs it. Zero is what an empty pass would
 * find after its resync: the excess clock restarts as there.
 */
static bool member_counted_empty(struct evsteer_listener *lev)
{
	struct evst_worker *w = lev->ws;
	if (!w || !lev->ms ||
	    evst_ld64(&w->steered) != evst_ld64(&w->dequeued) ||
	    !evst_shared_bpf(lev->group->sh))
		return false;
	lev->ms->excess_since = 0;
	return true;
}

/* lev's loop runs: a sibling stole from it, or the stall watch wants a
 * stuck sibling's queue taken. */
static void poke_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	eventfd_t v;
	(void)what;
	eventfd_read(fd, &v);
	evst_lock(lev);
	lev->refcnt++;
	if (lev->group && evst_active(lev)) {
		member_alive(lev, evst_now_ns());
		evst_steal_stuck_all(lev);
		evst_inbox_deliver(lev);
	}
	evst_decref_and_unlock(lev);
}

/* What a listener knows of its group (internal.h). */
const struct evst_member_ops evst_group_member = {
	.join = member_join,
	.took = member_took,
	.alive = member_alive,
	.empty = member_empty,
	.counted_empty = member_counted_empty,
	.steal = evst_steal_stuck,
	.watched = evst_steal_watched,
	.takers = evst_steal_takers,
	.base_events = member_base_events,
	.handoff = evst_steal_handoff,
	.leave = member_leave,
	.forget = member_forget,
	.sync_live = member_sync_live,
	.stop = member_stop,
	.quiesce = member_quiesce,
	.steering = member_steering,
};

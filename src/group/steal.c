/* SPDX-License-Identifier: MIT */
/*
 * Stealing: a healthy member takes the queue of a stuck sibling of this
 * process (on its wake-ups, or when the stall watch pokes it); and a
 * member that leaves hands what its engine accepted to live siblings.
 * docs/groups.md, "Stalls and stealing", says when and why.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include "group/group.h"

/* n connections counted on slot `from` (its worker entry w) were taken by
 * slot `to`: off the victim's pending, and into both counters. The victim
 * stays out of the steering until its loop runs after this (stolen_ns). */
static void note_stolen(struct evsteer_group *g, struct evst_worker *w,
			unsigned int from, unsigned int to, unsigned int n,
			uint64_t now)
{
	uint64_t first = __atomic_fetch_add(&w->dequeued, n, __ATOMIC_RELAXED);
	/* the victim's queue waited: its histogram */
	evst_shared_waited(g->sh, w, first, n, now);
	if (evst_ld64(&w->stolen_ns) < now)
		__atomic_store_n(&w->stolen_ns, now, __ATOMIC_RELAXED);
	__atomic_fetch_add(&evst_group_counters(g, from)->stolen_from, (uint64_t)n,
			   __ATOMIC_RELAXED);
	__atomic_fetch_add(&evst_group_counters(g, to)->stolen, (uint64_t)n,
			   __ATOMIC_RELAXED);
}

/* g->lock held: wake the loop of the listener at slot s (it was stolen
 * from: if it was only late, its next pass lets it back in). */
static void poke_slot(const struct evst_slot *s)
{
	struct evsteer_listener *l = slot_lev(s);
	if (l && l->ms)
		eventfd_write(l->ms->poke_fd, 1);
}

#define STEAL_BUDGET 64
#define STEAL_WINDOW 64

/*
 * A direct lev takes up to max of stuck slot i's connections into its own
 * table, through its own ring (what the victim's ring already accepted is
 * sent over): lev delivers them on its next round. Taken, or 0.
 */
static int steal_direct(struct evsteer_listener *lev, struct evsteer_group *g,
			unsigned int i, struct evst_worker *w, int max,
			uint64_t now)
{
	int n = -1;
	pthread_mutex_lock(&g->lock);
	struct evst_slot *s = &g->slots[i];
	uint64_t want = evst_worker_pending(w);
	if (s->ws == w && __atomic_load_n(&w->live, __ATOMIC_RELAXED) && want &&
	    evst_listener_is_direct(lev))
		n = evst_listener_take_from(lev, slot_lev(s), s->fd,
					 want < (uint64_t)max ? (unsigned)want :
								(unsigned)max);
	if (n > 0) {
		note_stolen(g, w, i, lev->slot, (unsigned)n, now);
		poke_slot(s);
	} else if (n == 0) {
		evst_ws_resync(w); /* counted but not there */
	}
	pthread_mutex_unlock(&g->lock);
	return n > 0 ? n : 0;
}

/*
 * g->lock held: one connection of stuck slot s (entry w), from what its
 * io_uring engine accepted and has not delivered, else from its socket.
 * The fd, or -1 (nothing there: errno EAGAIN), or -2 (try again).
 */
static int take_one(struct evsteer_listener *lev, struct evst_slot *s,
		    struct evst_worker *w, struct sockaddr_storage *ss,
		    socklen_t *len)
{
	if (s->ws != w || !__atomic_load_n(&w->live, __ATOMIC_RELAXED) ||
	    !evst_worker_pending(w)) {
		errno = 0;
		return -1;
	}
	/* under g->lock the sibling cannot be destroyed: leaving clears
	 * `ws` under this lock first */
	struct evsteer_listener *v = slot_lev(s);
	int fd = v ? evst_listener_take_held(v) : -1;
	if (fd >= 0) {
		*len = sizeof(*ss);
		if (getpeername(fd, (struct sockaddr *)ss, len) < 0) {
			close(fd); /* reset meanwhile: gone */
			return -2;
		}
		return fd;
	}
	return evst_listener_accept_on(lev, s->fd, ss, len);
}

/* lev takes stuck slot i's connections one by one and delivers them.
 * Taken, or -1 when lev stopped delivering. */
static int steal_fds(struct evsteer_listener *lev, struct evsteer_group *g,
		     unsigned int i, struct evst_worker *w, int max,
		     uint64_t now)
{
	struct evst_slot *s = &g->slots[i];
	int taken = 0;
	bool more = true;
	while (more && taken < max) {
		struct sockaddr_storage ss;
		socklen_t len;
		pthread_mutex_lock(&g->lock);
		int fd = take_one(lev, s, w, &ss, &len);
		if (fd >= 0)
			note_stolen(g, w, i, lev->slot, 1, now);
		else if (fd == -1 && errno == EAGAIN)
			evst_ws_resync(w); /* counted but not there */
		pthread_mutex_unlock(&g->lock);
		if (fd == -2)
			continue;
		if (fd < 0)
			break;
		taken++;
		more = evst_deliver(lev, fd, (struct sockaddr *)&ss, len);
	}
	if (taken) {
		/* after the last theft: if it was only late, the pass this
		 * causes shows its loop runs and lets it back in */
		pthread_mutex_lock(&g->lock);
		if (s->ws == w)
			poke_slot(s);
		pthread_mutex_unlock(&g->lock);
	}
	return more ? taken : -1;
}

/*
 * Listener lock held, reference taken: lev's loop runs (a wake-up of its
 * own, or the stall watch woke it). Take the connections of live siblings
 * of this process that are stuck (pending, no progress for stall_ns) and
 * deliver them to lev's callback. Another process's sockets are not ours
 * to accept from: its stuck workers only stop getting new connections (the
 * program sees their heartbeat). Looking is cheap (shared counters, no
 * lock, no system call), so every wake-up looks; the stall watch (watch.c)
 * covers the time when nothing wakes a healthy sibling.
 */
static void steal_scan(struct evsteer_listener *lev, bool all)
{
	struct evsteer_group *g = lev->group;
	uint64_t stall = evst_shared_stall_ns(g->sh);
	if (!stall || !evst_active(lev))
		return;

	uint64_t now = evst_now_ns();
	int budget = STEAL_BUDGET;
	unsigned int nslots = __atomic_load_n(&g->nslots, __ATOMIC_RELAXED);
	/* A wake-up looks at STEAL_WINDOW siblings, from where this
	 * member's last look stopped: with 1,024 workers in a process a look
	 * at all of them on every wake-up would cost more than the accept.
	 * A poke (the stall watch found a stuck sibling) looks at all. */
	unsigned int look = all || nslots <= STEAL_WINDOW ? nslots : STEAL_WINDOW;
	unsigned int from = 0;
	if (look < nslots && lev->ms) {
		from = lev->ms->steal_from % nslots;
		lev->ms->steal_from = from + look;
	}
	for (unsigned int k = 0; k < look && budget > 0; k++) {
		unsigned int i = from + k < nslots ? from + k : from + k - nslots;
		if (i == lev->slot)
			continue;
		/* without the lock (shared memory, relaxed); lock to take */
		struct evst_worker *w =
			__atomic_load_n(&g->slots[i].ws, __ATOMIC_ACQUIRE);
		if (!w || !__atomic_load_n(&w->live, __ATOMIC_RELAXED) ||
		    !evst_worker_pending(w))
			continue;
		uint64_t prog = evst_ld64(&w->progress_ns), age = now - prog;
		if ((int64_t)age < 0 || age <= stall)
			continue;
		/* a new episode unless stolen from since its last pass
		 * (evsteer-stat's "stalls"; racing thieves may count one twice) */
		if (evst_ld64(&w->stolen_ns) <= prog)
			__atomic_fetch_add(&evst_shared_info_of(g->sh, w)->stalls,
					   1, __ATOMIC_RELAXED);
		int n = evst_listener_is_direct(lev) ?
				steal_direct(lev, g, i, w, budget, now) :
				steal_fds(lev, g, i, w, budget, now);
		if (n < 0)
			return;
		budget -= n;
	}
}

void evst_steal_stuck(struct evsteer_listener *lev)
{
	steal_scan(lev, false);
}

void evst_steal_stuck_all(struct evsteer_listener *lev)
{
	steal_scan(lev, true);
}

/* g->lock held: slot i can take what the leaving lev's engine holds. */
static bool adopter(struct evsteer_group *g, struct evsteer_listener *lev,
		    unsigned int i)
{
	struct evst_slot *s = &g->slots[i];
	return i != lev->slot && slot_used(s) && slot_lev(s) &&
	       evst_listener_adopts(s->lev, lev) &&
	       __atomic_load_n(&s->ws->live, __ATOMIC_RELAXED);
}

/*
 * member->handoff: lev is leaving with n connections its engine accepted
 * and never delivered: give them to live siblings of this process that can
 * take them (in order, spread over them). Returns how many were taken.
 */
unsigned int evst_steal_handoff(struct evsteer_listener *lev,
				   const struct evst_conn *c, unsigned int n)
{
	struct evsteer_group *g = lev->group;
	unsigned int given = 0;

	pthread_mutex_lock(&g->lock);
	/* Live siblings only: `live` is cleared under this lock before a
	 * listener starts going away, so a live one outlives the call, and
	 * two passes under it see the same siblings: one to count them, one
	 * to give (no list of up to 1,024 of them on the stack). */
	unsigned int k = 0;
	for (unsigned int i = 0; i < g->nslots; i++)
		k += adopter(g, lev, i);
	/* spread in runs, so each sibling gets its share in order */
	for (unsigned int i = 0, j = 0; i < g->nslots && j < k && given < n; i++) {
		if (!adopter(g, lev, i))
			continue;
		struct evst_slot *s = &g->slots[i];
		unsigned int share = (n - given + (k - j) - 1) / (k - j);
		unsigned int took = evst_listener_adopt(s->lev, c + given, share);
		/* as if the program had steered them there: its pending stays
		 * right, they show as migrated, and their wait starts now */
		uint64_t first = __atomic_fetch_add(&s->ws->steered, took,
						    __ATOMIC_RELAXED);
		evst_shared_stamp(g->sh, s->ws, first, took, evst_now_ns());
		__atomic_fetch_add(&s->ws->migrated, took, __ATOMIC_RELAXED);
		given += took;
		j++;
	}
	pthread_mutex_unlock(&g->lock);
	return given;
}

/* SPDX-License-Identifier: MIT */
/*
 * Stealing: a healthy member takes the queue of a stuck sibling of this
 * process (on its wake-ups, or when the stall watch pokes it); and a
 * member that leaves hands what its engine accepted to live siblings.
 * docs/groups.md, "Stalls and stealing", says when and why.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include "common/process.h"
#include "group/group.h"

/* n connections counted on slot `from` (its worker entry w) were taken by
 * slot `to`: off the victim's pending, and into both counters. The victim
 * stays out of the steering until its loop runs after this (stolen_ns).
 * The time is the theft's own, not the pass's start: a heartbeat written
 * meanwhile (classic BPF's refresh starts an idle worker's clock) must not
 * look like a pass after the theft. */
static void note_stolen(struct evsteer_group *g, struct evst_worker *w,
			unsigned int from, unsigned int to, unsigned int n)
{
	uint64_t now = evst_now_ns();
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
 * The first theft from slot i (entry w) since its pass at prog: how long its
 * loop thread has waited for a CPU and run so far, for that loop's next
 * pass to compare (member.c, waited_for_cpu). A wait under way is not in
 * it yet (the kernel counts a wait when it ends), so what the next pass
 * finds added is this gap's. A read of /proc per gap, not per connection.
 */
static void note_run_delay(struct evsteer_group *g, unsigned int i,
			   struct evst_worker *w, uint64_t prog)
{
	uint64_t rd, oc;
	pthread_mutex_lock(&g->lock);
	struct evst_slot *s = &g->slots[i];
	struct evsteer_listener *v = s->ws == w ? slot_lev(s) : NULL;
	uint32_t tid = v ? evst_shared_slot_tid(g->sh, (unsigned)s->gslot) : 0;
	/* (a listener of this process: its thread is in /proc/self/task) */
	if (v && v->ms && tid &&
	    __atomic_load_n(&v->ms->theft_after, __ATOMIC_RELAXED) != prog &&
	    evst_thread_run_delay(tid, &rd, &oc) == 0) {
		__atomic_store_n(&v->ms->theft_run_delay, rd, __ATOMIC_RELAXED);
		__atomic_store_n(&v->ms->theft_on_cpu, oc, __ATOMIC_RELAXED);
		__atomic_store_n(&v->ms->theft_after, prog, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&g->lock);
}

/* g->lock held: a thief found nothing on stuck worker w's socket where the
 * program counts some: what died in its handshake is dropped, what may be
 * in it still stays counted (evst_shared_resync). */
static void found_empty(struct evsteer_group *g, struct evst_worker *w)
{
	evst_shared_resync(g->sh, w, evst_now_ns());
}

/*
 * A direct lev takes up to max of stuck slot i's connections into its own
 * table, through its own ring (what the victim's ring already accepted is
 * sent over): lev delivers them on its next round. Taken, or 0.
 */
static int steal_direct(struct evsteer_listener *lev, struct evsteer_group *g,
			unsigned int i, struct evst_worker *w, int max)
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
		note_stolen(g, w, i, lev->slot, (unsigned)n);
		poke_slot(s);
	} else if (n == 0) {
		found_empty(g, w); /* counted but not there */
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

/* lev takes stuck slot i's connections one by one and delivers them, at
 * least one and then until `until` (steal_scan). Taken, or -1 when lev
 * stopped delivering. */
static int steal_fds(struct evsteer_listener *lev, struct evsteer_group *g,
		     unsigned int i, struct evst_worker *w, int max,
		     uint64_t until)
{
	struct evst_slot *s = &g->slots[i];
	int taken = 0;
	bool more = true;
	while (more && taken < max && (!taken || evst_now_ns() < until)) {
		struct sockaddr_storage ss;
		socklen_t len;
		pthread_mutex_lock(&g->lock);
		int fd = take_one(lev, s, w, &ss, &len);
		if (fd >= 0)
			note_stolen(g, w, i, lev->slot, 1);
		else if (fd == -1 && errno == EAGAIN)
			found_empty(g, w); /* counted but not there */
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

/* Classic BPF: slot i's pending from its socket's accept queue. */
static void queue_of(struct evsteer_group *g, unsigned int i,
		     struct evst_worker *w)
{
	pthread_mutex_lock(&g->lock);
	if (g->slots[i].ws == w)
		evst_shared_queue_to_pending(w, g->slots[i].fd);
	pthread_mutex_unlock(&g->lock);
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
	/* What a look takes is handed to the program in this pass, and what
	 * the program runs next in it (an evhttp handler that blocks) holds
	 * all of it, where no sibling can take it back. So a look takes what
	 * the thief's own accepts may take in a pass (evst_accept_cap: one
	 * per pass at first and after a block, doubling under a backlog);
	 * what it leaves stays in the kernel, and the thief's next pass, run
	 * at once (a poke of its own), takes more. Taken whole, a stuck
	 * sibling's queue of six was held by the thief's own next handler,
	 * which blocked (bench/JOURNAL.md, "Where http-stall's p99.9 goes"). */
	unsigned int cap = evst_accept_cap(lev, now);
	int budget = cap < STEAL_BUDGET ? (int)cap : STEAL_BUDGET;
	/* What a thief delivers it runs in its pass, and a pass of stall_ns
	 * would make the thief stale in turn: its siblings (the victim, back
	 * on a CPU) would take its own queue, and so on. At 64 connections in
	 * flight on 2 CPUs with 50 us of work a connection, a third of them
	 * went back and forth so (bench/JOURNAL.md, "Thefts in half a
	 * threshold"). So a look stops taking (after one) once the thief's
	 * own heartbeat (its last accept, the poke that woke it, the ring's
	 * completions run) is half a threshold old; what it leaves, its next
	 * look or the victim's own next pass takes. */
	uint64_t until = now + stall / 2;
	if (lev->ws) {
		uint64_t beat = evst_ld64(&lev->ws->progress_ns);
		if ((int64_t)(now - beat) > 0)
			until = beat + stall / 2;
	}

	bool classic = evst_shared_cbpf(g->sh);
	unsigned int nslots = __atomic_load_n(&g->nslots, __ATOMIC_RELAXED);
	/* A wake-up looks at STEAL_WINDOW siblings, from where this
	 * member's last look stopped: with 1,024 workers in a process a look
	 * at all of them on every wake-up would cost more than the accept.
	 * A poke (the stall watch found a stuck sibling, or a look of ours
	 * stopped at the cap) looks at all, from the sibling it last took
	 * from: a queue taken one pass at a time is not a scan per
	 * connection. */
	unsigned int look = all || nslots <= STEAL_WINDOW ? nslots : STEAL_WINDOW;
	unsigned int from = lev->ms && nslots ? lev->ms->steal_from % nslots : 0;
	if (look < nslots && lev->ms)
		lev->ms->steal_from = from + look;
	for (unsigned int k = 0; k < look && budget > 0; k++) {
		unsigned int i = from + k < nslots ? from + k : from + k - nslots;
		if (i == lev->slot)
			continue;
		/* without the lock (shared memory, relaxed); lock to take */
		struct evst_worker *w =
			__atomic_load_n(&g->slots[i].ws, __ATOMIC_ACQUIRE);
		if (!w || !__atomic_load_n(&w->live, __ATOMIC_RELAXED))
			continue;
		uint64_t prog = evst_ld64(&w->progress_ns), age = now - prog;
		if ((int64_t)age < 0 || age <= stall)
			continue;
		/* classic BPF counts nothing: ask the late one's socket
		 * (a system call, only for a worker already late) */
		if (classic)
			queue_of(g, i, w);
		if (!evst_worker_pending(w))
			continue;
		prog = evst_ld64(&w->progress_ns);
		age = now - prog;
		if ((int64_t)age < 0 || age <= stall)
			continue;
		/* a thief whose own queue has waited about as long gains no
		 * connection a shorter wait: it only trades its own for the
		 * stuck one's, at the price of a theft */
		if (lev->ws &&
		    !evst_shared_worth_taking(g->sh, lev->ws, w, now, stall))
			continue;
		/* classic BPF: out of the program first, then take its queue;
		 * this loop runs, so its own heartbeat is fresh (a stale one
		 * would make the program think every worker is stuck) */
		if (classic) {
			evst_made_progress(lev->ws, evst_now_ns());
			evst_shared_health(g->sh);
		}
		/* a new episode unless stolen from since its last pass
		 * (evsteer-stat's "stalls"; racing thieves may count one twice) */
		if (evst_ld64(&w->stolen_ns) <= prog)
			__atomic_fetch_add(&evst_shared_info_of(g->sh, w)->stalls,
					   1, __ATOMIC_RELAXED);
		note_run_delay(g, i, w, prog);
		if (lev->ms)
			lev->ms->steal_from = i; /* the next look starts here */
		int n = evst_listener_is_direct(lev) ?
				steal_direct(lev, g, i, w, budget) :
				steal_fds(lev, g, i, w, budget, until);
		if (n < 0)
			return;
		budget -= n;
		if (evst_now_ns() >= until)
			return;
	}
	/* stopped at the cap: another pass soon, for what is left */
	if (budget <= 0 && lev->ms)
		eventfd_write(lev->ms->poke_fd, 1);
}

void evst_steal_stuck(struct evsteer_listener *lev)
{
	steal_scan(lev, false);
}

void evst_steal_stuck_all(struct evsteer_listener *lev)
{
	steal_scan(lev, true);
}

bool evst_steal_watched(const struct evsteer_listener *lev)
{
	return evst_shared_stall_ns(lev->group->sh) != 0;
}

enum evst_takers evst_steal_takers(const struct evsteer_listener *lev,
				   uint64_t now)
{
	const struct evsteer_group *g = lev->group;
	if (__atomic_load_n(&g->nslots, __ATOMIC_RELAXED) < 2 ||
	    !evst_shared_stall_ns(g->sh))
		return EVST_TAKERS_NONE;
	return lev->ms && now < lev->ms->blocked_until ? EVST_TAKERS_BLOCKED :
							 EVST_TAKERS;
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

/* ---- classic BPF: a leaving worker's socket, drained into its siblings */

/* A handshake the leaving socket had started when the program stopped
 * choosing it must complete before the socket closes: without eBPF's
 * migration (or net.ipv4.tcp_migrate_req=1) the kernel drops its request
 * at the close and answers the client's ACK with a reset. On loopback
 * that takes microseconds, unless the client is preempted between its
 * SYN and its ACK; across a WAN it takes a round trip; with
 * TCP_DEFER_ACCEPT (evsteer-run sets it on evhttp's sockets) it lasts
 * until the client's first bytes (test_leave_waits_for_handshake: reset
 * every time with the fixed 20 ms wait this replaces). So the drain looks
 * up the handshakes in flight to the port
 * shortly after it starts (any listener's: the kernel does not say whose)
 * and waits, besides a quiet while, until each of them is done, a second
 * at most (the server re-sends its SYN-ACK at one: a handshake that slow
 * has lost a packet). A leave costs its thread the quiet while at least;
 * leaves are rare. */
#define DRAIN_LOOK_NS 1000000ull
#define DRAIN_SETTLE_NS 20000000ull
#define DRAIN_MAX_NS 1000000000ull
#define DRAIN_POLL_NS 250000L /* between two looks while waiting */
#define DRAIN_BATCH 64

static int cookie_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The handshakes to sa's port in flight now, sorted, into *buf (grown as
 * needed): how many, or -errno. */
static int handshakes(const struct sockaddr *sa, uint64_t **buf, int *cap)
{
	for (;;) {
		int n = evst_list_handshakes(sa, *buf, *cap);
		if (n < 0 || n <= *cap) {
			if (n > 0)
				qsort(*buf, (size_t)n, sizeof(**buf), cookie_cmp);
			return n;
		}
		uint64_t *p = realloc(*buf, ((size_t)n + 64) * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*buf = p;
		*cap = n + 64;
	}
}

/* Which of the nseen handshakes in flight at the first look are still in
 * flight: they stay in seen[], the rest go. Returns how many stay, or 0
 * when the kernel cannot be asked (then the quiet while alone decides). */
static int still_in_flight(const struct sockaddr *sa, uint64_t *seen, int nseen,
			   uint64_t **buf, int *cap)
{
	int n = handshakes(sa, buf, cap);
	if (n < 0)
		return 0;
	int k = 0;
	for (int i = 0; i < nseen; i++)
		if (n && bsearch(&seen[i], *buf, (size_t)n, sizeof(**buf),
				 cookie_cmp))
			seen[k++] = seen[i];
	return k;
}

/*
 * eBPF. The kernel migrates what is queued on a closing socket, and a
 * request that completes after the close, through the program; but not a
 * handshake that completes during the close itself: its child is made
 * while the socket still listens and queued once it no longer does, and is
 * reset (inet_csk_reqsk_queue_add(): tcp:tcp_send_reset from
 * inet_csk_complete_hashdance, with no migration failure counted; seen
 * once in about 20 runs of test_churn_while_stealing at 15,000 leaves a
 * second on the event engine). So a leaving worker, out of the program
 * since its stop (not live), lets the SYNs in flight at that moment be
 * processed (DRAIN_LOOK_NS); if the program counts none of its
 * connections still pending (each handshake it started here is counted
 * from its SYN until it is taken), it closes; else it waits until the
 * handshakes to the port seen then are done (any listener's: the kernel
 * does not say whose), a second at most. What is queued and complete
 * migrates as before. A leave costs its thread the look at least (a
 * sock_diag query lists every TCP socket of the port, time-waits too: 15
 * ms a leave at the end of test_scale's 100,000 connections, so only when
 * something is pending); leaves are rare.
 */
void evst_group_leave_settle(struct evsteer_group *g,
			     const struct evst_worker *ws)
{
	if (!evst_shared_bpf(g->sh) || !ws)
		return;
	struct timespec look = {0, (long)DRAIN_LOOK_NS};
	nanosleep(&look, NULL);
	if (!evst_worker_pending(ws))
		return;
	const struct sockaddr *sa = (const struct sockaddr *)&g->addr;
	uint64_t *seen = NULL, *buf = NULL;
	int scap = 0, bcap = 0;
	int n = handshakes(sa, &seen, &scap);
	uint64_t start = evst_now_ns();
	while (n > 0 && evst_now_ns() - start < DRAIN_MAX_NS) {
		struct timespec ts = {0, DRAIN_POLL_NS};
		nanosleep(&ts, NULL);
		n = still_in_flight(sa, seen, n, &buf, &bcap);
	}
	if (n > 0)
		evst_debug("group: a leaving socket closes with %d handshake(s) "
			   "to its port still in flight after a second (any "
			   "listener's; one of its own would be reset)", n);
	free(seen);
	free(buf);
}

/* 1: the inbox was empty (its owner needs a poke), 0, or -ENOMEM */
static int inbox_push(struct evst_member_state *ms, int fd)
{
	pthread_mutex_lock(&ms->inbox_lock);
	if (ms->ninbox == ms->inbox_cap) {
		unsigned int cap = ms->inbox_cap ? 2 * ms->inbox_cap : 64;
		int *p = realloc(ms->inbox, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&ms->inbox_lock);
			return -ENOMEM;
		}
		ms->inbox = p;
		ms->inbox_cap = cap;
	}
	ms->inbox[ms->ninbox++] = fd;
	int first = ms->ninbox == 1;
	pthread_mutex_unlock(&ms->inbox_lock);
	return first;
}

unsigned int evst_inbox_give(struct evsteer_group *g,
			     const struct evsteer_listener *skip, const int *fds,
			     unsigned int n)
{
	/* round-robin over the live fd siblings, found as it goes (no list
	 * of up to 1,024 on the stack): `live` is cleared under g->lock
	 * before a listener goes away, and its inbox is handed on when it
	 * does */
	unsigned int closed = 0, at = 0;
	for (unsigned int j = 0; j < n; j++) {
		struct evsteer_listener *to = NULL;
		struct evst_worker *ws = NULL;
		for (unsigned int k = 0; k < g->nslots && !to; k++) {
			unsigned int i = (at + k) % g->nslots;
			struct evst_slot *s = &g->slots[i];
			struct evsteer_listener *l = slot_lev(s);
			if (!slot_used(s) || !l || l == skip || !l->ms || !s->ws ||
			    !__atomic_load_n(&s->ws->live, __ATOMIC_RELAXED) ||
			    evst_listener_is_direct(l))
				continue;
			to = l;
			ws = s->ws;
			at = i + 1;
		}
		int r = to ? inbox_push(to->ms, fds[j]) : -ENOENT;
		if (r < 0) {
			close(fds[j]);
			closed++;
			continue;
		}
		__atomic_fetch_add(&ws->migrated, 1, __ATOMIC_RELAXED);
		if (r == 1)
			eventfd_write(to->ms->poke_fd, 1);
	}
	return closed;
}

static bool has_taker(struct evsteer_group *g)
{
	pthread_mutex_lock(&g->lock);
	bool any = false;
	for (unsigned int i = 0; i < g->nslots && !any; i++) {
		struct evst_slot *s = &g->slots[i];
		struct evsteer_listener *l = slot_lev(s);
		any = slot_used(s) && l && l->ms && s->ws &&
		      __atomic_load_n(&s->ws->live, __ATOMIC_RELAXED) &&
		      !evst_listener_is_direct(l);
	}
	pthread_mutex_unlock(&g->lock);
	return any;
}

static void hand_on(struct evsteer_group *g, const int *fds, unsigned int n)
{
	if (!n)
		return;
	pthread_mutex_lock(&g->lock);
	unsigned int closed = evst_inbox_give(g, NULL, fds, n);
	pthread_mutex_unlock(&g->lock);
	if (closed)
		evst_warn("group: %u connection(s) queued on a leaving worker "
			  "closed: no live sibling in this process could take "
			  "them", closed);
}

void evst_group_close_sock(struct evsteer_group *g, int fd)
{
	if (!evst_shared_cbpf(g->sh) || !has_taker(g)) {
		evst_shared_close(g->sh, fd, NULL, 0);
		return;
	}
	/* the program leaves this socket out already: take what is queued,
	 * and what completes its handshake here until it has been quiet
	 * for a while, then close it (evst_shared_close takes the last
	 * ones under the lock that also re-makes the program) */
	int got[DRAIN_BATCH];
	uint64_t start = evst_now_ns(), last = start, looked = 0;
	/* handshakes in flight at the first look (-1: not looked yet) */
	uint64_t *seen = NULL, *buf = NULL;
	int nseen = -1, scap = 0, bcap = 0;
	const struct sockaddr *sa = (const struct sockaddr *)&g->addr;
	for (;;) {
		unsigned int n = 0;
		while (n < DRAIN_BATCH) {
			int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (c < 0)
				break;
			got[n++] = c;
		}
		uint64_t now = evst_now_ns();
		if (n) {
			hand_on(g, got, n);
			last = now;
			if (n == DRAIN_BATCH)
				continue;
		}
		/* a SYN the old program steered here as the new one went on
		 * is a request by now: look once that much has passed */
		if (nseen < 0 && now - start >= DRAIN_LOOK_NS) {
			nseen = handshakes(sa, &seen, &scap);
			if (nseen < 0) {
				evst_debug("group: cannot list the handshakes in "
					   "flight (sock_diag: %s); a leaving "
					   "socket waits a quiet while only",
					   strerror(-nseen));
				nseen = 0;
			}
			looked = now;
		}
		bool quiet = now - start >= DRAIN_SETTLE_NS &&
			     now - last >= DRAIN_SETTLE_NS / 2;
		if (quiet && nseen > 0 && now - looked >= DRAIN_LOOK_NS) {
			nseen = still_in_flight(sa, seen, nseen, &buf, &bcap);
			looked = now;
		}
		if ((quiet && nseen == 0) || now - start >= DRAIN_MAX_NS)
			break;
		struct timespec ts = {0, DRAIN_POLL_NS};
		nanosleep(&ts, NULL);
	}
	if (nseen > 0)
		evst_debug("group: a leaving socket closes with %d handshake(s) "
			   "to its port still in flight after %llu ms (any "
			   "listener's; one of its own would be reset)", nseen,
			   (unsigned long long)((evst_now_ns() - start) / 1000000));
	free(seen);
	free(buf);
	int late[DRAIN_BATCH];
	int n = evst_shared_close(g->sh, fd, late, DRAIN_BATCH);
	hand_on(g, late, (unsigned)n);
}

void evst_inbox_deliver(struct evsteer_listener *lev)
{
	struct evst_member_state *ms = lev->ms;
	while (ms && evst_active(lev)) {
		pthread_mutex_lock(&ms->inbox_lock);
		if (!ms->ninbox) {
			pthread_mutex_unlock(&ms->inbox_lock);
			return;
		}
		int fd = ms->inbox[0];
		memmove(ms->inbox, ms->inbox + 1, --ms->ninbox * sizeof(int));
		pthread_mutex_unlock(&ms->inbox_lock);
		/* accepted with the drain's flags: make them this listener's */
		if (!(lev->accept4_flags & SOCK_NONBLOCK)) {
			int fl = fcntl(fd, F_GETFL);
			if (fl >= 0)
				fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
		}
		if (!(lev->accept4_flags & SOCK_CLOEXEC))
			fcntl(fd, F_SETFD, 0);
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) {
			close(fd); /* reset meanwhile: gone */
			continue;
		}
		__atomic_fetch_add(&evst_group_counters(lev->group, lev->slot)->accepted,
				   1, __ATOMIC_RELAXED);
		if (!evst_deliver(lev, fd, (struct sockaddr *)&ss, len))
			return;
		ms = lev->ms;
	}
}

/* SPDX-License-Identifier: MIT */
/*
 * Worker groups of this process (group/): the listening sockets of one
 * address that this process serves, the listeners serving them, and what a
 * member does for its group. The address's steering across processes is
 * steering/'s; a group holds a reference to it (g->sh).
 *
 *   group.c     the object and its public life cycle (new, attach,
 *               add_worker, free, retire, from existing sockets)
 *   registry.c  the implicit groups REUSEABLE_PORT listeners form, and
 *               every group's reference count
 *   member.c    the member interface a listener calls (join, leave, took,
 *               alive, empty, live), and the poke that wakes a member
 *   steal.c     taking a stuck sibling's queue; handing a leaving one's over
 *   control.c   policy, weights, CPU map, pending: live control
 *   stats.c     per-worker statistics, any process's slot
 *   activate.c  groups from systemd's LISTEN_FDS
 *   watch.c     the stall watch thread
 *
 * Calls go one way: group/ -> listener.c -> engine/ (group code reaches an
 * engine only through listener.c's evst_listener_*() functions); the
 * engines report up through the member interface this layer registers on
 * each listener (internal.h), and never name group code.
 *
 * Locks: `registry_lock` (registry.c) guards the list of implicit groups
 * and every group's refcount; `g->lock` guards the slots and the steering
 * table, and is held while a thief accepts from a sibling's socket so that
 * the socket cannot be closed (and its number reused) underneath it.
 * Order: a listener's lock, then registry_lock, then g->lock. User
 * callbacks never run under either group lock.
 */
#ifndef EVSTEER_GROUP_GROUP_H
#define EVSTEER_GROUP_GROUP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "internal.h"
#include "steering/shared.h"
#include "watch.h"

struct evst_slot {
	int gslot;    /* the group-wide slot (shared.h); -1 when unused */
	int fd;
	bool owned;   /* the group closes fd when the worker leaves */
	struct evsteer_listener *lev;
	/* The shared entry, published last and cleared first: thieves look
	 * at siblings through it without the lock. */
	struct evst_worker *ws;
};

struct evsteer_group {
	pthread_mutex_t lock;
	int refcnt;            /* registry_lock */
	unsigned int gen;      /* made in this process generation (fork) */
	bool implicit;         /* formed by REUSEABLE_PORT listeners */
	struct evsteer_group *next;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	unsigned int flags;
	int backlog;
	struct evsteer_listener_opts lopts;
	struct evst_shared *sh; /* the address's steering, all processes */
	bool retired;          /* evsteer_group_retire(): never live again */
	unsigned int nslots;   /* this group's slots so far */
	struct evst_slot slots[EVST_MAX_WORKERS];
};

/*
 * What a member keeps of its own (lev->ms). The poke is an eventfd in the
 * member's base: written by a sibling that stole from it (its next pass
 * shows its loop runs again) or by the stall watch (take a stuck sibling's
 * queue). An eventfd, not event_active(): it wakes the loop from any
 * thread whether or not the host made its base thread-aware.
 */
struct evst_member_state {
	int poke_fd;
	struct event *poke_ev;
	struct evst_watched watch;
	/* classic BPF: connections a leaving sibling's socket had queued,
	 * handed here (steal.c) and delivered by the poke, in order */
	pthread_mutex_t inbox_lock; /* a leaf */
	int *inbox;
	unsigned int ninbox, inbox_cap;
	unsigned int steal_from; /* where the next look for stuck siblings
				  * starts (steal.c; the listener lock) */
	uint64_t blocked_until; /* one connection per pass until then, after
				  * a pass that blocked (member.c; the loop
				  * thread) */
	bool deferring; /* TCP_DEFER_ACCEPT set meanwhile (member.c, the
			 * loop thread; defer_accept_after_block) */
	bool defer_preset; /* the socket deferred before: left alone */
	uint64_t excess_since; /* since then every empty pass found pending
				 * left after the resync (member.c; the loop
				 * thread); 0: the last found none */
	/* written by the first thief after the pass whose heartbeat was
	 * theft_after (steal.c): how long the loop thread had waited for a
	 * CPU and run by then (evst_thread_run_delay), so that its next pass
	 * can tell a wait for a CPU from a block (member.c; atomics) */
	uint64_t theft_after, theft_run_delay, theft_on_cpu;
};

static inline uint64_t evst_ld64(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline bool slot_used(const struct evst_slot *s)
{
	return s->gslot >= 0;
}

/* The listener serving the slot, if one does yet (g->lock held). */
static inline struct evsteer_listener *slot_lev(const struct evst_slot *s)
{
	return s->lev != EVST_SLOT_CLAIMED ? s->lev : NULL;
}

/* steal.c, classic BPF: close a worker's socket that left the steering
 * (evst_slot_remove), handing what is queued on it, and what completes its
 * handshake there meanwhile, to live siblings of this process first (the
 * kernel migrates nothing for a classic program). Without classic BPF:
 * close(). No group lock held. */
EVST_HIDDEN void evst_group_close_sock(struct evsteer_group *g, int fd);
/* steal.c, eBPF: a worker the program no longer picks (not live), its
 * socket open and its slot held (ws: its counters): return once no
 * handshake it may own is in flight, so that none completes during the
 * close (see there). No group lock held. */
EVST_HIDDEN void evst_group_leave_settle(struct evsteer_group *g,
					 const struct evst_worker *ws);
/* steal.c: deliver what lev's inbox holds (lev's loop, its lock held and a
 * reference taken, as in the poke). */
EVST_HIDDEN void evst_inbox_deliver(struct evsteer_listener *lev);
/* steal.c: g->lock held: give n fds to live siblings' inboxes (not to
 * `skip`), poking them; closes and returns the count of those none took. */
EVST_HIDDEN unsigned int evst_inbox_give(struct evsteer_group *g,
					 const struct evsteer_listener *skip,
					 const int *fds, unsigned int n);

/* group.c */
EVST_HIDDEN struct evsteer_group *
evst_group_alloc(unsigned int flags, const struct evsteer_listener_opts *lo);
/* g->lock held. Put fd into a free slot; returns the slot or -errno. */
EVST_HIDDEN int evst_slot_add(struct evsteer_group *g, int fd, bool owned);
/* g->lock held: the slot stops being steered to; returns its fd. */
EVST_HIDDEN int evst_slot_remove(struct evsteer_group *g, unsigned int i);
EVST_HIDDEN struct evst_slot_counters *
evst_group_counters(struct evsteer_group *g, unsigned int slot);
/* The worker's loop runs on this thread (evsteer-stat shows it). */
static inline void evst_group_note_thread(struct evsteer_group *g,
					  unsigned int slot)
{
	evst_shared_note_thread(g->sh, (unsigned)g->slots[slot].gslot);
}
/* The address's steering as options ask for it, the environment filling
 * in what they leave at 0: groups and REUSEABLE_PORT listeners alike. */
EVST_HIDDEN struct evst_shared_opts
evst_group_shared_opts(enum evsteer_bpf_mode bpf, enum evsteer_policy policy,
		       int stall_us);
EVST_HIDDEN void evst_group_steering(const struct evsteer_group *g,
				     struct evst_steering *out);

/* registry.c */
EVST_HIDDEN void evst_group_ref(struct evsteer_group *g);
EVST_HIDDEN void evst_group_unref(struct evsteer_group *g);
/* In a child of fork(), g inherited: evst_group_unref() that touches
 * nothing the parent uses (common/process.h): at the last reference the
 * child's copies of the group's own sockets close and the memory goes;
 * the slots stay the parent's. */
EVST_HIDDEN void evst_group_forget_ref(struct evsteer_group *g);
/* The implicit group of the address lev->fd is bound to, made if needed;
 * a reference taken. NULL with errno. */
EVST_HIDDEN struct evsteer_group *
evst_group_implicit(struct evsteer_listener *lev,
		    const struct sockaddr_storage *ss, socklen_t len,
		    const struct evsteer_listener_opts *opts);

/* steal.c */
/* Listener lock held, reference taken: take stuck siblings' queues,
 * looking at up to 64 siblings a call (each call goes on where the last
 * stopped), or at every one (_all: the stall watch poked this member). */
EVST_HIDDEN void evst_steal_stuck(struct evsteer_listener *lev);
EVST_HIDDEN void evst_steal_stuck_all(struct evsteer_listener *lev);
/* member->watched: stall detection is on for lev's group. */
EVST_HIDDEN bool evst_steal_watched(const struct evsteer_listener *lev);
/* member->takers: watched, and another socket of the group is in this
 * process (slots are not reused, so one that left still counts); and
 * whether lev's loop blocked lately (member.c, blocked_until). */
EVST_HIDDEN enum evst_takers evst_steal_takers(const struct evsteer_listener *lev,
					       uint64_t now);
/* lev's lock held: give what lev's engine accepted and never delivered
 * to live siblings of this process; how many were taken. */
EVST_HIDDEN unsigned int evst_steal_handoff(struct evsteer_listener *lev,
					    const struct evst_conn *c,
					    unsigned int n);

#endif

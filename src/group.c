/* SPDX-License-Identifier: MIT */
/*
 * Worker groups: the sockets of one address, their steering state, and the
 * accounting the workers do (dequeue counts, progress, stealing).
 *
 * Locks: `registry_lock` guards the list of implicit groups and every
 * group's refcount; `g->lock` guards the slots and the steering table, and
 * is held while a thief accepts from a sibling's socket so that the socket
 * cannot be closed (and its number reused) underneath it. Order: a
 * listener's lock, then registry_lock, then g->lock. User callbacks never
 * run under either group lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/eventfd.h>
#include <event2/event.h>

#include "config.h"
#include "shared.h"
#include "watch.h"
#include "common/env.h"
#include "common/options.h"

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

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evsteer_group *registry;

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
};

/* After fork the child's implicit groups start from nothing (shared.c
 * says why). */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&registry_lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
}

static void atfork_child(void)
{
	registry = NULL;
	pthread_mutex_unlock(&registry_lock);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static uint64_t ld(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static struct evsteer_group *group_alloc(unsigned int flags,
					 const struct evsteer_listener_opts *lo)
{
	struct evsteer_group *g = calloc(1, sizeof(*g));
	if (!g) {
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&g->lock, NULL);
	g->refcnt = 1;
	g->flags = flags;
	g->lopts = *lo;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		g->slots[i].fd = -1;
		g->slots[i].gslot = -1;
	}
	return g;
}

static bool slot_used(const struct evst_slot *s)
{
	return s->gslot >= 0;
}

/* The listener serving the slot, if one does yet (g->lock held). */
static struct evsteer_listener *slot_lev(const struct evst_slot *s)
{
	return s->lev != EVST_SLOT_CLAIMED ? s->lev : NULL;
}

/* g->lock held. Put fd into a free slot; returns the slot or -errno. */
static int slot_add(struct evsteer_group *g, int fd, bool owned)
{
	unsigned int i;
	for (i = 0; i < EVST_MAX_WORKERS && slot_used(&g->slots[i]); i++)
		;
	if (i == EVST_MAX_WORKERS)
		return -ENOSPC;
	int gs = evst_shared_claim(g->sh, fd);
	if (gs < 0)
		return gs;
	struct evst_slot *s = &g->slots[i];
	s->gslot = gs;
	s->fd = fd;
	s->owned = owned;
	s->lev = NULL;
	__atomic_store_n(&s->ws, evst_shared_worker(g->sh, (unsigned)gs),
			 __ATOMIC_RELEASE);
	if (i >= g->nslots)
		__atomic_store_n(&g->nslots, i + 1, __ATOMIC_RELAXED);
	return (int)i;
}

/* g->lock held: the slot stops being steered to; returns its fd. */
static int slot_remove(struct evsteer_group *g, unsigned int i)
{
	struct evst_slot *s = &g->slots[i];
	__atomic_store_n(&s->ws, NULL, __ATOMIC_RELEASE);
	evst_shared_release(g->sh, (unsigned)s->gslot);
	int fd = s->fd;
	s->gslot = -1;
	s->fd = -1;
	s->lev = NULL;
	return fd;
}

static struct evst_slot_counters *counters(struct evsteer_group *g,
					   unsigned int slot)
{
	return evst_shared_counters(g->sh, (unsigned)g->slots[slot].gslot);
}

static void group_unref(struct evsteer_group *g)
{
	pthread_mutex_lock(&registry_lock);
	if (--g->refcnt > 0) {
		pthread_mutex_unlock(&registry_lock);
		return;
	}
	if (g->implicit) {
		struct evsteer_group **pp = &registry;
		while (*pp && *pp != g)
			pp = &(*pp)->next;
		if (*pp)
			*pp = g->next;
	}
	pthread_mutex_unlock(&registry_lock);
	if (g->sh)
		evst_shared_put(g->sh);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

static int bind_worker_socket(const struct sockaddr *sa, socklen_t len,
			      unsigned int flags, int backlog)
{
	int type = SOCK_STREAM | SOCK_NONBLOCK |
		   (flags & EVSTEER_OPT_CLOSE_ON_EXEC ? SOCK_CLOEXEC : 0);
	int fd = socket(sa->sa_family, type, 0);
	if (fd < 0)
		return -errno;
	int err = evst_apply_sockopts(fd, flags | EVSTEER_OPT_REUSEABLE_PORT);
	if (!err && bind(fd, sa, len) < 0)
		err = -errno;
	if (!err && listen(fd, backlog > 0 ? backlog : EVSTEER_DEFAULT_BACKLOG) < 0)
		err = -errno;
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

/* The address's steering as options ask for it, the environment filling
 * in what they leave at 0: groups and REUSEABLE_PORT listeners alike. */
static struct evst_shared_opts shared_opts(enum evsteer_bpf_mode bpf,
					   enum evsteer_policy policy,
					   int stall_us)
{
	return (struct evst_shared_opts){
		.mode = evst_env_bpf(bpf),
		.policy = evst_env_policy(policy),
		.stall_us = evst_env_stall_us(stall_us),
	};
}

/*
 * What a group's options (validated by the caller) mean for its workers'
 * listeners and for the address's steering, environment included: the
 * same for evsteer_group_new() and evsteer_group_from_fds().
 */
static void group_opts_read(const struct evsteer_group_opts *opts,
			    struct evsteer_listener_opts *lo,
			    struct evst_shared_opts *so)
{
	*lo = (struct evsteer_listener_opts){
		.sz = sizeof(*lo),
		.max_accepts_per_wakeup = EVST_OPT(opts, struct evsteer_group_opts,
						   max_accepts_per_wakeup, 0),
		.backoff_max_ms = EVST_OPT(opts, struct evsteer_group_opts,
					   backoff_max_ms, 0),
		.accept = EVST_OPT(opts, struct evsteer_group_opts, accept,
				   EVSTEER_ACCEPT_AUTO),
	};
	*so = shared_opts(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, EVSTEER_BPF_AUTO),
		EVST_OPT(opts, struct evsteer_group_opts, policy,
			 EVSTEER_POLICY_LEAST_PENDING),
		EVST_OPT(opts, struct evsteer_group_opts, stall_us, 0));
}

struct evsteer_group *evsteer_group_new(const struct sockaddr *addr,
					socklen_t len, unsigned int nworkers,
					unsigned int flags, int backlog,
					const struct evsteer_group_opts *opts)
{
	static const char fn[] = "evsteer_group_new";
	int err;

	if (!addr || evst_validate_sockaddr(addr, len) < 0 ||
	    (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)) {
		evst_warn("%s: need an IPv4 or IPv6 address", fn);
		errno = addr && (addr->sa_family != AF_INET &&
				 addr->sa_family != AF_INET6) ?
				EAFNOSUPPORT :
				EINVAL;
		return NULL;
	}
	if (nworkers < 1 || nworkers > EVST_MAX_WORKERS) {
		evst_warn("%s: nworkers %u not in 1..%d", fn, nworkers,
			  EVST_MAX_WORKERS);
		errno = EINVAL;
		return NULL;
	}
	if ((flags & ~EVSTEER_OPT_ALL) || backlog == 0) {
		evst_warn("%s: bad flags or backlog 0", fn);
		errno = EINVAL;
		return NULL;
	}
	if (!evst_group_opts_ok(fn, opts)) {
		errno = EINVAL;
		return NULL;
	}
	struct evsteer_listener_opts lo;
	struct evst_shared_opts so;
	group_opts_read(opts, &lo, &so);

	struct evsteer_group *g =
		group_alloc(flags | EVSTEER_OPT_REUSEABLE_PORT, &lo);
	if (!g)
		return NULL;

	memcpy(&g->addr, addr, len);
	g->addrlen = len;
	g->backlog = backlog;
	for (unsigned int i = 0; i < nworkers; i++) {
		/* after the first, bind the port the kernel chose for it */
		int fd = bind_worker_socket((struct sockaddr *)&g->addr,
					    g->addrlen, flags, backlog);
		if (fd < 0) {
			err = fd;
			goto fail;
		}
		if (i == 0) {
			g->addrlen = sizeof(g->addr);
			getsockname(fd, (struct sockaddr *)&g->addr, &g->addrlen);
			/* this process's, or another's, steering of the
			 * address: one address, one group */
			g->sh = evst_shared_get(fd, &so);
			if (!g->sh) {
				err = -errno;
				close(fd);
				goto fail;
			}
		}
		pthread_mutex_lock(&g->lock);
		err = slot_add(g, fd, true);
		pthread_mutex_unlock(&g->lock);
		if (err < 0) {
			close(fd);
			goto fail;
		}
	}
	return g;
fail:
	evst_warn("%s: %s", fn, strerror(-err));
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < g->nslots; i++)
		if (slot_used(&g->slots[i]))
			close(slot_remove(g, i));
	pthread_mutex_unlock(&g->lock);
	group_unref(g);
	errno = -err;
	return NULL;
}

struct evsteer_listener *evsteer_group_attach(struct evsteer_group *g,
					      unsigned int slot,
					      struct event_base *base,
					      evsteer_accept_cb cb, void *arg)
{
	if (!g || !base || slot >= EVST_MAX_WORKERS) {
		evst_warn("evsteer_group_attach: %s",
			  !g ? "NULL group" : !base ? "NULL event_base" :
						     "slot out of range");
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&g->lock);
	int err = !slot_used(&g->slots[slot]) ? -ENOENT :
		  g->slots[slot].lev		? -EBUSY :
						  0;
	int fd = g->slots[slot].fd;
	if (!err)
		g->slots[slot].lev = EVST_SLOT_CLAIMED;
	pthread_mutex_unlock(&g->lock);
	if (err) {
		evst_warn("evsteer_group_attach: slot %u %s", slot,
			  err == -EBUSY ? "already has a listener" :
					  "is not in use");
		errno = -err;
		return NULL;
	}
	struct evst_attach at = {g, slot};
	struct evsteer_listener *lev = evst_listener_create(
		base, cb, arg, g->flags & ~EVSTEER_OPT_CLOSE_ON_FREE, 0, fd,
		&g->lopts, &evst_group_member, &at, 0);
	if (!lev) {
		err = errno;
		pthread_mutex_lock(&g->lock);
		g->slots[slot].lev = NULL;
		pthread_mutex_unlock(&g->lock);
		errno = err;
	}
	return lev;
}

/* registry_lock held: the implicit group of this address, with a
 * reference taken, or NULL. */
static struct evsteer_group *registry_ref(const struct sockaddr_storage *ss,
					  socklen_t len)
{
	for (struct evsteer_group *g = registry; g; g = g->next)
		if (g->addrlen == len && !memcmp(&g->addr, ss, len)) {
			g->refcnt++;
			return g;
		}
	return NULL;
}

/* The implicit group of the address lev->fd is bound to, made if needed
 * (one per address per process; it shares the address's steering with any
 * explicit group and other processes). A reference is taken. */
static struct evsteer_group *implicit_group(struct evsteer_listener *lev,
					    const struct sockaddr_storage *ss,
					    socklen_t len,
					    const struct evsteer_listener_opts *opts)
{
	pthread_once(&atfork_once, atfork_register);
	/* registry_lock is never held across evst_shared_get (which takes
	 * shared.c's locks): no nesting, so the fork handlers cannot
	 * deadlock against a creation in flight */
	pthread_mutex_lock(&registry_lock);
	struct evsteer_group *g = registry_ref(ss, len);
	pthread_mutex_unlock(&registry_lock);
	if (g)
		return g;
	struct evsteer_listener_opts lo = {.sz = sizeof(lo)};
	g = group_alloc(lev->flags, &lo);
	if (!g)
		return NULL;
	struct evst_shared_opts so = shared_opts(
		EVST_OPT(opts, struct evsteer_listener_opts, bpf, EVSTEER_BPF_AUTO),
		EVST_OPT(opts, struct evsteer_listener_opts, policy,
			 EVSTEER_POLICY_LEAST_PENDING),
		EVST_OPT(opts, struct evsteer_listener_opts, stall_us, 0));
	g->sh = evst_shared_get(lev->fd, &so);
	if (!g->sh) {
		int err = errno;
		pthread_mutex_destroy(&g->lock);
		free(g);
		errno = err;
		return NULL;
	}
	g->implicit = true;
	g->addr = *ss;
	g->addrlen = len;
	pthread_mutex_lock(&registry_lock);
	struct evsteer_group *other = registry_ref(ss, len);
	if (other) {
		/* another thread made it meanwhile: use theirs */
		pthread_mutex_unlock(&registry_lock);
		evst_shared_put(g->sh);
		pthread_mutex_destroy(&g->lock);
		free(g);
		return other;
	}
	g->next = registry;
	registry = g;
	pthread_mutex_unlock(&registry_lock);
	return g;
}

static void member_leave(struct evsteer_listener *lev, bool close_fd);
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
	lev->ms = ms;
	return 0;
}

static void member_state_free(struct evsteer_listener *lev)
{
	struct evst_member_state *ms = lev->ms;
	if (!ms)
		return;
	evst_watch_remove(&ms->watch);
	event_free(ms->poke_ev);
	close(ms->poke_fd);
	free(ms);
	lev->ms = NULL;
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
		g = implicit_group(lev, &ss, len, opts);
		if (!g)
			return -errno;
		pthread_mutex_lock(&g->lock);
		int r = slot_add(g, lev->fd, false);
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
			group_unref(g);
			return need ? r : 0;
		}
		slot = (unsigned int)r;
	} else {
		pthread_mutex_lock(&registry_lock);
		g->refcnt++;
		pthread_mutex_unlock(&registry_lock);
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
	/* out of the watch first: it must never look at a freed entry */
	member_state_free(lev);
	pthread_mutex_lock(&g->lock);
	bool owned = g->slots[lev->slot].owned;
	int fd = slot_remove(g, lev->slot);
	pthread_mutex_unlock(&g->lock);
	if (close_fd && (owned || (lev->flags & EVSTEER_OPT_CLOSE_ON_FREE)))
		close(fd);
	lev->group = NULL;
	lev->member = NULL;
	lev->ws = NULL;
	group_unref(g);
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
	if (slot_used(&g->slots[lev->slot]))
		evst_shared_set_live(g->sh, (unsigned)g->slots[lev->slot].gslot,
				     live);
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
		ms->watch.group = g;
		ms->watch.ws = lev->ws;
		ms->watch.stall_ns = evst_shared_stall_ptr(g->sh);
		int ring_fd = lev->ops->signal_fd ? lev->ops->signal_fd(lev) : -1;
		evst_watch_add(&ms->watch, lev->fd, ring_fd);
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

static void group_steering(const struct evsteer_group *g,
			   struct evst_steering *out)
{
	bool bpf = evst_shared_bpf(g->sh);
	out->steering = bpf ? EVSTEER_STEER_BPF : EVSTEER_STEER_KERNEL_HASH;
	out->reason = bpf ? "" : evst_shared_reason(g->sh);
	out->policy = (enum evsteer_policy)evst_shared_policy(g->sh);
}

static void member_steering(const struct evsteer_listener *lev,
			    struct evst_steering *out)
{
	group_steering(lev->group, out);
}


static void member_took(struct evsteer_listener *lev, uint64_t now)
{
	if (!lev->ws)
		return;
	__atomic_fetch_add(&lev->ws->dequeued, 1, __ATOMIC_RELAXED);
	evst_made_progress(lev->ws, now);
	__atomic_fetch_add(&counters(lev->group, lev->slot)->accepted, 1,
			   __ATOMIC_RELAXED);
}

static void member_alive(struct evsteer_listener *lev, uint64_t now)
{
	if (lev->ws)
		evst_made_progress(lev->ws, now);
}

/*
 * The engine found the queue empty: whatever the program counted that
 * never arrived (handshakes that died, SYN floods) is dropped from pending
 * here, so drift cannot build up; a connection in its handshake right now
 * may be counted once less until it is accepted. dequeued never stays
 * past steered either (a connection the program did not count: a SYN
 * cookie completed on another socket), which would hide a real one.
 */
static void member_empty(struct evsteer_listener *lev, uint64_t now)
{
	if (!lev->ws)
		return;
	evst_made_progress(lev->ws, now);
	evst_ws_resync(lev->ws);
}

/* n connections counted on slot `from` (its worker entry w) were taken by
 * slot `to`: off the victim's pending, and into both counters. The victim
 * stays out of the steering until its loop runs after this (stolen_ns). */
static void note_stolen(struct evsteer_group *g, struct evst_worker *w,
			unsigned int from, unsigned int to, unsigned int n,
			uint64_t now)
{
	__atomic_fetch_add(&w->dequeued, n, __ATOMIC_RELAXED);
	if (ld(&w->stolen_ns) < now)
		__atomic_store_n(&w->stolen_ns, now, __ATOMIC_RELAXED);
	__atomic_fetch_add(&counters(g, from)->stolen_from, (uint64_t)n,
			   __ATOMIC_RELAXED);
	__atomic_fetch_add(&counters(g, to)->stolen, (uint64_t)n,
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
	    lev->ops->steal_from)
		n = lev->ops->steal_from(lev, slot_lev(s), s->fd,
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
	int fd = v && v->ops->steal ? v->ops->steal(v) : -1;
	if (fd >= 0) {
		*len = sizeof(*ss);
		if (getpeername(fd, (struct sockaddr *)ss, len) < 0) {
			close(fd); /* reset meanwhile: gone */
			return -2;
		}
		return fd;
	}
	*len = sizeof(*ss);
	return accept4(s->fd, (struct sockaddr *)ss, len, lev->accept4_flags);
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
static void member_steal(struct evsteer_listener *lev)
{
	struct evsteer_group *g = lev->group;
	uint64_t stall = evst_shared_stall_ns(g->sh);
	if (!stall || !evst_active(lev))
		return;

	uint64_t now = evst_now_ns();
	int budget = STEAL_BUDGET;
	unsigned int nslots = __atomic_load_n(&g->nslots, __ATOMIC_RELAXED);
	for (unsigned int i = 0; i < nslots && budget > 0; i++) {
		if (i == lev->slot)
			continue;
		/* without the lock (shared memory, relaxed); lock to take */
		struct evst_worker *w =
			__atomic_load_n(&g->slots[i].ws, __ATOMIC_ACQUIRE);
		if (!w || !__atomic_load_n(&w->live, __ATOMIC_RELAXED) ||
		    !evst_worker_pending(w))
			continue;
		uint64_t age = now - ld(&w->progress_ns);
		if ((int64_t)age < 0 || age <= stall)
			continue;
		int n = lev->direct_table ?
				steal_direct(lev, g, i, w, budget, now) :
				steal_fds(lev, g, i, w, budget, now);
		if (n < 0)
			return;
		budget -= n;
	}
}

/*
 * member->handoff: lev is leaving with n connections its engine accepted
 * and never delivered: give them to live siblings of this process that can
 * take them (in order, spread over them). Returns how many were taken.
 */
static unsigned int member_handoff(struct evsteer_listener *lev,
				   const struct evst_conn *c, unsigned int n)
{
	struct evsteer_group *g = lev->group;
	unsigned int given = 0;

	pthread_mutex_lock(&g->lock);
	/* Live siblings only: `live` is cleared under this lock before a
	 * listener starts going away, so a live one outlives the call. */
	struct evsteer_listener *to[EVST_MAX_WORKERS];
	struct evst_worker *ws[EVST_MAX_WORKERS];
	unsigned int k = 0;
	for (unsigned int i = 0; i < g->nslots; i++) {
		struct evst_slot *s = &g->slots[i];
		if (i == lev->slot || !slot_used(s) || !slot_lev(s) ||
		    !s->lev->ops->adopt ||
		    !s->lev->direct_table != !lev->direct_table ||
		    !__atomic_load_n(&s->ws->live, __ATOMIC_RELAXED))
			continue;
		to[k] = s->lev;
		ws[k++] = s->ws;
	}
	/* spread in runs, so each sibling gets its share in order */
	for (unsigned int j = 0; j < k && given < n; j++) {
		unsigned int share = (n - given + (k - j) - 1) / (k - j);
		unsigned int took = to[j]->ops->adopt(to[j], c + given, share);
		/* as if the program had steered them there: its pending stays
		 * right, and they show as migrated */
		__atomic_fetch_add(&ws[j]->steered, took, __ATOMIC_RELAXED);
		__atomic_fetch_add(&ws[j]->migrated, took, __ATOMIC_RELAXED);
		given += took;
	}
	pthread_mutex_unlock(&g->lock);
	return given;
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
		member_steal(lev);
	}
	evst_decref_and_unlock(lev);
}

int evsteer_group_add_worker(struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	int fd = bind_worker_socket((struct sockaddr *)&g->addr, g->addrlen,
				    g->flags, g->backlog);
	if (fd < 0)
		return -(errno = -fd);
	pthread_mutex_lock(&g->lock);
	int r = slot_add(g, fd, true);
	pthread_mutex_unlock(&g->lock);
	if (r < 0) {
		close(fd);
		errno = -r;
	}
	return r;
}

void evsteer_group_free(struct evsteer_group *g)
{
	if (!g)
		return;
	int fds[EVST_MAX_WORKERS];
	int n = 0;
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < g->nslots; i++)
		if (slot_used(&g->slots[i]) && !g->slots[i].lev)
			fds[n++] = slot_remove(g, i);
	pthread_mutex_unlock(&g->lock);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	group_unref(g);
}

int evsteer_group_retire(struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	pthread_mutex_lock(&g->lock);
	g->retired = true;
	for (unsigned int i = 0; i < g->nslots; i++)
		if (slot_used(&g->slots[i]))
			evst_shared_set_live(g->sh, (unsigned)g->slots[i].gslot,
					     false);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int evsteer_group_pending(const struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	struct evsteer_group *mg = (struct evsteer_group *)g;
	uint64_t n = 0;
	pthread_mutex_lock(&mg->lock);
	for (unsigned int i = 0; i < g->nslots; i++) {
		struct evst_worker *w = g->slots[i].ws;
		if (!w)
			continue;
		n += evst_worker_pending(w);
		/* accepted by an engine, not yet delivered */
		struct evsteer_listener *l = slot_lev(&g->slots[i]);
		if (l)
			n += (uint64_t)atomic_load_explicit(&l->counters.held,
							    memory_order_relaxed);
	}
	pthread_mutex_unlock(&mg->lock);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

int evsteer_group_set_policy(struct evsteer_group *g, enum evsteer_policy policy)
{
	if (!g || (unsigned int)policy > EVSTEER_POLICY_CPU)
		return -(errno = EINVAL);
	evst_shared_set_policy(g->sh, (unsigned int)policy);
	evst_info("group: policy %s", evsteer_policy_name(policy));
	return 0;
}

int evsteer_group_set_weight(struct evsteer_group *g, unsigned int slot,
			     unsigned int weight)
{
	if (!g || slot >= EVST_MAX_WORKERS || weight < 1 || weight > 16)
		return -(errno = EINVAL);
	pthread_mutex_lock(&g->lock);
	int r = slot_used(&g->slots[slot]) ? 0 : -ENOENT;
	if (!r)
		evst_shared_set_weight(g->sh, (unsigned)g->slots[slot].gslot,
				       weight);
	pthread_mutex_unlock(&g->lock);
	return r ? -(errno = -r) : 0;
}

int evsteer_group_set_cpu(struct evsteer_group *g, unsigned int cpu,
			  unsigned int slot)
{
	if (!g || cpu >= EVST_MAX_CPUS || slot >= EVST_MAX_WORKERS)
		return -(errno = EINVAL);
	pthread_mutex_lock(&g->lock);
	int r = slot_used(&g->slots[slot]) ? 0 : -ENOENT;
	if (!r)
		evst_shared_set_cpu(g->sh, cpu, (unsigned)g->slots[slot].gslot);
	pthread_mutex_unlock(&g->lock);
	return r ? -(errno = -r) : 0;
}

int evsteer_group_get_fd(const struct evsteer_group *g, unsigned int slot)
{
	if (!g || slot >= EVST_MAX_WORKERS) {
		errno = EINVAL;
		return -1;
	}
	struct evsteer_group *mg = (struct evsteer_group *)g;
	pthread_mutex_lock(&mg->lock);
	int fd = slot_used(&g->slots[slot]) ? g->slots[slot].fd : -1;
	pthread_mutex_unlock(&mg->lock);
	if (fd < 0)
		errno = EINVAL;
	return fd;
}

unsigned int evsteer_group_size(const struct evsteer_group *g)
{
	return g ? __atomic_load_n(&g->nslots, __ATOMIC_RELAXED) : 0;
}

struct evsteer_group *evsteer_listener_get_group(const struct evsteer_listener *lev)
{
	return lev ? lev->group : NULL;
}

int evsteer_group_get_path(const struct evsteer_group *g,
			   struct evsteer_path *out)
{
	if (!g || !out || out->sz < sizeof(out->sz))
		return -(errno = EINVAL);
	struct evst_steering st;
	group_steering(g, &st);
	return evst_fill_path(&st, NULL,
			      "a group's listeners each report their engine", out);
}

/* gslot's counters, from shared memory: any member can read any slot. */
static void fill_stats(struct evst_shared *sh, int gslot, bool mine,
		       struct evsteer_worker_stats *out)
{
	struct evsteer_worker_stats st = {.sz = out->sz, .global_slot = -1};
	uint32_t pid = gslot >= 0 ? evst_shared_slot_pid(sh, (unsigned)gslot) : 0;
	if (pid) {
		const struct evst_worker *w = evst_shared_worker(sh, (unsigned)gslot);
		const struct evst_slot_counters *c =
			evst_shared_counters(sh, (unsigned)gslot);
		uint64_t prog = ld(&w->progress_ns), now = evst_now_ns();
		st.steered = ld(&w->steered);
		st.accepted = __atomic_load_n(&c->accepted, __ATOMIC_RELAXED);
		st.pending = evst_worker_pending(w);
		st.stolen = __atomic_load_n(&c->stolen, __ATOMIC_RELAXED);
		st.stolen_from = __atomic_load_n(&c->stolen_from, __ATOMIC_RELAXED);
		st.migrated = ld(&w->migrated);
		st.heartbeat_age_ns = prog && now > prog ? now - prog : 0;
		st.live = (int)__atomic_load_n(&w->live, __ATOMIC_RELAXED);
		st.pid = (int)pid;
		st.global_slot = gslot;
		st.mine = mine;
	}
	EVST_WORKER_STATS_COPY_OUT(out, &st);
}

int evsteer_group_worker_stats(const struct evsteer_group *g, unsigned int slot,
			       struct evsteer_worker_stats *out)
{
	if (!g || !out || out->sz < sizeof(out->sz) || slot >= EVST_MAX_WORKERS)
		return -(errno = EINVAL);
	struct evsteer_group *mg = (struct evsteer_group *)g;
	pthread_mutex_lock(&mg->lock);
	fill_stats(g->sh, g->slots[slot].gslot, true, out);
	pthread_mutex_unlock(&mg->lock);
	return 0;
}

unsigned int evsteer_group_global_size(const struct evsteer_group *g)
{
	return g ? evst_shared_nslots(g->sh) : 0;
}

int evsteer_group_global_stats(const struct evsteer_group *g,
			       unsigned int gslot,
			       struct evsteer_worker_stats *out)
{
	if (!g || !out || out->sz < sizeof(out->sz) || gslot >= EVST_MAX_WORKERS)
		return -(errno = EINVAL);
	struct evsteer_group *mg = (struct evsteer_group *)g;
	bool mine = false;
	pthread_mutex_lock(&mg->lock);
	for (unsigned int i = 0; i < g->nslots; i++)
		mine |= g->slots[i].gslot == (int)gslot;
	pthread_mutex_unlock(&mg->lock);
	fill_stats(g->sh, (int)gslot, mine, out);
	return 0;
}

/*
 * A group made of listening sockets the caller already has (socket
 * activation: sdactivate.c checked them). Options as evsteer_group_new()
 * reads them; the group owns the sockets from here on. On failure the
 * sockets are left open for the caller.
 */
struct evsteer_group *evst_group_adopt(const int *fds, unsigned int n,
				       unsigned int flags,
				       const struct evsteer_group_opts *opts)
{
	struct evsteer_listener_opts lo;
	struct evst_shared_opts so;
	group_opts_read(opts, &lo, &so);
	struct evsteer_group *g =
		group_alloc(flags | EVSTEER_OPT_REUSEABLE_PORT, &lo);
	if (!g)
		return NULL;
	g->addrlen = sizeof(g->addr);
	getsockname(fds[0], (struct sockaddr *)&g->addr, &g->addrlen);
	/* the address's steering, as for evsteer_group_new() */
	g->sh = evst_shared_get(fds[0], &so);
	if (!g->sh) {
		int err = errno;
		group_unref(g);
		errno = err;
		return NULL;
	}
	g->backlog = -1; /* for evsteer_group_add_worker() */
	int err = 0;
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < n && err >= 0; i++)
		err = slot_add(g, fds[i], true);
	if (err < 0) {
		for (unsigned int i = 0; i < g->nslots; i++)
			if (slot_used(&g->slots[i]))
				slot_remove(g, i);
	}
	pthread_mutex_unlock(&g->lock);
	if (err < 0) {
		group_unref(g);
		errno = -err;
		return NULL;
	}
	return g;
}

/* What a listener knows of its group (internal.h). */
const struct evst_member_ops evst_group_member = {
	.join = member_join,
	.took = member_took,
	.alive = member_alive,
	.empty = member_empty,
	.steal = member_steal,
	.handoff = member_handoff,
	.leave = member_leave,
	.sync_live = member_sync_live,
	.stop = member_stop,
	.quiesce = member_quiesce,
	.steering = member_steering,
};

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
#include <event2/event.h>

#include "config.h"
#include "shared.h"

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

static enum evsteer_bpf_mode env_bpf_mode(enum evsteer_bpf_mode opt)
{
	if (opt != EVSTEER_BPF_AUTO)
		return opt;
	const char *e = getenv("EVSTEER_BPF");
	if (!e || !*e || !strcmp(e, "auto"))
		return EVSTEER_BPF_AUTO;
	if (!strcmp(e, "off") || !strcmp(e, "0"))
		return EVSTEER_BPF_OFF;
	if (!strcmp(e, "require") || !strcmp(e, "1"))
		return EVSTEER_BPF_REQUIRE;
	evst_warn("EVSTEER_BPF=%s: expected auto, off or require; using auto", e);
	return EVSTEER_BPF_AUTO;
}

static int policy_from_name(const char *e)
{
	for (int i = 0; i <= EVSTEER_POLICY_CPU; i++)
		if (!strcmp(e, evst_policy_name((unsigned)i)))
			return i;
	return -1;
}

/* EVSTEER_STALL_US when the option is 0 (default): microseconds, or a
 * negative number to turn stall detection off. */
static int env_stall_us(int opt)
{
	const char *e = getenv("EVSTEER_STALL_US");
	if (opt || !e || !*e)
		return opt;
	char *end;
	long v = strtol(e, &end, 10);
	if (*end || v > 60000000 || v < -1) {
		evst_warn("EVSTEER_STALL_US=%s: expected microseconds or -1", e);
		return opt;
	}
	return (int)v;
}

static enum evsteer_policy env_policy(enum evsteer_policy opt)
{
	const char *e = getenv("EVSTEER_POLICY");
	if (opt != EVSTEER_POLICY_LEAST_PENDING || !e || !*e)
		return opt;
	int p = policy_from_name(e);
	if (p < 0) {
		evst_warn("EVSTEER_POLICY=%s: expected least-pending, hash, "
			  "round-robin or cpu",
			  e);
		return opt;
	}
	return (enum evsteer_policy)p;
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
		.mode = env_bpf_mode(bpf),
		.policy = env_policy(policy),
		.stall_us = env_stall_us(stall_us),
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
	if ((flags & ~EVSTEER_OPT_ALL) || !EVST_GROUP_OPTS_VALID(opts) ||
	    backlog == 0) {
		evst_warn("%s: bad flags, options or backlog 0", fn);
		errno = EINVAL;
		return NULL;
	}
	struct evsteer_listener_opts lo;
	struct evst_shared_opts so;
	group_opts_read(opts, &lo, &so);
	const char *bad = evst_enum_opts_check(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, 0),
		EVST_OPT(opts, struct evsteer_group_opts, policy, 0),
		EVST_OPT(opts, struct evsteer_group_opts, accept, 0));
	if (bad) {
		evst_warn("%s: options: %s out of range", fn, bad);
		errno = EINVAL;
		return NULL;
	}

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
static void steal_timer_cb(evutil_socket_t fd, short what, void *arg);

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
			bool need = env_bpf_mode(EVST_OPT(
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
	lev->steal_timer = evtimer_new(lev->base, steal_timer_cb, lev);
	if (!lev->steal_timer) {
		member_leave(lev, false);
		return -ENOMEM;
	}
	return 0;
}

/* The listener is going away (last reference): leave the group, closing
 * the socket when the group or the listener's CLOSE_ON_FREE owns it. The
 * kernel then migrates what was queued on it, through the program. */
static void member_leave(struct evsteer_listener *lev, bool close_fd)
{
	struct evsteer_group *g = lev->group;
	if (lev->steal_timer) {
		event_free(lev->steal_timer);
		lev->steal_timer = NULL;
	}
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

/* Listener lock held: steer to this worker only while it delivers. */
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
}

static void member_stop(struct evsteer_listener *lev)
{
	if (!lev->group)
		return;
	member_sync_live(lev);
	if (lev->steal_timer)
		event_del_noblock(lev->steal_timer);
}

static void member_quiesce(struct evsteer_listener *lev)
{
	/* a steal timer callback on another thread finishes first */
	if (lev->steal_timer)
		event_del_block(lev->steal_timer);
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

/* n connections counted on slot `from` (its worker entry w) were taken by
 * slot `to`: off the victim's pending, which stays out of the steering until it shows
 * progress (`stalled`), and into both counters. */
static void note_stolen(struct evsteer_group *g, struct evst_worker *w,
			unsigned int from, unsigned int to, unsigned int n)
{
	__atomic_fetch_add(&w->dequeued, n, __ATOMIC_RELAXED);
	__atomic_store_n(&w->stalled, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&counters(g, from)->stolen_from, (uint64_t)n,
			   __ATOMIC_RELAXED);
	__atomic_fetch_add(&counters(g, to)->stolen, (uint64_t)n,
			   __ATOMIC_RELAXED);
}

#define STEAL_BUDGET 64

/*
 * Listener lock held, reference taken. Take connections queued on live
 * siblings of this process that are stalled (pending, no progress for
 * stall_ns) and deliver them to lev's callback. Another process's sockets
 * are not ours to accept from: its stalled workers only stop getting new
 * connections (the program sees their heartbeat). Arms lev's timer to look
 * again while any sibling has work pending, so that nothing waits on a
 * stalled worker even when no new connection wakes us; with nothing
 * pending anywhere, no timer runs.
 */
static void member_steal(struct evsteer_listener *lev)
{
	struct evsteer_group *g = lev->group;
	uint64_t stall = evst_shared_stall_ns(g->sh);
	if (!stall || !evst_active(lev))
		return;

	uint64_t now = evst_now_ns();
	uint64_t next = 0;
	int budget = STEAL_BUDGET;
	unsigned int nslots = __atomic_load_n(&g->nslots, __ATOMIC_RELAXED);
	for (unsigned int i = 0; i < nslots && budget > 0; i++) {
		if (i == lev->slot)
			continue;
		/* Look without the lock (shared memory, relaxed): this runs
		 * on every wake-up and must stay cheap. Lock only to take. */
		struct evst_worker *w =
			__atomic_load_n(&g->slots[i].ws, __ATOMIC_ACQUIRE);
		if (!w || !__atomic_load_n(&w->live, __ATOMIC_RELAXED) ||
		    !evst_worker_pending(w))
			continue;
		uint64_t age = now - ld(&w->progress_ns);
		if ((int64_t)age < 0 || age <= stall) {
			uint64_t left = (int64_t)age < 0 ? stall : stall - age + 1;
			if (!next || left < next)
				next = left;
			continue;
		}
		if (lev->direct_table) {
			/* a direct worker accepts into its own table, through
			 * its own ring; it delivers them on its next round */
			pthread_mutex_lock(&g->lock);
			struct evst_slot *s = &g->slots[i];
			int n = -1;
			uint64_t want = evst_worker_pending(w);
			struct evsteer_listener *victim = slot_lev(s);
			if (s->ws == w && __atomic_load_n(&w->live, __ATOMIC_RELAXED) &&
			    want && lev->ops->steal_from)
				n = lev->ops->steal_from(
					lev, victim, s->fd,
					want < (uint64_t)budget ? (unsigned)want :
								  (unsigned)budget);
			if (n > 0 && victim && victim->ops->poke)
				victim->ops->poke(victim);
			if (n > 0) {
				note_stolen(g, w, i, lev->slot, (unsigned)n);
				budget -= n;
			} else if (n == 0) {
				/* counted but not there */
				evst_ws_resync(w);
			}
			pthread_mutex_unlock(&g->lock);
			continue;
		}
		bool poked = false;
		while (budget > 0) {
			struct sockaddr_storage ss;
			socklen_t len = sizeof(ss);
			int fd = -1;

			pthread_mutex_lock(&g->lock);
			struct evst_slot *s = &g->slots[i];
			if (s->ws == w && __atomic_load_n(&w->live, __ATOMIC_RELAXED) &&
			    evst_worker_pending(w)) {
				/* An io_uring sibling has taken its connections
				 * off the socket into its ring already: take
				 * them from there (under g->lock the sibling
				 * cannot be destroyed: leaving clears `ws`
				 * under this lock first). */
				fd = -1;
				if (slot_lev(s) && s->lev->ops->steal)
					fd = s->lev->ops->steal(s->lev);
				if (fd >= 0) {
					len = sizeof(ss);
					if (getpeername(fd, (struct sockaddr *)&ss,
							&len) < 0) {
						close(fd);
						fd = -1;
						pthread_mutex_unlock(&g->lock);
						continue;
					}
				} else {
					fd = accept4(s->fd, (struct sockaddr *)&ss,
						     &len, lev->accept4_flags);
				}
				if (fd >= 0)
					note_stolen(g, w, i, lev->slot, 1);
				else if (errno == EAGAIN)
					/* counted but not there */
					evst_ws_resync(w);
			}
			if (fd >= 0) {
				/* once a pass: if the sibling was only late,
				 * its loop shows progress now */
				if (!poked && slot_lev(s) && s->lev->ops->poke) {
					s->lev->ops->poke(s->lev);
					poked = true;
				}
			}
			pthread_mutex_unlock(&g->lock);
			if (fd < 0)
				break;
			budget--;
			if (!evst_deliver(lev, fd, (struct sockaddr *)&ss, len))
				return;
		}
	}
	if (!budget)
		next = 1;
	/* Under load a sibling nearly always has something pending; re-arming
	 * on every wake-up cost ~5% of throughput. A timer already pending
	 * fires within stall_ns anyway, and wake-ups look again meanwhile. */
	if (next && lev->steal_timer && !evtimer_pending(lev->steal_timer, NULL)) {
		if (next < 100000)
			next = 100000; /* no finer than 100 us */
		struct timeval tv = {.tv_sec = (time_t)(next / 1000000000ull),
				     .tv_usec = (suseconds_t)(next % 1000000000ull) / 1000};
		evtimer_add(lev->steal_timer, &tv);
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

static void steal_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	(void)fd;
	(void)what;
	evst_lock(lev);
	lev->refcnt++;
	if (lev->group)
		member_steal(lev);
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
	evst_info("group: policy %s", evst_policy_name(policy));
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
	.steal = member_steal,
	.handoff = member_handoff,
	.leave = member_leave,
	.sync_live = member_sync_live,
	.stop = member_stop,
	.quiesce = member_quiesce,
	.steering = member_steering,
};

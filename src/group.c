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
#include "steer.h"

struct evst_slot {
	int fd;       /* -1 when unused */
	bool used;
	bool owned;   /* the group closes fd when the worker leaves */
	struct evsteer_listener *lev;
	unsigned int weight;
	atomic_uint_fast64_t accepted, stolen, stolen_from;
};

/* The shared state when there is no program to hold it. */
struct evst_local_state {
	struct evst_worker workers[EVST_MAX_WORKERS];
	__u32 table[EVST_TABLE_SIZE];
	__u32 table_len, policy, nslots;
	__u64 stall_ns;
	__u32 cpu_map[EVST_MAX_CPUS];
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
	struct evst_steer *steer;
	const char *steer_reason;
	char reason_buf[192];
	struct evst_shared_view v;
	struct evst_local_state local;
	unsigned int nslots;
	struct evst_slot slots[EVST_MAX_WORKERS];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evsteer_group *registry;

/* A failed load is not retried: the process's privileges do not grow, and
 * the reason is logged once. */
#if EVSTEER_HAVE_BPF
static int probe_err;
static char probe_reason[192];
#endif

uint64_t evst_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t ld(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint64_t ws_pending(const struct evst_worker *w)
{
	int64_t p = (int64_t)(ld(&w->steered) - ld(&w->dequeued));
	return p > 0 ? (uint64_t)p : 0;
}

/* The worker itself moved: its heartbeat, and it is no longer stalled. */
static void made_progress(struct evst_worker *w, uint64_t now)
{
	__atomic_store_n(&w->progress_ns, now, __ATOMIC_RELAXED);
	if (__atomic_load_n(&w->stalled, __ATOMIC_RELAXED))
		__atomic_store_n(&w->stalled, 0, __ATOMIC_RELAXED);
}

/*
 * The socket was found empty. Whatever the program counted that never
 * arrived (handshakes that died, SYN floods) is dropped from pending here,
 * so drift cannot build up; a connection in flight right now may be counted
 * once more or once less until the next empty pass.
 */
void evst_ws_empty(struct evst_worker *w, uint64_t now)
{
	__atomic_store_n(&w->dequeued, ld(&w->steered), __ATOMIC_RELAXED);
	made_progress(w, now);
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

static const char *const policy_names[] = {"least-pending", "hash",
					   "round-robin", "cpu"};

static int policy_from_name(const char *e)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(e, policy_names[i]))
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

const char *evsteer_policy_name(enum evsteer_policy policy)
{
	return evst_policy_name((unsigned int)policy);
}

unsigned int evst_group_policy(const struct evsteer_group *g)
{
	return __atomic_load_n(g->v.policy, __ATOMIC_RELAXED);
}

const char *evst_policy_name(unsigned int p)
{
	return p < 4 ? policy_names[p] : "?";
}

/* g->lock held. Rebuild the weighted table of live workers. */
static void rebuild_table(struct evsteer_group *g)
{
	__u32 n = 0, hi = 0;
	for (unsigned int w = 0; w < 16; w++) {
		for (unsigned int i = 0; i < g->nslots; i++) {
			struct evst_slot *s = &g->slots[i];
			if (!s->used || !__atomic_load_n(&g->v.workers[i].live,
							 __ATOMIC_RELAXED))
				continue;
			hi = i + 1;
			if (w < s->weight && n < EVST_TABLE_SIZE)
				g->v.table[n++] = i;
		}
	}
	/* the program reads the length first: publish entries before it */
	__atomic_store_n(g->v.nslots, hi, __ATOMIC_RELEASE);
	__atomic_store_n(g->v.table_len, n, __ATOMIC_RELEASE);
}

static void set_live(struct evsteer_group *g, unsigned int slot, bool live)
{
	__atomic_store_n(&g->v.workers[slot].live, live ? 1 : 0,
			 __ATOMIC_RELAXED);
	if (live)
		__atomic_store_n(&g->v.workers[slot].progress_ns, evst_now_ns(),
				 __ATOMIC_RELAXED);
	rebuild_table(g);
}

/* Load the program unless the mode or an earlier failure says no. */
static int setup_steering(struct evsteer_group *g, enum evsteer_bpf_mode mode)
{
	if (mode == EVSTEER_BPF_OFF) {
		g->steer_reason = "bpf: off (EVSTEER_BPF=off or the bpf option)";
		return 0;
	}
#if EVSTEER_HAVE_BPF
	pthread_mutex_lock(&registry_lock);
	int err = probe_err;
	pthread_mutex_unlock(&registry_lock);
	if (!err) {
		g->steer = evst_steer_load(g->reason_buf, sizeof(g->reason_buf));
		if (g->steer) {
			g->steer_reason = "";
			return 0;
		}
		err = errno;
		pthread_mutex_lock(&registry_lock);
		if (!probe_err) {
			probe_err = err;
			snprintf(probe_reason, sizeof(probe_reason), "%s",
				 g->reason_buf);
			evst_info("%s; using the kernel's SO_REUSEPORT hash",
				  probe_reason);
		}
		pthread_mutex_unlock(&registry_lock);
	}
	snprintf(g->reason_buf, sizeof(g->reason_buf), "%s", probe_reason);
	g->steer_reason = g->reason_buf;
	if (mode == EVSTEER_BPF_REQUIRE) {
		evst_warn("BPF steering required but unavailable: %s",
			  g->reason_buf);
		return -err;
	}
	return 0;
#else
	g->steer_reason = "bpf: not built (meson -Dbpf=disabled or no toolchain)";
	if (mode == EVSTEER_BPF_REQUIRE) {
		evst_warn("BPF steering required but %s", g->steer_reason);
		return -EOPNOTSUPP;
	}
	return 0;
#endif
}

static struct evsteer_group *group_alloc(unsigned int flags,
					 const struct evsteer_listener_opts *lo,
					 enum evsteer_bpf_mode mode,
					 enum evsteer_policy policy, int stall_us)
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
		g->slots[i].weight = 1;
	}
	int err = setup_steering(g, mode);
	if (err < 0) {
		pthread_mutex_destroy(&g->lock);
		free(g);
		errno = -err;
		return NULL;
	}
	if (g->steer) {
		evst_steer_view(g->steer, &g->v);
	} else {
		struct evst_local_state *l = &g->local;
		g->v = (struct evst_shared_view){
			.workers = l->workers, .table = l->table,
			.table_len = &l->table_len, .policy = &l->policy,
			.stall_ns = &l->stall_ns, .cpu_map = &l->cpu_map[0],
			.nslots = &l->nslots};
	}
	*g->v.policy = (__u32)policy;
	*g->v.stall_ns = stall_us < 0 ? 0 :
			 (__u64)(stall_us ? stall_us : EVSTEER_DEFAULT_STALL_US) * 1000;
	return g;
}

/* g->lock held. Put fd into a free slot; returns the slot or -errno. */
static int slot_add(struct evsteer_group *g, int fd, bool owned)
{
	unsigned int i;
	for (i = 0; i < EVST_MAX_WORKERS && g->slots[i].used; i++)
		;
	if (i == EVST_MAX_WORKERS)
		return -ENOSPC;
	if (g->steer) {
		int err = evst_steer_set_slot(g->steer, i, fd);
		if (err < 0)
			return err;
		/* One attach covers the kernel's whole reuseport group,
		 * including sockets that join later; attach at the first. */
		if (i == 0 || !g->nslots) {
			err = evst_steer_attach(g->steer, fd);
			if (err < 0) {
				evst_steer_set_slot(g->steer, i, -1);
				return err;
			}
		}
	}
	struct evst_slot *s = &g->slots[i];
	s->fd = fd;
	s->used = true;
	s->owned = owned;
	s->lev = NULL;
	s->weight = 1;
	atomic_store(&s->accepted, 0);
	atomic_store(&s->stolen, 0);
	atomic_store(&s->stolen_from, 0);
	struct evst_worker *w = &g->v.workers[i];
	memset(w, 0, sizeof(*w));
	w->weight = 1;
	if (i >= g->nslots)
		__atomic_store_n(&g->nslots, i + 1, __ATOMIC_RELAXED);
	/* default CPU map: cpu % used slots */
	unsigned int used = 0;
	for (unsigned int k = 0; k < g->nslots; k++)
		used += g->slots[k].used;
	for (unsigned int c = 0, k = 0; c < EVST_MAX_CPUS && used; c++) {
		while (!g->slots[k % g->nslots].used)
			k++;
		g->v.cpu_map[c] = (k % g->nslots) + 1;
		k++;
	}
	return (int)i;
}

/* g->lock held: the slot stops being steered to; returns its fd. */
static int slot_remove(struct evsteer_group *g, unsigned int i)
{
	struct evst_slot *s = &g->slots[i];
	set_live(g, i, false);
	if (g->steer)
		evst_steer_set_slot(g->steer, i, -1);
	int fd = s->fd;
	s->used = false;
	s->fd = -1;
	s->lev = NULL;
	for (unsigned int c = 0; c < EVST_MAX_CPUS; c++)
		if (g->v.cpu_map[c] == i + 1)
			g->v.cpu_map[c] = 0;
	return fd;
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
	evst_steer_destroy(g->steer);
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
	if ((flags & ~EVSTEER_OPT_ALL) || !evst_opts_valid(opts, sizeof(*opts)) ||
	    backlog == 0) {
		evst_warn("%s: bad flags, options or backlog 0", fn);
		errno = EINVAL;
		return NULL;
	}
	struct evsteer_listener_opts lo = {
		.sz = sizeof(lo),
		.max_accepts_per_wakeup = EVST_OPT(opts, struct evsteer_group_opts,
						   max_accepts_per_wakeup, 0),
		.backoff_max_ms = EVST_OPT(opts, struct evsteer_group_opts,
					   backoff_max_ms, 0),
		.accept = EVST_OPT(opts, struct evsteer_group_opts, accept,
				   EVSTEER_ACCEPT_AUTO),
	};
	enum evsteer_bpf_mode mode = env_bpf_mode(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, EVSTEER_BPF_AUTO));
	enum evsteer_policy policy = EVST_OPT(opts, struct evsteer_group_opts,
					      policy, EVSTEER_POLICY_LEAST_PENDING);
	int stall_us = env_stall_us(
		EVST_OPT(opts, struct evsteer_group_opts, stall_us, 0));
	const char *bad = evst_enum_opts_check(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, 0),
		EVST_OPT(opts, struct evsteer_group_opts, policy, 0),
		EVST_OPT(opts, struct evsteer_group_opts, accept, 0));
	if (bad) {
		evst_warn("%s: options: %s out of range", fn, bad);
		errno = EINVAL;
		return NULL;
	}

	struct evsteer_group *g = group_alloc(
		flags | EVSTEER_OPT_REUSEABLE_PORT, &lo, mode, policy, stall_us);
	if (!g)
		return NULL;

	memcpy(&g->addr, addr, len);
	g->addrlen = len;
	g->lopts.backoff_max_ms = lo.backoff_max_ms;
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
		}
		pthread_mutex_lock(&g->lock);
		err = slot_add(g, fd, true);
		pthread_mutex_unlock(&g->lock);
		if (err < 0) {
			close(fd);
			goto fail;
		}
	}
	g->backlog = backlog;
	return g;
fail:
	evst_warn("%s: %s", fn, strerror(-err));
	for (unsigned int i = 0; i < g->nslots; i++)
		if (g->slots[i].used)
			close(g->slots[i].fd);
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
	int err = !g->slots[slot].used ? -ENOENT :
		  g->slots[slot].lev   ? -EBUSY :
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
	struct evsteer_listener *lev = evst_listener_create(
		base, cb, arg, g->flags & ~EVSTEER_OPT_CLOSE_ON_FREE, 0, fd,
		&g->lopts, g, slot, 0);
	if (!lev) {
		err = errno;
		pthread_mutex_lock(&g->lock);
		g->slots[slot].lev = NULL;
		pthread_mutex_unlock(&g->lock);
		errno = err;
	}
	return lev;
}

/*
 * Called by listener creation once lev is built and before it is enabled:
 * join g at slot (native), or find/create the implicit group for the
 * listener's address. Returns 0 (lev may stay ungrouped) or -errno.
 */
int evst_group_join(struct evsteer_listener *lev, struct evsteer_group *g,
		    unsigned int slot, const struct evsteer_listener_opts *opts)
{
	if (!g) {
		/* implicit: a TCP listener with SO_REUSEPORT */
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int type = 0, rp = 0;
		socklen_t il = sizeof(int);
		if (getsockname(lev->fd, (struct sockaddr *)&ss, &len) < 0 ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
		    getsockopt(lev->fd, SOL_SOCKET, SO_TYPE, &type, &il) < 0 ||
		    type != SOCK_STREAM ||
		    getsockopt(lev->fd, SOL_SOCKET, SO_REUSEPORT, &rp, &il) < 0 ||
		    !rp)
			return 0;

		pthread_mutex_lock(&registry_lock);
		for (g = registry; g; g = g->next)
			if (g->addrlen == len && !memcmp(&g->addr, &ss, len))
				break;
		if (g)
			g->refcnt++;
		pthread_mutex_unlock(&registry_lock);
		if (!g) {
			enum evsteer_bpf_mode mode = env_bpf_mode(EVST_OPT(
				opts, struct evsteer_listener_opts, bpf,
				EVSTEER_BPF_AUTO));
			enum evsteer_policy policy = env_policy(EVST_OPT(
				opts, struct evsteer_listener_opts, policy,
				EVSTEER_POLICY_LEAST_PENDING));
			int stall = env_stall_us(EVST_OPT(
				opts, struct evsteer_listener_opts, stall_us, 0));
			struct evsteer_listener_opts lo = {.sz = sizeof(lo)};
			g = group_alloc(lev->flags, &lo, mode, policy, stall);
			if (!g)
				return -errno;
			g->implicit = true;
			g->addr = ss;
			g->addrlen = len;
			pthread_mutex_lock(&registry_lock);
			g->next = registry;
			registry = g;
			pthread_mutex_unlock(&registry_lock);
		}
		pthread_mutex_lock(&g->lock);
		int r = slot_add(g, lev->fd, false);
		if (r >= 0)
			g->slots[r].lev = lev;
		pthread_mutex_unlock(&g->lock);
		if (r < 0) {
			/* e.g. SO_REUSEPORT set after bind: no kernel group to
			 * steer in. A lone listener is still a listener. */
			bool need = g->steer && env_bpf_mode(EVST_OPT(
				opts, struct evsteer_listener_opts, bpf,
				EVSTEER_BPF_AUTO)) == EVSTEER_BPF_REQUIRE;
			evst_log(need ? EVSTEER_LOG_WARN : EVSTEER_LOG_DEBUG,
				 "listener fd %d: cannot join a steering group: %s",
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
	lev->group = g;
	lev->slot = slot;
	lev->ws = &g->v.workers[slot];
	lev->steal_timer = evtimer_new(lev->base, evst_steal_timer_cb, lev);
	if (!lev->steal_timer) {
		evst_group_leave(lev, false);
		return -ENOMEM;
	}
	return 0;
}

/* The listener is going away (last reference): leave the group, closing
 * the socket when the group or the listener's CLOSE_ON_FREE owns it. The
 * kernel then migrates what was queued on it, through the program. */
void evst_group_leave(struct evsteer_listener *lev, bool close_fd)
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
	lev->ws = NULL;
	group_unref(g);
}

/* Listener lock held: steer to this worker only while it delivers. */
void evst_group_sync_live(struct evsteer_listener *lev)
{
	struct evsteer_group *g = lev->group;
	if (!g)
		return;
	bool live = evst_active(lev);
	pthread_mutex_lock(&g->lock);
	if (g->slots[lev->slot].used &&
	    (bool)g->v.workers[lev->slot].live != live)
		set_live(g, lev->slot, live);
	pthread_mutex_unlock(&g->lock);
}

void evst_member_stop(struct evsteer_listener *lev)
{
	if (!lev->group)
		return;
	evst_group_sync_live(lev);
	if (lev->steal_timer)
		event_del_noblock(lev->steal_timer);
}

void evst_took(struct evsteer_listener *lev, uint64_t now)
{
	evst_end_episode(lev);
	if (!lev->ws)
		return;
	__atomic_fetch_add(&lev->ws->dequeued, 1, __ATOMIC_RELAXED);
	made_progress(lev->ws, now);
	atomic_fetch_add_explicit(&lev->group->slots[lev->slot].accepted, 1,
				  memory_order_relaxed);
}

#define STEAL_BUDGET 64

/*
 * Listener lock held, reference taken. Take connections queued on live
 * siblings that are stalled (pending, no progress for stall_ns) and deliver
 * them to lev's callback. Arms lev's timer to look again while any sibling
 * has work pending, so that nothing waits on a stalled worker even when no
 * new connection wakes us; with nothing pending anywhere, no timer runs.
 */
void evst_group_steal(struct evsteer_listener *lev)
{
	struct evsteer_group *g = lev->group;
	uint64_t stall = ld(g->v.stall_ns);
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
		struct evst_worker *w = &g->v.workers[i];
		if (!__atomic_load_n(&w->live, __ATOMIC_RELAXED) || !ws_pending(w))
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
			uint64_t want = ws_pending(w);
			if (s->used && __atomic_load_n(&w->live, __ATOMIC_RELAXED) &&
			    want && lev->ops->steal_from)
				n = lev->ops->steal_from(
					lev, s->fd,
					want < (uint64_t)budget ? (unsigned)want :
								  (unsigned)budget);
			if (n > 0) {
				__atomic_fetch_add(&w->dequeued, n, __ATOMIC_RELAXED);
				__atomic_store_n(&w->stalled, 1, __ATOMIC_RELAXED);
				atomic_fetch_add_explicit(&s->stolen_from, n,
							  memory_order_relaxed);
				atomic_fetch_add_explicit(
					&g->slots[lev->slot].stolen, n,
					memory_order_relaxed);
				budget -= n;
			} else if (n == 0) {
				/* counted but not there: resync */
				__atomic_store_n(&w->dequeued, ld(&w->steered),
						 __ATOMIC_RELAXED);
			}
			pthread_mutex_unlock(&g->lock);
			continue;
		}
		while (budget > 0) {
			struct sockaddr_storage ss;
			socklen_t len = sizeof(ss);
			int fd = -1;

			pthread_mutex_lock(&g->lock);
			struct evst_slot *s = &g->slots[i];
			if (s->used && __atomic_load_n(&w->live, __ATOMIC_RELAXED) &&
			    ws_pending(w)) {
				/* An io_uring sibling has taken its connections
				 * off the socket into its ring already: take
				 * them from there (under g->lock the sibling
				 * cannot be destroyed: leaving clears `live`
				 * under this lock first). */
				fd = -1;
				if (s->lev && s->lev != EVST_SLOT_CLAIMED &&
				    s->lev->ops->steal)
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
				if (fd >= 0) {
					__atomic_fetch_add(&w->dequeued, 1,
							   __ATOMIC_RELAXED);
					__atomic_store_n(&w->stalled, 1,
							 __ATOMIC_RELAXED);
					atomic_fetch_add_explicit(
						&s->stolen_from, 1,
						memory_order_relaxed);
				} else if (errno == EAGAIN) {
					/* counted but not there: resync */
					__atomic_store_n(&w->dequeued,
							 ld(&w->steered),
							 __ATOMIC_RELAXED);
				}
			}
			pthread_mutex_unlock(&g->lock);
			if (fd < 0)
				break;
			budget--;
			atomic_fetch_add_explicit(&g->slots[lev->slot].stolen, 1,
						  memory_order_relaxed);
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

unsigned int evst_group_handoff(struct evsteer_listener *lev,
				const struct evst_conn *c, unsigned int n)
{
	struct evsteer_group *g = lev->group;
	unsigned int given = 0;

	pthread_mutex_lock(&g->lock);
	/* Live siblings only: `live` is cleared under this lock before a
	 * listener starts going away, so a live one outlives the call. */
	struct evsteer_listener *to[EVST_MAX_WORKERS];
	unsigned int slot[EVST_MAX_WORKERS], k = 0;
	for (unsigned int i = 0; i < g->nslots; i++) {
		struct evst_slot *s = &g->slots[i];
		if (i == lev->slot || !s->used || !s->lev ||
		    s->lev == EVST_SLOT_CLAIMED || !s->lev->ops->adopt ||
		    !s->lev->direct_table != !lev->direct_table ||
		    !__atomic_load_n(&g->v.workers[i].live, __ATOMIC_RELAXED))
			continue;
		to[k] = s->lev;
		slot[k++] = i;
	}
	/* spread in runs, so each sibling gets its share in order */
	for (unsigned int j = 0; j < k && given < n; j++) {
		unsigned int share = (n - given + (k - j) - 1) / (k - j);
		unsigned int took = to[j]->ops->adopt(to[j], c + given, share);
		/* as if the program had steered them there: its pending stays
		 * right, and they show as migrated */
		struct evst_worker *w = &g->v.workers[slot[j]];
		__atomic_fetch_add(&w->steered, took, __ATOMIC_RELAXED);
		__atomic_fetch_add(&w->migrated, took, __ATOMIC_RELAXED);
		given += took;
	}
	pthread_mutex_unlock(&g->lock);
	return given;
}

void evst_steal_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_listener *lev = arg;
	(void)fd;
	(void)what;
	evst_lock(lev);
	lev->refcnt++;
	if (lev->group)
		evst_group_steal(lev);
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
		if (g->slots[i].used && !g->slots[i].lev)
			fds[n++] = slot_remove(g, i);
	pthread_mutex_unlock(&g->lock);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	group_unref(g);
}

int evsteer_group_set_policy(struct evsteer_group *g, enum evsteer_policy policy)
{
	if (!g || (unsigned int)policy > EVSTEER_POLICY_CPU)
		return -(errno = EINVAL);
	__atomic_store_n(g->v.policy, (__u32)policy, __ATOMIC_RELAXED);
	evst_info("group: policy %s", evst_policy_name(policy));
	return 0;
}

int evsteer_group_set_weight(struct evsteer_group *g, unsigned int slot,
			     unsigned int weight)
{
	if (!g || slot >= EVST_MAX_WORKERS || weight < 1 || weight > 16)
		return -(errno = EINVAL);
	pthread_mutex_lock(&g->lock);
	int r = g->slots[slot].used ? 0 : -ENOENT;
	if (!r) {
		g->slots[slot].weight = weight;
		g->v.workers[slot].weight = weight;
		rebuild_table(g);
	}
	pthread_mutex_unlock(&g->lock);
	return r ? -(errno = -r) : 0;
}

int evsteer_group_set_cpu(struct evsteer_group *g, unsigned int cpu,
			  unsigned int slot)
{
	if (!g || cpu >= EVST_MAX_CPUS || slot >= EVST_MAX_WORKERS)
		return -(errno = EINVAL);
	pthread_mutex_lock(&g->lock);
	int r = g->slots[slot].used ? 0 : -ENOENT;
	if (!r)
		__atomic_store_n(&g->v.cpu_map[cpu], slot + 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&g->lock);
	return r ? -(errno = -r) : 0;
}

int evsteer_group_get_fd(const struct evsteer_group *g, unsigned int slot)
{
	if (!g || slot >= EVST_MAX_WORKERS || !g->slots[slot].used) {
		errno = EINVAL;
		return -1;
	}
	return g->slots[slot].fd;
}

unsigned int evsteer_group_size(const struct evsteer_group *g)
{
	return g ? g->nslots : 0;
}

struct evsteer_group *evsteer_listener_get_group(const struct evsteer_listener *lev)
{
	return lev ? lev->group : NULL;
}

bool evst_group_has_bpf(const struct evsteer_group *g)
{
	return g && g->steer;
}

const char *evst_group_steer_reason(const struct evsteer_group *g)
{
	return g->steer_reason;
}

int evsteer_group_get_path(const struct evsteer_group *g,
			   struct evsteer_path *out)
{
	if (!g || !out || out->sz < sizeof(out->sz))
		return -(errno = EINVAL);
	return evst_fill_path(g, &evst_event_engine,
			      "a group's listeners each report their engine", out);
}

int evsteer_group_worker_stats(const struct evsteer_group *g, unsigned int slot,
			       struct evsteer_worker_stats *out)
{
	if (!g || !out || out->sz < sizeof(out->sz) || slot >= EVST_MAX_WORKERS)
		return -(errno = EINVAL);
	const struct evst_slot *s = &g->slots[slot];
	const struct evst_worker *w = &g->v.workers[slot];
	uint64_t prog = ld(&w->progress_ns), now = evst_now_ns();
	struct evsteer_worker_stats st = {
		.sz = out->sz,
		.steered = ld(&w->steered),
		.accepted = atomic_load_explicit(&s->accepted, memory_order_relaxed),
		.pending = ws_pending(w),
		.stolen = atomic_load_explicit(&s->stolen, memory_order_relaxed),
		.stolen_from = atomic_load_explicit(&s->stolen_from,
						    memory_order_relaxed),
		.migrated = ld(&w->migrated),
		.heartbeat_age_ns = prog && now > prog ? now - prog : 0,
		.live = s->used && __atomic_load_n(&w->live, __ATOMIC_RELAXED),
	};
	memcpy(out, &st, out->sz < sizeof(st) ? out->sz : sizeof(st));
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
	struct evsteer_listener_opts lo = {
		.sz = sizeof(lo),
		.max_accepts_per_wakeup = EVST_OPT(opts, struct evsteer_group_opts,
						   max_accepts_per_wakeup, 0),
		.backoff_max_ms = EVST_OPT(opts, struct evsteer_group_opts,
					   backoff_max_ms, 0),
		.accept = EVST_OPT(opts, struct evsteer_group_opts, accept,
				   EVSTEER_ACCEPT_AUTO),
	};
	enum evsteer_bpf_mode mode = env_bpf_mode(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, EVSTEER_BPF_AUTO));
	enum evsteer_policy policy = env_policy(EVST_OPT(
		opts, struct evsteer_group_opts, policy, EVSTEER_POLICY_LEAST_PENDING));
	int stall_us = env_stall_us(
		EVST_OPT(opts, struct evsteer_group_opts, stall_us, 0));
	struct evsteer_group *g = group_alloc(
		flags | EVSTEER_OPT_REUSEABLE_PORT, &lo, mode, policy, stall_us);
	if (!g)
		return NULL;
	g->addrlen = sizeof(g->addr);
	getsockname(fds[0], (struct sockaddr *)&g->addr, &g->addrlen);
	g->backlog = -1; /* for evsteer_group_add_worker() */
	int err = 0;
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < n && err >= 0; i++)
		err = slot_add(g, fds[i], true);
	if (err < 0) {
		for (unsigned int i = 0; i < g->nslots; i++)
			if (g->slots[i].used)
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

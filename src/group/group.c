/* SPDX-License-Identifier: MIT */
/*
 * A worker group: its object, its slots, and its public life cycle
 * (group.h says how group/ is laid out and how its locks nest).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>

#include "config.h"
#include "common/env.h"
#include "common/options.h"
#include "common/process.h"
#include "group/group.h"

struct evsteer_group *evst_group_alloc(unsigned int flags,
					 const struct evsteer_listener_opts *lo)
{
	struct evsteer_group *g = calloc(1, sizeof(*g));
	if (!g) {
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&g->lock, NULL);
	g->refcnt = 1;
	g->gen = evst_process_gen();
	g->flags = flags;
	g->lopts = *lo;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		g->slots[i].fd = -1;
		g->slots[i].gslot = -1;
	}
	return g;
}

/* g->lock held. Put fd into a free slot; returns the slot or -errno. */
int evst_slot_add(struct evsteer_group *g, int fd, bool owned)
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
int evst_slot_remove(struct evsteer_group *g, unsigned int i)
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

struct evst_slot_counters *evst_group_counters(struct evsteer_group *g,
					   unsigned int slot)
{
	return evst_shared_counters(g->sh, (unsigned)g->slots[slot].gslot);
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
struct evst_shared_opts evst_group_shared_opts(enum evsteer_bpf_mode bpf,
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
 * A group object whose workers' listeners get what its options (validated
 * by the caller) say, and in so what they mean for the address's
 * steering, environment included: the same for evsteer_group_new() and
 * evsteer_group_from_fds(). NULL with errno.
 */
static struct evsteer_group *
group_alloc_opts(unsigned int flags, const struct evsteer_group_opts *opts,
		 struct evst_shared_opts *so)
{
	struct evsteer_listener_opts lo = {
		.sz = sizeof(lo),
		.max_accepts_per_wakeup = EVST_OPT(opts, struct evsteer_group_opts,
						   max_accepts_per_wakeup, 0),
		.backoff_max_ms = EVST_OPT(opts, struct evsteer_group_opts,
					   backoff_max_ms, 0),
		.accept = EVST_OPT(opts, struct evsteer_group_opts, accept,
				   EVSTEER_ACCEPT_AUTO),
		.defer_accept_after_block = EVST_OPT(
			opts, struct evsteer_group_opts,
			defer_accept_after_block, 0),
	};
	*so = evst_group_shared_opts(
		EVST_OPT(opts, struct evsteer_group_opts, bpf, EVSTEER_BPF_AUTO),
		EVST_OPT(opts, struct evsteer_group_opts, policy,
			 EVSTEER_POLICY_LEAST_PENDING),
		EVST_OPT(opts, struct evsteer_group_opts, stall_us, 0));
	return evst_group_alloc(flags | EVSTEER_OPT_REUSEABLE_PORT, &lo);
}

/* Close the group's sockets no listener holds, one at a time rather than
 * gathered on the stack (up to 1,024 of them): closing one may drain it by
 * hand (classic BPF, steal.c), which sleeps and takes g->lock, so it
 * happens outside it. */
static void close_unattached(struct evsteer_group *g)
{
	for (;;) {
		int fd = -1;
		pthread_mutex_lock(&g->lock);
		for (unsigned int i = 0; i < g->nslots && fd < 0; i++)
			if (slot_used(&g->slots[i]) && !g->slots[i].lev)
				fd = evst_slot_remove(g, i);
		pthread_mutex_unlock(&g->lock);
		if (fd < 0)
			return;
		evst_group_close_sock(g, fd);
	}
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
	struct evst_shared_opts so;
	struct evsteer_group *g = group_alloc_opts(flags, opts, &so);
	if (!g)
		return NULL;

	memcpy(&g->addr, addr, len);
	g->addrlen = len;
	g->backlog = backlog;
	for (unsigned int i = 0; i < nworkers; i++) {
		/* listen and claim in one step of the listen order (classic
		 * BPF knows the kernel's socket order that way) */
		evst_listen_order_lock();
		/* after the first, bind the port the kernel chose for it */
		int fd = bind_worker_socket((struct sockaddr *)&g->addr,
					    g->addrlen, flags, backlog);
		if (fd < 0) {
			evst_listen_order_unlock();
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
				evst_listen_order_unlock();
				goto fail;
			}
		}
		pthread_mutex_lock(&g->lock);
		err = evst_slot_add(g, fd, true);
		pthread_mutex_unlock(&g->lock);
		if (err < 0)
			close(fd);
		evst_listen_order_unlock();
		if (err < 0)
			goto fail;
	}
	return g;
fail:
	evst_warn("%s: %s", fn, strerror(-err));
	close_unattached(g);
	evst_group_unref(g);
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
	EVST_REFUSE_INHERITED(g->gen, NULL);
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

int evsteer_group_add_worker(struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	evst_listen_order_lock(); /* listen and claim: see evsteer_group_new */
	int fd = bind_worker_socket((struct sockaddr *)&g->addr, g->addrlen,
				    g->flags, g->backlog);
	if (fd < 0) {
		evst_listen_order_unlock();
		return -(errno = -fd);
	}
	pthread_mutex_lock(&g->lock);
	int r = evst_slot_add(g, fd, true);
	pthread_mutex_unlock(&g->lock);
	if (r < 0)
		close(fd);
	evst_listen_order_unlock();
	if (r < 0)
		errno = -r;
	return r;
}

void evsteer_group_free(struct evsteer_group *g)
{
	if (!g)
		return;
	if (evst_inherited(g->gen)) {
		evst_group_forget_ref(g);
		return;
	}
	close_unattached(g);
	evst_group_unref(g);
}

int evsteer_group_retire(struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	pthread_mutex_lock(&g->lock);
	g->retired = true;
	for (unsigned int i = 0; i < g->nslots; i++)
		if (slot_used(&g->slots[i])) {
			unsigned int gs = (unsigned)g->slots[i].gslot;
			evst_shared_set_live(g->sh, gs, false);
			__atomic_or_fetch(&evst_shared_info(g->sh, gs)->flags,
					  EVST_SLOT_RETIRED, __ATOMIC_RELAXED);
		}
	pthread_mutex_unlock(&g->lock);
	evst_shared_retire(g->sh);
	return 0;
}

int evsteer_group_get_fd(const struct evsteer_group *g, unsigned int slot)
{
	if (!g || slot >= EVST_MAX_WORKERS) {
		errno = EINVAL;
		return -1;
	}
	EVST_REFUSE_INHERITED(g->gen, -1);
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

void evst_group_steering(const struct evsteer_group *g,
			   struct evst_steering *out)
{
	bool bpf = evst_shared_bpf(g->sh), cbpf = evst_shared_cbpf(g->sh);
	out->steering = bpf ? EVSTEER_STEER_BPF :
			cbpf ? EVSTEER_STEER_CBPF : EVSTEER_STEER_KERNEL_HASH;
	out->reason = bpf ? "" : evst_shared_reason(g->sh);
	out->policy = (enum evsteer_policy)evst_shared_policy(g->sh);
	/* what classic BPF applies: the CPU map or the hash, nothing else */
	if (cbpf && out->policy != EVSTEER_POLICY_CPU)
		out->policy = EVSTEER_POLICY_HASH;
}

int evsteer_group_get_path(const struct evsteer_group *g,
			   struct evsteer_path *out)
{
	if (!g || !out || out->sz < sizeof(out->sz))
		return -(errno = EINVAL);
	struct evst_steering st;
	evst_group_steering(g, &st);
	return evst_fill_path(&st, NULL,
			      "a group's listeners each report their engine", out);
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
	struct evst_shared_opts so;
	struct evsteer_group *g = group_alloc_opts(flags, opts, &so);
	if (!g)
		return NULL;
	g->addrlen = sizeof(g->addr);
	getsockname(fds[0], (struct sockaddr *)&g->addr, &g->addrlen);
	/* the address's steering, as for evsteer_group_new() */
	g->sh = evst_shared_get(fds[0], &so);
	if (!g->sh) {
		int err = errno;
		evst_group_unref(g);
		errno = err;
		return NULL;
	}
	g->backlog = -1; /* for evsteer_group_add_worker() */
	int err = 0;
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < n && err >= 0; i++)
		err = evst_slot_add(g, fds[i], true);
	if (err < 0) {
		for (unsigned int i = 0; i < g->nslots; i++)
			if (slot_used(&g->slots[i]))
				evst_slot_remove(g, i);
	}
	pthread_mutex_unlock(&g->lock);
	if (err < 0) {
		evst_group_unref(g);
		errno = -err;
		return NULL;
	}
	return g;
}

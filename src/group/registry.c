/* SPDX-License-Identifier: MIT */
/*
 * The implicit groups: listeners made with REUSEABLE_PORT on one address
 * form one group per process by themselves (compat.h code with one base
 * per thread is steered unchanged). And every group's reference count,
 * under the same lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/env.h"
#include "common/process.h"
#include "group/group.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evsteer_group *registry;

/* fork (common/process.h): the child's implicit groups start from
 * nothing; those listed are the parent's, inherited. */
void evst_group_registry_fork_prepare(void)
{
	pthread_mutex_lock(&registry_lock);
}

void evst_group_registry_fork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
}

void evst_group_registry_fork_child(void)
{
	registry = NULL;
	pthread_mutex_unlock(&registry_lock);
}

void evst_group_ref(struct evsteer_group *g)
{
	pthread_mutex_lock(&registry_lock);
	g->refcnt++;
	pthread_mutex_unlock(&registry_lock);
}

void evst_group_unref(struct evsteer_group *g)
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

void evst_group_forget_ref(struct evsteer_group *g)
{
	/* registry_lock was reset at fork: usable; g->lock was not */
	pthread_mutex_lock(&registry_lock);
	bool last = --g->refcnt == 0;
	pthread_mutex_unlock(&registry_lock);
	if (!last)
		return;
	for (unsigned int i = 0; i < g->nslots; i++)
		if (g->slots[i].gslot >= 0 && g->slots[i].owned &&
		    g->slots[i].fd >= 0)
			close(g->slots[i].fd);
	if (g->sh)
		evst_shared_forget(g->sh);
	free(g);
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
struct evsteer_group *evst_group_implicit(struct evsteer_listener *lev,
					    const struct sockaddr_storage *ss,
					    socklen_t len,
					    const struct evsteer_listener_opts *opts)
{
	/* registry_lock is never held across evst_shared_get (which takes
	 * shared.c's locks): no nesting, so the fork handlers cannot
	 * deadlock against a creation in flight */
	pthread_mutex_lock(&registry_lock);
	struct evsteer_group *g = registry_ref(ss, len);
	pthread_mutex_unlock(&registry_lock);
	if (g)
		return g;
	struct evsteer_listener_opts lo = {.sz = sizeof(lo)};
	g = evst_group_alloc(lev->flags, &lo);
	if (!g)
		return NULL;
	struct evst_shared_opts so = evst_group_shared_opts(
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

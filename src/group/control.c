/* SPDX-License-Identifier: MIT */
/* Live control of a group: policy, weights, the CPU map; and what is
 * pending on it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/process.h"
#include "group/group.h"

int evsteer_group_pending(const struct evsteer_group *g)
{
	if (!g)
		return -(errno = EINVAL);
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	struct evsteer_group *mg = (struct evsteer_group *)g;
	uint64_t n = 0;
	/* classic BPF counts nothing in the kernel: ask the sockets */
	bool classic = evst_shared_cbpf_any(g->sh);
	pthread_mutex_lock(&mg->lock);
	for (unsigned int i = 0; i < g->nslots; i++) {
		struct evst_worker *w = g->slots[i].ws;
		if (!w)
			continue;
		if (classic && g->slots[i].fd >= 0)
			evst_shared_queue_to_pending(w, g->slots[i].fd);
		n += evst_worker_pending(w);
		/* accepted by an engine, not yet delivered */
		struct evsteer_listener *l = slot_lev(&g->slots[i]);
		if (l)
			n += evst_listener_held(l);
	}
	pthread_mutex_unlock(&mg->lock);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

int evsteer_group_set_policy(struct evsteer_group *g, enum evsteer_policy policy)
{
	if (!g || (unsigned int)policy > EVSTEER_POLICY_CPU)
		return -(errno = EINVAL);
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	evst_shared_set_policy(g->sh, (unsigned int)policy);
	evst_info("group: policy %s", evsteer_policy_name(policy));
	return 0;
}

int evsteer_group_set_weight(struct evsteer_group *g, unsigned int slot,
			     unsigned int weight)
{
	if (!g || slot >= EVST_MAX_WORKERS || weight < 1 || weight > 16)
		return -(errno = EINVAL);
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
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
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	pthread_mutex_lock(&g->lock);
	int r = slot_used(&g->slots[slot]) ? 0 : -ENOENT;
	if (!r)
		evst_shared_set_cpu(g->sh, cpu, (unsigned)g->slots[slot].gslot);
	pthread_mutex_unlock(&g->lock);
	return r ? -(errno = -r) : 0;
}

/* SPDX-License-Identifier: MIT */
/* Per-worker statistics: this group's slots, and any process's slot of
 * the address (shared memory: any member can read any slot). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/process.h"
#include "group/group.h"

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
		uint64_t prog = evst_ld64(&w->progress_ns), now = evst_now_ns();
		st.steered = evst_ld64(&w->steered);
		st.accepted = __atomic_load_n(&c->accepted, __ATOMIC_RELAXED);
		st.pending = evst_worker_pending(w);
		st.stolen = __atomic_load_n(&c->stolen, __ATOMIC_RELAXED);
		st.stolen_from = __atomic_load_n(&c->stolen_from, __ATOMIC_RELAXED);
		st.migrated = evst_ld64(&w->migrated);
		st.heartbeat_age_ns = prog && now > prog ? now - prog : 0;
		st.live = (int)__atomic_load_n(&w->live, __ATOMIC_RELAXED);
		const struct evst_wait_hist *h = evst_shared_waits(sh, (unsigned)gslot);
		for (unsigned int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
			st.wait_hist[k] = __atomic_load_n(&h->bucket[k], __ATOMIC_RELAXED);
		st.wait_sum_ns = __atomic_load_n(&h->sum_ns, __ATOMIC_RELAXED);
		st.wait_untimed = __atomic_load_n(&h->untimed, __ATOMIC_RELAXED);
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
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
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
	EVST_REFUSE_INHERITED(g->gen, -EINVAL);
	struct evsteer_group *mg = (struct evsteer_group *)g;
	bool mine = false;
	pthread_mutex_lock(&mg->lock);
	for (unsigned int i = 0; i < g->nslots; i++)
		mine |= g->slots[i].gslot == (int)gslot;
	pthread_mutex_unlock(&mg->lock);
	fill_stats(g->sh, (int)gslot, mine, out);
	return 0;
}

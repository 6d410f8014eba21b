/* SPDX-License-Identifier: MIT */
/* The counters workers keep in the shared state (their clock is
 * evst_now_ns(), internal.h). */
#include "steering/steering.h"

/* The worker's loop ran: its heartbeat. Past the last theft (stolen_ns),
 * it is back in the steering. */
void evst_made_progress(struct evst_worker *w, uint64_t now)
{
	__atomic_store_n(&w->progress_ns, now, __ATOMIC_RELAXED);
}

void evst_ws_resync(struct evst_worker *w)
{
	__atomic_store_n(&w->dequeued, evst_ld64(&w->steered), __ATOMIC_RELAXED);
}

uint64_t evst_worker_pending(const struct evst_worker *w)
{
	int64_t p = (int64_t)(evst_ld64(&w->steered) - evst_ld64(&w->dequeued));
	return p > 0 ? (uint64_t)p : 0;
}

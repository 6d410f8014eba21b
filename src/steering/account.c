/* SPDX-License-Identifier: MIT */
/* The counters workers keep in the shared state, and the clock they use. */
#include <time.h>

#include "steering/steering.h"

uint64_t evst_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

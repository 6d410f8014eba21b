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


uint64_t evst_worker_pending(const struct evst_worker *w)
{
	int64_t p = (int64_t)(evst_ld64(&w->steered) - evst_ld64(&w->dequeued));
	return p > 0 ? (uint64_t)p : 0;
}

/*
 * sh has stamps: the time the k-th connection steered to w (of `steered`
 * so far) was steered, if its stamp is still there (fewer than a ring's
 * worth were steered after it), else 0. A stamp later than the caller's
 * clock, or none at all (not written yet: the count runs ahead of its
 * stamp; drift dropped; a slot reused), is not its time either.
 */
static uint64_t stamp_of(const struct evst_shared *sh,
			 const struct evst_worker *w, uint64_t k,
			 uint64_t steered)
{
	if (steered - k > EVST_WAIT_STAMPS)
		return 0;
	return evst_ld64(&sh->v.stamps[w - sh->v.workers]
				      [k & (EVST_WAIT_STAMPS - 1)]);
}

uint64_t evst_shared_oldest_wait(const struct evst_shared *sh,
				 const struct evst_worker *w, uint64_t now)
{
	uint64_t deq = evst_ld64(&w->dequeued), steered = evst_ld64(&w->steered);
	if ((int64_t)(steered - deq) <= 0)
		return 0;
	return evst_wait_since(sh->v.stamps ? stamp_of(sh, w, deq, steered) : 0,
			       now);
}

bool evst_shared_worth_taking(const struct evst_shared *sh,
			      const struct evst_worker *thief,
			      const struct evst_worker *victim, uint64_t now,
			      uint64_t stall_ns)
{
	uint64_t own = evst_shared_oldest_wait(sh, thief, now);
	if (!own || own == EVST_WAIT_UNKNOWN)
		return true; /* (without reading the victim's stamp) */
	return evst_shorter_elsewhere(evst_shared_oldest_wait(sh, victim, now),
				      own, stall_ns);
}

/* ---- queue wait (shared.h, struct evst_wait_hist) */

static unsigned int wait_bucket(uint64_t ns)
{
	uint64_t u = ns >> 10; /* units of 1024 ns: bucket k is below 1024 << k */
	unsigned int k = u ? 64u - (unsigned int)__builtin_clzll(u) : 0;
	return k < EVSTEER_WAIT_BUCKETS ? k : EVSTEER_WAIT_BUCKETS - 1;
}

void evst_shared_waited(struct evst_shared *sh, const struct evst_worker *w,
			uint64_t first, unsigned int n, uint64_t now)
{
	if (!sh->v.stamps || !n)
		return;
	struct evst_wait_hist *h = &sh->ctl->waits[w - sh->v.workers];
	uint64_t steered = evst_ld64(&w->steered), untimed = 0, sum = 0;
	for (unsigned int i = 0; i < n; i++) {
		uint64_t t = stamp_of(sh, w, first + i, steered);
		/* now is the caller's, read once per batch: a connection
		 * steered during the batch is later than that */
		if (t > now)
			now = evst_now_ns();
		if (!t || t > now) {
			untimed++;
			continue;
		}
		sum += now - t;
		__atomic_fetch_add(&h->bucket[wait_bucket(now - t)], 1,
				   __ATOMIC_RELAXED);
	}
	if (sum)
		__atomic_fetch_add(&h->sum_ns, sum, __ATOMIC_RELAXED);
	if (untimed)
		__atomic_fetch_add(&h->untimed, untimed, __ATOMIC_RELAXED);
}

/*
 * The count of connections steered to w before `before`, by their stamps:
 * of the last EVST_WAIT_STAMPS, the ones older than that; every one before
 * them. Stamps grow with the count (one program, one clock); a stamp not
 * yet written after its count reads old, which drops that one a little
 * early, as the reset before this did.
 */
static uint64_t steered_before(const struct evst_shared *sh,
			       const struct evst_worker *w, uint64_t from,
			       uint64_t steered, uint64_t before)
{
	if (!sh->v.stamps)
		return steered; /* nothing to time: all of them */
	const __u64 *st = sh->v.stamps[w - sh->v.workers];
	uint64_t lo = steered - from > EVST_WAIT_STAMPS ?
			      steered - EVST_WAIT_STAMPS : from;
	uint64_t k = steered;
	while (k > lo &&
	       evst_ld64(&st[(k - 1) & (EVST_WAIT_STAMPS - 1)]) >= before)
		k--;
	return k;
}

void evst_shared_resync(const struct evst_shared *sh, struct evst_worker *w,
			uint64_t now)
{
	uint64_t deq = evst_ld64(&w->dequeued);
	for (;;) {
		uint64_t steered = evst_ld64(&w->steered), want;
		if (deq > steered)
			want = steered;
		else if (now > EVST_HANDSHAKE_GRACE_NS)
			want = steered_before(sh, w, deq, steered,
					      now - EVST_HANDSHAKE_GRACE_NS);
		else
			return;
		if (want == deq) /* (never below it: from deq on) */
			return;
		/* takers count up meanwhile: never lose one of theirs */
		if (__atomic_compare_exchange_n(&w->dequeued, &deq, want, false,
						__ATOMIC_RELAXED, __ATOMIC_RELAXED))
			return;
	}
}

void evst_ws_drop_pending(struct evst_worker *w)
{
	uint64_t deq = evst_ld64(&w->dequeued);
	while (deq < evst_ld64(&w->steered) &&
	       !__atomic_compare_exchange_n(&w->dequeued, &deq,
					    evst_ld64(&w->steered), false,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

void evst_shared_stamp(struct evst_shared *sh, const struct evst_worker *w,
		       uint64_t first, unsigned int n, uint64_t now)
{
	if (!sh->v.stamps)
		return;
	__u64 *st = sh->v.stamps[w - sh->v.workers];
	for (unsigned int i = 0; i < n && i < EVST_WAIT_STAMPS; i++)
		__atomic_store_n(&st[(first + n - 1 - i) & (EVST_WAIT_STAMPS - 1)],
				 now, __ATOMIC_RELAXED);
}

const struct evst_wait_hist *evst_shared_waits(const struct evst_shared *sh,
					       unsigned int slot)
{
	return &sh->ctl->waits[slot];
}

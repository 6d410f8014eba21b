/* SPDX-License-Identifier: MIT */
/*
 * evsteer's SK_REUSEPORT program: picks the worker socket for each new
 * connection (and, loaded as sk_reuseport/migrate, for each connection
 * queued on a worker socket that is closing). UAPI headers only.
 *
 * A worker is "stale" when connections are pending on it and it has made no
 * progress for stall_ns: it gets nothing new unless every worker is stale.
 * When no socket can be selected the program returns SK_PASS without a
 * selection and the kernel falls back to its own hash.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "steer_shared.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, EVST_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} socks SEC(".maps");

/*
 * Clamp an index for the verifier. The barrier stops clang from dropping a
 * mask it can prove redundant, which the verifier cannot.
 */
#define BOUND(x, size) ({ __u32 __v = (x); asm volatile("" : "+r"(__v)); __v & ((size) - 1); })

/* Written by user space (the .bss map is mmapped there). */
struct evst_worker workers[EVST_MAX_WORKERS];
__u32 table[EVST_TABLE_SIZE];    /* live workers, repeated by weight */
__u32 table_len;
__u32 policy;
__u64 stall_ns;                  /* 0: stall detection off */
__u32 cpu_map[EVST_MAX_CPUS];    /* cpu -> worker + 1 (0: unset) */
__u64 rr;                        /* rotation cursor */
__u32 nslots;                    /* highest used worker slot + 1 */

static __always_inline __u64 pending(struct evst_worker *w)
{
	__s64 p = (__s64)(w->steered - w->dequeued);
	return p > 0 ? (__u64)p : 0;
}

static __always_inline int stale(struct evst_worker *w, __u64 now)
{
	__u64 st = stall_ns;
	return st && pending(w) && now - w->progress_ns > st;
}

/* A global function: the verifier checks it once, not at every call site. */
__attribute__((noinline)) int try_select(struct sk_reuseport_md *md, __u32 wi,
					 __u64 now, int migrating)
{
	if (!md)
		return 0;
	if (wi >= EVST_MAX_WORKERS)
		return 0;
	struct evst_worker *w = &workers[BOUND(wi, EVST_MAX_WORKERS)];
	if (!w->live)
		return 0;
	if (bpf_sk_select_reuseport(md, &socks, &wi, 0))
		return 0;
	/* Work arriving on an idle worker starts its progress clock, so an
	 * idle worker is never judged stale by an old timestamp. */
	if (!pending(w))
		w->progress_ns = now;
	__sync_fetch_and_add(&w->steered, 1);
	if (migrating)
		__sync_fetch_and_add(&w->migrated, 1);
	return 1;
}

/* Walk the weighted table from `start` for a few entries; skip stale
 * workers on the first pass, take anyone live on the second. */
#define PROBES 8
static __always_inline int select_from_table(struct sk_reuseport_md *md,
					     __u32 start, __u32 n, __u64 now,
					     int migrating)
{
	for (int pass = 0; pass < 2; pass++) {
		for (__u32 k = 0; k < PROBES; k++) {
			if (k >= n)
				break;
			__u32 ti = BOUND((start + k) % n, EVST_TABLE_SIZE);
			__u32 wi = table[ti];
			if (wi >= EVST_MAX_WORKERS)
				continue;
			if (pass == 0 && stale(&workers[wi], now))
				continue;
			if (try_select(md, wi, now, migrating))
				return 1;
		}
	}
	return 0;
}

static __always_inline int select_least_pending(struct sk_reuseport_md *md,
						__u64 now, int migrating)
{
	/* Rotate the starting point so ties (all idle) spread evenly. */
	__u32 off = (__u32)__sync_fetch_and_add(&rr, 1);
	__u64 best_score = ~0ULL;
	__u32 best = EVST_MAX_WORKERS;

	__u32 ns = nslots;
	if (ns > EVST_MAX_WORKERS)
		ns = EVST_MAX_WORKERS;
	for (__u32 k = 0; k < EVST_MAX_WORKERS; k++) {
		if (k >= ns)
			break;
		__u32 wi = BOUND((off + k) % ns, EVST_MAX_WORKERS);
		struct evst_worker *w = &workers[wi];
		if (!w->live || stale(w, now))
			continue;
		__u32 weight = w->weight ? w->weight : 1;
		__u64 score = (pending(w) << 10) / weight;
		if (score < best_score) {
			best_score = score;
			best = wi;
		}
	}
	if (best < EVST_MAX_WORKERS && try_select(md, best, now, migrating))
		return 1;
	return 0;
}

SEC("sk_reuseport/migrate")
int evsteer_select(struct sk_reuseport_md *md)
{
	__u32 n = table_len;
	if (n == 0 || n > EVST_TABLE_SIZE)
		return SK_PASS;

	__u64 now = bpf_ktime_get_ns();
	int migrating = md->migrating_sk != 0;
	__u32 start;

	switch (policy) {
	case EVST_POLICY_HASH:
		start = md->hash % n;
		break;
	case EVST_POLICY_ROUND_ROBIN:
		start = (__u32)(__sync_fetch_and_add(&rr, 1) % n);
		break;
	case EVST_POLICY_CPU: {
		__u32 cpu = bpf_get_smp_processor_id();
		if (cpu < EVST_MAX_CPUS) {
			__u32 w1 = cpu_map[BOUND(cpu, EVST_MAX_CPUS)];
			if (w1 && w1 <= EVST_MAX_WORKERS &&
			    !stale(&workers[(w1 - 1) & (EVST_MAX_WORKERS - 1)], now) &&
			    try_select(md, w1 - 1, now, migrating))
				return SK_PASS;
		}
	}
		/* fall through: the CPU's worker is unset or stalled */
	default:
		if (select_least_pending(md, now, migrating))
			return SK_PASS;
		start = md->hash % n;
		break;
	}
	select_from_table(md, start, n, now, migrating);
	return SK_PASS;
}

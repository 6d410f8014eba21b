/* SPDX-License-Identifier: MIT */
/*
 * The state shared between the sk_reuseport program and user space. It lives
 * in the program's .bss, a BPF_F_MMAPABLE array map that libbpf maps into
 * the process: user space reads and writes it with relaxed atomics, with no
 * system call per accept.
 */
#ifndef EVSTEER_STEER_SHARED_H
#define EVSTEER_STEER_SHARED_H

#include <linux/types.h>

/* REUSEPORT_SOCKARRAY slots: workers of one address, threads and
 * processes together (issue 23: a prefork server with one worker per core
 * on a machine with more than 64 cores). A power of two: the program masks
 * indexes with it. 64 bytes of .bss and of control page per worker. */
#define EVST_MAX_WORKERS 1024
#define EVST_MAX_WEIGHT 16
/* The weighted rotation table holds every live worker at its weight, at
 * most EVST_MAX_WEIGHT entries each (a power of two too). */
#define EVST_TABLE_SIZE (EVST_MAX_WORKERS * EVST_MAX_WEIGHT)
#define EVST_MAX_CPUS 256
/* Steering times kept per worker, a ring indexed by the worker's steered
 * count: the queue is FIFO, so the n-th connection taken off a socket is
 * the n-th steered to it, and its wait is the time since stamps[n % this]
 * (see struct evst_wait_hist in src/steering/steering.h). A power of 2. */
#define EVST_WAIT_STAMPS 32

enum evst_policy_id {
	EVST_POLICY_LEAST_PENDING = 0,
	EVST_POLICY_HASH = 1,
	EVST_POLICY_ROUND_ROBIN = 2,
	EVST_POLICY_CPU = 3,
};

/*
 * The wait of a worker's oldest pending connection, from its stamp t (0:
 * none written) at time now: EVST_WAIT_UNKNOWN where the stamp says
 * nothing (not written yet, later than now, or overwritten: the caller's
 * case). Callers return 0 themselves when nothing is pending.
 */
#define EVST_WAIT_UNKNOWN (~0ULL)

static inline __attribute__((always_inline)) __u64
evst_wait_since(__u64 t, __u64 now)
{
	return t && t <= now ? now - t : EVST_WAIT_UNKNOWN;
}

/*
 * Would a connection wait less elsewhere than on a stale worker whose
 * oldest has waited `stuck`, where the other worker's oldest has waited
 * `other` (both as above, 0: nothing pending)? Yes when the other keeps up
 * (nothing pending, or its wait unknown) or the stale one's wait is
 * unknown or over stall_ns longer. The rule of both the program's
 * avoidance of a stale worker (no_shorter_elsewhere(), steer.bpf.c) and
 * the thieves' (evst_shared_worth_taking(), src/steering/account.c).
 */
static inline __attribute__((always_inline)) int
evst_shorter_elsewhere(__u64 stuck, __u64 other, __u64 stall_ns)
{
	if (!other || other == EVST_WAIT_UNKNOWN)
		return 1;
	return stuck == EVST_WAIT_UNKNOWN || stuck > other + stall_ns;
}

/* One cache line per worker: the program and the worker's thread write it. */
struct evst_worker {
	__u64 steered;     /* program: connections selected for this socket */
	__u64 dequeued;    /* user: taken off this socket (own + stolen) */
	__u64 progress_ns; /* both: last progress, CLOCK_MONOTONIC */
	__u64 migrated;    /* program: moved here from a closing sibling */
	__u32 live;        /* user: in the sockarray and served */
	__u32 weight;      /* user: >= 1 */
	/* user: when a sibling last stole from this worker. It is held out
	 * of the steering while progress_ns < stolen_ns: stealing empties
	 * its queue, and an empty queue alone would make it look healthy
	 * while its loop is still stuck. Its own next pass (the thief pokes
	 * it) moves progress_ns past this and lets it back in; a pass that
	 * raced ahead of the theft does not. */
	__u64 stolen_ns;
	__u64 pad[2];
};

#endif

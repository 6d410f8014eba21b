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

#define EVST_MAX_WORKERS 64   /* REUSEPORT_SOCKARRAY slots */
#define EVST_TABLE_SIZE 256   /* weighted rotation table */
#define EVST_MAX_CPUS 256

enum evst_policy_id {
	EVST_POLICY_LEAST_PENDING = 0,
	EVST_POLICY_HASH = 1,
	EVST_POLICY_ROUND_ROBIN = 2,
	EVST_POLICY_CPU = 3,
};

/* One cache line per worker: the program and the worker's thread write it. */
struct evst_worker {
	__u64 steered;     /* program: connections selected for this socket */
	__u64 dequeued;    /* user: taken off this socket (own + stolen) */
	__u64 progress_ns; /* both: last progress, CLOCK_MONOTONIC */
	__u64 migrated;    /* program: moved here from a closing sibling */
	__u32 live;        /* user: in the sockarray and served */
	__u32 weight;      /* user: >= 1 */
	/* user: a sibling stole from this worker; it stays stalled until it
	 * makes progress itself (stealing empties its queue, and an empty
	 * queue alone would make it look healthy again) */
	__u32 stalled;
	__u32 pad32;
	__u64 pad[2];
};

#endif

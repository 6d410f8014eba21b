/* SPDX-License-Identifier: MIT */
/* What bench_floor.bpf.c and evsteer-bench-steer --floor share
 * (measurement only, not part of the library). */
#ifndef EVSTEER_BENCH_FLOOR_H
#define EVSTEER_BENCH_FLOOR_H

#include <linux/types.h>

#define FLOOR_MAX 1024 /* a power of two, as EVST_MAX_WORKERS */

/* One line per worker, as struct evst_worker: the program counts, the
 * accepting thread (through the mmapped .bss) takes. */
struct floor_slot {
	__u64 steered;
	__u64 taken;
	__u64 pad[6];
};

#endif

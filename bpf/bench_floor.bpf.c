/* SPDX-License-Identifier: MIT */
/*
 * Measurement only, not part of the library: the floors under the
 * steering program's cost per SYN (evsteer-bench-steer --floor, issue 23).
 *
 * Each program picks one of the sockets at random and selects it, the
 * least any sk_reuseport program does; each adds one thing the real
 * program (steer.bpf.c) needs on top:
 *
 *   floor_select  nothing: the helper and the chosen socket
 *   floor_clock   a bpf_ktime_get_ns() (stall detection and the queue-wait
 *                 stamps need the time of each SYN)
 *   floor_count   a count on the chosen worker's cache line, which the
 *                 accepting thread also writes (least-pending needs
 *                 steered - taken; so does stall detection)
 *
 * so that what the real program costs above them is its own, and what
 * they cost is the machine's.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "bench_floor.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, FLOOR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} floor_socks SEC(".maps");

struct floor_slot slots[FLOOR_MAX];
__u32 nsocks;   /* written by user space before the program is attached */
__u64 last_now; /* floor_clock's read, kept so that it is not optimised out */

/* An index the verifier can see is in bounds (the compiler would drop a
 * plain mask after the modulo). */
#define BOUND(x) ({ __u32 __v = (x); asm volatile("" : "+r"(__v)); __v & (FLOOR_MAX - 1); })

static __always_inline __u32 pick(void)
{
	__u32 n = nsocks;
	if (n == 0 || n > FLOOR_MAX)
		return FLOOR_MAX;
	return bpf_get_prandom_u32() % n;
}

static __always_inline int select_one(struct sk_reuseport_md *md, __u32 k)
{
	__u32 key = k;
	return bpf_sk_select_reuseport(md, &floor_socks, &key, 0);
}

SEC("sk_reuseport")
int floor_select(struct sk_reuseport_md *md)
{
	__u32 k = pick();
	if (k < FLOOR_MAX)
		select_one(md, k);
	return SK_PASS;
}

SEC("sk_reuseport")
int floor_clock(struct sk_reuseport_md *md)
{
	__u32 k = pick();
	if (k < FLOOR_MAX && !select_one(md, k))
		last_now = bpf_ktime_get_ns();
	return SK_PASS;
}

SEC("sk_reuseport")
int floor_count(struct sk_reuseport_md *md)
{
	__u32 k = pick();
	if (k < FLOOR_MAX && !select_one(md, k))
		__sync_fetch_and_add(&slots[BOUND(k)].steered, 1);
	return SK_PASS;
}

/* SPDX-License-Identifier: MIT */
/*
 * evsteer's SK_REUSEPORT program: picks the worker socket for each new
 * connection (and, loaded as sk_reuseport/migrate, for each connection
 * queued on a worker socket that is closing). UAPI headers only.
 *
 * A worker is "stale" when connections are pending on it and it has made no
 * progress for stall_ns: it gets nothing new unless every worker is stale,
 * or the worker picked instead has waited as long (no_shorter_elsewhere()).
 * One a sibling stole from stays out with nothing pending until its own
 * loop runs again (progress_ns passes stolen_ns; the thief pokes it), and
 * at most PROBE_STALLS x stall_ns after the theft (see stale()).
 * When no socket can be selected the program returns SK_PASS without a
 * selection and the kernel falls back to its own hash.
 *
 * Every pick costs the same whatever the number of workers (up to
 * EVST_MAX_WORKERS, 1,024): hash and round-robin index the weighted table,
 * least-pending compares two workers drawn at random from the compact list
 * of live ones (power of two choices) instead of scanning them all, so a
 * SYN reads a few cache lines of worker state, not one per worker.
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
__u32 live[EVST_MAX_WORKERS];    /* live workers, once each */
__u32 live_len;
__u32 policy;
__u64 stall_ns;                  /* 0: stall detection off */
__u32 cpu_map[EVST_MAX_CPUS];    /* cpu -> worker + 1 (0: unset) */
__u64 rr;                        /* rotation cursor */
__u32 nslots;                    /* highest used worker slot + 1 (not read here:
				  * evsteer-stat and older readers) */
/* when each of the last EVST_WAIT_STAMPS connections was steered to a
 * worker (by its steered count); user space reads them at accept */
__u64 stamps[EVST_MAX_WORKERS][EVST_WAIT_STAMPS];

static __always_inline __u64 pending(struct evst_worker *w)
{
	__s64 p = (__s64)(w->steered - w->dequeued);
	return p > 0 ? (__u64)p : 0;
}

/*
 * A worker siblings stole from shows it is back by running its loop: the
 * thief pokes it, and the pass that poke causes moves progress_ns past
 * stolen_ns. Until then it is out, since its empty queue says nothing of
 * its loop. The poke cannot be lost in this process, but the bound keeps a
 * worker whose poke never ran from being out for good: after PROBE_STALLS
 * x stall_ns it gets a connection again (accepted, it is in; stuck, that
 * one is stolen in turn after stall_ns, and it is out again).
 */
#define PROBE_STALLS 50

static __always_inline int stale(struct evst_worker *w, __u64 now)
{
	__u64 st = stall_ns;
	if (!st)
		return 0;
	__u64 progress = w->progress_ns;
	if (pending(w))
		return now - progress > st;
	__u64 stolen = w->stolen_ns;
	return stolen > progress && now - stolen <= st * PROBE_STALLS;
}

/*
 * Steer to worker wi: put the connection on its socket and count it.
 * Called once per connection, so the verifier walks the helper call once.
 */
static __always_inline int steer_to(struct sk_reuseport_md *md, __u32 wi,
				    __u64 now, int migrating)
{
	if (wi >= EVST_MAX_WORKERS)
		return 0;
	struct evst_worker *w = &workers[BOUND(wi, EVST_MAX_WORKERS)];
	/* The sockarray's key is a __u32, the first four bytes of this:
	 * stored 8 bytes wide like everything on this program's stack, since
	 * the slot may have held a spilled scalar (see struct probe). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	__u64 key = wi;
#else
	__u64 key = (__u64)wi << 32;
#endif
	if (bpf_sk_select_reuseport(md, &socks, &key, 0))
		return 0;
	/* Work arriving on an idle worker starts its progress clock, so an
	 * idle worker is never judged stale by an old timestamp (and a probe
	 * of a stalled one starts its next interval). */
	if (!pending(w))
		w->progress_ns = now;
	/* the count before ours is this connection's place in the queue */
	__u64 n = __sync_fetch_and_add(&w->steered, 1);
	stamps[BOUND(wi, EVST_MAX_WORKERS)][n & (EVST_WAIT_STAMPS - 1)] = now;
	if (migrating)
		__sync_fetch_and_add(&w->migrated, 1);
	return 1;
}

static __always_inline int usable(__u32 wi, __u64 now)
{
	struct evst_worker *w = &workers[BOUND(wi, EVST_MAX_WORKERS)];
	return w->live && !stale(w, now);
}

/* How long worker wi's oldest pending connection has waited, by its stamp:
 * 0 with nothing pending, EVST_WAIT_UNKNOWN when its stamp is gone (more
 * than a ring's worth steered after it) or not there (src/steering/
 * account.c, evst_shared_oldest_wait(), reads them the same way). */
static __always_inline __u64 oldest_wait(__u32 wi, __u64 now)
{
	struct evst_worker *w = &workers[BOUND(wi, EVST_MAX_WORKERS)];
	__u64 deq = w->dequeued, steered = w->steered;
	if ((__s64)(steered - deq) <= 0)
		return 0;
	if (steered - deq > EVST_WAIT_STAMPS)
		return EVST_WAIT_UNKNOWN;
	return evst_wait_since(
		stamps[BOUND(wi, EVST_MAX_WORKERS)][deq & (EVST_WAIT_STAMPS - 1)],
		now);
}

/*
 * Stale worker s, which the pick would pass over for usable worker h, keeps
 * its turn after all: its loop is late with connections pending, but h's
 * own oldest has waited about as long (less than stall_ns shorter), so a
 * connection sent to h instead would wait no less. That is saturation on a
 * machine with more runnable threads than CPUs, where every loop is a
 * scheduler slice late in turn: passing over the late one there sent every
 * new connection to a sibling just as far behind (p99 8.45 ms against 5.55
 * without, bench/JOURNAL.md "Stall detection at saturation, by
 * mechanism"). Thieves follow the same rule (evst_shorter_elsewhere(),
 * steer_shared.h).
 * A worker out after a theft (nothing pending) stays out: the theft found
 * it stuck. Where h keeps up (nothing pending) or a stamp is unknown, s is
 * passed over as before.
 *
 * A global function: the verifier checks it once, on its own, rather than
 * in every path of every caller (inlined, its branches multiplied the
 * states Linux 6.1's verifier walks without CAP_PERFMON past its limit of
 * a million instructions). So neither static nor __hidden: libbpf makes a
 * hidden function static, and a static one is verified again at every
 * call, in its caller's state.
 */
__attribute__((noinline)) int no_shorter_elsewhere(__u32 s, __u32 h, __u64 now)
{
	if (s >= EVST_MAX_WORKERS || h >= EVST_MAX_WORKERS)
		return 0;
	struct evst_worker *ws = &workers[BOUND(s, EVST_MAX_WORKERS)];
	if (!ws->live)
		return 0;
	/* nothing pending (0: emptied by a theft since it was judged stale)
	 * is out after a theft, not a queue as old */
	__u64 mine = oldest_wait(s, now);
	return mine &&
	       !evst_shorter_elsewhere(mine, oldest_wait(h, now), stall_ns);
}

/*
 * The bpf_loop contexts below hold scalars only, every field a __u64, so
 * every load and store the callbacks make through their ctx pointer is 8
 * bytes wide (and steer_to()'s key is one too: no narrow store is left on
 * this program's stack; llvm-objdump -d shows none). Linux 6.1's verifier records a 4-byte store of a known
 * constant to an 8-aligned stack slot as a spilled register, and without
 * CAP_PERFMON (allow_ptr_leaks) it refuses any later store narrower than 8
 * bytes to such a slot: "attempt to corrupt spilled pointer on stack", at
 * a callback's `pr->found = wi`, even though nothing there is a pointer
 * (6.8 relaxed the check for scalars). clang may also give both contexts
 * the same stack bytes, so neither may have a narrow field.
 */

/* From the weighted table at `start`: the first usable of a few entries,
 * else the entry at `start` (every worker stale: take one anyway). */
#define PROBES 8
struct probe {
	__u64 now;
	__u64 start, n, found;
};

static long probe_one(__u32 k, void *arg)
{
	struct probe *pr = arg;
	__u64 n = pr->n;
	if (!n || k >= n)
		return 1;
	__u32 wi = table[BOUND((__u32)((pr->start + k) % n), EVST_TABLE_SIZE)];
	if (wi < EVST_MAX_WORKERS && usable(wi, pr->now)) {
		pr->found = wi;
		return 1;
	}
	return 0;
}

static __always_inline __u32 pick_from_table(__u32 start, __u32 n, __u64 now)
{
	struct probe pr = {.now = now, .start = start, .n = n,
			   .found = EVST_MAX_WORKERS};
	bpf_loop(PROBES, probe_one, &pr, 0);
	__u32 first = table[BOUND(start % n, EVST_TABLE_SIZE)];
	if (pr.found >= EVST_MAX_WORKERS)
		return first;
	/* the entry at start, passed over, keeps its turn where the one
	 * found has waited as long */
	if (first != pr.found && first < EVST_MAX_WORKERS &&
	    no_shorter_elsewhere(first, (__u32)pr.found, now))
		return first;
	return (__u32)pr.found;
}

/* Worker b is less loaded than worker a as least-pending weighs them
 * (pending per unit of weight): pending_b / w_b < pending_a / w_a, cross-
 * multiplied rather than divided (a division costs tens of cycles, and
 * this runs twice a SYN; pending stays far below 2^59, weights <= 16). */
static __always_inline int less_loaded(__u32 b, __u32 a)
{
	struct evst_worker *wa = &workers[BOUND(a, EVST_MAX_WORKERS)];
	struct evst_worker *wb = &workers[BOUND(b, EVST_MAX_WORKERS)];
	__u64 weight_a = wa->weight & (EVST_MAX_WEIGHT * 2 - 1);
	__u64 weight_b = wb->weight & (EVST_MAX_WEIGHT * 2 - 1);
	return pending(wb) * (weight_a ? weight_a : 1) <
	       pending(wa) * (weight_b ? weight_b : 1);
}

/*
 * Least-pending by the power of two choices: two distinct live workers, the
 * one with the lower score. The first is the next in rotation over the live
 * list, the second one of the others at random; a tie goes to the first,
 * so idle workers are visited in turn, as the full scan's rotating start
 * did (random ties were measured to give 117 and 83 of 200 connections to
 * two workers), and the random one is what makes it two choices. A stale
 * candidate does not count; when both of a pair are, the next pair is
 * drawn, at most P2C_TRIES pairs: with half the workers stale, all four
 * pairs miss about one time in 256, and the caller falls back to the
 * table's probes. Its cost does not depend on the number of
 * workers; the full scan it replaces cost 1 us per SYN at 64 (issue 23).
 * A two-choice pick keeps the most loaded worker within O(log log n) of the
 * mean (Azar, Broder, Karlin, Upfal 1994), which is what least-pending is
 * for: a worker that stops accepting stops getting connections.
 */
#define P2C_TRIES 4
struct p2c {
	__u64 now;
	__u64 n;     /* live_len, 2..EVST_MAX_WORKERS */
	__u64 start; /* the rotation's position for this SYN */
	__u64 found; /* EVST_MAX_WORKERS: none yet */
};

/*
 * No branch may leave an index the verifier knows as a constant on one
 * path and not on another: without CAP_PERFMON it sanitizes pointer
 * arithmetic per instruction and refuses one reached with both ("R2 tried
 * to add from different maps, paths or scalars", measured with
 * `ib = ... ? ia + 1 : 0`). So the second choice is computed, not
 * branched on: ia + 1 + j (mod n) for j in 0..n-2 is any worker but ia,
 * uniformly, and n >= 2 here (the caller takes a lone worker itself). The
 * wrap is a compare and subtract: both sides leave an index the verifier
 * does not know.
 */
static long p2c_one(__u32 k, void *arg)
{
	struct p2c *pc = arg;
	__u64 n = pc->n;
	if (n < 2)
		return 1;
	__u64 ia = (pc->start + k) % n;
	/* j in 0..n-2 from 32 random bits by multiply and shift, not a
	 * division (Lemire); n <= 1,024, so its bias is nil */
	__u64 j = ((__u64)bpf_get_prandom_u32() * (n - 1)) >> 32;
	__u64 ib = ia + 1 + j;
	if (ib >= n)
		ib -= n;
	__u32 a = live[BOUND((__u32)ia, EVST_MAX_WORKERS)];
	__u32 b = live[BOUND((__u32)ib, EVST_MAX_WORKERS)];
	int ua = a < EVST_MAX_WORKERS && usable(a, pc->now);
	int ub = b < EVST_MAX_WORKERS && usable(b, pc->now);
	/* a stale one of the pair is weighed after all where the other
	 * has waited as long (no_shorter_elsewhere) */
	if (ua != ub && a < EVST_MAX_WORKERS && b < EVST_MAX_WORKERS) {
		if (ua ? no_shorter_elsewhere(b, a, pc->now) :
			 no_shorter_elsewhere(a, b, pc->now))
			ua = ub = 1;
	}
	if (ua && ub)
		pc->found = less_loaded(b, a) ? b : a;
	else if (ua || ub)
		pc->found = ua ? a : b;
	else
		return 0; /* both stale (or leaving): draw again */
	return 1;
}

static __always_inline __u32 pick_least_pending(__u64 now)
{
	__u32 n = live_len;
	struct p2c pc = {
		.now = now,
		.n = n <= EVST_MAX_WORKERS ? n : 0,
		.found = EVST_MAX_WORKERS,
	};
	if (!pc.n)
		return EVST_MAX_WORKERS;
	/* a retry (both of a pair stale) takes the next in rotation as its
	 * first choice: the next SYN's too, which costs nothing but order */
	pc.start = __sync_fetch_and_add(&rr, 1);
	if (pc.n == 1) {
		__u32 only = live[0];
		return only < EVST_MAX_WORKERS && usable(only, now) ?
			       only : EVST_MAX_WORKERS;
	}
	bpf_loop(P2C_TRIES, p2c_one, &pc, 0);
	return pc.found < EVST_MAX_WORKERS ? (__u32)pc.found : EVST_MAX_WORKERS;
}

/*
 * Whether this lookup starts a connection. The kernel also looks up a
 * listener for stray segments (an ACK or FIN for a connection already gone,
 * e.g. when the TIME_WAIT table is full); those must neither be counted as
 * pending nor advance the rotation. data begins at the TCP header.
 */
static __always_inline int is_syn(struct sk_reuseport_md *md)
{
	__u8 *data = md->data, *end = md->data_end;
	if (data + 14 > end)
		return 1; /* cannot tell: treat as a new connection */
	__u8 flags = data[13];
	return (flags & 0x02) && !(flags & 0x10); /* SYN, not ACK */
}

SEC("sk_reuseport/migrate")
int evsteer_select(struct sk_reuseport_md *md)
{
	__u32 n = table_len;
	if (n == 0 || n > EVST_TABLE_SIZE)
		return SK_PASS;
	/* not a new connection: the kernel's hash, nothing counted */
	if (!md->migrating_sk && !is_syn(md))
		return SK_PASS;

	__u64 now = bpf_ktime_get_ns();
	__u32 wi = EVST_MAX_WORKERS, late = EVST_MAX_WORKERS;

	switch (policy) {
	case EVST_POLICY_HASH:
		wi = pick_from_table(md->hash % n, n, now);
		break;
	case EVST_POLICY_ROUND_ROBIN:
		wi = pick_from_table((__u32)__sync_fetch_and_add(&rr, 1) % n, n,
				     now);
		break;
	case EVST_POLICY_CPU: {
		__u32 cpu = bpf_get_smp_processor_id();
		__u32 w1 = cpu < EVST_MAX_CPUS ? cpu_map[BOUND(cpu, EVST_MAX_CPUS)] : 0;
		if (w1 && w1 <= EVST_MAX_WORKERS) {
			if (usable(w1 - 1, now))
				wi = w1 - 1;
			else
				late = w1 - 1;
		}
	}
		/* fall through: the CPU's worker is unset or stale */
	default:
		if (wi >= EVST_MAX_WORKERS)
			wi = pick_least_pending(now);
		if (wi >= EVST_MAX_WORKERS) /* all stale */
			wi = pick_from_table(md->hash % n, n, now);
		else if (late < EVST_MAX_WORKERS && late != wi &&
			 no_shorter_elsewhere(late, wi, now))
			wi = late; /* the CPU's own, as far behind as that one */
		break;
	}
	/* No selection (a slot going away under us): the kernel's hash. */
	steer_to(md, wi, now, md->migrating_sk != 0);
	return SK_PASS;
}

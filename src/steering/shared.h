/* SPDX-License-Identifier: MIT */
/*
 * The steering group of one address, shared by every member: the groups
 * and listeners of this process on the address, and of every other process
 * of the same user in the same network namespace (rendezvous.h). One
 * program, one sockarray, one table of slots, whoever created them.
 *
 * Slots are global (0..EVST_MAX_WORKERS-1, across processes); each member
 * claims and releases its own under a robust process-shared mutex in the
 * control page, so a member killed while holding it cannot wedge the rest.
 * A member that dies without leaving is found by the others' ticks (its
 * liveness name is free, or its socket left the sockarray) and its slots
 * released.
 *
 * Without BPF the same code runs on process-local memory: the group then
 * spans this process only and the kernel's hash steers.
 */
#ifndef EVSTEER_SHARED_H
#define EVSTEER_SHARED_H

#include <stdbool.h>
#include <stdint.h>

#include "steering/steer.h"

struct evst_shared;

/* Per-slot counters the workers keep (steered/migrated are the program's). */
struct evst_slot_counters {
	uint64_t accepted, stolen, stolen_from;
};

/* What evsteer-stat shows of a slot besides its counters (relaxed). */
#define EVST_SLOT_RETIRED 1u  /* its group was retired (a restart) */
struct evst_slot_info {
	uint64_t stalls;  /* times a sibling found it stuck (episodes) */
	uint32_t engine;  /* enum evsteer_engine + 1; 0: not known yet */
	uint32_t flags;   /* EVST_SLOT_* */
};

/*
 * Queue wait, per worker slot, in the control page: the time from the
 * program's steering decision (a SYN, or a migration from a closing
 * sibling; for a hand-off within a process, the hand-off) to the accept
 * that took the connection off the socket, whoever took it (the worker or
 * a thief). It includes the handshake's round trip. bucket[k] counts
 * waits below EVSTEER_WAIT_BUCKET_NS(k) and at or above bucket k-1's
 * bound; the last bucket has no upper bound. untimed: taken with no
 * steering time known (more than EVST_WAIT_STAMPS were steered after it
 * before it was taken, or its count was dropped as drift). Written with
 * relaxed atomics by the process that takes; read by evsteer-stat.
 */
struct evst_wait_hist {
	uint64_t bucket[EVSTEER_WAIT_BUCKETS];
	uint64_t sum_ns;
	uint64_t untimed;
	uint64_t pad[6];
};
_Static_assert(sizeof(struct evst_wait_hist) == 256, "four cache lines");

struct evst_shared_opts {
	enum evsteer_bpf_mode mode;
	enum evsteer_policy policy;
	int stall_us;
};

/*
 * The group of the address the listening socket fd is bound to: found in
 * this process, joined from another process, or created (loading the
 * program). Without BPF, or where we may not join, a local group on the
 * kernel hash with the reason. NULL with errno only when BPF is required
 * and cannot be had, or on ENOMEM.
 */
EVST_HIDDEN struct evst_shared *evst_shared_get(int fd,
						const struct evst_shared_opts *o);
EVST_HIDDEN void evst_shared_put(struct evst_shared *sh);
/* In a child of fork(), sh inherited (common/process.h): drop a reference;
 * at the last, unmap the child's views (control page, program state) and
 * close the child's copies of their descriptors. The control page, the
 * program and its maps are the parent's and are not written. */
EVST_HIDDEN void evst_shared_forget(struct evst_shared *sh);

/* Claim a free slot for fd (put in the sockarray); the slot or -errno
 * (ENOSPC; EBUSY when the socket is in the group already). */
EVST_HIDDEN int evst_shared_claim(struct evst_shared *sh, int fd);
/* Stop steering to the slot and free it (the socket stays open). */
EVST_HIDDEN void evst_shared_release(struct evst_shared *sh, unsigned int slot);
EVST_HIDDEN void evst_shared_set_live(struct evst_shared *sh, unsigned int slot,
				      bool live);
EVST_HIDDEN void evst_shared_set_weight(struct evst_shared *sh,
					unsigned int slot, unsigned int weight);
EVST_HIDDEN void evst_shared_set_cpu(struct evst_shared *sh, unsigned int cpu,
				     unsigned int slot);
EVST_HIDDEN void evst_shared_set_policy(struct evst_shared *sh,
					unsigned int policy);
EVST_HIDDEN unsigned int evst_shared_policy(const struct evst_shared *sh);
EVST_HIDDEN uint64_t evst_shared_stall_ns(const struct evst_shared *sh);
/* Where the threshold lives, for readers that outlive a call (watch.c). */
EVST_HIDDEN const __u64 *evst_shared_stall_ptr(const struct evst_shared *sh);

/* Our program steers right now (loaded or joined, and not stood down
 * for a foreign listener on the port). */
EVST_HIDDEN bool evst_shared_bpf(const struct evst_shared *sh);
/* Why not, when not: a sentence valid while sh lives. */
EVST_HIDDEN const char *evst_shared_reason(const struct evst_shared *sh);

/*
 * Classic BPF steering (cbpf.c): eBPF was refused and a classic reuseport
 * program steers over this process's healthy workers, re-made whenever
 * that set changes. True while it does (not stood down).
 */
EVST_HIDDEN bool evst_shared_cbpf(const struct evst_shared *sh);
/*
 * Close a worker's socket of sh. With classic BPF the kernel's socket
 * array shifts (the last socket takes its index), so the close, the model
 * and the new program go together under the control page's lock; first,
 * what is queued on the socket is accepted into late[] (at most max) for
 * the caller to hand on. Without classic BPF, just close(). Returns how
 * many are in late[].
 */
EVST_HIDDEN int evst_shared_close(struct evst_shared *sh, int fd, int *late,
				  int max);
/* A worker's socket left the group and stays open (not ours to close):
 * classic BPF cannot follow its close, and stands down. */
EVST_HIDDEN void evst_shared_keep(struct evst_shared *sh, int fd);
/* Classic BPF: re-make the program if health changed (a worker found
 * stuck, stolen from, or running again). */
EVST_HIDDEN void evst_shared_health(struct evst_shared *sh);
/* Classic BPF holds worker w out for its health (cheap: one load). */
EVST_HIDDEN bool evst_shared_cbpf_out(const struct evst_shared *sh,
				      const struct evst_worker *w);
/* Classic BPF: at most once a second, check that no listener of another
 * process appeared on the address (it stands down if one did). */
EVST_HIDDEN void evst_shared_cbpf_look(struct evst_shared *sh, uint64_t now);
/* Classic BPF counts nothing: w's pending is read from its socket's accept
 * queue (fd: the worker's listening socket); connections found on an idle
 * worker start its progress clock. */
EVST_HIDDEN void evst_shared_queue_to_pending(struct evst_worker *w, int fd);
/* A classic BPF tier exists for sh, steering or stood down (its workers'
 * pending is then read from their sockets' queues). */
EVST_HIDDEN bool evst_shared_cbpf_any(const struct evst_shared *sh);
/* The group is retiring (its workers are out already). Classic BPF beside
 * another process's listeners: while this process's kernel indexes are
 * known, a program sends every new connection to the others until our
 * last socket closes. */
EVST_HIDDEN void evst_shared_retire(struct evst_shared *sh);
/* Programs attached so far (tests, debugging). */
EVST_HIDDEN uint64_t evst_shared_cbpf_attaches(const struct evst_shared *sh);

EVST_HIDDEN struct evst_worker *evst_shared_worker(struct evst_shared *sh,
						   unsigned int slot);
EVST_HIDDEN struct evst_slot_counters *
evst_shared_counters(struct evst_shared *sh, unsigned int slot);
EVST_HIDDEN struct evst_slot_info *evst_shared_info(struct evst_shared *sh,
						   unsigned int slot);
/* The same for a worker entry (its slot is its index: no group lock). */
EVST_HIDDEN struct evst_slot_info *
evst_shared_info_of(struct evst_shared *sh, const struct evst_worker *w);
/* The thread serving a slot (evsteer-stat shows it): the caller's, set
 * when it differs (cheap: a thread-local and a relaxed load). */
EVST_HIDDEN void evst_shared_note_thread(struct evst_shared *sh,
					 unsigned int slot);
/* Highest slot in use anywhere + 1. */
EVST_HIDDEN unsigned int evst_shared_nslots(const struct evst_shared *sh);
/* Who owns a slot: its process id, 0 when free. */
EVST_HIDDEN uint32_t evst_shared_slot_pid(const struct evst_shared *sh,
					  unsigned int slot);
/* The thread that last accepted on a slot (evst_shared_note_thread); 0:
 * none yet. */
EVST_HIDDEN uint32_t evst_shared_slot_tid(const struct evst_shared *sh,
					  unsigned int slot);

/* n connections taken off worker w's socket, the first of them the
 * first-th steered to it (its dequeued count before): their queue waits
 * into w's histogram. */
EVST_HIDDEN void evst_shared_waited(struct evst_shared *sh,
				    const struct evst_worker *w, uint64_t first,
				    unsigned int n, uint64_t now);
/* n connections given to worker w by hand (not by the program), the first
 * the first-th counted as steered: stamped now. */
EVST_HIDDEN void evst_shared_stamp(struct evst_shared *sh,
				   const struct evst_worker *w, uint64_t first,
				   unsigned int n, uint64_t now);
/* A slot's queue-wait histogram (any process's slot). */
EVST_HIDDEN const struct evst_wait_hist *
evst_shared_waits(const struct evst_shared *sh, unsigned int slot);

/* shared state helpers used by the accounting (group/) */
EVST_HIDDEN uint64_t evst_worker_pending(const struct evst_worker *w);
/* How long w's oldest pending connection has waited, by its stamp: 0 when
 * nothing is pending, EVST_WAIT_UNKNOWN (UINT64_MAX) when its time is not
 * known (no stamps, or more than a ring's worth steered after it). */
EVST_HIDDEN uint64_t evst_shared_oldest_wait(const struct evst_shared *sh,
					     const struct evst_worker *w,
					     uint64_t now);
/* Would a healthy sibling (entry thief) taking stuck worker victim's queue
 * shorten a wait? evst_shared_oldest_wait() of each (steal.c says why). */
EVST_HIDDEN bool evst_shared_worth_taking(const struct evst_shared *sh,
					  const struct evst_worker *thief,
					  const struct evst_worker *victim,
					  uint64_t now, uint64_t stall_ns);
/* The worker's loop ran: its heartbeat. */
EVST_HIDDEN void evst_made_progress(struct evst_worker *w, uint64_t now);
/*
 * A connection is counted (steered) at its SYN and is in the accept queue
 * only once its handshake is done: a round trip later on a network, and
 * on a loaded machine's loopback up to milliseconds (the final ACK waits
 * for softirq work). One not taken this long after its SYN died in its
 * handshake (a client gone, a SYN flood); one still younger may yet come.
 */
#define EVST_HANDSHAKE_GRACE_NS 100000000ull
/*
 * Nothing is on w's socket where the program counts some (its queue found
 * empty at `now` by its worker or by a thief): what was steered there more
 * than EVST_HANDSHAKE_GRACE_NS ago is dropped from pending; younger ones
 * stay counted. Dropped at once, a connection in its handshake would, once
 * accepted, take the place of the next one in the count, which then waits
 * on the worker unseen by the steering and by thieves: for a whole block
 * when the worker blocks (issue 18). dequeued never stays past steered
 * either (a connection the program did not count: a SYN cookie completed
 * on another socket), which would hide a real one. Without stamps
 * (classic BPF counts nothing), pending back to 0.
 */
EVST_HIDDEN void evst_shared_resync(const struct evst_shared *sh,
				    struct evst_worker *w, uint64_t now);
/* Everything counted on w as taken: pending 0 (member.c: a stale excess). */
EVST_HIDDEN void evst_ws_drop_pending(struct evst_worker *w);

#endif

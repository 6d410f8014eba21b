/* SPDX-License-Identifier: MIT */
/* A member's slots in the shared state: claim, release, live, weight,
 * CPU map, policy; and what anyone may read of them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/process.h"
#include "steering/steering.h"
#include "steering/steer.h"

int evst_shared_claim(struct evst_shared *sh, int fd)
{
	uint64_t cookie = evst_sock_cookie(fd);
	evst_ctl_lock(sh);
	unsigned int i;
	for (i = 0; i < EVST_MAX_WORKERS && sh->ctl->slots[i].owner; i++)
		;
	if (i == EVST_MAX_WORKERS) {
		evst_ctl_unlock(sh);
		return -ENOSPC;
	}
	/* Field by field, atomically: siblings read these without the lock
	 * (a worker entry may be looked at while it is being reused). */
	struct evst_worker *w = &sh->v.workers[i];
	__atomic_store_n(&w->live, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->steered, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->dequeued, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->progress_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->migrated, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->stolen_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->weight, 1, __ATOMIC_RELAXED);
	struct evst_slot_rec *s = &sh->ctl->slots[i];
	__atomic_store_n(&s->c.accepted, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->c.stolen, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->c.stolen_from, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->tid, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->info.stalls, 0, __ATOMIC_RELAXED);
	/* a new owner starts with no waits and no stamps (not live yet: the
	 * program steers nothing here meanwhile) */
	struct evst_wait_hist *h = &sh->ctl->waits[i];
	for (unsigned int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
		__atomic_store_n(&h->bucket[k], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&h->sum_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&h->untimed, 0, __ATOMIC_RELAXED);
	if (sh->v.stamps)
		for (unsigned int k = 0; k < EVST_WAIT_STAMPS; k++)
			__atomic_store_n(&sh->v.stamps[i][k], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->info.engine, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->info.flags, 0, __ATOMIC_RELAXED);
	if (sh->steer) {
		int err = evst_steer_set_slot(sh->steer, i, fd);
		/* One attach covers the kernel's whole reuseport group, also
		 * sockets that join later; attaching at each claim re-creates
		 * it when every socket of the group had closed meanwhile. */
		if (!err && !__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE)) {
			err = evst_steer_attach(sh->steer, fd);
			if (err)
				evst_steer_set_slot(sh->steer, i, -1);
		}
		if (err) {
			evst_ctl_unlock(sh);
			return err;
		}
	}
	s->weight = 1;
	__atomic_store_n(&s->pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
	__atomic_store_n(&s->cookie, cookie, __ATOMIC_RELAXED);
	__atomic_store_n(&s->owner, sh->id, __ATOMIC_RELEASE);
	sh->local_fd[i] = fd;
	evst_ctl_default_cpu_map(sh);
	evst_cbpf_claimed(sh, fd);
	evst_ctl_unlock(sh);
	return (int)i;
}

void evst_shared_release(struct evst_shared *sh, unsigned int slot)
{
	evst_ctl_lock(sh);
	if (sh->ctl->slots[slot].owner == sh->id)
		evst_ctl_free_slot(sh, slot);
	evst_ctl_unlock(sh);
}

void evst_shared_set_live(struct evst_shared *sh, unsigned int slot, bool live)
{
	evst_ctl_lock(sh);
	struct evst_worker *w = &sh->v.workers[slot];
	if (sh->ctl->slots[slot].owner == sh->id &&
	    (bool)__atomic_load_n(&w->live, __ATOMIC_RELAXED) != live) {
		if (live)
			__atomic_store_n(&w->progress_ns, evst_now_ns(),
					 __ATOMIC_RELAXED);
		__atomic_store_n(&w->live, live ? 1 : 0, __ATOMIC_RELAXED);
		evst_ctl_rebuild_table(sh);
	}
	evst_ctl_unlock(sh);
}

void evst_shared_set_weight(struct evst_shared *sh, unsigned int slot,
			    unsigned int weight)
{
	evst_ctl_lock(sh);
	sh->ctl->slots[slot].weight = weight;
	__atomic_store_n(&sh->v.workers[slot].weight, weight, __ATOMIC_RELAXED);
	evst_ctl_rebuild_table(sh);
	evst_ctl_unlock(sh);
}

void evst_shared_set_cpu(struct evst_shared *sh, unsigned int cpu,
			 unsigned int slot)
{
	__atomic_store_n(&sh->v.cpu_map[cpu], slot + 1, __ATOMIC_RELAXED);
	evst_shared_health(sh); /* classic BPF: the map is in the program */
}

void evst_shared_set_policy(struct evst_shared *sh, unsigned int policy)
{
	__atomic_store_n(sh->v.policy, (__u32)policy, __ATOMIC_RELAXED);
	evst_shared_health(sh);
}

unsigned int evst_shared_policy(const struct evst_shared *sh)
{
	return __atomic_load_n(sh->v.policy, __ATOMIC_RELAXED);
}

const __u64 *evst_shared_stall_ptr(const struct evst_shared *sh)
{
	return sh->v.stall_ns;
}

uint64_t evst_shared_stall_ns(const struct evst_shared *sh)
{
	return evst_ld64(sh->v.stall_ns);
}

bool evst_shared_bpf(const struct evst_shared *sh)
{
	return sh && sh->steer &&
	       !__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE);
}

const char *evst_shared_reason(const struct evst_shared *sh)
{
	if (!sh->steer) {
		const char *down = evst_cbpf_down_reason(sh);
		return down ? down : sh->reason ? sh->reason : "";
	}
	if (__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE)) {
		/* the path report is not a hot path: take the lock, so the
		 * reason is the one that goes with the state */
		struct evst_shared *m = (struct evst_shared *)sh;
		evst_ctl_lock(m);
		const char *r = sh->ctl->detached ? evst_detach_reason(m) : "";
		evst_ctl_unlock(m);
		return r;
	}
	return "";
}

struct evst_worker *evst_shared_worker(struct evst_shared *sh, unsigned int slot)
{
	return &sh->v.workers[slot];
}

struct evst_slot_counters *evst_shared_counters(struct evst_shared *sh,
						unsigned int slot)
{
	return &sh->ctl->slots[slot].c;
}

struct evst_slot_info *evst_shared_info(struct evst_shared *sh,
					unsigned int slot)
{
	return &sh->ctl->slots[slot].info;
}

struct evst_slot_info *evst_shared_info_of(struct evst_shared *sh,
					   const struct evst_worker *w)
{
	return &sh->ctl->slots[w - sh->v.workers].info;
}

void evst_shared_note_thread(struct evst_shared *sh, unsigned int slot)
{
	/* initial-exec: see running_op (uring/rings.c); the generation, as
	 * a fork child's thread has its parent's copy */
	static __thread uint32_t self __attribute__((tls_model("initial-exec")));
	static __thread unsigned int self_gen
		__attribute__((tls_model("initial-exec")));
	unsigned int gen = evst_process_gen();
	if (!self || self_gen != gen) {
		self = (uint32_t)gettid();
		self_gen = gen;
	}
	uint32_t *t = &sh->ctl->slots[slot].tid;
	if (__atomic_load_n(t, __ATOMIC_RELAXED) != self)
		__atomic_store_n(t, self, __ATOMIC_RELAXED);
}

/* evsteer-stat's SET, authorised by the rendezvous (same uid or root):
 * what evsteer_group_set_policy() and _set_weight() do, for the whole
 * address, logged here so the group's own log says who changed what. */
int evst_shared_control(void *arg, const struct evst_rdv_req *q, pid_t pid,
			uid_t uid)
{
	struct evst_shared *sh = arg;
	char a[64];
	evst_addr_str(&sh->addr, a, sizeof(a));
	if (q->op == EVST_RDV_OP_SET_POLICY) {
		if (q->value > EVSTEER_POLICY_CPU)
			return EINVAL;
		unsigned int was = evst_shared_policy(sh);
		evst_shared_set_policy(sh, q->value);
		evst_info("group %s: policy %s -> %s, set by pid %d (uid %u) "
			  "with evsteer-stat", a,
			  evsteer_policy_name((enum evsteer_policy)was),
			  evsteer_policy_name((enum evsteer_policy)q->value),
			  (int)pid, (unsigned)uid);
		return 0;
	}
	if (q->op == EVST_RDV_OP_SET_WEIGHT) {
		if (q->slot >= EVST_MAX_WORKERS || q->value < 1 || q->value > 16)
			return EINVAL;
		evst_ctl_lock(sh);
		struct evst_slot_rec *s = &sh->ctl->slots[q->slot];
		if (!s->owner) {
			evst_ctl_unlock(sh);
			return ENOENT;
		}
		unsigned int was = s->weight, owner = s->pid;
		s->weight = q->value;
		__atomic_store_n(&sh->v.workers[q->slot].weight, q->value,
				 __ATOMIC_RELAXED);
		evst_ctl_rebuild_table(sh);
		evst_ctl_unlock(sh);
		evst_info("group %s: slot %u (pid %u) weight %u -> %u, set by pid "
			  "%d (uid %u) with evsteer-stat", a, q->slot, owner, was,
			  q->value, (int)pid, (unsigned)uid);
		return 0;
	}
	return EOPNOTSUPP;
}

unsigned int evst_shared_nslots(const struct evst_shared *sh)
{
	unsigned int hi = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (__atomic_load_n(&sh->ctl->slots[i].owner, __ATOMIC_RELAXED))
			hi = i + 1;
	return hi;
}

uint32_t evst_shared_slot_tid(const struct evst_shared *sh, unsigned int slot)
{
	return __atomic_load_n(&sh->ctl->slots[slot].tid, __ATOMIC_RELAXED);
}

uint32_t evst_shared_slot_pid(const struct evst_shared *sh, unsigned int slot)
{
	return __atomic_load_n(&sh->ctl->slots[slot].owner, __ATOMIC_ACQUIRE) ?
		       __atomic_load_n(&sh->ctl->slots[slot].pid, __ATOMIC_RELAXED) :
		       0;
}

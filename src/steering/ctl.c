/* SPDX-License-Identifier: MIT */
/* The control page (steering.h): its lock, the member and slot records,
 * the weighted table the program reads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/mman.h>
#include <sys/socket.h>

#include "steering/steering.h"

void evst_ctl_unlock(struct evst_shared *sh)
{
	pthread_mutex_unlock(&sh->ctl->lock);
}

/*
 * ctl->lock held. Rebuild what the program picks from: the compact list of
 * live workers (least-pending draws two from it) and the weighted table
 * (every live worker at its weight, weight-major, so that round-robin
 * visits each once before any twice). One pass over the slots, then one
 * over the list per weight: O(slots + table) per change, which a group of
 * 1,024 joining or leaving one by one pays a thousand times.
 *
 * The program may read an entry while it is rewritten: it sees a valid
 * worker index either way, and checks that worker's `live` before it
 * steers there.
 */
void evst_ctl_rebuild_table(struct evst_shared *sh)
{
	__u32 nlive = 0, n = 0, hi = 0, maxw = 1;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		struct evst_slot_rec *s = &sh->ctl->slots[i];
		if (!__atomic_load_n(&s->owner, __ATOMIC_RELAXED))
			continue;
		hi = i + 1;
		if (!__atomic_load_n(&sh->v.workers[i].live, __ATOMIC_RELAXED))
			continue;
		__atomic_store_n(&sh->v.live[nlive++], i, __ATOMIC_RELAXED);
		if (s->weight > maxw)
			maxw = s->weight < EVST_MAX_WEIGHT ? s->weight :
							     EVST_MAX_WEIGHT;
	}
	for (unsigned int w = 0; w < maxw; w++) {
		for (unsigned int k = 0; k < nlive; k++) {
			__u32 i = __atomic_load_n(&sh->v.live[k], __ATOMIC_RELAXED);
			if (w < sh->ctl->slots[i].weight && n < EVST_TABLE_SIZE)
				__atomic_store_n(&sh->v.table[n++], i,
						 __ATOMIC_RELAXED);
		}
	}
	/* the program reads the lengths first: publish entries before them */
	__atomic_store_n(sh->v.nslots, hi, __ATOMIC_RELEASE);
	__atomic_store_n(sh->v.live_len, nlive, __ATOMIC_RELEASE);
	__atomic_store_n(sh->v.table_len, n, __ATOMIC_RELEASE);
	/* classic BPF reads no table: it gets a new program instead */
	evst_cbpf_program(sh);
}

void evst_ctl_lock(struct evst_shared *sh)
{
	int r = pthread_mutex_lock(&sh->ctl->lock);
	if (r == EOWNERDEAD) {
		/* A member died in the middle of a change: everything under
		 * the lock is rebuilt from the slot table. */
		pthread_mutex_consistent(&sh->ctl->lock);
		evst_ctl_rebuild_table(sh);
		evst_info("group: a member process died holding the group lock; "
			  "table rebuilt");
	}
}

/* ctl->lock held: the slot's owner is gone or leaving. */
void evst_ctl_free_slot(struct evst_shared *sh, unsigned int i)
{
	struct evst_slot_rec *s = &sh->ctl->slots[i];
	__atomic_store_n(&sh->v.workers[i].live, 0, __ATOMIC_RELAXED);
	evst_ctl_rebuild_table(sh);
	if (sh->steer)
		evst_steer_set_slot(sh->steer, i, -1);
	for (unsigned int c = 0; c < EVST_MAX_CPUS; c++)
		if (__atomic_load_n(&sh->v.cpu_map[c], __ATOMIC_RELAXED) == i + 1)
			__atomic_store_n(&sh->v.cpu_map[c], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&s->cookie, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->pid, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->tid, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->info.engine, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->info.flags, 0, __ATOMIC_RELAXED);
	sh->local_fd[i] = -1;
}

static void member_name(const struct evst_shared *sh, uint32_t id,
			struct evst_rdv *tmp)
{
	char k[128];
	snprintf(k, sizeof(k), "%s/m%u", sh->key, id);
	evst_rdv_name(tmp, k);
}

/* Bind our liveness name: held while this process lives (the kernel frees
 * an abstract name with its last socket, killed or not). */
static int hold_name(const struct evst_shared *sh, uint32_t id)
{
	struct evst_rdv tmp;
	member_name(sh, id, &tmp);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (bind(s, (struct sockaddr *)&tmp.name, tmp.namelen) < 0) {
		int err = -errno;
		close(s);
		return err;
	}
	return s;
}

bool evst_ctl_member_alive(const struct evst_shared *sh, uint32_t id)
{
	int s = hold_name(sh, id);
	if (s == -EADDRINUSE)
		return true;
	if (s >= 0)
		close(s);
	return s < 0; /* cannot tell: alive */
}

/* ctl->lock held: release what a dead member left. */
void evst_ctl_reap_member(struct evst_shared *sh, int m)
{
	uint32_t id = sh->ctl->members[m].id;
	int n = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->ctl->slots[i].owner == id) {
			evst_ctl_free_slot(sh, i);
			n++;
		}
	evst_info("group %s: member pid %u is gone; released its %d slot(s)",
		  sh->key, sh->ctl->members[m].pid, n);
	sh->ctl->members[m].id = 0;
	sh->ctl->members[m].pid = 0;
}

int evst_ctl_join(struct evst_shared *sh)
{
	evst_ctl_lock(sh);
	int m;
	for (m = 0; m < EVST_MAX_MEMBERS && sh->ctl->members[m].id; m++)
		;
	if (m == EVST_MAX_MEMBERS) {
		evst_ctl_unlock(sh);
		return -EUSERS;
	}
	uint32_t id = ++sh->ctl->next_id;
	if (!id)
		id = ++sh->ctl->next_id;
	int fd = sh->ctl_fd >= 0 ? hold_name(sh, id) : -1;
	if (sh->ctl_fd >= 0 && fd < 0) {
		evst_ctl_unlock(sh);
		return fd;
	}
	sh->ctl->members[m].id = id;
	sh->ctl->members[m].pid = (uint32_t)getpid();
	evst_ctl_unlock(sh);
	sh->id = id;
	sh->member = m;
	sh->alive_fd = fd;
	return 0;
}

static void view_local(struct evst_shared *sh)
{
	struct evst_local_state *l = sh->local;
	sh->v = (struct evst_shared_view){
		.workers = l->workers, .table = l->table,
		.table_len = &l->table_len, .live = l->live,
		.live_len = &l->live_len, .policy = &l->policy,
		.stall_ns = &l->stall_ns, .cpu_map = &l->cpu_map[0],
		.nslots = &l->nslots};
}

int evst_ctl_init_lock(struct evst_ctl *c, bool pshared)
{
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	if (pshared)
		pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	int err = pthread_mutex_init(&c->lock, &a);
	pthread_mutexattr_destroy(&a);
	return -err;
}

/* The group lives in this process only: kernel hash. */
void evst_ctl_local(struct evst_shared *sh)
{
	if (sh->steer) {
		evst_steer_close(sh->steer);
		sh->steer = NULL;
	}
	if (sh->ctl && sh->ctl_fd >= 0)
		munmap(sh->ctl, sizeof(*sh->ctl));
	if (sh->ctl_fd >= 0)
		close(sh->ctl_fd);
	sh->ctl_fd = -1;
	sh->ctl = calloc(1, sizeof(*sh->ctl));
	sh->local = calloc(1, sizeof(*sh->local));
	if (sh->ctl)
		evst_ctl_init_lock(sh->ctl, false);
	if (sh->local)
		view_local(sh);
}

int evst_ctl_map(struct evst_shared *sh, int fd, bool create)
{
	if (create && ftruncate(fd, sizeof(struct evst_ctl)) < 0)
		return -errno;
	void *p = mmap(NULL, sizeof(struct evst_ctl), PROT_READ | PROT_WRITE,
		       MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	sh->ctl = p;
	sh->ctl_fd = fd;
	if (create) {
		sh->ctl->magic = CTL_MAGIC;
		sh->ctl->layout = LAYOUT;
		return evst_ctl_init_lock(sh->ctl, true);
	}
	if (sh->ctl->magic != CTL_MAGIC || sh->ctl->layout != LAYOUT)
		return -EPROTO;
	return 0;
}

/*
 * ctl->lock held: the default CPU map, cpu % used slots, over all: CPU c
 * gets the (c % n)-th used slot. The first min(n, EVST_MAX_CPUS) CPUs take
 * the used slots in order, the rest repeat them; no list of used slots on
 * the stack (there can be 1,024).
 */
void evst_ctl_default_cpu_map(struct evst_shared *sh)
{
	unsigned int c = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS && c < EVST_MAX_CPUS; i++)
		if (sh->ctl->slots[i].owner)
			__atomic_store_n(&sh->v.cpu_map[c++], i + 1,
					 __ATOMIC_RELAXED);
	for (unsigned int k = c; k < EVST_MAX_CPUS && c; k++)
		__atomic_store_n(&sh->v.cpu_map[k],
				 __atomic_load_n(&sh->v.cpu_map[k % c],
						 __ATOMIC_RELAXED),
				 __ATOMIC_RELAXED);
}

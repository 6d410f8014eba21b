/* SPDX-License-Identifier: MIT */
/* The rendezvous thread's tick (every EVST_RDV_TICK_MS): members that
 * died, sockets that left, listeners that are not ours. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "steering/steering.h"

static int any_local_fd(struct evst_shared *sh)
{
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->local_fd[i] >= 0)
			return sh->local_fd[i];
	return -1;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* ctl->lock held: the cookies of every used slot, sorted, into k (room
 * for EVST_MAX_WORKERS); how many. Looked up once per listener found, so
 * a tick costs O(n log n), not O(n^2), with 1,024 workers. */
static size_t known_cookies(struct evst_shared *sh, uint64_t *k)
{
	size_t n = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (__atomic_load_n(&sh->ctl->slots[i].owner, __ATOMIC_ACQUIRE))
			k[n++] = sh->ctl->slots[i].cookie;
	qsort(k, n, sizeof(*k), cmp_u64);
	return n;
}

/* ctl->lock held: our copy of the shared stand-down reason, up to date
 * (a new immutable string when it changed: readers hold no lock). */
const char *evst_detach_reason(struct evst_shared *sh)
{
	struct reason_node *cur = sh->detach_reason;
	if (!cur || strcmp(cur->text, sh->ctl->reason)) {
		size_t n = strnlen(sh->ctl->reason, sizeof(sh->ctl->reason));
		struct reason_node *r = malloc(sizeof(*r) + n + 1);
		if (!r)
			return cur ? cur->text : "bpf: stood down";
		memcpy(r->text, sh->ctl->reason, n);
		r->text[n] = '\0';
		r->prev = cur;
		__atomic_store_n(&sh->detach_reason, r, __ATOMIC_RELEASE);
		cur = r;
	}
	return cur->text;
}

/*
 * A listener on our address that no member has claimed is foreign once it
 * is still there a tick later (a member between bind and claim is not).
 * Our program would starve it: stand down to the kernel's hash, which
 * spreads over every socket, and say so; steer again once it is gone.
 */
static void check_foreign(struct evst_shared *sh)
{
	/* on the heap: 1,040 entries are 25 KiB, and the tick runs on the
	 * rendezvous thread, whose stack is not ours to size */
	enum { MAX_LI = EVST_MAX_WORKERS + MAX_SUSPECTS };
	struct evst_sock_info *li = malloc(sizeof(*li) * MAX_LI);
	uint64_t *known = malloc(sizeof(*known) * EVST_MAX_WORKERS);
	int n = li && known ? evst_list_listeners((struct sockaddr *)&sh->addr,
						  li, MAX_LI) : -1;
	if (n < 0) {
		free(li);
		free(known);
		return;
	}
	uint64_t now[MAX_SUSPECTS];
	int nn = 0, confirmed = -1;
	evst_ctl_lock(sh);
	size_t nk = known_cookies(sh, known);
	for (int i = 0; i < n; i++) {
		if (bsearch(&li[i].cookie, known, nk, sizeof(*known), cmp_u64) ||
		    nn == MAX_SUSPECTS)
			continue;
		for (int k = 0; k < sh->nsuspects; k++)
			if (sh->suspects[k] == li[i].cookie && confirmed < 0)
				confirmed = i;
		now[nn++] = li[i].cookie;
	}
	memcpy(sh->suspects, now, sizeof(now[0]) * (size_t)nn);
	sh->nsuspects = nn;
	sh->quiet_ticks = nn ? 0 : sh->quiet_ticks + 1;
	int fd = any_local_fd(sh);
	char a[56];
	evst_addr_str(&sh->addr, a, sizeof(a));
	if (confirmed >= 0 && !sh->ctl->detached && fd >= 0 &&
	    evst_steer_detach(fd) == 0) {
		snprintf(sh->ctl->reason, sizeof(sh->ctl->reason),
			 "bpf: stood down: a listener that is not ours is on %s "
			 "(socket inode %llu, uid %u); the kernel's SO_REUSEPORT "
			 "hash spreads connections over all of them",
			 a, (unsigned long long)li[confirmed].inode,
			 li[confirmed].uid);
		__atomic_store_n(&sh->ctl->detached, 1, __ATOMIC_RELEASE);
		evst_warn("%s", sh->ctl->reason);
	} else if (!nn && sh->quiet_ticks >= 2 && sh->ctl->detached && fd >= 0 &&
		   evst_steer_attach(sh->steer, fd) == 0) {
		__atomic_store_n(&sh->ctl->detached, 0, __ATOMIC_RELEASE);
		evst_info("group %s: the foreign listener is gone; BPF steering "
			  "again", a);
	}
	evst_ctl_unlock(sh);
	free(li);
	free(known);
}

void evst_shared_tick(void *arg)
{
	struct evst_shared *sh = arg;
	/* Reaping is the serving member's job (one per group, not one per
	 * member: each look costs a bind per member); the next server takes
	 * it over with the name. The thread owns rdv.lfd: no race. */
	if (sh->rdv.lfd < 0) {
		check_foreign(sh);
		return;
	}
	evst_ctl_lock(sh);
	for (int m = 0; m < EVST_MAX_MEMBERS; m++) {
		uint32_t id = sh->ctl->members[m].id;
		if (id && id != sh->id && !evst_ctl_member_alive(sh, id))
			evst_ctl_reap_member(sh, m);
	}
	/* a socket that left the sockarray without its member saying so
	 * (closed behind our back): free its slot */
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		struct evst_slot_rec *s = &sh->ctl->slots[i];
		if (s->owner && s->cookie &&
		    evst_steer_slot_cookie(sh->steer, i) != s->cookie) {
			evst_info("group %s: slot %u's socket is gone; released",
				  sh->key, i);
			evst_ctl_free_slot(sh, i);
		}
	}
	evst_ctl_unlock(sh);
	check_foreign(sh);
}

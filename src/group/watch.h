/* SPDX-License-Identifier: MIT */
/*
 * The stall watch: one thread per process that looks at this process's
 * group members while any of them has connections waiting, and wakes a
 * healthy sibling to take them when one stalls (see watch.c for why a
 * thread, and what it costs).
 *
 * It only reads shared counters and writes eventfds: it never accepts,
 * never runs user code and never takes a listener's or a group's lock.
 */
#ifndef EVSTEER_WATCH_H
#define EVSTEER_WATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "bpf/steer_shared.h"
#include "internal.h"

struct evst_shared;

struct evst_watched {
	const void *group;      /* entries of one group steal for each other */
	struct evst_worker *ws; /* the member's shared counters */
	const __u64 *stall_ns;  /* the group's threshold (shared) */
	const struct evst_shared *sh; /* its queues' stamps: whose wait is longer */
	int poke_fd;            /* eventfd: the member's loop steals when written */
	bool classic;           /* classic BPF: pending read from the socket */
	/* private to watch.c */
	struct evst_watched *next;
	int wfd[2];             /* watched while the watch is idle */
	uint64_t seen_steered;
	unsigned int nsib; /* other entries of its group: 0, nothing to do */
	bool on;
};

/*
 * Watch a member (its loop delivers and can steal): the shared entry,
 * the eventfd that wakes its loop, and the descriptors whose readiness
 * means work arrived for it (its listening socket; its ring's eventfd, or
 * -1). The descriptors are dup'ed; w must stay valid until
 * evst_watch_remove(). 0 or -errno (the member is then simply not watched:
 * its siblings still steal from it on their own wake-ups).
 */
EVST_HIDDEN int evst_watch_add(struct evst_watched *w, int sock_fd, int ring_fd);
/* Stop watching w; once this returns the watch never touches w again. */
EVST_HIDDEN void evst_watch_remove(struct evst_watched *w);

#endif

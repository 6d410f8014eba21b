/* SPDX-License-Identifier: MIT */
/* The BPF side of steering: load, attach, sockarray, the shared state. */
#ifndef EVSTEER_STEER_H
#define EVSTEER_STEER_H

#include <errno.h>
#include <stddef.h>

#include "config.h"

#include "../bpf/steer_shared.h"
#include "internal.h"

/* Where the shared state lives: the program's mmapped .bss with BPF, or a
 * plain struct in the group without it, so the accounting code is one. */
struct evst_shared_view {
	struct evst_worker *workers;
	__u32 *table;
	__u32 *table_len;
	__u32 *policy;
	__u64 *stall_ns;
	__u32 *cpu_map;
	__u32 *nslots;
};

struct evst_steer;

#if EVSTEER_HAVE_BPF
/*
 * Load the sk_reuseport/migrate program and its maps. On failure returns
 * NULL with errno set and `reason` holding a sentence for the user.
 * libbpf's log is routed to ours only during the load, then restored.
 */
EVST_HIDDEN struct evst_steer *evst_steer_load(char *reason, size_t len);
/* Attach to the kernel reuseport group of a listening socket. 0 or -errno. */
EVST_HIDDEN int evst_steer_attach(struct evst_steer *s, int fd);
/* Put fd in the sockarray at slot (fd < 0: remove). 0 or -errno. */
EVST_HIDDEN int evst_steer_set_slot(struct evst_steer *s, unsigned int slot,
				    int fd);
EVST_HIDDEN void evst_steer_view(struct evst_steer *s,
				 struct evst_shared_view *v);
EVST_HIDDEN void evst_steer_destroy(struct evst_steer *s);
#else
/* Built without BPF: a group never has a program (setup_steering says
 * why), so these are never reached. */
static inline int evst_steer_attach(struct evst_steer *s, int fd)
{
	(void)s, (void)fd;
	return -EOPNOTSUPP;
}
static inline int evst_steer_set_slot(struct evst_steer *s, unsigned int slot,
				      int fd)
{
	(void)s, (void)slot, (void)fd;
	return -EOPNOTSUPP;
}
static inline void evst_steer_view(struct evst_steer *s,
				   struct evst_shared_view *v)
{
	(void)s, (void)v;
}
static inline void evst_steer_destroy(struct evst_steer *s)
{
	(void)s;
}
#endif

#endif

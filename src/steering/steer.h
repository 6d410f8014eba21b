/* SPDX-License-Identifier: MIT */
/*
 * The BPF side of steering, and nothing else touches BPF: load the program
 * and its maps, hand their descriptors around, map the shared state, attach
 * and detach, fill the sockarray.
 *
 * Every member of a group, in any process, holds the same three objects by
 * descriptor: the sk_reuseport program, its REUSEPORT_SOCKARRAY, and the
 * BPF_F_MMAPABLE array behind the program's .bss, which each member maps.
 * The first member loads them (needs CAP_BPF); the others receive the
 * descriptors (rendezvous.c) and need no privilege at all.
 */
#ifndef EVSTEER_STEER_H
#define EVSTEER_STEER_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#include "bpf/steer_shared.h"
#include "internal.h"

/* Where the program's state lives: its mmapped .bss with BPF, or plain
 * memory without it, so the accounting code is one. */
struct evst_shared_view {
	struct evst_worker *workers;
	__u32 *table;
	__u32 *table_len;
	__u32 *live;      /* live workers once each: least-pending's draw */
	__u32 *live_len;
	__u32 *policy;
	__u64 *stall_ns;
	__u32 *cpu_map;
	__u32 *nslots;
	__u64 (*stamps)[EVST_WAIT_STAMPS]; /* NULL without a program */
};

enum { EVST_FD_PROG, EVST_FD_SOCKS, EVST_FD_BSS, EVST_STEER_NFDS };

struct evst_steer;

#if EVSTEER_HAVE_BPF
/*
 * Load the sk_reuseport/migrate program and its maps; on success fds[]
 * holds the three descriptors (the caller owns them). On failure -errno and
 * `reason` holds a sentence for the user. libbpf's log is routed to ours
 * only during the load, then restored.
 */
EVST_HIDDEN int evst_steer_load(int fds[EVST_STEER_NFDS], char *reason,
				size_t len);
/*
 * Use three descriptors (loaded here or received from another member):
 * check that they are what we load, map the shared state. Takes ownership
 * of the fds, also on failure. NULL with errno set on failure.
 */
EVST_HIDDEN struct evst_steer *evst_steer_open(int fds[EVST_STEER_NFDS]);
EVST_HIDDEN const int *evst_steer_fds(const struct evst_steer *s);
/* Attach to / detach from the kernel reuseport group of a listening
 * socket (any socket of the group acts for all of it). 0 or -errno. */
EVST_HIDDEN int evst_steer_attach(struct evst_steer *s, int fd);
EVST_HIDDEN int evst_steer_detach(int fd);
/* Put fd in the sockarray at slot (fd < 0: remove). 0 or -errno. */
EVST_HIDDEN int evst_steer_set_slot(struct evst_steer *s, unsigned int slot,
				    int fd);
/* The cookie of the socket at slot: 0 when the slot is empty (its socket
 * closed, or never put there). */
EVST_HIDDEN uint64_t evst_steer_slot_cookie(struct evst_steer *s,
					    unsigned int slot);
EVST_HIDDEN void evst_steer_view(struct evst_steer *s,
				 struct evst_shared_view *v);
EVST_HIDDEN void evst_steer_close(struct evst_steer *s);
#else
/* Built without BPF: nothing is ever loaded (shared.c says why), so these
 * are never reached with a program. */
static inline int evst_steer_attach(struct evst_steer *s, int fd)
{
	(void)s, (void)fd;
	return -EOPNOTSUPP;
}
static inline int evst_steer_detach(int fd)
{
	(void)fd;
	return -EOPNOTSUPP;
}
static inline int evst_steer_set_slot(struct evst_steer *s, unsigned int slot,
				      int fd)
{
	(void)s, (void)slot, (void)fd;
	return -EOPNOTSUPP;
}
static inline uint64_t evst_steer_slot_cookie(struct evst_steer *s,
					      unsigned int slot)
{
	(void)s, (void)slot;
	return 0;
}
static inline struct evst_steer *evst_steer_open(int fds[EVST_STEER_NFDS])
{
	(void)fds;
	errno = EOPNOTSUPP;
	return NULL;
}
static inline const int *evst_steer_fds(const struct evst_steer *s)
{
	(void)s;
	return NULL;
}
static inline void evst_steer_view(struct evst_steer *s,
				   struct evst_shared_view *v)
{
	(void)s, (void)v;
}
static inline void evst_steer_close(struct evst_steer *s)
{
	(void)s;
}
#endif

#endif

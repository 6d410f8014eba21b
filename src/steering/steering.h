/* SPDX-License-Identifier: MIT */
/*
 * Inside steering/ (what its files share; the rest of evsteer sees
 * steering/shared.h only): the control page every member process maps, the
 * state of one address's steering in this process, and the helpers that
 * work on them.
 *
 *   shared.c      find, join or create the steering of an address; leave
 *   ctl.c         the control page: its robust lock, members, slot records,
 *                 the weighted table the program reads
 *   slots.c       a member's slots: claim, release, live, weight, CPU map
 *   tick.c        the rendezvous thread's tick: dead members, foreign
 *                 listeners
 *   account.c     pending, progress, time: the counters the workers keep
 *   rendezvous.c  how processes of one user find each other
 *   steer.c       the BPF side: load, attach, the sockarray, the .bss view
 *   cbpf.c        classic BPF steering when eBPF is refused: the model of
 *                 the kernel's socket order, the programs it writes
 *
 * Locks: `reg_lock` (shared.c) guards this process's registry of
 * addresses and their refcounts, and is held while one is created (a load
 * takes milliseconds; creations are rare). `ctl->lock` (robust,
 * process-shared, in the control page) guards the slot and member tables,
 * the steering table, the CPU map and attach/detach, in every member
 * process. Order: reg_lock, then ctl->lock. The rendezvous thread's tick
 * takes ctl->lock only.
 */
#ifndef EVSTEER_STEERING_STEERING_H
#define EVSTEER_STEERING_STEERING_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "steering/rendezvous.h"
#include "steering/shared.h"

/* 2: evst_worker.stolen_ns; 3: waits, stamps (issue 22); 4: 1,024 workers
 * and member processes (the control page, the .bss and the sockarray all
 * grew), the live list (issue 23). A process of another version neither
 * joins nor serves this one's groups: the rendezvous compares LAYOUT, and
 * the descriptors' sizes are checked (steer.c). */
#define EVST_SHARED_VERSION 4
/* One member per process: as many as there can be workers. */
#define EVST_MAX_MEMBERS EVST_MAX_WORKERS

/*
 * tid and info took the place of padding (same size, same layout number):
 * members of an older version leave them at 0, which evsteer-stat shows as
 * unknown. Readers without the lock (evsteer-stat) check owner and cookie
 * before and after reading a record: a slot freed and claimed again meanwhile
 * has another cookie.
 */
struct evst_slot_rec {
	uint32_t owner; /* member id; 0: free */
	uint32_t pid;
	uint64_t cookie; /* SO_COOKIE of the socket in the sockarray */
	uint32_t weight;
	uint32_t tid;    /* the thread that last accepted here; 0: none yet */
	struct evst_slot_counters c;
	struct evst_slot_info info;
};
_Static_assert(sizeof(struct evst_slot_rec) == 64, "the slot record's size "
	       "is part of the control page's layout");

struct evst_member_rec {
	uint32_t id; /* 0: free */
	uint32_t pid;
};

/* The control page: a memfd every member maps. waits[i] belongs to
 * slots[i] (shared.h, struct evst_wait_hist), out of the slot record so
 * that the record stays one cache line. */
struct evst_ctl {
	uint32_t magic, layout;
	uint32_t next_id;
	uint32_t detached; /* stood down for a foreign listener */
	pthread_mutex_t lock;
	char reason[256];  /* why detached */
	struct evst_member_rec members[EVST_MAX_MEMBERS];
	struct evst_slot_rec slots[EVST_MAX_WORKERS];
	struct evst_wait_hist waits[EVST_MAX_WORKERS];
};

#define CTL_MAGIC 0x4c544345u
#define LAYOUT ((uint32_t)EVST_SHARED_VERSION << 24 | (uint32_t)sizeof(struct evst_ctl))

/* The program's state when there is no program. */
struct evst_local_state {
	struct evst_worker workers[EVST_MAX_WORKERS];
	__u32 table[EVST_TABLE_SIZE];
	__u32 live[EVST_MAX_WORKERS];
	__u32 table_len, live_len, policy, nslots;
	__u64 stall_ns;
	__u32 cpu_map[EVST_MAX_CPUS];
	/* no stamps: without a program nothing is steered, nothing timed */
};

#define MAX_SUSPECTS 16

struct reason_node {
	struct reason_node *prev;
	char text[];
};

struct evst_shared {
	int refcnt; /* reg_lock */
	struct evst_shared *next;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint64_t netns;
	char key[96];

	struct evst_ctl *ctl;
	int ctl_fd;                 /* -1 when process-local */
	int ctl_ro_fd;              /* the same page read-only, for lookers */
	struct evst_steer *steer;   /* NULL: classic BPF or kernel hash */
	struct evst_cbpf *cb;       /* classic BPF steering (cbpf.c), or NULL */
	struct evst_local_state *local;
	struct evst_shared_view v;
	uint32_t id;                /* our member id */
	int member;                 /* our index in ctl->members */
	int alive_fd;               /* holds our liveness name */
	struct evst_rdv rdv;
	int local_fd[EVST_MAX_WORKERS]; /* our sockets by slot (ctl->lock) */

	const char *reason;         /* why not BPF (fixed) */
	char reason_buf[256];
	/* copy of ctl->reason, for readers without the lock: a new string
	 * each time it changes (rarely), all kept until sh goes */
	struct reason_node *detach_reason;
	/* foreign check, tick only */
	uint64_t suspects[MAX_SUSPECTS];
	int nsuspects, quiet_ticks;
};

static inline uint64_t evst_ld64(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* shared.c */
EVST_HIDDEN void evst_addr_str(const struct sockaddr_storage *ss, char *buf,
			       size_t len);
EVST_HIDDEN void evst_set_reason(struct evst_shared *sh, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* ctl.c */
EVST_HIDDEN void evst_ctl_lock(struct evst_shared *sh);
EVST_HIDDEN void evst_ctl_unlock(struct evst_shared *sh);
/* ctl->lock held. Rebuild the weighted table of live workers. */
EVST_HIDDEN void evst_ctl_rebuild_table(struct evst_shared *sh);
/* ctl->lock held: the slot's owner is gone or leaving. */
EVST_HIDDEN void evst_ctl_free_slot(struct evst_shared *sh, unsigned int i);
EVST_HIDDEN bool evst_ctl_member_alive(const struct evst_shared *sh,
				       uint32_t id);
/* ctl->lock held: release what a dead member left. */
EVST_HIDDEN void evst_ctl_reap_member(struct evst_shared *sh, int m);
/* This process as a member of the group: an id, a liveness name. */
EVST_HIDDEN int evst_ctl_join(struct evst_shared *sh);
EVST_HIDDEN int evst_ctl_init_lock(struct evst_ctl *c, bool pshared);
/* Map the control page in fd (create: size and initialise it). */
EVST_HIDDEN int evst_ctl_map(struct evst_shared *sh, int fd, bool create);
/* The group lives in this process only: kernel hash. */
EVST_HIDDEN void evst_ctl_local(struct evst_shared *sh);
/* ctl->lock held: the default CPU map, cpu % used slots, over all. */
EVST_HIDDEN void evst_ctl_default_cpu_map(struct evst_shared *sh);

/* slots.c: a SET request through the rendezvous (evsteer-stat), on the
 * rendezvous thread: 0 or an errno. */
EVST_HIDDEN int evst_shared_control(void *arg, const struct evst_rdv_req *req,
				    pid_t pid, uid_t uid);

/* cbpf.c (ctl->lock held where said) */
/* Classic BPF for sh (eBPF refused): 0 or -ENOMEM; sh->reason says so. */
EVST_HIDDEN int evst_cbpf_start(struct evst_shared *sh);
EVST_HIDDEN void evst_cbpf_free(struct evst_shared *sh);
/* ctl->lock held: fd was claimed; the model appends it (or stands down). */
EVST_HIDDEN void evst_cbpf_claimed(struct evst_shared *sh, int fd);
/* ctl->lock held: re-make the program (liveness, weights, health). */
EVST_HIDDEN void evst_cbpf_program(struct evst_shared *sh);
/* Why classic BPF stood down, or NULL. */
EVST_HIDDEN const char *evst_cbpf_down_reason(const struct evst_shared *sh);

/* tick.c */
/* ctl->lock held: our copy of the shared stand-down reason. */
EVST_HIDDEN const char *evst_detach_reason(struct evst_shared *sh);
EVST_HIDDEN void evst_shared_tick(void *arg);

#endif

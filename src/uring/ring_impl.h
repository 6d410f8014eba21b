/* SPDX-License-Identifier: MIT */
/*
 * The ring itself, shared by the files of src/uring/ only: rings.c keeps
 * one per base and drains it in rounds, ring.c moves its SQEs and
 * completions, setup.c makes its io_uring, io.c keeps its fixed-file table
 * and the slot I/O. Everything else (the engines) sees the opaque struct
 * through uring/ring.h. The calls go one way: rings.c -> ring.c, setup.c;
 * io.c -> ring.c.
 */
#ifndef EVSTEER_URING_RING_IMPL_H
#define EVSTEER_URING_RING_IMPL_H

#include "uring/ring.h"

/* An enum value in newer headers (so #ifdef cannot see it); liburing 2.3
 * has neither the opcode nor a helper. Linux 6.8+. */
#define EVST_OP_FIXED_FD_INSTALL 54
#define EVST_FIXED_FD_NO_CLOEXEC (1U << 0)

#define EVST_RING_ENTRIES 256
/* a flush fits the (empty) SQ in one go */
#define EVST_STAGE_MAX EVST_RING_ENTRIES

struct evsteer_uring {
	struct io_uring ring;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* an op's busy count dropped */
	unsigned int idle_waiters; /* threads waiting on idle (lock held) */
	struct event_base *base;
	int efd;
	struct event *efd_ev;  /* in the base while delivering: efd_sync() */
	struct event *kick_ev; /* made active to run ready() in the loop */
	struct event *yield_ev; /* the same, after the loop's next poll */
	int inflight;
	unsigned int gen; /* made in this process generation (fork) */
	int wanted;     /* engines delivering (enabled) on this ring */
	bool efd_added; /* efd_ev is in the base */
	/* a wake-up drains in kick_ev, after the other events the loop's pass
	 * found ready (a member with stall detection uses the ring: rings.c) */
	bool defer;
	/* the loop thread is inside run_loop_work(): marking ready needs no
	 * kick, and its SQEs wait for the end of the round */
	bool in_work;
	pthread_t owner;   /* the loop thread, once it has run us */
	bool owner_known;
	unsigned long wake_gen;
	struct evst_uop *ready_head, **ready_tail;
	struct evst_uop *later_head, **later_tail;
	unsigned int nstaged;
	struct io_uring_sqe stage[EVST_STAGE_MAX];
	unsigned int table_size; /* registered fixed-file table, 0: none */
	unsigned int slots;      /* direct slots open */
	bool have_install;       /* IORING_OP_FIXED_FD_INSTALL */
	/* EVST_FEAT_* bits: probed and present; hidden by EVSTEER_TEST_MASK */
	unsigned int feats, masked;
	bool efd_quiet;          /* IORING_CQ_EVENTFD_DISABLED is set */
	int init_err;
	unsigned long overflows; /* times the CQ was found overflowed */
	atomic_int users; /* 0: being destroyed, never revived */
	struct evsteer_uring *next;
};

static inline bool evst_ring_taskrun_pending(const struct evsteer_uring *r)
{
	return IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_TASKRUN;
}

/* ring.c, ring lock held, loop thread: submit what the round queued and
 * run task work the kernel holds for us, in one system call (none when
 * there is neither). */
EVST_HIDDEN void evst_ring_flush(struct evsteer_uring *r);
/* ring.c, ring lock held: cancel every request in flight (teardown). */
EVST_HIDDEN int evst_ring_cancel_any(struct evsteer_uring *r);
/* ring.c, ring lock held: submit now, with what the loop thread staged
 * in this round; io_uring_submit()'s result. For a request the caller
 * waits for at once (a slot sent to another ring). */
EVST_HIDDEN int evst_ring_submit_all_now(struct evsteer_uring *r);

/* setup.c, under rings.c's registry lock: a zeroed ring with its io_uring
 * set up and its eventfd registered (nothing else), or NULL with errno and
 * *why (the probe's cached answer when the system refused io_uring). */
EVST_HIDDEN struct evsteer_uring *evst_ring_new(const char **why);
/* setup.c: undo evst_ring_new() and free r. */
EVST_HIDDEN void evst_ring_free(struct evsteer_uring *r);

#endif

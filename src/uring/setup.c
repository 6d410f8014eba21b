/* SPDX-License-Identifier: MIT */
/*
 * Making a ring's io_uring: the set-up parameters, the opcodes it needs,
 * the eventfd it signals, the short-lived thread that creates it, and the
 * probe: a set-up refused by the system (ENOSYS, EPERM, EOPNOTSUPP) is the
 * answer for the rest of the process, with the reason why. The registry
 * that decides when (uring/rings.c) calls here under its lock, which also
 * guards the cached answer.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "reasons.h"
#include "uring/ring_impl.h"

#define CQ_ENTRIES 4096

/* A failed set-up is not retried: seccomp and sysctls do not loosen. */
static const char *probe_fail;
static int probe_errno;
static char probe_buf[160];

/* EPERM is a sysctl, a seccomp profile or an LSM: say which, and the fix. */
static const char *explain(int err)
{
	struct evst_uring_facts f;
	evst_uring_facts_gather(err, &f);
	evst_uring_reason(&f, probe_buf, sizeof(probe_buf));
	return probe_buf;
}

static int ring_init(struct evsteer_uring *r)
{
	struct io_uring_params p = {
		/*
		 * COOP_TASKRUN: completion work runs when the loop thread next
		 * enters the kernel (it is woken if asleep) instead of by IPI;
		 * measured ~8% more connections/s here. Safe because only the
		 * loop thread arms long-lived requests. Not DEFER_TASKRUN: its
		 * SINGLE_ISSUER refuses other threads' submissions and
		 * registrations (EEXIST), IORING_REGISTER_SYNC_CANCEL from
		 * disable/free included; and from an epoll loop it still costs
		 * two system calls a wake-up (epoll_wait, then io_uring_enter
		 * to run the accepts) where COOP_TASKRUN costs an EINTR'd
		 * epoll_wait and a second one (bench/probe_taskrun.c).
		 */
		.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP |
			 IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
			 IORING_SETUP_TASKRUN_FLAG,
		.cq_entries = CQ_ENTRIES,
	};
	int err = io_uring_queue_init_params(EVST_RING_ENTRIES, &r->ring, &p);
	if (err < 0)
		return err;
	struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
	/* IORING_OP_SOCKET came with multishot accept (5.19) */
	if (!probe || !io_uring_opcode_supported(probe, IORING_OP_ACCEPT) ||
	    !io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL) ||
	    !io_uring_opcode_supported(probe, IORING_OP_SOCKET))
		err = -EOPNOTSUPP;
	if (probe) {
		r->have_install = io_uring_opcode_supported(probe,
							    EVST_OP_FIXED_FD_INSTALL);
		io_uring_free_probe(probe);
	}
	if (!err) {
		r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (r->efd < 0)
			err = -errno;
		else if ((err = io_uring_register_eventfd(&r->ring, r->efd)) < 0)
			close(r->efd);
	}
	if (err < 0)
		io_uring_queue_exit(&r->ring);
	return err;
}

static void *ring_init_thread(void *arg)
{
	struct evsteer_uring *r = arg;
	r->init_err = ring_init(r);
	return NULL;
}

/*
 * The kernel ties the task that creates a ring to it: tearing the ring
 * down later queues work on that task, which interrupts whatever system
 * call it is in at that moment (EINTR from epoll_wait, or a read with a
 * timeout). The thread that creates a listener is often the host's main
 * thread, not the loop's; so the ring is created by a short-lived thread of
 * ours (signals blocked), whose tie ends when it exits. The loop thread,
 * which submits, is tied anyway, and libevent retries its epoll_wait.
 */
static int ring_init_detached(struct evsteer_uring *r)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_t t;
	int err = pthread_create(&t, NULL, ring_init_thread, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) /* no thread to spare: here, then */
		return ring_init(r);
	pthread_join(t, NULL);
	return r->init_err;
}

struct evsteer_uring *evst_ring_new(const char **why)
{
	if (probe_fail) {
		*why = probe_fail;
		errno = probe_errno;
		return NULL;
	}
	struct evsteer_uring *r = calloc(1, sizeof(*r));
	int err = r ? ring_init_detached(r) : -ENOMEM;
	if (err < 0) {
		free(r);
		if (err == -ENOSYS || err == -EPERM || err == -EOPNOTSUPP) {
			probe_fail = explain(-err);
			probe_errno = -err;
			evst_info("%s; accepting with the event engine", probe_fail);
		}
		*why = explain(-err);
		errno = -err;
		return NULL;
	}
	return r;
}

void evst_ring_free(struct evsteer_uring *r)
{
	io_uring_queue_exit(&r->ring);
	close(r->efd);
	free(r);
}

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
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/env.h"
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

/* liburing 2.3 knows neither (Linux 6.10). */
#define EVST_ACCEPT_DONTWAIT_FLAG (1U << 1)
#define EVST_CQE_F_SOCK_NONEMPTY (1U << 2)

/* The kernel's answers, asked once per process: EVST_FEAT_* bits, -1
 * until asked. Guarded by rings.c's registry lock (see the top). */
static int probed_accept = -1;

/* One accept on lfd, ioprio flags as given; its result and CQE flags. A
 * kernel that took the flag for something else and waits is given up on
 * after a second: -ETIMEDOUT. */
static int accept_once(struct io_uring *ring, int lfd, unsigned int ioprio,
		       unsigned int *cflags)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
	sqe->ioprio |= ioprio;
	io_uring_sqe_set_data64(sqe, 1);
	int ret = io_uring_submit(ring);
	if (ret < 0)
		return ret;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {.tv_sec = 1};
	ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
	if (ret == -ETIME) {
		sqe = io_uring_get_sqe(ring);
		if (sqe) {
			io_uring_prep_cancel64(sqe, 1, 0);
			io_uring_sqe_set_data64(sqe, 2);
			io_uring_submit(ring);
		}
		/* the accept's -ECANCELED and the cancel's own result */
		for (int i = 0; i < 2 && !io_uring_wait_cqe_timeout(ring, &cqe, &ts); i++)
			io_uring_cqe_seen(ring, cqe);
		return -ETIMEDOUT;
	}
	if (ret < 0)
		return ret;
	ret = cqe->res;
	*cflags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	if (ret >= 0)
		close(ret);
	return ret;
}

/* A listening socket: unix (autobound, an abstract name: nothing left in
 * the filesystem) or TCP on 127.0.0.1; its address in sa. -1 if none. */
static int probe_listener(int family, struct sockaddr_storage *sa,
			  socklen_t *len)
{
	memset(sa, 0, sizeof(*sa));
	sa->ss_family = (sa_family_t)family;
	if (family == AF_INET)
		((struct sockaddr_in *)sa)->sin_addr.s_addr =
			htonl(INADDR_LOOPBACK);
	*len = family == AF_UNIX ? sizeof(sa_family_t) :
				   sizeof(struct sockaddr_in);
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)sa, *len) < 0 || listen(fd, 4) < 0 ||
	    (*len = sizeof(*sa),
	     getsockname(fd, (struct sockaddr *)sa, len) < 0)) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * What accept does on this kernel, tried for real: DONTWAIT on an empty
 * queue is -EAGAIN where the kernel knows it and -EINVAL before 6.10 (on
 * a unix socket: no network needed); an accept that leaves a connection
 * queued says so in its CQE flags from 6.10 on (TCP only: unix sockets do
 * not tell). A probe that cannot run finds nothing: the paths without
 * them always work.
 */
static int probe_accept(struct io_uring *ring)
{
	int feats = 0;
	struct sockaddr_storage sa;
	socklen_t len;
	unsigned int fl = 0;
	int lfd = probe_listener(AF_UNIX, &sa, &len);
	if (lfd >= 0 &&
	    accept_once(ring, lfd, EVST_ACCEPT_DONTWAIT_FLAG, &fl) == -EAGAIN)
		feats |= EVST_FEAT_ACCEPT_DONTWAIT;
	if (lfd >= 0)
		close(lfd);
	lfd = probe_listener(AF_INET, &sa, &len);
	if (lfd < 0)
		return feats;
	int c[2] = {-1, -1};
	bool queued = true;
	for (int i = 0; i < 2 && queued; i++) {
		/* not blocking: a firewall that drops on lo would hold a
		 * blocking connect for minutes; a second is plenty */
		c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		struct pollfd pfd = {.fd = c[i], .events = POLLOUT};
		int err = 0;
		socklen_t el = sizeof(err);
		queued = c[i] >= 0 &&
			 (connect(c[i], (struct sockaddr *)&sa, len) == 0 ||
			  (errno == EINPROGRESS && poll(&pfd, 1, 1000) == 1 &&
			   getsockopt(c[i], SOL_SOCKET, SO_ERROR, &err, &el) == 0 &&
			   err == 0));
	}
	if (queued && accept_once(ring, lfd, 0, &fl) >= 0 &&
	    (fl & EVST_CQE_F_SOCK_NONEMPTY))
		feats |= EVST_FEAT_SOCK_NONEMPTY;
	for (int i = 0; i < 2; i++)
		if (c[i] >= 0)
			close(c[i]);
	close(lfd);
	return feats;
}

/* The features r has, from the probes, the opcode list and the mask. */
static void ring_features(struct evsteer_uring *r)
{
	if (probed_accept < 0)
		probed_accept = probe_accept(&r->ring);
	unsigned int have = (unsigned int)probed_accept;
	if (r->have_install)
		have |= EVST_FEAT_FIXED_FD_INSTALL;
	unsigned int m = evst_env_test_mask(), hide = 0;
	if (m & EVST_MASK_ACCEPT_DONTWAIT)
		hide |= EVST_FEAT_ACCEPT_DONTWAIT;
	if (m & EVST_MASK_FIXED_FD_INSTALL)
		hide |= EVST_FEAT_FIXED_FD_INSTALL;
	if (m & EVST_MASK_SOCK_NONEMPTY)
		hide |= EVST_FEAT_SOCK_NONEMPTY;
	r->masked = have & hide;
	r->feats = have & ~hide;
	r->have_install = r->feats & EVST_FEAT_FIXED_FD_INSTALL;
	evst_debug("io_uring: ACCEPT_DONTWAIT %s, FIXED_FD_INSTALL %s, "
		   "CQE_F_SOCK_NONEMPTY %s",
		   r->feats & EVST_FEAT_ACCEPT_DONTWAIT ? "yes" :
		   r->masked & EVST_FEAT_ACCEPT_DONTWAIT ? "masked" : "no",
		   r->feats & EVST_FEAT_FIXED_FD_INSTALL ? "yes" :
		   r->masked & EVST_FEAT_FIXED_FD_INSTALL ? "masked" : "no",
		   r->feats & EVST_FEAT_SOCK_NONEMPTY ? "yes" :
		   r->masked & EVST_FEAT_SOCK_NONEMPTY ? "masked" : "no");
}

bool evst_ring_has(const struct evsteer_uring *r, enum evst_ring_feat f)
{
	return r->feats & f;
}

/* One feature's part of a reason: what is missing, what is done without. */
static const char *lack_part(unsigned int f, bool masked)
{
	switch (f) {
	case EVST_FEAT_ACCEPT_DONTWAIT:
		return masked ? "IORING_ACCEPT_DONTWAIT masked (EVSTEER_TEST_MASK): "
				"direct workers do not steal from stalled siblings" :
				"the kernel lacks IORING_ACCEPT_DONTWAIT (Linux "
				"6.10): direct workers do not steal from stalled "
				"siblings";
	case EVST_FEAT_FIXED_FD_INSTALL:
		return masked ? "IORING_OP_FIXED_FD_INSTALL masked "
				"(EVSTEER_TEST_MASK): evsteer_uring_fd_install() "
				"fails with EOPNOTSUPP" :
				"the kernel lacks IORING_OP_FIXED_FD_INSTALL (Linux "
				"6.8): evsteer_uring_fd_install() fails with "
				"EOPNOTSUPP";
	default:
		return masked ? "IORING_CQE_F_SOCK_NONEMPTY masked "
				"(EVSTEER_TEST_MASK): not used" :
				"the kernel lacks IORING_CQE_F_SOCK_NONEMPTY "
				"(Linux 6.10): not used";
	}
}

#define NFEAT 3
/* Every sentence made, kept for the life of the process (path reports
 * hand out static strings): by the missing and the masked bits. */
static char reasons[1u << NFEAT][1u << NFEAT][400];
static pthread_mutex_t reasons_lock = PTHREAD_MUTEX_INITIALIZER;

const char *evst_ring_lacks(const struct evsteer_uring *r, unsigned int feats)
{
	unsigned int lack = feats & ~r->feats & ((1u << NFEAT) - 1);
	if (!lack)
		return "";
	unsigned int masked = lack & r->masked;
	pthread_mutex_lock(&reasons_lock);
	char *buf = reasons[lack][masked];
	if (!*buf) {
		size_t n = (size_t)snprintf(buf, sizeof(reasons[0][0]), "io_uring:");
		const char *sep = " ";
		for (unsigned int f = 1; f < 1u << NFEAT; f <<= 1) {
			if (!(lack & f) || n >= sizeof(reasons[0][0]))
				continue;
			n += (size_t)snprintf(buf + n, sizeof(reasons[0][0]) - n,
					      "%s%s", sep, lack_part(f, masked & f));
			sep = "; ";
		}
	}
	pthread_mutex_unlock(&reasons_lock);
	return buf;
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
	/* before the eventfd: the probe's completions signal nobody */
	if (!err)
		ring_features(r);
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

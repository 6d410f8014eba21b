/* SPDX-License-Identifier: MIT */
/*
 * evsteer-probe-taskrun: why the io_uring fd path makes two epoll_wait calls
 * per wake-up, and why DEFER_TASKRUN is not the way out (yet).
 *
 * A loop thread sleeps in epoll_wait on the ring's eventfd, as a libevent
 * loop driving an evsteer ring does; accepts are armed on a listening
 * socket; a client makes N connections, one at a time. For each ring set-up
 * the probe counts how often epoll_wait came back with EINTR (the kernel's
 * task-work signal) against with the eventfd, and then asks, from another
 * thread, for what evsteer does from other threads (a synchronous cancel,
 * a file-table registration, a submission).
 *
 *   build/bench/evsteer-probe-taskrun [N]
 *
 * A probe of the kernel, not a test: it prints what it saw and exits 0
 * unless a set-up call fails.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

struct probe {
	struct io_uring ring;
	int lfd;
	int port;
	int n;
	int other_cancel, other_files, other_submit; /* results, -errno */
};

static void *client(void *arg)
{
	struct probe *p = arg;
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons((uint16_t)p->port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	for (int i = 0; i < p->n; i++) {
		usleep(2000); /* one connection per wake-up */
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			perror("client");
		if (c >= 0)
			close(c);
	}
	return NULL;
}

/* What evsteer's disable/free/attach do from a thread that is not the
 * loop's. */
static void *other_thread(void *arg)
{
	struct probe *p = arg;
	struct io_uring_sync_cancel_reg reg = {
		.addr = 12345, .timeout = {.tv_sec = 0, .tv_nsec = 1000000}};
	p->other_cancel = io_uring_register_sync_cancel(&p->ring, &reg);
	p->other_files = io_uring_register_files_sparse(&p->ring, 8);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&p->ring);
	io_uring_prep_nop(sqe);
	p->other_submit = io_uring_submit(&p->ring);
	return NULL;
}

static int run(const char *name, unsigned int flags, bool quiet, int n)
{
	struct probe p = {.n = n};
	struct io_uring_params params = {.flags = flags};
	int err = io_uring_queue_init_params(64, &p.ring, &params);
	if (err < 0) {
		printf("%-27s set-up refused: %s\n", name, strerror(-err));
		return 0;
	}
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0 || io_uring_register_eventfd(&p.ring, efd) < 0)
		return 1;
	/* SINGLE_ISSUER: the thread that enables the ring owns it */
	if ((flags & IORING_SETUP_R_DISABLED) &&
	    io_uring_register(p.ring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
			      NULL, 0) < 0)
		return 1;

	p.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	if (p.lfd < 0 || bind(p.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(p.lfd, 128) < 0 ||
	    getsockname(p.lfd, (struct sockaddr *)&sa, &sl) < 0)
		return 1;
	p.port = ntohs(sa.sin_port);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&p.ring);
	io_uring_prep_multishot_accept(sqe, p.lfd, NULL, NULL, 0);
	if (io_uring_submit(&p.ring) != 1)
		return 1;

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) < 0)
		return 1;
	pthread_t t;
	pthread_create(&t, NULL, client, &p);
	int got = 0, eintr = 0, woken = 0, empty = 0;
	while (got < n) {
		struct epoll_event out;
		int r = epoll_wait(ep, &out, 1, 5000);
		if (r < 0 && errno == EINTR) {
			eintr++;
			continue;
		}
		if (r <= 0) {
			printf("%-27s timed out after %d of %d\n", name, got, n);
			break;
		}
		woken++;
		/* DEFER_TASKRUN: the accepts run here, not on the way out of
		 * epoll_wait */
		if (quiet) /* as evsteer drains: no signal for our own CQEs */
			io_uring_cq_eventfd_toggle(&p.ring, false);
		if (flags & IORING_SETUP_DEFER_TASKRUN)
			io_uring_get_events(&p.ring);
		struct io_uring_cqe *cqe;
		int seen = 0;
		while (io_uring_peek_cqe(&p.ring, &cqe) == 0) {
			if (cqe->res >= 0) {
				close(cqe->res);
				got++;
			}
			seen++;
			io_uring_cqe_seen(&p.ring, cqe);
		}
		if (quiet)
			io_uring_cq_eventfd_toggle(&p.ring, true);
		if (!seen)
			empty++;
	}
	pthread_join(t, NULL);
	pthread_create(&t, NULL, other_thread, &p);
	pthread_join(t, NULL);
	printf("%-27s %d connections: epoll_wait EINTR %d, eventfd %d "
	       "(%d with nothing to reap); from another thread: sync cancel %s, "
	       "register files %s, submit %s\n",
	       name, got, eintr, woken, empty,
	       p.other_cancel == -ENOENT ? "ok" : strerror(-p.other_cancel),
	       p.other_files >= 0 ? "ok" : strerror(-p.other_files),
	       p.other_submit >= 0 ? "ok" : strerror(-p.other_submit));
	close(ep);
	close(p.lfd);
	io_uring_queue_exit(&p.ring);
	close(efd);
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 200;
	if (n < 1)
		n = 200;
	const unsigned int coop = IORING_SETUP_COOP_TASKRUN |
				  IORING_SETUP_TASKRUN_FLAG;
	const unsigned int defer = IORING_SETUP_SINGLE_ISSUER |
				   IORING_SETUP_DEFER_TASKRUN |
				   IORING_SETUP_R_DISABLED |
				   IORING_SETUP_TASKRUN_FLAG;
	int rc = run("COOP_TASKRUN (evsteer)", coop, true, n);
	rc |= run("DEFER_TASKRUN", defer, false, n);
	rc |= run("DEFER_TASKRUN, quiet drain", defer, true, n);
	return rc;
}

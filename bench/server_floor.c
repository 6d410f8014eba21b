/* SPDX-License-Identifier: MIT */
/*
 * The floors of evsteer-bench-server: bare io_uring loops, one ring per
 * worker on its own SO_REUSEPORT socket (the kernel's hash), no library.
 * They say what a mechanism costs on this kernel before any library is
 * put around it, so that a target can be told apart from what the kernel
 * allows (issue 23):
 *
 *   floor         multishot accept into fds; the loop sleeps in
 *                 io_uring_enter(), which runs the accepts' task work
 *                 without leaving the kernel; "ok" by write() + close()
 *                 (with --read-first: recv, then send and close linked,
 *                 through the ring)
 *   floor-epoll   the same ring asleep in epoll_wait() on its eventfd,
 *                 as any ring inside an event loop (libevent's) must be,
 *                 with evsteer's ring flags (COOP_TASKRUN): each wake-up
 *                 that carries task work returns EINTR first. The floor of
 *                 an io_uring accept engine inside libevent's loop.
 *   floor-direct  as floor, but accepting into the ring's fixed-file
 *                 table and doing every I/O through the ring (send and
 *                 close linked, recv on the slot): no descriptor per
 *                 connection, no write() or close(). The floor of
 *                 evsteer-direct.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <liburing.h>

#include "server.h"

enum floor_kind { FLOOR_WAIT, FLOOR_EPOLL, FLOOR_DIRECT };

/* fixed-file slots of a floor-direct ring: more than the connections a
 * worker holds at once in any scenario */
#define FLOOR_SLOTS 4096

struct fw {
	struct io_uring ring;
	int fd;
	enum floor_kind kind;
	int epfd; /* floor-epoll: the loop's epoll set, and the ring's eventfd */
	int efd;
};

/* user_data of the floor's requests: the accept, a completion nobody
 * needs, or a struct floor_req * (a recv) */
#define FLOOR_ACCEPT 1
#define FLOOR_IGNORE 0

struct floor_req {
	int fd; /* or the slot, floor-direct */
	char buf[BENCH_REQ_MAX];
};

/* An SQE; a full queue is submitted first (requests are prepared for a
 * whole batch of completions and submitted once). */
static struct io_uring_sqe *floor_sqe(struct fw *x)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&x->ring);
	if (!sqe) {
		io_uring_submit(&x->ring);
		sqe = io_uring_get_sqe(&x->ring);
	}
	return sqe;
}

static void floor_arm_accept(struct fw *x)
{
	struct io_uring_sqe *sqe = floor_sqe(x);
	if (x->kind == FLOOR_DIRECT)
		io_uring_prep_multishot_accept_direct(sqe, x->fd, NULL, NULL, 0);
	else
		io_uring_prep_multishot_accept(sqe, x->fd, NULL, NULL, 0);
	io_uring_sqe_set_data64(sqe, FLOOR_ACCEPT);
}

/* An SQE on a connection names its fd, or its slot in the fixed table. */
static void on_conn(struct fw *x, struct io_uring_sqe *sqe)
{
	if (x->kind == FLOOR_DIRECT)
		sqe->flags |= IOSQE_FIXED_FILE;
}

static void floor_close(struct fw *x, int fd)
{
	struct io_uring_sqe *sqe = floor_sqe(x);
	if (x->kind == FLOOR_DIRECT)
		io_uring_prep_close_direct(sqe, (unsigned int)fd);
	else
		io_uring_prep_close(sqe, fd);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, FLOOR_IGNORE);
}

/* The work, then "ok" and the close linked, through the ring. */
static void floor_answer(struct bench_worker *w, struct fw *x, int fd)
{
	bench_work(w);
	/* HARDLINK: the close runs however the send ends */
	struct io_uring_sqe *sqe = floor_sqe(x);
	io_uring_prep_send(sqe, fd, "ok", 2, MSG_NOSIGNAL);
	on_conn(x, sqe);
	sqe->flags |= IOSQE_IO_HARDLINK | IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, FLOOR_IGNORE);
	atomic_fetch_add_explicit(&w->accepted, 1, memory_order_relaxed);
	floor_close(x, fd);
}

/* read_first: the request first */
static void floor_recv(struct bench_worker *w, struct fw *x, int fd)
{
	struct floor_req *q = malloc(sizeof(*q));
	if (!q) {
		floor_close(x, fd);
		return;
	}
	q->fd = fd;
	atomic_fetch_add_explicit(&w->reading, 1, memory_order_relaxed);
	struct io_uring_sqe *sqe = floor_sqe(x);
	io_uring_prep_recv(sqe, fd, q->buf, sizeof(q->buf), 0);
	on_conn(x, sqe);
	io_uring_sqe_set_data(sqe, q);
}

static void floor_request(struct bench_worker *w, struct fw *x,
			  struct floor_req *q, int res)
{
	int fd = q->fd;
	free(q);
	atomic_fetch_sub_explicit(&w->reading, 1, memory_order_relaxed);
	if (res > 0)
		floor_answer(w, x, fd);
	else /* a client gone: no reply, not counted */
		floor_close(x, fd);
}

static void floor_accepted(struct bench_worker *w, struct fw *x, int fd)
{
	bench_take(w);
	if (w->cfg->read_first)
		floor_recv(w, x, fd);
	else if (x->kind == FLOOR_DIRECT)
		floor_answer(w, x, fd);
	else
		bench_reply(w, fd);
}

/* The floor --impl names (main() accepts these three only). */
static int floor_setup(struct bench_worker *w, int *port)
{
	struct fw *x = calloc(1, sizeof(*x));
	if (!x)
		return -1;
	const char *impl = w->cfg->impl;
	x->kind = !strcmp(impl, "floor-epoll")	? FLOOR_EPOLL :
		  !strcmp(impl, "floor-direct") ? FLOOR_DIRECT :
						  FLOOR_WAIT;
	x->epfd = x->efd = -1;
	x->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(x->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	setsockopt(x->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)*port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (x->fd < 0 || bind(x->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(x->fd, SOMAXCONN) < 0) {
		if (x->fd >= 0)
			close(x->fd);
		free(x);
		return -1;
	}
	socklen_t sl = sizeof(sin);
	getsockname(x->fd, (struct sockaddr *)&sin, &sl);
	*port = ntohs(sin.sin_port);
	w->impl = x;
	return 0;
}

/* In the worker's thread: the ring belongs to it. */
static int ring_init(struct fw *x)
{
	struct io_uring_params p = {0};
	if (x->kind == FLOOR_EPOLL)
		p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
	int err = io_uring_queue_init_params(256, &x->ring, &p);
	if (err < 0)
		return err;
	if (x->kind == FLOOR_DIRECT)
		err = io_uring_register_files_sparse(&x->ring, FLOOR_SLOTS);
	if (!err && x->kind == FLOOR_EPOLL) {
		/* edge-triggered on an eventfd never read, as evsteer's */
		struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
		x->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		x->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (x->efd < 0 || x->epfd < 0 ||
		    epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->efd, &ev) < 0)
			err = -errno;
		else
			err = io_uring_register_eventfd(&x->ring, x->efd);
	}
	if (err < 0)
		io_uring_queue_exit(&x->ring);
	return err;
}

/* Until a completion or timeout_ns: io_uring_enter(), or epoll_wait() on
 * the eventfd (floor-epoll). Whatever came is then in the CQ ring. */
static void floor_wait(struct fw *x, long timeout_ns)
{
	if (x->kind == FLOOR_EPOLL) {
		struct epoll_event ev[4];
		/* completions already there (a full batch last time) first */
		if (io_uring_cq_ready(&x->ring))
			return;
		epoll_wait(x->epfd, ev, 4, (int)((timeout_ns + 999999) / 1000000));
		return;
	}
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {0, timeout_ns};
	io_uring_wait_cqe_timeout(&x->ring, &cqe, &ts);
}

static void *floor_run(void *arg)
{
	struct bench_worker *w = arg;
	struct fw *x = w->impl;
	if (ring_init(x) < 0)
		return NULL;
	floor_arm_accept(x);
	io_uring_submit(&x->ring);
	/* the stalled worker spins like the others' timer callbacks do */
	bool stalls = w->cfg->stall_worker == w->id && w->cfg->stall_ms > 0 &&
		      w->cfg->stall_every_ms > 0;
	struct timespec next_stall;
	clock_gettime(CLOCK_MONOTONIC, &next_stall);
	while (!bench_stopping()) {
		long timeout_ns = 100 * 1000 * 1000;
		if (stalls) {
			struct timespec now;
			clock_gettime(CLOCK_MONOTONIC, &now);
			long long left =
				(next_stall.tv_sec - now.tv_sec) * 1000000000LL +
				(next_stall.tv_nsec - now.tv_nsec);
			if (left <= 0) {
				bench_stall(w->cfg);
				next_stall.tv_nsec +=
					(long)w->cfg->stall_every_ms * 1000000L;
				next_stall.tv_sec += next_stall.tv_nsec / 1000000000L;
				next_stall.tv_nsec %= 1000000000L;
				continue;
			}
			if (left < timeout_ns)
				timeout_ns = (long)left;
		}
		floor_wait(x, timeout_ns);
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&x->ring, head, cqe)
		{
			n++;
			uint64_t ud = io_uring_cqe_get_data64(cqe);
			if (ud == FLOOR_IGNORE)
				continue;
			if (ud != FLOOR_ACCEPT) {
				floor_request(w, x, (struct floor_req *)(uintptr_t)ud,
					      cqe->res);
				continue;
			}
			if (cqe->res >= 0)
				floor_accepted(w, x, cqe->res);
			if (!(cqe->flags & IORING_CQE_F_MORE))
				floor_arm_accept(x);
		}
		io_uring_cq_advance(&x->ring, n);
		/* (enters the kernel only with something to submit, or for
		 * the task work IORING_SQ_TASKRUN says is waiting) */
		io_uring_submit(&x->ring);
	}
	io_uring_queue_exit(&x->ring);
	if (x->epfd >= 0)
		close(x->epfd);
	if (x->efd >= 0)
		close(x->efd);
	return NULL;
}

static void floor_stop(struct bench_worker *w)
{
	(void)w; /* bench_stopping() is seen within 100 ms */
}

static void floor_drop(struct bench_worker *w)
{
	(void)w;
}

static void floor_describe(struct bench_worker *w, char *buf, size_t len)
{
	struct fw *x = w->impl;
	snprintf(buf, len,
		 "{\"steering\": \"kernel-hash\", \"engine\": \"%s\", "
		 "\"policy\": null}",
		 x->kind == FLOOR_EPOLL	 ? "io_uring in epoll (bare loop)" :
		 x->kind == FLOOR_DIRECT ? "io_uring-direct (bare loop)" :
					   "io_uring (bare loop)");
}

const struct bench_impl bench_floor = {
	.name = "floor",
	.setup = floor_setup,
	.run = floor_run,
	.stop = floor_stop,
	.drop = floor_drop,
	.describe = floor_describe,
};

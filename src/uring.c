/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "uring.h"

#define RING_ENTRIES 64
#define CQ_ENTRIES 4096
#define READY_BATCH 64

static __thread struct evst_uop *running_op;

struct evst_ring {
	struct io_uring ring;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* an op's busy count dropped */
	struct event_base *base;
	int efd;
	struct event *efd_ev;  /* in the base while long-lived requests fly */
	struct event *kick_ev; /* made active to run ready() in the loop */
	struct event *yield_ev; /* the same, after the loop's next poll */
	int inflight;
	bool collecting; /* run_loop_work() takes the ready list next */
	struct evst_uop *ready_head, **ready_tail;
	int users;             /* registry_lock */
	struct evst_ring *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evst_ring *rings;
/* A failed set-up is not retried: seccomp and sysctls do not loosen. */
static const char *probe_fail;
static int probe_errno;
static char probe_buf[160];

void evst_ring_lock(struct evst_ring *r)
{
	pthread_mutex_lock(&r->lock);
}

void evst_ring_unlock(struct evst_ring *r)
{
	pthread_mutex_unlock(&r->lock);
}

struct io_uring *evst_ring_uring(struct evst_ring *r)
{
	return &r->ring;
}

struct event_base *evst_ring_base(struct evst_ring *r)
{
	return r->base;
}

struct io_uring_sqe *evst_ring_sqe(struct evst_ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe) {
		io_uring_submit(&r->ring);
		sqe = io_uring_get_sqe(&r->ring);
	}
	return sqe;
}

int evst_ring_submit(struct evst_ring *r, int long_lived)
{
	int n = io_uring_submit(&r->ring);
	if (n < 0)
		return n;
	if (long_lived && r->inflight++ == 0)
		event_add(r->efd_ev, NULL);
	return 0;
}

void evst_ring_done(struct evst_ring *r)
{
	/* noblock: the loop thread may be waiting for this lock inside the
	 * event's callback (the same trap as libevent #1224) */
	if (--r->inflight == 0)
		event_del_noblock(r->efd_ev);
}

void evst_ring_mark_ready(struct evst_ring *r, struct evst_uop *op)
{
	if (op->queued)
		return;
	op->queued = true;
	op->next_ready = NULL;
	*r->ready_tail = op;
	r->ready_tail = &op->next_ready;
	if (r->collecting)
		return;
	if (running_op) {
		/* from inside a ready() (the accept cap): an active event
		 * would run in this same pass; a zero timer runs after the
		 * loop polled its other events */
		static const struct timeval zero = {0, 0};
		evtimer_add(r->yield_ev, &zero);
	} else {
		event_active(r->kick_ev, EV_READ, 0);
	}
}

void evst_ring_unready(struct evst_ring *r, struct evst_uop *op)
{
	if (!op->queued)
		return;
	struct evst_uop **pp = &r->ready_head;
	while (*pp && *pp != op)
		pp = &(*pp)->next_ready;
	if (*pp) {
		*pp = op->next_ready;
		if (r->ready_tail == &op->next_ready)
			r->ready_tail = pp;
	}
	op->queued = false;
}


void evst_ring_wait_idle(struct evst_ring *r, struct evst_uop *op)
{
	/* the loop thread freeing from inside op's own ready() must not
	 * wait for itself: its reference keeps the listener alive */
	while (op->busy > 0 && running_op != op)
		pthread_cond_wait(&r->idle, &r->lock);
}

void evst_ring_release(struct evst_ring *r, struct evst_uop *op)
{
	evst_ring_unready(r, op);
	if (op->busy > 0)
		op->dead = true;
	else
		op->release(op);
}

void evst_ring_reap(struct evst_ring *r, unsigned int wait_us)
{
	struct io_uring_cqe *cqes[64];

	if (wait_us) {
		struct __kernel_timespec ts = {.tv_sec = wait_us / 1000000,
					       .tv_nsec = (wait_us % 1000000) * 1000};
		struct io_uring_cqe *c;
		io_uring_wait_cqe_timeout(&r->ring, &c, &ts);
	}
	for (;;) {
		unsigned int n = io_uring_peek_batch_cqe(&r->ring, cqes, 64);
		if (!n) {
			/* completions the kernel held back on a full CQ */
			if (io_uring_cq_has_overflow(&r->ring) &&
			    io_uring_get_events(&r->ring) == 0 &&
			    io_uring_cq_ready(&r->ring))
				continue;
			return;
		}
		for (unsigned int i = 0; i < n; i++) {
			struct evst_uop *op =
				(struct evst_uop *)(uintptr_t)io_uring_cqe_get_data64(
					cqes[i]);
			if (op && op->complete(op, cqes[i]))
				evst_ring_mark_ready(r, op);
		}
		io_uring_cq_advance(&r->ring, n);
	}
}

static void ring_ref(struct evst_ring *r)
{
	pthread_mutex_lock(&registry_lock);
	r->users++;
	pthread_mutex_unlock(&registry_lock);
}

/* Loop thread: reap, then run ready() of the ops that want it. */
static void run_loop_work(struct evst_ring *r)
{
	struct evst_uop *batch[READY_BATCH];
	int n = 0;

	/* a ready() may free the last listener on this ring */
	ring_ref(r);

	evst_ring_lock(r);
	r->collecting = true;
	evst_ring_reap(r, 0);
	r->collecting = false;
	while (r->ready_head && n < READY_BATCH) {
		struct evst_uop *op = r->ready_head;
		r->ready_head = op->next_ready;
		if (!r->ready_head)
			r->ready_tail = &r->ready_head;
		op->queued = false;
		op->busy++;
		batch[n++] = op;
	}
	if (r->ready_head) {
		static const struct timeval zero = {0, 0};
		evtimer_add(r->yield_ev, &zero);
	}
	evst_ring_unlock(r);

	for (int i = 0; i < n; i++) {
		struct evst_uop *op = batch[i];
		running_op = op;
		op->ready(op);
		running_op = NULL;
		evst_ring_lock(r);
		bool release = --op->busy == 0 && op->dead;
		pthread_cond_broadcast(&r->idle);
		evst_ring_unlock(r);
		if (release)
			op->release(op);
	}
	evst_ring_put(r);
}

static void efd_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	uint64_t v;
	/* a counter: one read clears it */
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		evst_debug("ring eventfd read: %s", strerror(errno));
	run_loop_work(arg);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run_loop_work(arg);
}

static const char *explain(int err)
{
	switch (err) {
	case ENOSYS:
		return "io_uring: io_uring_setup() is not available (ENOSYS: seccomp or kernel)";
	case EPERM:
		return "io_uring: io_uring_setup() refused (EPERM: container seccomp profile or kernel.io_uring_disabled)";
	case EOPNOTSUPP:
		return "io_uring: the kernel lacks multishot accept (Linux 5.19+)";
	default:
		snprintf(probe_buf, sizeof(probe_buf), "io_uring: set-up failed: %s",
			 strerror(err));
		return probe_buf;
	}
}

static int ring_init(struct evst_ring *r)
{
	struct io_uring_params p = {
		/* No COOP/DEFER_TASKRUN: listeners are enabled and freed from
		 * threads other than the loop's, and with those flags their
		 * completions would wait for the submitting thread. */
		.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP |
			 IORING_SETUP_SUBMIT_ALL,
		.cq_entries = CQ_ENTRIES,
	};
	int err = io_uring_queue_init_params(RING_ENTRIES, &r->ring, &p);
	if (err < 0)
		return err;
	struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
	/* IORING_OP_SOCKET came with multishot accept (5.19) */
	if (!probe || !io_uring_opcode_supported(probe, IORING_OP_ACCEPT) ||
	    !io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL) ||
	    !io_uring_opcode_supported(probe, IORING_OP_SOCKET))
		err = -EOPNOTSUPP;
	if (probe)
		io_uring_free_probe(probe);
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

struct evst_ring *evst_ring_get(struct event_base *base, const char **why)
{
	pthread_mutex_lock(&registry_lock);
	struct evst_ring *r;
	for (r = rings; r; r = r->next)
		if (r->base == base)
			break;
	if (r) {
		r->users++;
		pthread_mutex_unlock(&registry_lock);
		return r;
	}
	if (probe_fail) {
		*why = probe_fail;
		errno = probe_errno;
		pthread_mutex_unlock(&registry_lock);
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	int err = r ? ring_init(r) : -ENOMEM;
	if (err < 0) {
		free(r);
		if (err == -ENOSYS || err == -EPERM || err == -EOPNOTSUPP) {
			probe_fail = explain(-err);
			probe_errno = -err;
			evst_info("%s; accepting with the event engine", probe_fail);
		}
		*why = explain(-err);
		pthread_mutex_unlock(&registry_lock);
		errno = -err;
		return NULL;
	}
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->idle, NULL);
	r->base = base;
	r->ready_tail = &r->ready_head;
	r->efd_ev = event_new(base, r->efd, EV_READ | EV_PERSIST, efd_cb, r);
	r->kick_ev = event_new(base, -1, 0, kick_cb, r);
	r->yield_ev = evtimer_new(base, kick_cb, r);
	r->users = 1;
	r->next = rings;
	rings = r;
	pthread_mutex_unlock(&registry_lock);
	return r;
}

void evst_ring_put(struct evst_ring *r)
{
	pthread_mutex_lock(&registry_lock);
	if (--r->users > 0) {
		pthread_mutex_unlock(&registry_lock);
		return;
	}
	struct evst_ring **pp = &rings;
	while (*pp != r)
		pp = &(*pp)->next;
	*pp = r->next;
	pthread_mutex_unlock(&registry_lock);

	/* no user left: nothing is in flight (their quiesce saw to it) */
	event_free(r->efd_ev);
	event_free(r->kick_ev);
	event_free(r->yield_ev);
	io_uring_queue_exit(&r->ring);
	close(r->efd);
	pthread_cond_destroy(&r->idle);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

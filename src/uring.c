/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "reasons.h"
#include "uring.h"

/*
 * How a ring is driven (the rules the engines rely on):
 *
 * Wake-ups. The loop thread runs run_loop_work() when the ring's eventfd
 * fires, when an op was marked ready (kick_ev) or after a yield (yield_ev).
 * It drains until there is nothing left, as libevent's accept loop retries
 * until EAGAIN: reap the CQ, run ready(), flush, reap again. While it drains
 * the eventfd is switched off (IORING_CQ_EVENTFD_DISABLED), so completions
 * posted meanwhile (task work runs on the exit of the callbacks' own system
 * calls under COOP_TASKRUN) are picked up by the next round instead of
 * waking the loop once more; it is switched on again, and the CQ looked at
 * once more, before returning to the loop.
 *
 * Submission. SQEs queued by the loop thread inside run_loop_work() (re-arms,
 * direct sends and closes from callbacks) are not submitted one by one: they
 * are staged in the ring's own array, and the end of each round copies them
 * into the SQ and submits them all with one io_uring_enter(), which also
 * runs pending task work (IORING_SQ_TASKRUN) so the next round sees its
 * completions. Staged, not left in the SQ: another thread's submission
 * (a cancel from disable or free) would take whatever the SQ holds with it,
 * and the kernel ties a request to the task that submitted it (its
 * completion work runs there, interrupting that thread's system calls with
 * EINTR, and it is cancelled when that thread exits). A cancel of a request
 * still staged just drops it. SQEs queued anywhere else (another thread's
 * cancel, a send from a timer callback, set-up) are submitted at once, as
 * the caller may wait for their completion.
 *
 * Fairness. Each op decides how much it does per wake-up (the accept cap,
 * keyed by evst_ring_wake_gen()); what must wait goes to the "later" list,
 * run after the loop has polled its other events. The number of rounds per
 * wake-up is bounded too.
 */

/* An enum value in newer headers (so #ifdef cannot see it); liburing 2.3
 * has neither the opcode nor a helper. Linux 6.8+. */
#define EVST_OP_FIXED_FD_INSTALL 54
#define EVST_FIXED_FD_NO_CLOEXEC (1U << 0)

#define RING_ENTRIES 256
#define STAGE_MAX RING_ENTRIES /* a flush fits the (empty) SQ in one go */
#define CQ_ENTRIES 4096
/* user_data of a staged SQE that was cancelled before submission */
#define UDATA_DROPPED UINT64_MAX
#define READY_BATCH 64
#define MAX_ROUNDS 32

static __thread struct evst_uop *running_op;

struct evsteer_uring {
	struct io_uring ring;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* an op's busy count dropped */
	struct event_base *base;
	int efd;
	struct event *efd_ev;  /* in the base while long-lived requests fly */
	struct event *kick_ev; /* made active to run ready() in the loop */
	struct event *yield_ev; /* the same, after the loop's next poll */
	int inflight;
	int wanted;     /* engines delivering (enabled) on this ring */
	bool efd_added; /* efd_ev is in the base */
	/* the loop thread is inside run_loop_work(): marking ready needs no
	 * kick, and its SQEs wait for the end of the round */
	bool in_work;
	pthread_t owner;   /* the loop thread, once it has run us */
	bool owner_known;
	unsigned long wake_gen;
	struct evst_uop *ready_head, **ready_tail;
	struct evst_uop *later_head, **later_tail;
	unsigned int nstaged;
	struct io_uring_sqe stage[STAGE_MAX];
	unsigned int table_size; /* registered fixed-file table, 0: none */
	unsigned int slots;      /* direct slots open */
	bool have_install;       /* IORING_OP_FIXED_FD_INSTALL */
	bool efd_quiet;          /* IORING_CQ_EVENTFD_DISABLED is set */
	int init_err;
	unsigned long overflows; /* times the CQ was found overflowed */
	atomic_int users; /* 0: being destroyed, never revived */
	struct evsteer_uring *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evsteer_uring *rings;
/* A failed set-up is not retried: seccomp and sysctls do not loosen. */
static const char *probe_fail;
static int probe_errno;
static char probe_buf[160];

void evst_ring_lock(struct evsteer_uring *r)
{
	pthread_mutex_lock(&r->lock);
}

void evst_ring_unlock(struct evsteer_uring *r)
{
	pthread_mutex_unlock(&r->lock);
}

struct io_uring *evst_ring_uring(struct evsteer_uring *r)
{
	return &r->ring;
}

struct event_base *evst_ring_base(struct evsteer_uring *r)
{
	return r->base;
}

/* Ring lock held: the loop thread, inside run_loop_work(). */
static bool deferring(const struct evsteer_uring *r)
{
	return r->in_work && pthread_equal(r->owner, pthread_self());
}

/* Ring lock held, loop thread: move the staged SQEs into the SQ. */
static void unstage_all(struct evsteer_uring *r)
{
	for (unsigned int i = 0; i < r->nstaged; i++) {
		if (r->stage[i].user_data == UDATA_DROPPED)
			continue;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
		if (!sqe) { /* not while other threads submit at once */
			io_uring_submit(&r->ring);
			sqe = io_uring_get_sqe(&r->ring);
		}
		*sqe = r->stage[i];
	}
	r->nstaged = 0;
}

/* Ring lock held, loop thread: no room for n more staged SQEs: submit
 * what is staged now rather than wait for the end of the round. */
static void stage_make_room(struct evsteer_uring *r, unsigned int n)
{
	if (r->nstaged + n > STAGE_MAX) {
		unstage_all(r);
		io_uring_submit(&r->ring);
	}
}

struct io_uring_sqe *evst_ring_sqe_now(struct evsteer_uring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe) {
		io_uring_submit(&r->ring);
		sqe = io_uring_get_sqe(&r->ring);
	}
	return sqe;
}

struct io_uring_sqe *evst_ring_sqe(struct evsteer_uring *r)
{
	if (!deferring(r))
		return evst_ring_sqe_now(r);
	stage_make_room(r, 1);
	struct io_uring_sqe *sqe = &r->stage[r->nstaged++];
	memset(sqe, 0, sizeof(*sqe));
	return sqe;
}

int evst_ring_submit_now(struct evsteer_uring *r)
{
	int n = io_uring_submit(&r->ring);
	return n < 0 ? n : 0;
}

void evst_ring_reserve(struct evsteer_uring *r, unsigned int n)
{
	if (deferring(r)) {
		stage_make_room(r, n);
	} else if (io_uring_sq_space_left(&r->ring) < n) {
		io_uring_submit(&r->ring);
	}
}

static int cancel_sqe(struct evsteer_uring *r, uint64_t user_data, int flags)
{
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_cancel64(sqe, user_data, flags);
	io_uring_sqe_set_data64(sqe, EVST_UDATA_IGNORE);
	return evst_ring_submit(r, 0);
}

static int cancel_req(struct evsteer_uring *r, uint64_t user_data, int flags)
{
	if (!r->owner_known || pthread_equal(r->owner, pthread_self()))
		return cancel_sqe(r, user_data, flags);
	/*
	 * Another thread: no SQE. A thread that submits to a ring is tied to
	 * it by the kernel, which interrupts that thread's system calls
	 * (EINTR) with work for the ring, down to its teardown; a
	 * synchronous cancel (io_uring_register) does not tie it. The
	 * request's completion still comes through the loop thread.
	 */
	struct io_uring_sync_cancel_reg reg = {
		.addr = user_data,
		.fd = -1,
		.flags = (__u32)flags,
		.timeout = {.tv_sec = -1, .tv_nsec = -1},
	};
	int err = io_uring_register_sync_cancel(&r->ring, &reg);
	if (err == -EINVAL || err == -EOPNOTSUPP) /* before Linux 6.0 */
		return cancel_sqe(r, user_data, flags);
	/* -ENOENT: it completed meanwhile; its CQE is on its way */
	return err == -ENOENT || err == -EALREADY ? 0 : err;
}

/* Ring lock held, any thread: drop a staged, not yet submitted, unlinked
 * request; true if it was there (it will never complete). */
static bool unstage_one(struct evsteer_uring *r, uint64_t user_data)
{
	for (unsigned int i = 0; i < r->nstaged; i++) {
		if (r->stage[i].user_data == user_data) {
			/* a dropped link head would still run as a NOP, so
			 * only unlinked requests (accepts) come here */
			r->stage[i].user_data = UDATA_DROPPED;
			return true;
		}
	}
	return false;
}

int evst_ring_cancel(struct evsteer_uring *r, uint64_t user_data)
{
	if (unstage_one(r, user_data))
		return 1;
	return cancel_req(r, user_data, 0);
}

/*
 * Ring lock held. The ring's eventfd is an event in the base while an
 * engine on the ring delivers (an enabled listener, as libevent's own
 * listener event is) or a request is in flight; then a write to the
 * eventfd is how any other thread wakes the loop, thread-aware base or
 * not. Taken out when neither holds, so the ring never keeps the loop
 * running by itself. noblock: the loop thread may be waiting for the ring
 * lock inside the event's callback (the same trap as libevent #1224).
 */
static void efd_sync(struct evsteer_uring *r)
{
	bool in = r->inflight > 0 || r->wanted > 0;
	if (in == r->efd_added)
		return;
	if (in)
		event_add(r->efd_ev, NULL);
	else
		event_del_noblock(r->efd_ev);
	r->efd_added = in;
}

int evst_ring_submit(struct evsteer_uring *r, int long_lived)
{
	if (!deferring(r)) {
		int n = io_uring_submit(&r->ring);
		if (n < 0)
			return n;
	}
	if (long_lived) {
		r->inflight++;
		efd_sync(r);
	}
	return 0;
}

unsigned long evst_ring_wake_gen(const struct evsteer_uring *r)
{
	return r->wake_gen;
}

static void list_push(struct evst_uop ***tail, struct evst_uop *op)
{
	op->next_ready = NULL;
	**tail = op;
	*tail = &op->next_ready;
}

/* Remove op from the list at head/tail; true if it was there. */
static bool list_remove(struct evst_uop **head, struct evst_uop ***tail,
			struct evst_uop *op)
{
	struct evst_uop **pp = head;
	while (*pp && *pp != op)
		pp = &(*pp)->next_ready;
	if (!*pp)
		return false;
	*pp = op->next_ready;
	if (*tail == &op->next_ready)
		*tail = pp;
	return true;
}

void evst_ring_done(struct evsteer_uring *r)
{
	r->inflight--;
	efd_sync(r);
}

void evst_ring_want(struct evsteer_uring *r, bool on)
{
	r->wanted += on ? 1 : -1;
	efd_sync(r);
}

void evst_ring_mark_ready(struct evsteer_uring *r, struct evst_uop *op)
{
	if (op->queued || op->detached)
		return;
	op->queued = true;
	list_push(&r->ready_tail, op);
	/* the draining loop thread looks at the list before it stops */
	if (r->in_work)
		return;
	/*
	 * From another thread (a sibling handing over connections, a reap
	 * during a steal or a free): a write to the ring's eventfd, which is
	 * in the base while any engine here delivers, wakes the loop whether
	 * or not the base was made thread-aware. Only the loop thread (or a
	 * loop not started yet) uses event_active(). Once the write is done
	 * the event stays until the loop has run: an engine cannot stop
	 * delivering (disable) from another thread without the loop seeing
	 * the op first, and a completion that empties `inflight` leaves
	 * `wanted` (issue 18: a wake-up lost when the last accept in flight
	 * was reaped by a thief after the write).
	 */
	if (r->owner_known && !pthread_equal(r->owner, pthread_self()) &&
	    r->efd_added && eventfd_write(r->efd, 1) == 0)
		return;
	event_active(r->kick_ev, EV_READ, 0);
}

void evst_ring_mark_later(struct evsteer_uring *r, struct evst_uop *op)
{
	if (op->queued || op->detached)
		return;
	op->queued = true;
	list_push(&r->later_tail, op);
	/* an active event would run in this same pass; a zero timer runs
	 * after the loop has polled its other events */
	static const struct timeval zero = {0, 0};
	evtimer_add(r->yield_ev, &zero);
}

void evst_ring_unready(struct evsteer_uring *r, struct evst_uop *op)
{
	if (!op->queued)
		return;
	if (!list_remove(&r->ready_head, &r->ready_tail, op))
		list_remove(&r->later_head, &r->later_tail, op);
	op->queued = false;
}


void evst_ring_wait_idle(struct evsteer_uring *r, struct evst_uop *op)
{
	/* the loop thread freeing from inside op's own ready() must not
	 * wait for itself: its reference keeps the listener alive */
	while (op->busy > 0 && running_op != op)
		pthread_cond_wait(&r->idle, &r->lock);
	/* from here to its destroy, the loop thread must not pick it up */
	op->detached = true;
	evst_ring_unready(r, op);
}

void evst_ring_release(struct evsteer_uring *r, struct evst_uop *op)
{
	evst_ring_unready(r, op);
	if (op->busy > 0)
		op->dead = true;
	else
		op->release(op);
}

void evst_ring_reap(struct evsteer_uring *r, unsigned int wait_us)
{
	struct io_uring_cqe *cqes[64];

	if (wait_us) {
		/* what the loop thread deferred (a cancel from inside a
		 * callback) must be in the kernel before waiting on it */
		if (deferring(r))
			unstage_all(r);
		if (io_uring_sq_ready(&r->ring))
			io_uring_submit(&r->ring);
		struct __kernel_timespec ts = {.tv_sec = wait_us / 1000000,
					       .tv_nsec = (wait_us % 1000000) * 1000};
		struct io_uring_cqe *c;
		io_uring_wait_cqe_timeout(&r->ring, &c, &ts);
	}
	for (;;) {
		unsigned int n = io_uring_peek_batch_cqe(&r->ring, cqes, 64);
		if (!n) {
			/* completions the kernel held back on a full CQ */
			if (io_uring_cq_has_overflow(&r->ring)) {
				r->overflows++;
				evst_debug("ring: the CQ overflowed; flushing the "
					   "kernel's backlog");
				if (io_uring_get_events(&r->ring) == 0 &&
				    io_uring_cq_ready(&r->ring))
					continue;
			}
			return;
		}
		for (unsigned int i = 0; i < n; i++) {
			struct evst_uop *op =
				(struct evst_uop *)(uintptr_t)io_uring_cqe_get_data64(
					cqes[i]);
			struct evst_uop *wake = op ? op->complete(op, cqes[i]) : NULL;
			if (wake)
				evst_ring_mark_ready(r, wake);
		}
		io_uring_cq_advance(&r->ring, n);
	}
}

/* A reference unless the ring is already being destroyed. Lock-free: the
 * loop thread takes one on every wake-up. */
static bool ring_try_ref(struct evsteer_uring *r)
{
	int u = atomic_load(&r->users);
	while (u > 0)
		if (atomic_compare_exchange_weak(&r->users, &u, u + 1))
			return true;
	return false;
}

static bool taskrun_pending(const struct evsteer_uring *r)
{
	return IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_TASKRUN;
}

/*
 * Ring lock held, loop thread. Submit what the round queued and run task
 * work the kernel is holding for us, in one system call; nothing when
 * there is neither.
 */
static void flush(struct evsteer_uring *r)
{
	unstage_all(r);
	if (!io_uring_sq_ready(&r->ring) && !taskrun_pending(r))
		return;
	int n = io_uring_submit_and_get_events(&r->ring);
	if (n < 0 && n != -EINTR && n != -EAGAIN && n != -EBUSY)
		evst_warn("ring: io_uring_enter: %s", strerror(-n));
}

bool evst_ring_quiet(struct evsteer_uring *r)
{
	return !io_uring_cq_ready(&r->ring) && !taskrun_pending(r) &&
	       !io_uring_cq_has_overflow(&r->ring);
}

int evst_ring_eventfd(const struct evsteer_uring *r)
{
	return r->efd;
}

/* Ring lock held: no signal from the kernel while we drain anyway. */
static void eventfd_quiet(struct evsteer_uring *r, bool quiet)
{
	if (r->efd_quiet != quiet && io_uring_cq_eventfd_toggle(&r->ring, !quiet) == 0)
		r->efd_quiet = quiet;
}

/* Loop thread: drain (see the rules at the top). */
static void run_loop_work(struct evsteer_uring *r)
{
	struct evst_uop *batch[READY_BATCH];

	/* a ready() may free the last listener on this ring; and if another
	 * thread is destroying it, that one waits for this callback to end */
	if (!ring_try_ref(r))
		return;

	evst_ring_lock(r);
	r->in_work = true;
	r->owner = pthread_self();
	r->owner_known = true;
	r->wake_gen++;
	/* what yielded last time runs first */
	if (r->later_head) {
		*r->ready_tail = r->later_head;
		r->ready_tail = r->later_tail;
		r->later_head = NULL;
		r->later_tail = &r->later_head;
	}
	eventfd_quiet(r, true);
	for (int round = 0;; round++) {
		bool tw_before = taskrun_pending(r);
		flush(r);
		evst_ring_reap(r, 0);
		if (!r->ready_head) {
			/* Nothing to do: let the kernel signal again, then
			 * look once more for what came in while it could
			 * not (the signal for it was suppressed). Task work
			 * still flagged right after the flush ran ours is
			 * another task's (one that armed requests and
			 * exited, say): no reason to go round again, and the
			 * rounds are bounded whatever the flag says. */
			eventfd_quiet(r, false);
			bool tw = taskrun_pending(r) && !tw_before;
			if ((!io_uring_cq_ready(&r->ring) && !tw &&
			     !io_uring_sq_ready(&r->ring) && !r->nstaged) ||
			    round >= MAX_ROUNDS)
				break;
			eventfd_quiet(r, true);
			continue;
		}
		if (round == MAX_ROUNDS) {
			/* enough for one wake-up: the rest after the loop
			 * has looked at its other events */
			while (r->ready_head) {
				struct evst_uop *op = r->ready_head;
				r->ready_head = op->next_ready;
				op->queued = false;
				evst_ring_mark_later(r, op);
			}
			r->ready_tail = &r->ready_head;
			eventfd_quiet(r, false);
			break;
		}
		int n = 0;
		while (r->ready_head && n < READY_BATCH) {
			struct evst_uop *op = r->ready_head;
			r->ready_head = op->next_ready;
			if (!r->ready_head)
				r->ready_tail = &r->ready_head;
			op->queued = false;
			op->busy++;
			batch[n++] = op;
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
		evst_ring_lock(r);
	}
	r->in_work = false;
	evst_ring_unlock(r);
	evst_ring_put(r);
}

static void efd_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	/* Edge-triggered: every signal from the ring is an edge, so the
	 * counter need not be read (one system call per wake-up saved); it
	 * saturates rather than blocks the kernel. */
	run_loop_work(arg);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run_loop_work(arg);
}

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
	int err = io_uring_queue_init_params(RING_ENTRIES, &r->ring, &p);
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

struct evsteer_uring *evst_ring_get(struct event_base *base, const char **why)
{
	pthread_mutex_lock(&registry_lock);
	struct evsteer_uring *r;
	for (r = rings; r; r = r->next)
		if (r->base == base && ring_try_ref(r))
			break;
	if (r) {
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
	int err = r ? ring_init_detached(r) : -ENOMEM;
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
	r->later_tail = &r->later_head;
	r->efd_ev = event_new(base, r->efd, EV_READ | EV_PERSIST | EV_ET, efd_cb, r);
	r->kick_ev = event_new(base, -1, 0, kick_cb, r);
	r->yield_ev = evtimer_new(base, kick_cb, r);
	atomic_init(&r->users, 1);
	r->next = rings;
	rings = r;
	pthread_mutex_unlock(&registry_lock);
	return r;
}

void evst_ring_put(struct evsteer_uring *r)
{
	if (atomic_fetch_sub(&r->users, 1) != 1)
		return;
	pthread_mutex_lock(&registry_lock);
	struct evsteer_uring **pp = &rings;
	while (*pp != r)
		pp = &(*pp)->next;
	*pp = r->next;
	pthread_mutex_unlock(&registry_lock);

	/*
	 * No listener is left. Direct I/O may still be in flight: cancel it
	 * and reap, then release every request object without its callback
	 * (documented: outstanding direct I/O ends with the last listener).
	 */
	evst_ring_lock(r);
	if (r->inflight) {
		cancel_req(r, 0, IORING_ASYNC_CANCEL_ANY);
		for (int i = 0; r->inflight > 0 && i < 1000; i++)
			evst_ring_reap(r, 1000);
	}
	r->in_work = true; /* no more kicks */
	while (r->ready_head || r->later_head) {
		struct evst_uop *op = r->ready_head ? r->ready_head : r->later_head;
		evst_ring_unready(r, op);
		op->release(op);
	}
	evst_ring_unlock(r);
	event_free(r->efd_ev);
	event_free(r->kick_ev);
	event_free(r->yield_ev);
	io_uring_queue_exit(&r->ring);
	close(r->efd);
	pthread_cond_destroy(&r->idle);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

int evst_ring_direct_table(struct evsteer_uring *r, unsigned int size)
{
	if (r->table_size)
		return 0;
	/* the kernel refuses a table larger than RLIMIT_NOFILE (EMFILE) */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < size) {
		evst_info("direct table: %u slots asked, RLIMIT_NOFILE allows %llu",
			  size, (unsigned long long)rl.rlim_cur);
		size = (unsigned int)rl.rlim_cur;
	}
	int err = io_uring_register_files_sparse(&r->ring, size);
	if (err < 0)
		return err;
	r->table_size = size;
	return 0;
}

void evst_ring_slot_opened(struct evsteer_uring *r)
{
	r->slots++;
}

void evst_ring_close_slot(struct evsteer_uring *r, int slot)
{
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe)
		return;
	io_uring_prep_close_direct(sqe, (unsigned int)slot);
	io_uring_sqe_set_data64(sqe, EVST_UDATA_IGNORE);
	if (evst_ring_submit(r, 0) == 0 && r->slots)
		r->slots--;
}

/* A request whose completion someone waits for; if they stop waiting,
 * the completion frees it. */
struct wait_op {
	struct evst_uop op;
	int res;
	bool done, orphan;
};

static struct evst_uop *wait_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct wait_op *w = (struct wait_op *)op;
	if (w->orphan) {
		free(w);
		return NULL;
	}
	w->res = cqe->res;
	w->done = true;
	return NULL;
}

int evst_ring_send_slot(struct evsteer_uring *from, int slot,
			struct evsteer_uring *to, uint64_t to_op)
{
	struct wait_op *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->op.complete = wait_complete;
	evst_ring_lock(from);
	struct io_uring_sqe *sqe = evst_ring_sqe(from);
	if (!sqe) {
		evst_ring_unlock(from);
		free(w);
		return -EBUSY;
	}
	/* by hand: liburing 2.3 has no helper for IORING_MSG_SEND_FD */
	io_uring_prep_rw(IORING_OP_MSG_RING, sqe, to->ring.ring_fd,
			 (void *)(uintptr_t)IORING_MSG_SEND_FD, 0, to_op);
	sqe->addr3 = (uint64_t)slot;
	sqe->file_index = IORING_FILE_INDEX_ALLOC;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&w->op);
	/* submitted here and waited for: the sender is going away. It
	 * completes inside the submission unless the target ring is busy. */
	if (deferring(from))
		unstage_all(from);
	int err = io_uring_submit(&from->ring);
	for (int i = 0; err >= 0 && !w->done && i < 1000; i++)
		evst_ring_reap(from, 1000);
	if (err < 0) {
		free(w);
	} else if (!w->done) {
		/* gone asynchronous and not back in a second: the caller
		 * closes the slot here; if it lands there after all, it is
		 * that ring's (a different table) */
		w->orphan = true;
		err = -ETIMEDOUT;
	} else {
		err = w->res < 0 ? w->res : 0;
		free(w);
	}
	if (!err)
		evst_ring_close_slot(from, slot);
	evst_ring_unlock(from);
	return err;
}

unsigned int evsteer_uring_slots_in_use(const struct evsteer_uring *r)
{
	return r ? __atomic_load_n(&r->slots, __ATOMIC_RELAXED) : 0;
}

/* ---- the direct I/O API: one small request object per operation */

enum io_kind { IO_SEND, IO_RECV, IO_CLOSE, IO_INSTALL, IO_SEND_CLOSE };

struct io_op {
	struct evst_uop op;
	struct evsteer_uring *r;
	evsteer_io_cb cb;
	void *arg;
	int slot, res;
	enum io_kind kind;
};

static struct evst_uop *io_complete(struct evst_uop *op,
				    const struct io_uring_cqe *cqe)
{
	struct io_op *io = (struct io_op *)op;
	io->res = cqe->res;
	evst_ring_done(io->r);
	if (io->kind == IO_CLOSE && cqe->res == 0 && io->r->slots)
		io->r->slots--;
	return op;
}

static void io_ready(struct evst_uop *op)
{
	struct io_op *io = (struct io_op *)op;
	if (io->cb)
		io->cb(io->r, io->slot, io->res, io->arg);
	/* freed by run_loop_work() once this returns */
	evst_ring_lock(io->r);
	io->op.dead = true;
	evst_ring_unlock(io->r);
}

static void io_release(struct evst_uop *op)
{
	free(op);
}

static int io_submit(struct evsteer_uring *r, enum io_kind kind, int slot,
		     void *buf, size_t len, int flags, evsteer_io_cb cb,
		     void *arg)
{
	if (!r || slot < 0 || (r->table_size && (unsigned int)slot >= r->table_size) ||
	    len > INT32_MAX)
		return -(errno = EINVAL);
	if (kind == IO_INSTALL && !r->have_install)
		return -(errno = EOPNOTSUPP);
	/* a send-and-close without a callback has nothing to call back:
	 * no request object, and no completion unless it fails */
	struct io_op *io = NULL;
	if (cb || kind != IO_SEND_CLOSE) {
		io = calloc(1, sizeof(*io));
		if (!io)
			return -(errno = ENOMEM);
		*io = (struct io_op){
			.op = {.complete = io_complete, .ready = io_ready,
			       .release = io_release},
			.r = r, .cb = cb, .arg = arg, .slot = slot, .kind = kind};
	}

	evst_ring_lock(r);
	/* a linked pair must not be split by a submission in between */
	if (kind == IO_SEND_CLOSE)
		evst_ring_reserve(r, 2);
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe) {
		evst_ring_unlock(r);
		free(io);
		return -(errno = EBUSY);
	}
	switch (kind) {
	case IO_SEND_CLOSE: {
		/* HARDLINK: the close runs even when the send fails or is
		 * short; the caller gets the send's result */
		io_uring_prep_send(sqe, slot, buf, len, MSG_NOSIGNAL);
		sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK |
			      (io ? 0 : IOSQE_CQE_SKIP_SUCCESS);
		io_uring_sqe_set_data64(sqe, io ? (uint64_t)(uintptr_t)&io->op :
						  EVST_UDATA_IGNORE);
		struct io_uring_sqe *csqe = evst_ring_sqe(r);
		io_uring_prep_close_direct(csqe, (unsigned int)slot);
		csqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io_uring_sqe_set_data64(csqe, EVST_UDATA_IGNORE);
		/* the slot is closed by the chain whatever the send did */
		if (r->slots)
			r->slots--;
		int err = evst_ring_submit(r, io != NULL);
		evst_ring_unlock(r);
		if (err < 0) {
			free(io);
			return -(errno = -err);
		}
		return 0;
	}
	case IO_SEND:
		io_uring_prep_send(sqe, slot, buf, len, MSG_NOSIGNAL);
		sqe->flags |= IOSQE_FIXED_FILE;
		break;
	case IO_RECV:
		io_uring_prep_recv(sqe, slot, buf, len, 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		break;
	case IO_CLOSE:
		io_uring_prep_close_direct(sqe, (unsigned int)slot);
		break;
	case IO_INSTALL:
		/* by hand: IORING_OP_FIXED_FD_INSTALL on the fixed file */
		io_uring_prep_rw(EVST_OP_FIXED_FD_INSTALL, sqe, slot, NULL, 0, 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		sqe->rw_flags = flags ? 0 : EVST_FIXED_FD_NO_CLOEXEC;
		break;
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&io->op);
	/* counted as in flight: the ring's event must stay in the base
	 * until the completion comes back */
	int err = evst_ring_submit(r, 1);
	evst_ring_unlock(r);
	if (err < 0) {
		free(io);
		return -(errno = -err);
	}
	return 0;
}

int evsteer_uring_send(struct evsteer_uring *r, int slot, const void *buf,
		       size_t len, evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_SEND, slot, (void *)buf, len, 0, cb, arg);
}

int evsteer_uring_send_and_close(struct evsteer_uring *r, int slot,
				 const void *buf, size_t len, evsteer_io_cb cb,
				 void *arg)
{
	return io_submit(r, IO_SEND_CLOSE, slot, (void *)buf, len, 0, cb, arg);
}

int evsteer_uring_recv(struct evsteer_uring *r, int slot, void *buf, size_t len,
		       evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_RECV, slot, buf, len, 0, cb, arg);
}

int evsteer_uring_close(struct evsteer_uring *r, int slot, evsteer_io_cb cb,
			void *arg)
{
	return io_submit(r, IO_CLOSE, slot, NULL, 0, 0, cb, arg);
}

int evsteer_uring_fd_install(struct evsteer_uring *r, int slot, int cloexec,
			     evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_INSTALL, slot, NULL, 0, cloexec, cb, arg);
}

/* SPDX-License-Identifier: MIT */
/*
 * One ring per event_base, driven by the base: found or made for a base
 * (the registry; making its io_uring is uring/setup.c), kept alive by its
 * users, woken by its events in the base, drained by the loop thread in
 * rounds, torn down with its last user. The rules these follow are at the
 * top of uring/ring.c, which moves the SQEs and completions.
 */
#include <errno.h>
#include <stdlib.h>

#include <event2/event.h>

#include "common/process.h"
#include "uring/ring_impl.h"

#define READY_BATCH 64
#define MAX_ROUNDS 32

/* initial-exec: read on every wake-up, and a call to __tls_get_addr() each
 * time otherwise; one pointer of the static TLS that glibc keeps spare for
 * libraries loaded later */
static __thread struct evst_uop *running_op
	__attribute__((tls_model("initial-exec")));

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evsteer_uring *rings;

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

unsigned long evst_ring_wake_gen(const struct evsteer_uring *r)
{
	return r->wake_gen;
}


void evst_ring_wait_idle(struct evsteer_uring *r, struct evst_uop *op)
{
	/* the loop thread freeing from inside op's own ready() must not
	 * wait for itself: its reference keeps the listener alive */
	while (op->busy > 0 && running_op != op) {
		r->idle_waiters++;
		pthread_cond_wait(&r->idle, &r->lock);
		r->idle_waiters--;
	}
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

/* Ring lock held, loop thread: enough rounds for one wake-up; what is
 * still ready runs after the loop has looked at its other events. */
static void yield_the_rest(struct evsteer_uring *r)
{
	while (r->ready_head) {
		struct evst_uop *op = r->ready_head;
		r->ready_head = op->next_ready;
		op->queued = false;
		evst_ring_mark_later(r, op);
	}
	r->ready_tail = &r->ready_head;
	eventfd_quiet(r, false);
}

/* Ring lock held, loop thread: run the ready() of a batch of ops, with
 * the lock let go around each (it is held again on return, and between
 * them: one lock per op). */
static void run_ready_batch(struct evsteer_uring *r)
{
	struct evst_uop *batch[READY_BATCH];
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
	for (int i = 0; i < n; i++) {
		struct evst_uop *op = batch[i];
		evst_ring_unlock(r);
		running_op = op;
		op->ready(op);
		running_op = NULL;
		evst_ring_lock(r);
		bool release = --op->busy == 0 && op->dead;
		if (r->idle_waiters)
			pthread_cond_broadcast(&r->idle);
		if (release) {
			evst_ring_unlock(r);
			op->release(op);
			evst_ring_lock(r);
		}
	}
}

/* Loop thread: drain (see the rules at the top). */
static void run_loop_work(struct evsteer_uring *r)
{
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
		bool tw_before = evst_ring_taskrun_pending(r);
		evst_ring_flush(r);
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
			bool tw = evst_ring_taskrun_pending(r) && !tw_before;
			if ((!io_uring_cq_ready(&r->ring) && !tw &&
			     !io_uring_sq_ready(&r->ring) && !r->nstaged) ||
			    round >= MAX_ROUNDS)
				break;
			eventfd_quiet(r, true);
			continue;
		}
		if (round == MAX_ROUNDS) {
			yield_the_rest(r);
			break;
		}
		run_ready_batch(r);
	}
	r->in_work = false;
	evst_ring_unlock(r);
	evst_ring_put(r);
}

/*
 * The ring's eventfd, and the zero timer of a drain that yielded
 * (evst_ring_mark_later). The eventfd is edge-triggered: every signal from
 * the ring is an edge, so the counter need not be read (one system call
 * per wake-up saved); it saturates rather than blocks the kernel.
 *
 * Deferred (a member with stall detection on this ring): the drain is made
 * active behind the events this pass of the loop found ready with it. One
 * of those may run long (a timer that spins, a handler that blocks);
 * connections the ring accepted stay in its CQ meanwhile, where a sibling
 * takes them, instead of in the application's hands, where none can (the
 * event engine does the same: engine/event.c). The yield's timer too: a
 * timer of the application due in the same pass may run after it. With
 * nothing else active in the pass (evst_pass_alone), there is nothing to
 * wait behind: the drain runs at once.
 */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct evsteer_uring *r = arg;
	(void)fd;
	(void)what;
	if (__atomic_load_n(&r->defer, __ATOMIC_RELAXED) &&
	    !evst_pass_alone(r->base))
		event_active(r->kick_ev, EV_READ, 0);
	else
		run_loop_work(r);
}

void evst_ring_defer_wakeups(struct evsteer_uring *r)
{
	__atomic_store_n(&r->defer, true, __ATOMIC_RELAXED);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run_loop_work(arg);
}

/* fork (common/process.h): the child's bases get rings of their own; the
 * rings listed are the parent's (their queues are memory shared with it),
 * reachable only through inherited listeners, for evst_ring_forget(). */
void evst_ring_registry_fork_prepare(void)
{
	pthread_mutex_lock(&registry_lock);
}

void evst_ring_registry_fork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
}

void evst_ring_registry_fork_child(void)
{
	rings = NULL;
	pthread_mutex_unlock(&registry_lock);
}

struct evsteer_uring *evst_ring_get(struct event_base *base, const char **why)
{
	pthread_mutex_lock(&registry_lock);
	struct evsteer_uring *r;
	for (r = rings; r; r = r->next)
		if (r->base == base && ring_try_ref(r))
			break;
	if (!r && (r = evst_ring_new(why))) {
		pthread_mutex_init(&r->lock, NULL);
		pthread_cond_init(&r->idle, NULL);
		r->base = base;
		r->gen = evst_process_gen();
		r->ready_tail = &r->ready_head;
		r->later_tail = &r->later_head;
		r->efd_ev = event_new(base, r->efd, EV_READ | EV_PERSIST | EV_ET,
				      wake_cb, r);
		r->kick_ev = event_new(base, -1, 0, kick_cb, r);
		r->yield_ev = evtimer_new(base, wake_cb, r);
		atomic_init(&r->users, 1);
		r->next = rings;
		rings = r;
	}
	pthread_mutex_unlock(&registry_lock);
	return r;
}

/* The last user is gone: every request object still queued goes,
 * without its callback (documented: outstanding direct I/O ends with the
 * last listener). */
static void release_queued(struct evsteer_uring *r)
{
	while (r->ready_head || r->later_head) {
		struct evst_uop *op = r->ready_head ? r->ready_head : r->later_head;
		evst_ring_unready(r, op);
		op->release(op);
	}
}

static void free_events(struct evsteer_uring *r)
{
	event_free(r->efd_ev);
	event_free(r->kick_ev);
	event_free(r->yield_ev);
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
		evst_ring_cancel_any(r);
		for (int i = 0; r->inflight > 0 && i < 1000; i++)
			evst_ring_reap(r, 1000);
	}
	r->in_work = true; /* no more kicks */
	release_queued(r);
	evst_ring_unlock(r);
	free_events(r);
	pthread_cond_destroy(&r->idle);
	pthread_mutex_destroy(&r->lock);
	evst_ring_free(r);
}

void evst_ring_forget(struct evsteer_uring *r)
{
	if (atomic_fetch_sub(&r->users, 1) != 1)
		return;
	/* requests of the parent's direct I/O: their memory only (every
	 * engine took its own op off the lists before letting go) */
	release_queued(r);
	free_events(r);
	/* the lock and the condition are left as they are: a thread of the
	 * parent may have held them */
	evst_ring_free(r);
}

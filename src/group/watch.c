/* SPDX-License-Identifier: MIT */
/*
 * The stall watch (watch.h).
 *
 * Why a thread. A worker whose loop is stuck (a callback blocked in a
 * system call, a thread the scheduler left waiting, a pass busy with many
 * ready events) cannot hand its queue over itself, and its siblings look
 * only when something wakes them: a connection of their own. When every
 * connection in flight is queued on the stuck worker (a closed-loop client,
 * a lone request after a quiet spell), nothing does, and they wait for as
 * long as it is stuck. So one thread per process looks at the shared
 * counters and, when a worker has had connections pending for longer than
 * the stall threshold without progress, writes the eventfd of a healthy
 * sibling in the same group; that sibling's loop takes them (group/steal.c,
 * member_steal).
 *
 * What it costs. While connections arrive it wakes at the moment the
 * oldest pending one would become stale, and every stall_ns otherwise: a
 * few hundred wake-ups a second under load, none per connection. After
 * QUIET_NS without a new connection it sleeps in epoll on the members'
 * listening sockets and ring eventfds, so an idle server sees no wake-ups
 * at all, and the first connection after a quiet spell wakes it.
 *
 * The longest a connection waits on a stuck worker is therefore about
 * stall_ns + stall_ns (one tick) + the time the healthy sibling needs to
 * run, whoever else is awake, and one pass of it for each connection
 * ahead in the stuck worker's queue (a thief takes a pass's cap: steal.c);
 * and, where that sibling's own queue has waited too, stall_ns longer than
 * it (evst_shared_worth_taking: only a theft that shortens a wait).
 *
 * Lock: W.lock guards the list and is held for a whole tick. The tick
 * reads shared counters and writes eventfds only, so evst_watch_remove()
 * (called with a listener's lock held) waits at most for one tick.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/process.h"
#include "steering/shared.h"
#include "group/watch.h"

/* After this long without a new connection anywhere, sleep until one. */
#define QUIET_NS 50000000ull
/* A stuck worker is looked at again this often (x stall_ns) until taken. */
#define RECHECK_DIV 2
/* Wake a little after a pending connection turns stale, not just before. */
#define SLACK_NS 50000ull
/* Used when no member has stall detection on (nothing to do but idle). */
#define MAX_GROUPS_PER_TICK 16

static struct {
	pthread_mutex_t lock;
	struct evst_watched *list;
	unsigned int n;
	unsigned long gen; /* a thread runs while its generation is current */
	bool running;
	pthread_t thread;
	int epfd;    /* the wake eventfd, and the idle watches */
	int wake_fd; /* list changed, or stop */
} W = {.lock = PTHREAD_MUTEX_INITIALIZER, .epfd = -1, .wake_fd = -1};

static uint64_t ld(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint64_t pending_of(const struct evst_worker *w)
{
	int64_t p = (int64_t)(ld(&w->steered) - ld(&w->dequeued));
	return p > 0 ? (uint64_t)p : 0;
}

/* The worker would take a connection now: live, loop not stuck, not held
 * out after a theft. */
static bool healthy(const struct evst_worker *w, uint64_t now, uint64_t st)
{
	if (!__atomic_load_n(&w->live, __ATOMIC_RELAXED))
		return false;
	uint64_t progress = ld(&w->progress_ns);
	if (pending_of(w) && now - progress > st)
		return false;
	return ld(&w->stolen_ns) <= progress;
}

static void kick(void)
{
	if (W.wake_fd >= 0)
		eventfd_write(W.wake_fd, 1);
}

/*
 * W.lock held. Wake a healthy sibling of victim v (the one with the least
 * pending; ties: the most recent progress) whose own queue has not waited
 * nearly as long (evst_shared_worth_taking: steal.c). False if there is
 * none in this process.
 */
static bool poke_thief(const struct evst_watched *v, uint64_t now, uint64_t st)
{
	const struct evst_watched *best = NULL;
	uint64_t best_pending = 0, best_progress = 0;
	for (const struct evst_watched *t = W.list; t; t = t->next) {
		if (t == v || t->group != v->group || !healthy(t->ws, now, st) ||
		    !evst_shared_worth_taking(t->sh, t->ws, v->ws, now, st))
			continue;
		uint64_t p = pending_of(t->ws), pr = ld(&t->ws->progress_ns);
		if (!best || p < best_pending ||
		    (p == best_pending && pr > best_progress)) {
			best = t;
			best_pending = p;
			best_progress = pr;
		}
	}
	if (best)
		eventfd_write(best->poke_fd, 1);
	return best != NULL;
}

/*
 * W.lock held: one look. Returns how long to sleep (ns), 0 when nothing is
 * pending anywhere; *active is set when a connection arrived since the
 * last look.
 */
static uint64_t tick(uint64_t now, bool *active, uint64_t *period)
{
	const void *poked[MAX_GROUPS_PER_TICK];
	unsigned int npoked = 0;
	uint64_t next = 0;

	for (struct evst_watched *e = W.list; e; e = e->next) {
		uint64_t st = ld(e->stall_ns);
		/* a lone worker of this process (prefork): no sibling here
		 * could take its queue, so nothing to look at */
		if (!st || !e->nsib)
			continue;
		if (!*period || st < *period)
			*period = st;
		struct evst_worker *w = e->ws;
		if (!__atomic_load_n(&w->live, __ATOMIC_RELAXED))
			continue;
		/* no program counts for classic BPF: the socket's queue */
		if (e->classic && e->wfd[0] >= 0)
			evst_shared_queue_to_pending(w, e->wfd[0]);
		uint64_t steered = ld(&w->steered);
		if (steered != e->seen_steered) {
			e->seen_steered = steered;
			*active = true;
		}
		if (!pending_of(w))
			continue;
		*active = true;
		uint64_t age = now - ld(&w->progress_ns);
		uint64_t wait;
		if ((int64_t)age < 0 || age <= st) {
			wait = ((int64_t)age < 0 ? st : st - age) + SLACK_NS;
		} else {
			/* stuck: a sibling takes its queue; look again soon
			 * in case that sibling is slow too */
			wait = st / RECHECK_DIV;
			bool done = false;
			for (unsigned int i = 0; i < npoked; i++)
				done |= poked[i] == e->group;
			if (!done && poke_thief(e, now, st) &&
			    npoked < MAX_GROUPS_PER_TICK)
				poked[npoked++] = e->group;
		}
		if (!next || wait < next)
			next = wait;
	}
	return next;
}

/* W.lock held: arm (or disarm) the idle watches. */
static void idle_watch(bool on)
{
	for (struct evst_watched *e = W.list; e; e = e->next) {
		for (int i = 0; i < 2; i++) {
			if (e->wfd[i] < 0 || (on && !e->nsib))
				continue;
			/* the socket is level-triggered (a connection already
			 * queued fires at once); the ring's eventfd is never
			 * read, so only its edges mean anything */
			struct epoll_event ev = {
				.events = on ? EPOLLIN | EPOLLONESHOT |
						       (i ? EPOLLET : 0) :
					       0,
				.data.ptr = e,
			};
			epoll_ctl(W.epfd, EPOLL_CTL_MOD, e->wfd[i], &ev);
		}
	}
}

/* Sleep up to ns (0: until woken), or until the wake eventfd is written. */
static void sleep_ns(uint64_t ns)
{
	struct epoll_event ev[8];
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
			      .tv_nsec = (long)(ns % 1000000000ull)};
	int n = epoll_pwait2(W.epfd, ev, 8, ns ? &ts : NULL, NULL);
	if (n < 0 && errno == ENOSYS) /* before Linux 5.11 */
		n = epoll_wait(W.epfd, ev, 8,
			       ns ? (int)((ns + 999999) / 1000000) : -1);
	for (int i = 0; i < n; i++) {
		if (ev[i].data.ptr == &W) {
			eventfd_t v;
			eventfd_read(W.wake_fd, &v);
		}
	}
}

static void *watch_main(void *arg)
{
	unsigned long gen = (unsigned long)(uintptr_t)arg;
	uint64_t quiet_since = evst_now_ns();

	for (;;) {
		pthread_mutex_lock(&W.lock);
		if (gen != W.gen) {
			pthread_mutex_unlock(&W.lock);
			break;
		}
		uint64_t now = evst_now_ns(), period = 0;
		bool active = false;
		uint64_t wait = tick(now, &active, &period);
		if (active)
			quiet_since = now;
		bool idle = !wait && (!period || now - quiet_since >= QUIET_NS);
		if (idle)
			idle_watch(true);
		pthread_mutex_unlock(&W.lock);

		sleep_ns(idle ? 0 : wait ? wait : period);

		if (idle) {
			pthread_mutex_lock(&W.lock);
			if (gen == W.gen)
				idle_watch(false);
			pthread_mutex_unlock(&W.lock);
			quiet_since = evst_now_ns();
		}
	}
	return NULL;
}

/* fork (common/process.h): the child has no watch thread and watches
 * nothing; what it inherited are its parent's members. */
void evst_watch_registry_fork_prepare(void)
{
	pthread_mutex_lock(&W.lock);
}

void evst_watch_registry_fork_parent(void)
{
	pthread_mutex_unlock(&W.lock);
}

void evst_watch_registry_fork_child(void)
{
	for (struct evst_watched *e = W.list; e; e = e->next) {
		e->on = false;
		for (int i = 0; i < 2; i++)
			if (e->wfd[i] >= 0)
				close(e->wfd[i]);
	}
	W.list = NULL;
	W.n = 0;
	W.gen++;
	W.running = false;
	/* the epoll instance is shared with the parent: never touch it */
	if (W.epfd >= 0)
		close(W.epfd);
	if (W.wake_fd >= 0)
		close(W.wake_fd);
	W.epfd = W.wake_fd = -1;
	pthread_mutex_unlock(&W.lock);
}

/* W.lock held: the epoll set and the thread, made on first use. */
static int start(void)
{
	if (W.epfd < 0) {
		W.epfd = epoll_create1(EPOLL_CLOEXEC);
		W.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &W};
		if (W.epfd < 0 || W.wake_fd < 0 ||
		    epoll_ctl(W.epfd, EPOLL_CTL_ADD, W.wake_fd, &ev) < 0) {
			int err = -errno;
			if (W.epfd >= 0)
				close(W.epfd);
			if (W.wake_fd >= 0)
				close(W.wake_fd);
			W.epfd = W.wake_fd = -1;
			return err;
		}
	}
	if (W.running)
		return 0;
	/* the thread takes no signals meant for the host's threads */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int err = pthread_create(&W.thread, NULL, watch_main,
				 (void *)(uintptr_t)++W.gen);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		return -err;
	W.running = true;
	return 0;
}

int evst_watch_add(struct evst_watched *w, int sock_fd, int ring_fd)
{
	w->wfd[0] = w->wfd[1] = -1;
	w->on = false;
	w->seen_steered = 0;

	pthread_mutex_lock(&W.lock);
	int err = start();
	int fds[2] = {sock_fd, ring_fd};
	for (int i = 0; i < 2 && !err; i++) {
		if (fds[i] < 0)
			continue;
		/* our own descriptors: epoll keys on them, and the owner
		 * may close its own at any time after we are removed */
		w->wfd[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
		struct epoll_event ev = {.events = 0, .data.ptr = w};
		if (w->wfd[i] < 0 ||
		    epoll_ctl(W.epfd, EPOLL_CTL_ADD, w->wfd[i], &ev) < 0)
			err = -errno;
	}
	if (err) {
		for (int i = 0; i < 2; i++)
			if (w->wfd[i] >= 0)
				close(w->wfd[i]);
		w->wfd[0] = w->wfd[1] = -1;
		pthread_mutex_unlock(&W.lock);
		evst_warn("stall watch: %s; stalled workers are found only by "
			  "their siblings' own wake-ups",
			  strerror(-err));
		return err;
	}
	w->on = true;
	w->nsib = 0;
	for (struct evst_watched *e = W.list; e; e = e->next) {
		if (e->group == w->group) {
			e->nsib++;
			w->nsib++;
		}
	}
	w->next = W.list;
	W.list = w;
	W.n++;
	kick(); /* a new member: look now, and leave the idle wait */
	pthread_mutex_unlock(&W.lock);
	return 0;
}

void evst_watch_remove(struct evst_watched *w)
{
	pthread_mutex_lock(&W.lock);
	if (!w->on) {
		pthread_mutex_unlock(&W.lock);
		return;
	}
	struct evst_watched **pp = &W.list;
	while (*pp != w)
		pp = &(*pp)->next;
	*pp = w->next;
	w->on = false;
	for (struct evst_watched *e = W.list; e; e = e->next)
		if (e->group == w->group)
			e->nsib--;
	for (int i = 0; i < 2; i++) {
		if (w->wfd[i] >= 0) {
			epoll_ctl(W.epfd, EPOLL_CTL_DEL, w->wfd[i], NULL);
			close(w->wfd[i]);
			w->wfd[i] = -1;
		}
	}
	/* the last one: the thread ends (joined outside the lock) */
	bool join = --W.n == 0 && W.running;
	pthread_t t = W.thread;
	if (join) {
		W.gen++;
		W.running = false;
		kick();
	}
	pthread_mutex_unlock(&W.lock);
	if (!join)
		return;
	pthread_join(t, NULL);
	/* nothing watched: no descriptor of ours stays open either */
	pthread_mutex_lock(&W.lock);
	if (!W.running) {
		close(W.epfd);
		close(W.wake_fd);
		W.epfd = W.wake_fd = -1;
	}
	pthread_mutex_unlock(&W.lock);
}

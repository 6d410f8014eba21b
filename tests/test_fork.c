/* SPDX-License-Identifier: MIT */
/*
 * fork() in every state (docs/ARCHITECTURE.md, "Fork"): what a child
 * inherits from evsteer is the parent's. The child may free it (after
 * event_reinit() of the inherited base, libevent's rule), which releases
 * its memory and its copies of the descriptors and touches nothing the
 * parent uses: no slot of the address's group, no entry of the program's
 * maps, no request of a ring. Then it makes and serves its own listeners.
 * The parent, meanwhile and afterwards, serves as if nothing happened.
 *
 * States forked in: nothing made yet; a listener (every path), serving; a
 * group of two on one port (the stall watch and, with BPF, the rendezvous
 * thread running); a direct listener with slots open; and a child that
 * exits without freeing anything.
 */
#include "tlib.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Child exit codes: which step failed. */
enum {
	CHILD_OK = 0,
	CHILD_REINIT = 10,
	CHILD_NEW = 11,
	CHILD_SERVE = 12,
	CHILD_FDS = 13,
	CHILD_CALLS = 14,
};

static void count_cb(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)lev, (void)sa, (void)len;
	int *n = arg;
	close(fd);
	(*n)++;
}

/* In a child (no cmocka): a listener of its own, on a new port, on the
 * current path; one connection served. */
static int child_serve_own(void)
{
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	int n = 0;
	struct evsteer_listener *lev =
		tl_new_bind(base, count_cb, &n, EVSTEER_OPT_CLOSE_ON_FREE, -1,
			    (struct sockaddr *)&ss, len);
	if (!lev)
		return CHILD_NEW;
	int c = tl_connect_to(evsteer_listener_get_fd(lev));
	bool ok = c >= 0 && tl_loop_until(base, &n, 1);
	if (c >= 0)
		close(c);
	evsteer_listener_free(lev);
	event_base_free(base);
	return ok ? CHILD_OK : CHILD_SERVE;
}

/*
 * Fork; the child runs `inherited` (free what it got), then serves its own
 * listener, and checks that what it freed left no descriptor behind. The
 * parent gets the child's exit code.
 */
static int fork_child(struct event_base *base, void (*inherited)(void *),
		      void *arg)
{
	pid_t pid = tl_fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fds_before = tl_count_fds();
		if (base && event_reinit(base) < 0)
			_exit(CHILD_REINIT);
		if (inherited)
			inherited(arg);
		if (base)
			event_base_free(base);
		int rc = child_serve_own();
		/* our own listener is gone too; the inherited ones are
		 * freed: fewer descriptors than we started with */
		if (!rc && inherited && tl_count_fds() >= fds_before)
			rc = CHILD_FDS;
		_exit(rc);
	}
	return tl_wait_status(pid);
}

/* ---- the parent's side: serve n connections, all of them delivered */

struct pool {
	struct event_base *base;
	struct evsteer_listener *lev[2];
	int n[2];
	int total;
	int lfd;
	unsigned int nlev;
};

static void pool_cb(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		    int len, void *arg)
{
	(void)sa, (void)len;
	struct pool *p = arg;
	close(fd);
	for (unsigned int i = 0; i < p->nlev; i++)
		if (p->lev[i] == lev)
			p->n[i]++;
	p->total++;
}

/* One listener, or (with REUSEABLE_PORT on this path) two on one port:
 * a group, with the stall watch running. */
static void pool_open(struct pool *p, unsigned int nlev)
{
	memset(p, 0, sizeof(*p));
	p->base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	p->nlev = nlev;
	for (unsigned int i = 0; i < nlev; i++) {
		p->lev[i] = tl_new_bind(p->base, pool_cb, p,
					EVSTEER_OPT_CLOSE_ON_FREE |
						EVSTEER_OPT_REUSEABLE,
					-1, (struct sockaddr *)&ss, len);
		assert_non_null(p->lev[i]);
		if (i == 0) {
			p->lfd = evsteer_listener_get_fd(p->lev[0]);
			len = tl_sockname(p->lfd, &ss); /* the port it got */
		}
	}
}

static void pool_serve(struct pool *p, int n)
{
	int want = p->total + n;
	for (int i = 0; i < n; i++) {
		int c = tl_connect_to(p->lfd);
		assert_true(c >= 0);
		close(c);
	}
	assert_true(tl_loop_until(p->base, &p->total, want));
}

static void pool_close(struct pool *p)
{
	for (unsigned int i = 0; i < p->nlev; i++)
		evsteer_listener_free(p->lev[i]);
	event_base_free(p->base);
}

static void free_pool_listeners(void *arg)
{
	struct pool *p = arg;
	for (unsigned int i = 0; i < p->nlev; i++)
		evsteer_listener_free(p->lev[i]);
}

static bool grouped(void)
{
	return tl_path->extra_flags & EVSTEER_OPT_REUSEABLE_PORT;
}

/* Forked before anything exists: both sides just work. */
static void test_fork_before_anything(void **state)
{
	(void)state;
	assert_int_equal(fork_child(NULL, NULL, NULL), CHILD_OK);
	struct pool p;
	pool_open(&p, 1);
	pool_serve(&p, 4);
	pool_close(&p);
}

/* A serving listener (a group of two where the path steers), freed in the
 * child: the parent keeps every worker, and serves on. */
static void test_fork_free_inherited(void **state)
{
	(void)state;
	struct pool p;
	pool_open(&p, grouped() ? 2 : 1);
	pool_serve(&p, 20);
	int rc = fork_child(p.base, free_pool_listeners, &p);
	assert_int_equal(rc, CHILD_OK);
	/* the parent's listeners still deliver, every one of them */
	pool_serve(&p, 200);
	if (grouped()) {
		struct evsteer_group *g = evsteer_listener_get_group(p.lev[0]);
		assert_non_null(g);
		for (unsigned int s = 0; s < 2; s++) {
			EVSTEER_WORKER_STATS_OPTS(st);
			assert_int_equal(evsteer_group_worker_stats(g, s, &st), 0);
			assert_int_equal(st.live, 1);
		}
	}
	pool_close(&p);
}

/* The child exits without freeing anything (the common case): nothing of
 * the parent's changes either. */
static void test_fork_child_exits(void **state)
{
	(void)state;
	struct pool p;
	pool_open(&p, grouped() ? 2 : 1);
	pool_serve(&p, 10);
	pid_t pid = fork(); /* a child that allocates nothing */
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(0);
	assert_int_equal(tl_wait_status(pid), 0);
	pool_serve(&p, 100);
	pool_close(&p);
}

/* Anything but freeing, on what the child inherited, is refused with
 * EINVAL (and a log line): enabling would arm the parent's ring, stats
 * would take a lock a parent's thread may have held. */
static void calls_on_inherited(void *arg)
{
	struct pool *p = arg;
	bool ok = evsteer_listener_disable(p->lev[0]) == -EINVAL &&
		  errno == EINVAL &&
		  evsteer_listener_enable(p->lev[0]) == -EINVAL &&
		  errno == EINVAL;
	struct evsteer_group *g = evsteer_listener_get_group(p->lev[0]);
	if (g) {
		EVSTEER_WORKER_STATS_OPTS(st);
		ok = ok && evsteer_group_worker_stats(g, 0, &st) == -EINVAL &&
		     evsteer_group_add_worker(g) == -EINVAL &&
		     evsteer_group_attach(g, 0, p->base, pool_cb, p) == NULL &&
		     errno == EINVAL;
	}
	/* what is only read stays readable */
	ok = ok && evsteer_listener_get_fd(p->lev[0]) == p->lfd;
	free_pool_listeners(p);
	if (!ok)
		_exit(CHILD_CALLS);
}

static void test_fork_inherited_calls(void **state)
{
	(void)state;
	struct pool p;
	pool_open(&p, grouped() ? 2 : 1);
	pool_serve(&p, 10);
	assert_int_equal(fork_child(p.base, calls_on_inherited, &p), CHILD_OK);
	pool_serve(&p, 50);
	pool_close(&p);
}

/* An explicit group of two (its own sockets) inherited: the child frees
 * the listeners and the group, closing its copies of the group's sockets;
 * the parent's group keeps both workers. */
struct egroup {
	struct event_base *base;
	struct evsteer_group *g;
	struct evsteer_listener *lev[2];
	int total;
};

static void egroup_cb(struct evsteer_listener *lev, int fd,
		      struct sockaddr *sa, int len, void *arg)
{
	(void)lev, (void)sa, (void)len;
	close(fd);
	((struct egroup *)arg)->total++;
}

static void free_egroup(void *arg)
{
	struct egroup *e = arg;
	/* the group first: its listeners keep it until they go */
	evsteer_group_free(e->g);
	evsteer_listener_free(e->lev[0]);
	evsteer_listener_free(e->lev[1]);
}

static void egroup_serve(struct egroup *e, int n)
{
	int want = e->total + n;
	for (int i = 0; i < n; i++) {
		int c = tl_connect_to(evsteer_group_get_fd(e->g, (unsigned)(i % 2)));
		assert_true(c >= 0);
		close(c);
	}
	assert_true(tl_loop_until(e->base, &e->total, want));
}

static void test_fork_explicit_group(void **state)
{
	(void)state;
	struct egroup e = {.base = tl_base()};
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_GROUP_OPTS(o, .policy = EVSTEER_POLICY_ROUND_ROBIN);
	e.g = evsteer_group_new((struct sockaddr *)&ss, len, 2,
				EVSTEER_OPT_REUSEABLE, -1, &o);
	assert_non_null(e.g);
	for (unsigned int i = 0; i < 2; i++) {
		e.lev[i] = evsteer_group_attach(e.g, i, e.base, egroup_cb, &e);
		assert_non_null(e.lev[i]);
	}
	egroup_serve(&e, 20);
	assert_int_equal(fork_child(e.base, free_egroup, &e), CHILD_OK);
	egroup_serve(&e, 100);
	for (unsigned int s = 0; s < 2; s++) {
		EVSTEER_WORKER_STATS_OPTS(st);
		assert_int_equal(evsteer_group_worker_stats(e.g, s, &st), 0);
		assert_int_equal(st.live, 1);
	}
	evsteer_listener_free(e.lev[0]);
	evsteer_listener_free(e.lev[1]);
	evsteer_group_free(e.g);
	event_base_free(e.base);
}

/*
 * fork() while another thread is inside the library: a worker thread
 * serves a group (its loop, the stall watch, the ring), and a second thread
 * makes and frees listeners of its own over and over, taking the
 * registries' locks, while the main thread forks. Each child must be able
 * to make and serve a listener of its own: a registry lock held across
 * fork by a thread that does not exist in the child would hang it (bounded
 * by alarm(): SIGALRM kills the child, and the test fails).
 */
struct busy {
	struct pool p;
	bool stop; /* __atomic */
};

static void *busy_serve(void *arg)
{
	struct busy *b = arg;
	while (!__atomic_load_n(&b->stop, __ATOMIC_RELAXED))
		event_base_loop(b->p.base, EVLOOP_ONCE);
	return NULL;
}

static void *busy_churn(void *arg)
{
	struct busy *b = arg;
	struct event_base *base = tl_base();
	int unused = 0; /* nobody connects to these */
	while (!__atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
		struct sockaddr_storage ss;
		socklen_t len = tl_addr_loopback(AF_INET, &ss);
		struct evsteer_listener *lev = tl_new_bind(
			base, count_cb, &unused,
			EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE, -1,
			(struct sockaddr *)&ss, len);
		evsteer_listener_free(lev);
	}
	event_base_free(base);
	return NULL;
}

static void test_fork_while_busy(void **state)
{
	(void)state;
#if defined(__SANITIZE_ADDRESS__)
	/* ASan's allocator keeps its locks across fork: a thread the child
	 * makes (the stall watch) waits for ever on a lock the parent's
	 * churning thread held at that moment (seen in gdb:
	 * SizeClassAllocator64::GetFromAllocator). glibc's malloc resets its
	 * locks in the child; the plain build runs this case. */
	printf("test_fork_while_busy: skipped under ASan (its allocator's "
	       "locks are not reset in a child of fork)\n");
	skip();
#endif
	struct busy b = {0};
	pool_open(&b.p, grouped() ? 2 : 1);
	pthread_t t[2];
	assert_int_equal(pthread_create(&t[0], NULL, busy_serve, &b), 0);
	assert_int_equal(pthread_create(&t[1], NULL, busy_churn, &b), 0);
	/* no assert until both threads are joined: a failed one would leave
	 * them running into the next test */
	int rc = CHILD_OK, i;
	for (i = 0; i < 10 && rc == CHILD_OK; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			rc = -1;
			break;
		}
		if (pid == 0) {
			alarm(60);
			/* the inherited base belongs to a thread that is not
			 * here: leave it; make our own */
			_exit(child_serve_own());
		}
		rc = tl_wait_status(pid);
	}
	__atomic_store_n(&b.stop, true, __ATOMIC_RELAXED);
	event_base_loopbreak(b.p.base);
	/* the loop may be waiting: a connection wakes it */
	int c = tl_connect_to(b.p.lfd);
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	if (c >= 0)
		close(c);
	assert_int_equal(rc, CHILD_OK);
	pool_close(&b.p);
}

/* A direct listener with slots open, inherited and freed by the child. */
struct direct {
	struct event_base *base;
	struct evsteer_listener *lev;
	struct evsteer_uring *ring;
	int slots[8];
	int n;
};

static void direct_cb(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)lev;
	struct direct *d = arg;
	d->ring = r;
	if (d->n < 8)
		d->slots[d->n] = slot;
	d->n++;
}

static void free_direct(void *arg)
{
	evsteer_listener_free(((struct direct *)arg)->lev);
}

static void test_fork_direct(void **state)
{
	(void)state;
	tl_need_uring();
	struct direct d = {.base = tl_base()};
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	d.lev = evsteer_listener_new_bind_direct(d.base, direct_cb, &d,
						 EVSTEER_OPT_CLOSE_ON_FREE, -1,
						 (struct sockaddr *)&ss, len, 64,
						 NULL);
	assert_non_null(d.lev);
	int lfd = evsteer_listener_get_fd(d.lev);
	int c[3];
	tl_connect_n(lfd, c, 3);
	assert_true(tl_loop_until(d.base, &d.n, 3));
	assert_int_equal(evsteer_uring_slots_in_use(d.ring), 3);

	assert_int_equal(fork_child(d.base, free_direct, &d), CHILD_OK);

	/* the parent's slots are still open and its ring still accepts */
	assert_int_equal(evsteer_uring_slots_in_use(d.ring), 3);
	int c2[3];
	tl_connect_n(lfd, c2, 3);
	assert_true(tl_loop_until(d.base, &d.n, 6));
	tl_close_n(c, 3);
	tl_close_n(c2, 3);
	evsteer_listener_free(d.lev);
	event_base_free(d.base);
}

int main(void)
{
#if defined(__SANITIZE_THREAD__)
	/* TSan's runtime cannot follow a child of a threaded parent that makes
	 * threads of its own: it aborts the child ("dup thread with used id",
	 * or "starting new threads after multi-threaded fork is not
	 * supported"). The plain and ASan builds run every case. */
	printf("test_fork: skipped under ThreadSanitizer (its runtime does not "
	       "support threads in a child of a threaded fork)\n");
	return 77;
#endif
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_before_anything),
		cmocka_unit_test(test_fork_free_inherited),
		cmocka_unit_test(test_fork_child_exits),
		cmocka_unit_test(test_fork_inherited_calls),
		cmocka_unit_test(test_fork_while_busy),
	};
	const struct CMUnitTest once[] = {
		cmocka_unit_test(test_fork_direct),
		cmocka_unit_test(test_fork_explicit_group),
	};
	int rc = tl_run_paths("test_fork", tests, sizeof(tests) / sizeof(tests[0]));
	int rc2 = tl_run_once("test_fork_once", once, 2);
	return rc ? rc : rc2;
}

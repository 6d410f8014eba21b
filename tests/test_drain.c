/* SPDX-License-Identifier: MIT */
/*
 * A worker that leaves its group loses nothing, on every engine: what is
 * queued on its socket migrates (the sk_reuseport/migrate program), and
 * what its io_uring had already accepted is handed to a live sibling. The
 * leaving worker is running (its accepts are armed) and is freed from its
 * own callback, from another thread, and over hundreds of cycles from
 * several threads. A lone listener still closes (and counts) what it had
 * accepted and not delivered, as libevent would.
 */
#include "tlib.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *engine_name(enum evsteer_accept_mode m)
{
	return m == EVSTEER_ACCEPT_EVENT ? "event" : "uring";
}

struct worker {
	struct evsteer_listener *lev;
	atomic_int served;
	int free_self_at; /* free the listener from its callback at this count */
	int want;         /* what served_reached() waits for */
	pthread_t thread;
	struct event_base *base;
	atomic_bool stop;     /* stop_loop(): the loop thread breaks itself */
	atomic_bool returned; /* run_base_until_idle(): dispatch ended by itself */
	struct event *keep;
};

static void reply_cb(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)sa;
	(void)len;
	struct worker *w = arg;
	if (write(fd, "ok", 2) != 2)
		abort();
	close(fd);
	int n = atomic_fetch_add(&w->served, 1) + 1;
	if (w->free_self_at && n == w->free_self_at) {
		w->lev = NULL;
		evsteer_listener_free(lev);
	}
}

/* "ok" (0), or -errno (ECONNRESET, EPROTO for EOF), within the timeout. */
static int read_reply(int c)
{
	struct timeval tv = {.tv_sec = TL_TIMEOUT_MS / 1000};
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char buf[4];
	ssize_t r;
	/* a thread that made a ring sees its task work as EINTR
	 * (docs/ARCHITECTURE.md): that is no lost connection */
	while ((r = read(c, buf, sizeof(buf))) < 0 && errno == EINTR)
		;
	if (r < 0)
		return -errno;
	return r == 2 && !memcmp(buf, "ok", 2) ? 0 : -EPROTO;
}

static int client(const struct sockaddr_storage *ss, socklen_t len)
{
	int c = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c >= 0);
	if (connect(c, (const struct sockaddr *)ss, len) < 0)
		fail_msg("connect: %s", strerror(errno));
	return c;
}

/* Every client got "ok"; returns how many did not. */
static int check_replies(int *c, int n, const char *what)
{
	int bad = 0, eof = 0, reset = 0;
	for (int i = 0; i < n; i++) {
		int r = read_reply(c[i]);
		if (r) {
			print_message("%s: client %d: %s\n", what, i,
				      r == -EPROTO ? "EOF" : strerror(-r));
			bad++;
			eof += r == -EPROTO;
			reset += r == -ECONNRESET;
		}
		close(c[i]);
		c[i] = -1;
	}
	if (bad)
		print_message("%s: %d of %d not served (%d EOF, %d reset)\n", what,
			      bad, n, eof, reset);
	return bad;
}

/* A 2-worker BPF group; every CPU steers to worker 1 (policy cpu). */
static struct evsteer_group *two_workers(enum evsteer_accept_mode engine,
					 enum evsteer_policy policy,
					 struct sockaddr_storage *ss,
					 socklen_t *len)
{
	*len = tl_addr_loopback(AF_INET, ss);
	EVSTEER_GROUP_OPTS(o, .policy = policy, .stall_us = -1,
			   .bpf = EVSTEER_BPF_REQUIRE, .accept = engine);
	/* THREADSAFE: listeners are freed and toggled from other threads */
	struct evsteer_group *g = evsteer_group_new(
		(struct sockaddr *)ss, *len, 2, EVSTEER_OPT_THREADSAFE, 512, &o);
	assert_non_null(g);
	*len = tl_sockname(evsteer_group_get_fd(g, 0), ss);
	if (policy == EVSTEER_POLICY_CPU)
		tl_steer_all_to(g, 1);
	return g;
}

/* A worker whose loop runs in its own thread served n, within the
 * timeout (yielding to it meanwhile). */
static bool wait_served(struct worker *w, int n)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (atomic_load(&w->served) >= n)
			return true;
		sched_yield();
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 +
			 (t.tv_nsec - t0.tv_nsec) / 1000000 <
		 TL_TIMEOUT_MS);
	return atomic_load(&w->served) >= n;
}

static bool served_reached(void *arg)
{
	struct worker *w = arg;
	return atomic_load(&w->served) >= w->want;
}

/*
 * A base whose listener is toggled or freed from another thread would leave
 * dispatch the moment it has no event (libevent's rule, which evsteer
 * keeps), and an event_base_loopbreak() from another thread is lost if it
 * comes before the thread has entered the loop. So each worker's loop has
 * a 5 ms timer that breaks the loop from inside once `stop` is set.
 */
static void keep_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	if (atomic_load(&w->stop))
		event_base_loopbreak(w->base);
}

static void keep_running(struct worker *w)
{
	w->keep = event_new(w->base, -1, EV_PERSIST, keep_cb, w);
	struct timeval tv = {0, 5000};
	event_add(w->keep, &tv);
}

static void stop_loop(struct worker *w)
{
	atomic_store(&w->stop, true);
	pthread_join(w->thread, NULL);
	event_free(w->keep);
	w->keep = NULL;
}

static void *run_base(void *arg)
{
	struct worker *w = arg;
	event_base_dispatch(w->base);
	return NULL;
}

/* The same, for a loop that must end by itself (within the timeout). */
static void *run_base_until_idle(void *arg)
{
	struct worker *w = arg;
	atomic_store(&w->returned, tl_dispatch_returns(w->base));
	return NULL;
}

/*
 * Worker 1 has run its loop (its accepts are armed), 10 clients connect to
 * it, it answers the first and frees its listener from the callback: the
 * other 9 are served by worker 0.
 */
static void leave_from_callback(enum evsteer_accept_mode engine)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct evsteer_group *g = two_workers(engine, EVSTEER_POLICY_CPU, &ss, &len);
	struct worker w0 = {.base = tl_base(), .want = 9},
		      w1 = {.base = tl_base(), .free_self_at = 1, .want = 1};
	w0.lev = evsteer_group_attach(g, 0, w0.base, reply_cb, &w0);
	w1.lev = evsteer_group_attach(g, 1, w1.base, reply_cb, &w1);
	assert_non_null(w0.lev);
	assert_non_null(w1.lev);
	evsteer_group_free(g);
	/* both loops run once: their accepts are in flight */
	event_base_loop(w0.base, EVLOOP_NONBLOCK);
	event_base_loop(w1.base, EVLOOP_NONBLOCK);

	int c[10];
	for (int i = 0; i < 10; i++)
		c[i] = client(&ss, len);
	assert_true(tl_loop_until_fn(w1.base, served_reached, &w1));
	assert_null(w1.lev);
	assert_true(tl_loop_until_fn(w0.base, served_reached, &w0));
	assert_int_equal(check_replies(c, 10, engine_name(engine)), 0);
	assert_int_equal(atomic_load(&w1.served), 1);
	assert_int_equal(atomic_load(&w0.served), 9);
	EVSTEER_WORKER_STATS_OPTS(st);
	assert_int_equal(evsteer_group_worker_stats(
				 evsteer_listener_get_group(w0.lev), 0, &st), 0);
	assert_int_equal(st.migrated, 9);
	evsteer_listener_free(w0.lev);
	event_base_free(w0.base);
	event_base_free(w1.base);
}

static void test_leave_from_callback(void **state)
{
	(void)state;
	tl_need_bpf();
	leave_from_callback(EVSTEER_ACCEPT_EVENT);
	tl_need_uring();
	leave_from_callback(EVSTEER_ACCEPT_URING);
}

/* ---- the same with direct descriptors: the slots cross rings */

/* The closes are asynchronous: wait for the count, bounded. */
static bool no_slots(void *arg)
{
	return evsteer_uring_slots_in_use(arg) == 0;
}

struct dworker {
	struct evsteer_listener *lev;
	int served;
	bool free_self;
};

static void direct_reply(struct evsteer_listener *lev, struct evsteer_uring *r,
			 int slot, void *arg)
{
	struct dworker *w = arg;
	if (evsteer_uring_send_and_close(r, slot, "ok", 2, NULL, NULL) < 0)
		abort();
	w->served++;
	if (w->free_self) {
		w->lev = NULL;
		evsteer_listener_free(lev);
	}
}

static void test_leave_direct(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_need_uring();
	struct event_base *a = tl_base(), *b = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_LISTENER_OPTS(o, .bpf = EVSTEER_BPF_REQUIRE,
			      .policy = EVSTEER_POLICY_CPU, .stall_us = -1);
	struct dworker w0 = {0}, w1 = {.free_self = true};
	unsigned int fl = EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE_PORT;
	w0.lev = evsteer_listener_new_bind_direct(a, direct_reply, &w0, fl, -1,
						  (struct sockaddr *)&ss, len, 0,
						  &o);
	assert_non_null(w0.lev);
	len = tl_sockname(evsteer_listener_get_fd(w0.lev), &ss);
	w1.lev = evsteer_listener_new_bind_direct(b, direct_reply, &w1, fl, -1,
						  (struct sockaddr *)&ss, len, 0,
						  &o);
	assert_non_null(w1.lev);
	struct evsteer_group *g = evsteer_listener_get_group(w0.lev);
	assert_non_null(g);
	assert_ptr_equal(evsteer_listener_get_group(w1.lev), g);
	tl_steer_all_to(g, 1);
	event_base_loop(a, EVLOOP_NONBLOCK);
	event_base_loop(b, EVLOOP_NONBLOCK);

	int c[10];
	for (int i = 0; i < 10; i++)
		c[i] = client(&ss, len);
	assert_true(tl_loop_until(b, &w1.served, 1));
	assert_null(w1.lev);
	assert_true(tl_loop_until(a, &w0.served, 9));
	assert_int_equal(check_replies(c, 10, "direct"), 0);
	assert_int_equal(w0.served, 9);
	assert_true(tl_loop_until_fn(a, no_slots,
				     evsteer_listener_get_uring(w0.lev)));
	evsteer_listener_free(w0.lev);
	event_base_free(a);
	event_base_free(b);
}

/*
 * Both workers run in their own threads; clients keep connecting (every
 * CPU steers to worker 1) and worker 1's listener is freed from the main
 * thread midway. All 300 are served.
 */
static void leave_from_other_thread(enum evsteer_accept_mode engine)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct evsteer_group *g = two_workers(engine, EVSTEER_POLICY_CPU, &ss, &len);
	struct worker w[2] = {{.base = tl_base()}, {.base = tl_base()}};
	for (int i = 0; i < 2; i++) {
		w[i].lev = evsteer_group_attach(g, (unsigned)i, w[i].base,
						reply_cb, &w[i]);
		assert_non_null(w[i].lev);
	}
	evsteer_group_free(g);
	/* worker 0 would leave dispatch with nothing to do: keep it looping */
	keep_running(&w[0]);
	assert_int_equal(pthread_create(&w[0].thread, NULL, run_base, &w[0]), 0);
	assert_int_equal(pthread_create(&w[1].thread, NULL, run_base_until_idle,
					&w[1]),
			 0);

	int c[300];
	for (int i = 0; i < 300; i++) {
		c[i] = client(&ss, len);
		if (i == 100) {
			/* worker 1 is running and delivering: free it now */
			if (!wait_served(&w[1], 1))
				fail_msg("worker 1 served nothing");
			evsteer_listener_free(w[1].lev);
		}
	}
	/* worker 1's dispatch returns by itself once its listener is gone */
	pthread_join(w[1].thread, NULL);
	assert_true(atomic_load(&w[1].returned));
	int bad = check_replies(c, 300, engine_name(engine));
	stop_loop(&w[0]);
	print_message("%s: worker 0 served %d, worker 1 %d\n", engine_name(engine),
		      atomic_load(&w[0].served), atomic_load(&w[1].served));
	assert_int_equal(bad, 0);
	assert_int_equal(atomic_load(&w[0].served) + atomic_load(&w[1].served),
			 300);
	evsteer_listener_free(w[0].lev);
	event_base_free(w[0].base);
	event_base_free(w[1].base);
}

static void test_leave_from_other_thread(void **state)
{
	(void)state;
	tl_need_bpf();
	leave_from_other_thread(EVSTEER_ACCEPT_EVENT);
	tl_need_uring();
	leave_from_other_thread(EVSTEER_ACCEPT_URING);
}

/*
 * Churn: a stable worker serves in its thread; a second worker joins, is
 * disabled and enabled, and leaves, a few hundred times, freed by turns
 * from its own thread's callback and from the main thread, while clients
 * connect. Nothing is lost, and no descriptor (socket, ring, BPF map or
 * program) is left behind.
 */
#define CYCLES 200
#define PER_CYCLE 6

static void churn(enum evsteer_accept_mode engine)
{
	int fds_before = tl_count_fds();
	struct sockaddr_storage ss;
	socklen_t len;
	struct evsteer_group *g =
		two_workers(engine, EVSTEER_POLICY_ROUND_ROBIN, &ss, &len);
	struct worker w0 = {.base = tl_base()};
	w0.lev = evsteer_group_attach(g, 0, w0.base, reply_cb, &w0);
	assert_non_null(w0.lev);
	/* slot 1 is not served at first: let it go, workers come and go */
	evsteer_listener_free(evsteer_group_attach(g, 1, w0.base, reply_cb, &w0));
	keep_running(&w0);
	assert_int_equal(pthread_create(&w0.thread, NULL, run_base, &w0), 0);

	int lost = 0, total = 0;
	for (int cycle = 0; cycle < CYCLES; cycle++) {
		struct worker w1 = {.base = tl_base()};
		int slot = evsteer_group_add_worker(g);
		assert_true(slot >= 0);
		bool self = cycle % 2;
		w1.free_self_at = self ? 2 : 0;
		w1.lev = evsteer_group_attach(g, (unsigned)slot, w1.base, reply_cb,
					      &w1);
		assert_non_null(w1.lev);
		keep_running(&w1);
		assert_int_equal(pthread_create(&w1.thread, NULL, run_base, &w1), 0);
		int c[PER_CYCLE];
		for (int i = 0; i < PER_CYCLE; i++) {
			c[i] = client(&ss, len);
			if (i == 1) {
				/* w1 may be freeing itself: toggle w0 then */
				struct worker *t = self ? &w0 : &w1;
				evsteer_listener_disable(t->lev);
				evsteer_listener_enable(t->lev);
			}
		}
		if (!self) {
			evsteer_listener_free(w1.lev);
		} else {
			/* it frees itself at its second connection; round-robin
			 * gives it one of every two, so it gets there */
			if (!wait_served(&w1, 2))
				fail_msg("cycle %d: worker 1 served %d", cycle,
					 atomic_load(&w1.served));
		}
		int l = check_replies(c, PER_CYCLE, engine_name(engine));
		if (l)
			print_message("cycle %d (%s): worker 1 served %d\n", cycle,
				      self ? "freed itself" : "freed by main",
				      atomic_load(&w1.served));
		lost += l;
		total += PER_CYCLE;
		stop_loop(&w1);
		event_base_free(w1.base);
	}
	stop_loop(&w0);
	print_message("%s: %d cycles, %d connections, %d lost, worker 0 served %d\n",
		      engine_name(engine), CYCLES, total, lost,
		      atomic_load(&w0.served));
	assert_int_equal(lost, 0);
	evsteer_listener_free(w0.lev);
	evsteer_group_free(g);
	event_base_free(w0.base);
	assert_int_equal(tl_count_fds(), fds_before);
}

static void test_churn(void **state)
{
	(void)state;
	tl_need_bpf();
	churn(EVSTEER_ACCEPT_EVENT);
	tl_need_uring();
	churn(EVSTEER_ACCEPT_URING);
}

/* A lone listener (no BPF, no group) on a loopback port on this engine;
 * ss and len become its address. */
static struct evsteer_listener *lone(struct event_base *base,
				     enum evsteer_accept_mode engine,
				     evsteer_accept_cb cb, void *arg,
				     unsigned int flags,
				     struct sockaddr_storage *ss, socklen_t *len)
{
	*len = tl_addr_loopback(AF_INET, ss);
	EVSTEER_LISTENER_OPTS(o, .accept = engine, .bpf = EVSTEER_BPF_OFF);
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, cb, arg, EVSTEER_OPT_CLOSE_ON_FREE | flags, -1,
		(struct sockaddr *)ss, *len, &o);
	assert_non_null(lev);
	*len = tl_sockname(evsteer_listener_get_fd(lev), ss);
	return lev;
}

/*
 * Churn of lone listeners, on the event and io_uring engines without BPF:
 * created on a base whose loop runs in a thread, clients connect, the
 * listener is disabled and enabled, serves them all, and is freed from
 * the main thread (or from its own callback) while its loop runs. Every
 * connection is answered; nothing is left open.
 */
static void churn_lone(enum evsteer_accept_mode engine)
{
	int fds_before = tl_count_fds();
	for (int cycle = 0; cycle < 150; cycle++) {
		struct worker w = {.base = tl_base(), .want = PER_CYCLE};
		bool self = cycle % 2;
		w.free_self_at = self ? PER_CYCLE : 0;
		struct sockaddr_storage ss;
		socklen_t len;
		w.lev = lone(w.base, engine, reply_cb, &w, EVSTEER_OPT_THREADSAFE,
			     &ss, &len);
		keep_running(&w);
		assert_int_equal(pthread_create(&w.thread, NULL, run_base, &w), 0);
		int c[PER_CYCLE];
		for (int i = 0; i < PER_CYCLE; i++) {
			c[i] = client(&ss, len);
			if (i == 2 && !self) {
				evsteer_listener_disable(w.lev);
				evsteer_listener_enable(w.lev);
			}
		}
		/* every reply arrives while the listener lives */
		int lost = check_replies(c, PER_CYCLE, engine_name(engine));
		if (lost)
			fail_msg("cycle %d: %d lost", cycle, lost);
		if (!self)
			evsteer_listener_free(w.lev);
		stop_loop(&w);
		assert_int_equal(atomic_load(&w.served), PER_CYCLE);
		event_base_free(w.base);
	}
	assert_int_equal(tl_count_fds(), fds_before);
}

static void test_churn_lone(void **state)
{
	(void)state;
	churn_lone(EVSTEER_ACCEPT_EVENT);
	tl_need_uring();
	churn_lone(EVSTEER_ACCEPT_URING);
}

/*
 * A lone io_uring listener freed with connections its ring accepted and
 * never delivered closes them and counts them (libevent would have reset
 * them with the socket): nothing to hand them to.
 */
static void lone_closed(struct evsteer_listener *lev, int fd,
			struct sockaddr *sa, int len, void *arg)
{
	(void)sa;
	(void)len;
	close(fd);
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	*(struct evsteer_listener_stats *)arg = st;
	evsteer_listener_free(lev);
}

static void test_lone_listener_counts(void **state)
{
	(void)state;
	tl_need_uring();
	int fds_before = tl_count_fds();
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len;
	struct evsteer_listener_stats st = {0};
	struct evsteer_listener *lev = lone(base, EVSTEER_ACCEPT_URING,
					    lone_closed, &st, 0, &ss, &len);
	event_base_loop(base, EVLOOP_NONBLOCK); /* armed */
	int c[5];
	tl_connect_n(evsteer_listener_get_fd(lev), c, 5);
	event_base_loop(base, EVLOOP_ONCE); /* delivers one, which frees */
	assert_int_equal(st.accepted, 1);
	/* the other four were closed: each client sees EOF, not a reply */
	for (int i = 0; i < 5; i++)
		assert_int_equal(read_reply(c[i]), -EPROTO);
	tl_close_n(c, 5);
	event_base_free(base);
	assert_int_equal(tl_count_fds(), fds_before);
}

/*
 * The thread that armed a listener's accepts exits and another thread runs
 * the base from then on (a thread pool, say): the kernel cancels requests
 * of an exiting thread, and the engine re-arms from the new loop thread,
 * without reporting an error and without losing the connections.
 */
static void *one_pass(void *arg)
{
	event_base_loop(arg, EVLOOP_NONBLOCK);
	return NULL;
}

static void count_errors(struct evsteer_listener *lev, void *arg)
{
	(void)lev;
	(void)arg;
	fail_msg("error callback: %s", strerror(errno));
}

static void test_loop_thread_exits(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len;
	struct worker w = {.base = base, .want = 5};
	w.lev = lone(base, EVSTEER_ACCEPT_URING, reply_cb, &w, 0, &ss, &len);
	evsteer_listener_set_error_cb(w.lev, count_errors);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, one_pass, base), 0);
	pthread_join(t, NULL); /* armed there; that thread is gone */
	int c[5];
	for (int i = 0; i < 5; i++)
		c[i] = client(&ss, len);
	assert_true(tl_loop_until_fn(base, served_reached, &w));
	assert_int_equal(check_replies(c, 5, "uring"), 0);
	evsteer_listener_free(w.lev);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_leave_from_callback),
		cmocka_unit_test(test_leave_from_other_thread),
		cmocka_unit_test(test_leave_direct),
		cmocka_unit_test(test_churn),
		cmocka_unit_test(test_churn_lone),
		cmocka_unit_test(test_lone_listener_counts),
		cmocka_unit_test(test_loop_thread_exits),
	};
	return tl_run_once("drain", tests, sizeof(tests) / sizeof(tests[0]));
}

/* SPDX-License-Identifier: MIT */
/*
 * LEV_OPT_THREADSAFE: the lock is never held while user callbacks run, and
 * enable/disable/free from another thread while a callback runs do not
 * deadlock (libevent issue #1224 is that deadlock).
 */
#include "tlib.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sem_wait_bounded(sem_t *s)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += TL_TIMEOUT_MS / 1000;
	while (sem_timedwait(s, &ts) < 0) {
		if (errno != EINTR)
			fail_msg("semaphore wait timed out: deadlock?");
	}
}

static void join_bounded(pthread_t t, const char *what)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += TL_TIMEOUT_MS / 1000;
	int r = pthread_timedjoin_np(t, NULL, &ts);
	if (r)
		fail_msg("%s did not finish: %s (deadlock)", what, strerror(r));
}

static void *dispatch_thread(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

struct blocking {
	sem_t entered, go;
	atomic_bool cb_returned;
	atomic_bool free_saw_return;
	int toggle_rc[3]; /* cmocka asserts belong to the main thread */
	struct evsteer_listener *lev;
};

static void blocking_cb(struct evsteer_listener *lev, int fd,
			struct sockaddr *sa, int len, void *arg)
{
	(void)lev;
	(void)sa;
	(void)len;
	struct blocking *b = arg;
	close(fd);
	sem_post(&b->entered);
	sem_wait_bounded(&b->go);
	atomic_store(&b->cb_returned, true);
}

static void *toggle_thread(void *arg)
{
	struct blocking *b = arg;
	b->toggle_rc[0] = evsteer_listener_disable(b->lev);
	b->toggle_rc[1] = evsteer_listener_enable(b->lev);
	evsteer_listener_set_error_cb(b->lev, NULL);
	b->toggle_rc[2] = evsteer_listener_disable(b->lev);
	return NULL;
}

static void *free_thread(void *arg)
{
	struct blocking *b = arg;
	evsteer_listener_free(b->lev);
	atomic_store(&b->free_saw_return, atomic_load(&b->cb_returned));
	return NULL;
}

static void test_free_while_callback_runs(void **state)
{
	(void)state;
	int before = tl_count_fds();
	struct event_base *base = tl_base();
	struct blocking b = {0};
	sem_init(&b.entered, 0, 0);
	sem_init(&b.go, 0, 0);
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	b.lev = tl_new_bind(base, blocking_cb, &b,
			    EVSTEER_OPT_THREADSAFE | EVSTEER_OPT_CLOSE_ON_FREE,
			    -1, (struct sockaddr *)&ss, len);
	assert_non_null(b.lev);
	int c[2];
	tl_connect_n(evsteer_listener_get_fd(b.lev), c, 2);

	pthread_t loop, toggler, freer;
	assert_int_equal(pthread_create(&loop, NULL, dispatch_thread, base), 0);
	sem_wait_bounded(&b.entered);

	/* The callback is running and blocked: the lock must be free. */
	assert_int_equal(pthread_create(&toggler, NULL, toggle_thread, &b), 0);
	join_bounded(toggler, "enable/disable during a callback");
	for (int i = 0; i < 3; i++)
		assert_int_equal(b.toggle_rc[i], 0);

	/* free waits for the callback, without holding the lock */
	assert_int_equal(pthread_create(&freer, NULL, free_thread, &b), 0);
	assert_int_equal(pthread_tryjoin_np(freer, NULL), EBUSY);
	sem_post(&b.go);
	join_bounded(freer, "free during a callback");
	assert_true(atomic_load(&b.free_saw_return));
	/* the listener was disabled inside: the second client was not taken,
	 * and the loop has nothing left */
	join_bounded(loop, "event_base_dispatch");

	tl_close_n(c, 2);
	event_base_free(base);
	sem_destroy(&b.entered);
	sem_destroy(&b.go);
	assert_int_equal(tl_count_fds(), before);
}

struct counting {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int n;
};

static void counting_cb(struct evsteer_listener *lev, int fd,
			struct sockaddr *sa, int len, void *arg)
{
	(void)lev;
	(void)sa;
	(void)len;
	struct counting *k = arg;
	close(fd);
	pthread_mutex_lock(&k->lock);
	k->n++;
	pthread_cond_broadcast(&k->cond);
	pthread_mutex_unlock(&k->lock);
}

struct clients {
	struct sockaddr_storage addr;
	socklen_t len;
	int n, failed;
	atomic_bool done;
};

static void *client_thread(void *arg)
{
	struct clients *cl = arg;
	for (int i = 0; i < cl->n; i++) {
		int c = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0 ||
		    connect(c, (struct sockaddr *)&cl->addr, cl->len) < 0)
			cl->failed++;
		if (c >= 0)
			close(c);
	}
	atomic_store(&cl->done, true);
	return NULL;
}

static void keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Toggle from another thread while connections flow; none is lost. */
static void test_toggle_under_traffic(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct counting k = {.lock = PTHREAD_MUTEX_INITIALIZER,
			     .cond = PTHREAD_COND_INITIALIZER};
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct evsteer_listener *lev = tl_new_bind(
		base, counting_cb, &k,
		EVSTEER_OPT_THREADSAFE | EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len);
	assert_non_null(lev);
	/* keeps the loop alive while the listener is disabled */
	struct event *keep = event_new(base, -1, EV_PERSIST, keepalive_cb, NULL);
	struct timeval hour = {3600, 0};
	event_add(keep, &hour);

	pthread_t loop, client;
	struct clients cl = {.n = 500};
	cl.len = tl_sockname(evsteer_listener_get_fd(lev), &cl.addr);
	assert_int_equal(pthread_create(&loop, NULL, dispatch_thread, base), 0);
	assert_int_equal(pthread_create(&client, NULL, client_thread, &cl), 0);
	int toggles = 0;
	while (!atomic_load(&cl.done)) {
		assert_int_equal(evsteer_listener_disable(lev), 0);
		assert_int_equal(evsteer_listener_enable(lev), 0);
		toggles++;
	}
	join_bounded(client, "clients");
	assert_int_equal(cl.failed, 0);

	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += TL_TIMEOUT_MS / 1000;
	pthread_mutex_lock(&k.lock);
	while (k.n < cl.n &&
	       pthread_cond_timedwait(&k.cond, &k.lock, &until) != ETIMEDOUT)
		;
	int got = k.n;
	pthread_mutex_unlock(&k.lock);
	print_message("%d toggles, %d/%d accepted\n", toggles, got, cl.n);
	assert_int_equal(got, cl.n);

	evsteer_listener_free(lev); /* from this thread, loop running */
	event_del(keep);
	event_base_loopbreak(base);
	join_bounded(loop, "event_base_dispatch");
	event_free(keep);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_free_while_callback_runs),
		cmocka_unit_test(test_toggle_under_traffic),
	};
	return tl_run_paths("threads", tests, sizeof(tests) / sizeof(tests[0]));
}

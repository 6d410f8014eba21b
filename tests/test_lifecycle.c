/* SPDX-License-Identifier: MIT */
/*
 * Enable/disable/free, from outside and from inside the callback, NULL
 * callbacks, and when event_base_dispatch() returns.
 */
#include "tlib.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

struct fixture {
	struct event_base *base;
	struct tl_srv s;
	int lfd;
	int c[16];
	int nc;
};

static void fx_open(struct fixture *f, unsigned int flags, bool with_cb)
{
	f->base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	f->s.lev = tl_new_bind(f->base, with_cb ? tl_srv_accept_cb : NULL, &f->s,
			       flags, -1, (struct sockaddr *)&ss, len);
	assert_non_null(f->s.lev);
	f->lfd = evsteer_listener_get_fd(f->s.lev);
}

static void fx_connect(struct fixture *f, int n)
{
	assert_true(f->nc + n <= 16);
	tl_connect_n(f->lfd, f->c + f->nc, n);
	f->nc += n;
	tl_wait_queued(f->lfd, n);
}

static void fx_close(struct fixture *f)
{
	tl_close_n(f->c, f->nc);
	tl_srv_close(&f->s);
	evsteer_listener_free(f->s.lev);
	event_base_free(f->base);
}

static void test_enabled_at_creation(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, true);
	fx_connect(&f, 2);
	assert_true(tl_loop_until(f.base, &f.s.n, 2));
	fx_close(&f);
}

/* LEV_OPT_DISABLED: nothing is accepted (dispatch returns at once, the
 * connections stay queued) until enable, which returns 0. */
static void test_opt_disabled(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED, true);
	fx_connect(&f, 3);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 0);
	assert_int_equal(tl_waiting(f.s.lev), 3);
	assert_int_equal(evsteer_listener_enable(f.s.lev), 0);
	assert_true(tl_loop_until(f.base, &f.s.n, 3));
	fx_close(&f);
}

/* A NULL callback accepts nothing until set_cb arms it. */
static void test_null_cb_until_set(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, false);
	assert_int_equal(evsteer_listener_enable(f.s.lev), 0);
	fx_connect(&f, 3);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(tl_waiting(f.s.lev), 3);
	evsteer_listener_set_cb(f.s.lev, tl_srv_accept_cb, &f.s);
	assert_true(tl_loop_until(f.base, &f.s.n, 3));
	fx_close(&f);
}

/* set_cb(NULL) disarms without losing what is queued (libevent would
 * accept-and-close). */
static void test_set_cb_null_keeps_queue(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED, true);
	f.s.setnull_at = 1;
	fx_connect(&f, 4);
	evsteer_listener_enable(f.s.lev);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 1);
	assert_int_equal(tl_waiting(f.s.lev), 3);
	f.s.setnull_at = 0;
	evsteer_listener_set_cb(f.s.lev, tl_srv_accept_cb, &f.s);
	assert_true(tl_loop_until(f.base, &f.s.n, 4));
	fx_close(&f);
}

/* Disabling inside the callback stops the drain loop at once. */
static void test_disable_in_callback(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED, true);
	f.s.disable_at = 1;
	fx_connect(&f, 10);
	evsteer_listener_enable(f.s.lev);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 1);
	assert_int_equal(tl_waiting(f.s.lev), 9);
	assert_int_equal(evsteer_listener_enable(f.s.lev), 0);
	assert_true(tl_loop_until(f.base, &f.s.n, 10));
	fx_close(&f);
}

/* Freeing inside the callback: delivery stops, nothing touches freed
 * memory (ASan), and dispatch returns. */
static void free_in_callback(unsigned int flags)
{
	struct fixture f = {0};
	fx_open(&f, flags | EVSTEER_OPT_DISABLED, true);
	f.s.free_at = 1;
	fx_connect(&f, 10);
	evsteer_listener_enable(f.s.lev);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 1);
	assert_null(f.s.lev);
	if (flags & EVSTEER_OPT_CLOSE_ON_FREE) {
		assert_int_equal(fcntl(f.lfd, F_GETFD), -1);
	} else {
		/* io_uring: what it had accepted was closed and counted by
		 * free; the rest is still queued on the socket we kept */
		if (!tl_uring())
			assert_int_equal(tl_queued(f.lfd), 9);
		close(f.lfd);
	}
	fx_close(&f);
}

static void test_free_in_callback(void **state)
{
	(void)state;
	free_in_callback(EVSTEER_OPT_CLOSE_ON_FREE);
	free_in_callback(EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_THREADSAFE);
	free_in_callback(0);
}

static void test_close_on_free(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, 0, true);
	evsteer_listener_free(f.s.lev);
	f.s.lev = NULL;
	assert_true(fcntl(f.lfd, F_GETFD) >= 0); /* still open */
	close(f.lfd);
	event_base_free(f.base);

	f = (struct fixture){0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, true);
	evsteer_listener_free(f.s.lev);
	f.s.lev = NULL;
	assert_int_equal(fcntl(f.lfd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
	event_base_free(f.base);
}

/* dispatch returns once the only listener is disabled, or freed. */
static void test_dispatch_returns(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, true);
	f.s.disable_at = 2;
	fx_connect(&f, 2);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 2);

	f.s.disable_at = 0;
	f.s.free_at = 3;
	evsteer_listener_enable(f.s.lev);
	fx_connect(&f, 1);
	assert_true(tl_dispatch_returns(f.base));
	assert_int_equal(f.s.n, 3);
	assert_null(f.s.lev);

	/* and an idle, disabled listener holds nothing */
	fx_close(&f);
	f = (struct fixture){0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, true);
	assert_int_equal(evsteer_listener_disable(f.s.lev), 0);
	assert_true(tl_dispatch_returns(f.base));
	fx_close(&f);
}

/* Toggle enable/disable many times with traffic; nothing is lost. */
static void test_toggle_no_loss(void **state)
{
	(void)state;
	struct fixture f = {0};
	fx_open(&f, EVSTEER_OPT_CLOSE_ON_FREE, true);
	f.s.close_now = true;
	for (int i = 0; i < 50; i++) {
		int c = tl_connect_to(f.lfd);
		assert_int_equal(evsteer_listener_disable(f.s.lev), 0);
		assert_int_equal(evsteer_listener_disable(f.s.lev), 0);
		assert_int_equal(evsteer_listener_enable(f.s.lev), 0);
		assert_int_equal(evsteer_listener_enable(f.s.lev), 0);
		assert_true(tl_loop_until(f.base, &f.s.n, i + 1));
		close(c);
	}
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_enabled_at_creation),
		cmocka_unit_test(test_opt_disabled),
		cmocka_unit_test(test_null_cb_until_set),
		cmocka_unit_test(test_set_cb_null_keeps_queue),
		cmocka_unit_test(test_disable_in_callback),
		cmocka_unit_test(test_free_in_callback),
		cmocka_unit_test(test_close_on_free),
		cmocka_unit_test(test_dispatch_returns),
		cmocka_unit_test(test_toggle_no_loss),
	};
	return tl_run_paths("lifecycle", tests, sizeof(tests) / sizeof(tests[0]));
}

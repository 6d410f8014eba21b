/* SPDX-License-Identifier: MIT */
/*
 * Accept errors: descriptor exhaustion pauses with a bounded back-off (no
 * spin, one report per episode, nothing lost, resumes by itself); other
 * errors reach the error callback with errno, or the log.
 */
#include "tlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct filler {
	struct rlimit saved;
	int fds[256];
	int n;
};

static int highest_fd(void)
{
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	int hi = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' && atoi(de->d_name) > hi)
			hi = atoi(de->d_name);
	closedir(d);
	return hi;
}

/* Use up every descriptor: a low soft limit, then dup() until EMFILE. */
static void exhaust(struct filler *f)
{
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &f->saved), 0);
	struct rlimit low = f->saved;
	low.rlim_cur = (rlim_t)highest_fd() + 8;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	/* CI runs us without stdin: dup something we opened ourselves */
	f->n = 0;
	int d = open("/dev/null", O_RDONLY | O_CLOEXEC);
	while (d >= 0 && f->n < 256) {
		f->fds[f->n++] = d;
		d = dup(f->fds[0]);
	}
	assert_int_equal(errno, EMFILE);
}

static void release(struct filler *f)
{
	tl_close_n(f->fds, f->n);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &f->saved), 0);
}

static struct evsteer_listener_stats stats(struct evsteer_listener *lev)
{
	EVSTEER_STATS_OPTS(st);
	assert_int_equal(evsteer_listener_get_stats(lev, &st), 0);
	return st;
}

static void test_emfile_pauses_and_recovers(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	tl_srv_listen(&s, base, EVSTEER_OPT_CLOSE_ON_FREE);
	evsteer_listener_set_error_cb(s.lev, tl_srv_error_cb);
	int lfd = evsteer_listener_get_fd(s.lev);
	int c[12];
	tl_connect_n(lfd, c, 8);
	tl_wait_queued(lfd, 8);

	struct filler fl;
	exhaust(&fl);
	/* Observe a full second at the limit: libevent calls accept() (and
	 * its error callback) in a tight loop here. */
	tl_loop_for(base, 1000);
	struct evsteer_listener_stats st = stats(s.lev);
	print_message("at EMFILE for 1 s: %llu failed accepts, %llu retries\n",
		      (unsigned long long)st.accept_errors,
		      (unsigned long long)st.exhausted_retries);
	assert_int_equal(s.n, 0);
	assert_int_equal(s.errors, 1);
	assert_int_equal(s.last_errno, EMFILE);
	assert_int_equal(st.exhausted_episodes, 1);
	/* back-off 1, 2, 4 ... 250 ms: about a dozen tries in a second */
	assert_true(st.accept_errors >= 2);
	assert_true(st.accept_errors <= 20);
	assert_int_equal(tl_waiting(s.lev), 8); /* still waiting, not lost */

	release(&fl);
	assert_true(tl_loop_until(base, &s.n, 8));
	for (int i = 0; i < 8; i++) {
		struct sockaddr_storage want;
		socklen_t wlen = tl_sockname(c[i], &want);
		assert_memory_equal(&s.peer[i], &want, wlen);
	}

	/* A second episode is reported again, once. (Queue the clients while
	 * disabled: an armed io_uring accept would take them at once.) */
	evsteer_listener_disable(s.lev);
	tl_connect_n(lfd, c + 8, 4);
	tl_wait_queued(lfd, 4);
	exhaust(&fl);
	evsteer_listener_enable(s.lev);
	assert_true(tl_loop_until(base, &s.errors, 2));
	tl_loop_for(base, 300);
	assert_int_equal(s.errors, 2);
	release(&fl);
	assert_true(tl_loop_until(base, &s.n, 12));
	assert_int_equal(stats(s.lev).exhausted_episodes, 2);

	tl_srv_done(&s, base, c, 12);
}

/* EMFILE is reported in the first loop pass after enable, as the event
 * engine (and libevent) report it: the io_uring engine must not need a
 * second pass to find out. */
static void test_emfile_first_pass(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	tl_srv_listen(&s, base, EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED);
	evsteer_listener_set_error_cb(s.lev, tl_srv_error_cb);
	int lfd = evsteer_listener_get_fd(s.lev);
	int c[4];
	tl_connect_n(lfd, c, 4);
	tl_wait_queued(lfd, 4);
	struct filler fl;
	exhaust(&fl);
	assert_int_equal(evsteer_listener_enable(s.lev), 0);
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.errors, 1);
	assert_int_equal(s.last_errno, EMFILE);
	assert_int_equal(s.n, 0);
	release(&fl);
	assert_true(tl_loop_until(base, &s.n, 4));
	tl_srv_done(&s, base, c, 4);
}

/* A listener whose socket was shut down: accept() says EINVAL, epoll says
 * readable forever. The error callback hears it once, with errno, and the
 * listener backs off instead of spinning. */
static struct evsteer_listener *broken_listener(struct event_base *base,
						struct tl_srv *s)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	s->lev = tl_new_bind(base, tl_srv_accept_cb, s, EVSTEER_OPT_CLOSE_ON_FREE,
			     -1, (struct sockaddr *)&ss, len);
	assert_non_null(s->lev);
	assert_int_equal(shutdown(evsteer_listener_get_fd(s->lev), SHUT_RDWR), 0);
	return s->lev;
}

static void test_other_error_reported_once(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	broken_listener(base, &s);
	evsteer_listener_set_error_cb(s.lev, tl_srv_error_cb);
	assert_true(tl_loop_until(base, &s.errors, 1));
	assert_int_equal(s.last_errno, EINVAL);
	tl_loop_for(base, 500);
	assert_int_equal(s.errors, 1);
	struct evsteer_listener_stats st = stats(s.lev);
	assert_true(st.accept_errors <= 20);
	assert_int_equal(st.exhausted_episodes, 0);
	/* disabling ends the back-off too: the loop holds nothing */
	evsteer_listener_disable(s.lev);
	assert_true(tl_dispatch_returns(base));
	evsteer_listener_free(s.lev);
	event_base_free(base);
}

static void test_error_without_cb_logs(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	tl_log_capture_start();
	broken_listener(base, &s);
	tl_loop_for(base, 500);
	int logged = tl_log_capture_count("accept: Invalid argument");
	tl_log_capture_stop();
	assert_int_equal(logged, 1);
	evsteer_listener_free(s.lev);
	event_base_free(base);
}

static void test_error_cb_frees_listener(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {.free_on_error = 1};
	broken_listener(base, &s);
	evsteer_listener_set_error_cb(s.lev, tl_srv_error_cb);
	assert_true(tl_dispatch_returns(base));
	assert_int_equal(s.errors, 1);
	assert_null(s.lev);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_emfile_pauses_and_recovers),
		cmocka_unit_test(test_emfile_first_pass),
		cmocka_unit_test(test_other_error_reported_once),
		cmocka_unit_test(test_error_without_cb_logs),
		cmocka_unit_test(test_error_cb_frees_listener),
	};
	return tl_run_paths("errors", tests, sizeof(tests) / sizeof(tests[0]));
}

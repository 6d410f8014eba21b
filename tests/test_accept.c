/* SPDX-License-Identifier: MIT */
/* Accepting: peer addresses, accepted-socket flags, draining, the cap. */
#include "tlib.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_peers(struct tl_srv *s, int *clients, int n)
{
	for (int i = 0; i < n; i++) {
		struct sockaddr_storage want;
		socklen_t wlen = tl_sockname(clients[i], &want);
		assert_int_equal(s->peerlen[i], (int)wlen);
		assert_memory_equal(&s->peer[i], &want, wlen);
	}
}

static void accept_family(int family)
{
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = family == AF_UNIX ? tl_addr_unix(&ss) :
					     tl_addr_loopback(family, &ss);
	struct tl_srv s = {0};
	s.lev = tl_new_bind(base, tl_srv_accept_cb, &s, EVSTEER_OPT_CLOSE_ON_FREE,
			    -1, (struct sockaddr *)&ss, len);
	assert_non_null(s.lev);
	/* paths steer TCP; AF_UNIX listeners are always plain event ones */
	const char *want = tl_path->name;
	if (family == AF_UNIX) /* no group: the engine the path asks for */
		want = strstr(tl_path->name, "uring") ? "uring" : "event";
	assert_string_equal(evsteer_listener_path_name(s.lev), want);
	assert_ptr_equal(evsteer_listener_get_base(s.lev), base);

	int lfd = evsteer_listener_get_fd(s.lev);
	int c[3];
	tl_connect_n(lfd, c, 3);
	assert_true(tl_loop_until(base, &s.n, 3));
	assert_ptr_equal(s.arg_seen, &s);
	assert_false(s.wrong_listener);
	/* TCP delivers in queue order; compare each with its client */
	if (family == AF_UNIX) {
		for (int i = 0; i < 3; i++) {
			/* unbound clients: the peer is just the family */
			assert_int_equal(s.peerlen[i], (int)sizeof(sa_family_t));
			assert_int_equal(s.peer[i].ss_family, AF_UNIX);
		}
	} else {
		check_peers(&s, c, 3);
	}
	tl_close_n(c, 3);
	tl_srv_close(&s);
	evsteer_listener_free(s.lev);
	if (family == AF_UNIX)
		unlink(((struct sockaddr_un *)&ss)->sun_path);
	event_base_free(base);
}

static void test_accept_ipv4(void **state)
{
	(void)state;
	accept_family(AF_INET);
}

static void test_accept_ipv6(void **state)
{
	(void)state;
	tl_need_ipv6();
	accept_family(AF_INET6);
}

static void test_accept_unix(void **state)
{
	(void)state;
	accept_family(AF_UNIX);
}

/* The listener struct for unix-bound clients: a named client is reported. */
static void test_accept_unix_named_peer(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss, cs;
	socklen_t len = tl_addr_unix(&ss);
	socklen_t clen = tl_addr_unix(&cs);
	struct tl_srv s = {0};
	s.lev = tl_new_bind(base, tl_srv_accept_cb, &s, EVSTEER_OPT_CLOSE_ON_FREE,
			    8, (struct sockaddr *)&ss, len);
	assert_non_null(s.lev);
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(c, (struct sockaddr *)&cs, clen), 0);
	assert_int_equal(connect(c, (struct sockaddr *)&ss, len), 0);
	assert_true(tl_loop_until(base, &s.n, 1));
	assert_int_equal(s.peerlen[0], (int)clen);
	assert_memory_equal(&s.peer[0], &cs, clen);
	close(c);
	tl_srv_close(&s);
	evsteer_listener_free(s.lev);
	unlink(((struct sockaddr_un *)&ss)->sun_path);
	unlink(((struct sockaddr_un *)&cs)->sun_path);
	event_base_free(base);
}

static void accepted_flags(unsigned int flags, bool want_nonblock,
			   bool want_cloexec)
{
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	tl_srv_listen(&s, base, flags | EVSTEER_OPT_CLOSE_ON_FREE);
	int c = tl_connect_to(evsteer_listener_get_fd(s.lev));
	assert_true(tl_loop_until(base, &s.n, 1));
	assert_int_equal(tl_is_nonblocking(s.fds[0]), want_nonblock);
	assert_int_equal(tl_is_cloexec(s.fds[0]), want_cloexec);
	close(c);
	tl_srv_close(&s);
	evsteer_listener_free(s.lev);
	event_base_free(base);
}

static void test_accepted_default_flags(void **state)
{
	(void)state;
	accepted_flags(0, true, false);
}

static void test_accepted_leave_blocking(void **state)
{
	(void)state;
	accepted_flags(EVSTEER_OPT_LEAVE_SOCKETS_BLOCKING, false, false);
}

static void test_accepted_cloexec(void **state)
{
	(void)state;
	accepted_flags(EVSTEER_OPT_CLOSE_ON_EXEC, true, true);
	accepted_flags(EVSTEER_OPT_CLOSE_ON_EXEC |
			       EVSTEER_OPT_LEAVE_SOCKETS_BLOCKING,
		       false, true);
}

/* One wake-up drains everything queued (below the cap), like libevent. */
static void test_drain_until_eagain(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	int lfd = tl_srv_listen(&s, base, EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED);
	int c[20];
	tl_connect_n(lfd, c, 20);
	tl_wait_queued(lfd, 20);
	assert_int_equal(evsteer_listener_enable(s.lev), 0);
	/* one pass, as libevent's own tests and start-up code run it */
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.n, 20);
	EVSTEER_STATS_OPTS(st);
	assert_int_equal(evsteer_listener_get_stats(s.lev, &st), 0);
	assert_int_equal(st.accepted, 20);
	assert_int_equal(st.capped_wakeups, 0);
	check_peers(&s, c, 20);
	tl_srv_done(&s, base, c, 20);
}

/* With a cap, one wake-up takes at most `cap` and yields to the loop. */
static void test_accept_cap(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct tl_srv s = {0};
	EVSTEER_LISTENER_OPTS(o, .max_accepts_per_wakeup = 4);
	s.lev = tl_new_bind_opts(base, tl_srv_accept_cb, &s,
				 EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED,
				 -1, (struct sockaddr *)&ss, len, &o);
	assert_non_null(s.lev);
	int lfd = evsteer_listener_get_fd(s.lev);
	int c[10];
	tl_connect_n(lfd, c, 10);
	tl_wait_queued(lfd, 10);
	evsteer_listener_enable(s.lev);
	/* one pass, as libevent's own tests and start-up code run it */
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.n, 4);
	assert_int_equal(tl_waiting(s.lev), 6);
	assert_true(tl_loop_until(base, &s.n, 10));
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(s.lev, &st);
	assert_true(st.capped_wakeups >= 2);
	assert_true(st.wakeups >= 3);
	check_peers(&s, c, 10);
	tl_srv_done(&s, base, c, 10);
}

/* EVSTEER_MAX_ACCEPTS sets the cap of listeners whose options leave it
 * at 0; a bad value is warned about and ignored. */
static void env_cap(const char *value, int first_pass)
{
	setenv("EVSTEER_MAX_ACCEPTS", value, 1);
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	int lfd = tl_srv_listen(&s, base,
				EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED);
	unsetenv("EVSTEER_MAX_ACCEPTS");
	int c[10];
	tl_connect_n(lfd, c, 10);
	tl_wait_queued(lfd, 10);
	assert_int_equal(evsteer_listener_enable(s.lev), 0);
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.n, first_pass);
	assert_true(tl_loop_until(base, &s.n, 10));
	check_peers(&s, c, 10);
	tl_srv_done(&s, base, c, 10);
}

static void test_accept_cap_env(void **state)
{
	(void)state;
	env_cap("3", 3);
	env_cap("x3", 10);
	env_cap("0", 10);
}

/* The same after disable + enable of a listener that had been running:
 * one pass delivers what queued while it was disabled. */
static void test_first_pass_after_reenable(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	int lfd = tl_srv_listen(&s, base, EVSTEER_OPT_CLOSE_ON_FREE);
	int c[13];
	tl_connect_n(lfd, c, 1);
	assert_true(tl_loop_until(base, &s.n, 1));
	assert_int_equal(evsteer_listener_disable(s.lev), 0);
	tl_connect_n(lfd, c + 1, 12);
	tl_wait_queued(lfd, 12);
	assert_int_equal(evsteer_listener_enable(s.lev), 0);
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.n, 13);
	check_peers(&s, c, 13);
	tl_srv_done(&s, base, c, 13);
}

/* A listener made on a socket that already has connections queued (the
 * caller listened): the first pass delivers them. */
static void test_first_pass_existing_socket(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, len), 0);
	assert_int_equal(listen(fd, 64), 0);
	int c[9];
	tl_connect_n(fd, c, 9);
	tl_wait_queued(fd, 9);
	struct tl_srv s = {0};
	s.lev = tl_new(base, tl_srv_accept_cb, &s, EVSTEER_OPT_CLOSE_ON_FREE, 0,
		       fd);
	assert_non_null(s.lev);
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.n, 9);
	check_peers(&s, c, 9);
	tl_srv_done(&s, base, c, 9);
}

/* Many connections, then nothing left open but what we started with. */
static void test_no_fd_leak(void **state)
{
	(void)state;
	int before = tl_count_fds();
	struct event_base *base = tl_base();
	struct tl_srv s = {.close_now = true};
	int lfd = tl_srv_listen(&s, base, EVSTEER_OPT_CLOSE_ON_FREE);
	for (int round = 0; round < 10; round++) {
		int c[50];
		tl_connect_n(lfd, c, 50);
		assert_true(tl_loop_until(base, &s.n, (round + 1) * 50));
		tl_close_n(c, 50);
	}
	evsteer_listener_free(s.lev);
	event_base_free(base);
	assert_int_equal(tl_count_fds(), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accept_ipv4),
		cmocka_unit_test(test_accept_ipv6),
		cmocka_unit_test(test_accept_unix),
		cmocka_unit_test(test_accept_unix_named_peer),
		cmocka_unit_test(test_accepted_default_flags),
		cmocka_unit_test(test_accepted_leave_blocking),
		cmocka_unit_test(test_accepted_cloexec),
		cmocka_unit_test(test_drain_until_eagain),
		cmocka_unit_test(test_accept_cap),
		cmocka_unit_test(test_accept_cap_env),
		cmocka_unit_test(test_first_pass_after_reenable),
		cmocka_unit_test(test_first_pass_existing_socket),
		cmocka_unit_test(test_no_fd_leak),
	};
	return tl_run_paths("accept", tests, sizeof(tests) / sizeof(tests[0]));
}

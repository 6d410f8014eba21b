/* SPDX-License-Identifier: MIT */
/* new_bind and new: socket options, backlog, failure cleanup. */
#include "tlib.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <unistd.h>

static struct evsteer_listener *bind_flags(struct event_base *base, int family,
					   unsigned int flags, int backlog)
{
	struct sockaddr_storage ss;
	socklen_t len = family == AF_UNIX ? tl_addr_unix(&ss) :
					     tl_addr_loopback(family, &ss);
	return tl_new_bind(base, NULL, NULL, flags | EVSTEER_OPT_CLOSE_ON_FREE,
			   backlog, (struct sockaddr *)&ss, len);
}

/* What libevent's new_bind always does: non-blocking, keepalive, no extras. */
static void test_bind_defaults(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct evsteer_listener *lev = bind_flags(base, AF_INET, 0, -1);
	assert_non_null(lev);
	int fd = evsteer_listener_get_fd(lev);
	assert_true(tl_is_nonblocking(fd));
	assert_false(tl_is_cloexec(fd));
	assert_int_not_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_KEEPALIVE), 0);
	assert_int_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_REUSEADDR), 0);
	assert_int_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_REUSEPORT) != 0,
			 (tl_path->extra_flags & EVSTEER_OPT_REUSEABLE_PORT) != 0);
	assert_int_equal(tl_sockopt_int(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT), 0);
	assert_int_not_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN), 0);
	evsteer_listener_free(lev);
	event_base_free(base);
}

static void test_bind_flag_options(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct evsteer_listener *lev = bind_flags(
		base, AF_INET,
		EVSTEER_OPT_CLOSE_ON_EXEC | EVSTEER_OPT_REUSEABLE |
			EVSTEER_OPT_REUSEABLE_PORT | EVSTEER_OPT_DEFERRED_ACCEPT,
		-1);
	assert_non_null(lev);
	int fd = evsteer_listener_get_fd(lev);
	assert_true(tl_is_cloexec(fd));
	assert_int_not_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_REUSEADDR), 0);
	assert_int_not_equal(tl_sockopt_int(fd, SOL_SOCKET, SO_REUSEPORT), 0);
	assert_int_not_equal(tl_sockopt_int(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT),
			     0);
	evsteer_listener_free(lev);

	lev = bind_flags(base, AF_INET6, EVSTEER_OPT_BIND_IPV6ONLY, -1);
	if (lev) {
		assert_int_not_equal(tl_sockopt_int(evsteer_listener_get_fd(lev),
						    IPPROTO_IPV6, IPV6_V6ONLY),
				     0);
		evsteer_listener_free(lev);
	} else {
		tl_skip_unless(errno != EADDRNOTAVAIL && errno != EAFNOSUPPORT,
			       "ipv6", "no IPv6 loopback");
		fail_msg("IPv6 new_bind failed: %d", errno);
	}
	event_base_free(base);
}

/* Two sockets on one port need SO_REUSEPORT on both (the worker pattern). */
static void test_bind_reuseport_shares_port(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct evsteer_listener *a =
		bind_flags(base, AF_INET, EVSTEER_OPT_REUSEABLE_PORT, -1);
	assert_non_null(a);
	struct sockaddr_storage ss;
	socklen_t len = tl_sockname(evsteer_listener_get_fd(a), &ss);
	struct evsteer_listener *b = tl_new_bind(
		base, NULL, NULL,
		EVSTEER_OPT_REUSEABLE_PORT | EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len);
	assert_non_null(b);
	int before = tl_count_fds();
	/* without SO_REUSEPORT (whatever the path adds) */
	struct evsteer_listener *c = evsteer_listener_new_bind(
		base, NULL, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len, NULL);
	assert_null(c);
	assert_int_equal(errno, EADDRINUSE);
	assert_int_equal(tl_count_fds(), before); /* failure closed its fd */
	evsteer_listener_free(a);
	evsteer_listener_free(b);
	event_base_free(base);
}

/* libevent fails new_bind when an option does not apply; so do we, and the
 * socket it made is closed. */
static void test_bind_option_failure_closes(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	int before = tl_count_fds();
	assert_null(bind_flags(base, AF_UNIX, EVSTEER_OPT_DEFERRED_ACCEPT, -1));
	assert_int_not_equal(errno, 0);
	assert_null(bind_flags(base, AF_INET, EVSTEER_OPT_BIND_IPV6ONLY, -1));
	assert_int_not_equal(errno, 0);
	assert_int_equal(tl_count_fds(), before);
	event_base_free(base);
}

static int max_backlog(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
	return (int)ti.tcpi_sacked; /* a listener's sk_max_ack_backlog */
}

static int somaxconn(void)
{
	return tl_sysctl_int("net/core/somaxconn", 4096);
}

static void test_backlog(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct evsteer_listener *lev = bind_flags(base, AF_INET, 0, 7);
	assert_non_null(lev);
	assert_int_equal(max_backlog(evsteer_listener_get_fd(lev)), 7);
	evsteer_listener_free(lev);

	lev = bind_flags(base, AF_INET, 0, -1);
	assert_non_null(lev);
	int want = EVSTEER_DEFAULT_BACKLOG < somaxconn() ?
			   EVSTEER_DEFAULT_BACKLOG : somaxconn();
	assert_int_equal(max_backlog(evsteer_listener_get_fd(lev)), want);
	evsteer_listener_free(lev);

	/* new_bind with backlog 0 would never listen: refused, nothing left */
	int before = tl_count_fds();
	errno = 0;
	assert_null(bind_flags(base, AF_INET, 0, 0));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(tl_count_fds(), before);
	event_base_free(base);
}

/* new() with backlog 0 takes a socket the caller already listens on and
 * leaves its backlog alone; backlog > 0 calls listen again. */
static void test_new_on_listening_fd(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	int fd = socket(AF_INET, SOCK_STREAM, 0); /* blocking on purpose */
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, len), 0);
	assert_int_equal(listen(fd, 3), 0);

	struct tl_srv s = {0};
	s.lev = tl_new(base, tl_srv_accept_cb, &s, 0, 0, fd);
	assert_non_null(s.lev);
	assert_int_equal(evsteer_listener_get_fd(s.lev), fd);
	assert_int_equal(max_backlog(fd), 3);
	/* a blocking listener would hang the drain loop: made non-blocking */
	assert_true(tl_is_nonblocking(fd));
	int c = tl_connect_to(fd);
	assert_true(tl_loop_until(base, &s.n, 1));
	close(c);
	tl_srv_close(&s);
	evsteer_listener_free(s.lev);
	/* no CLOSE_ON_FREE: the socket is still ours */
	assert_true(fcntl(fd, F_GETFD) >= 0);

	s = (struct tl_srv){0};
	s.lev = tl_new(base, tl_srv_accept_cb, &s, EVSTEER_OPT_CLOSE_ON_FREE, 11,
		       fd);
	assert_non_null(s.lev);
	assert_int_equal(max_backlog(fd), 11);
	evsteer_listener_free(s.lev);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
	event_base_free(base);
}

/* libevent: no address means an AF_INET socket on a kernel-chosen port. */
static void test_bind_null_address(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct tl_srv s = {0};
	s.lev = evsteer_listener_new_bind(base, tl_srv_accept_cb, &s,
					  EVSTEER_OPT_CLOSE_ON_FREE, -1, NULL, 0,
					  NULL);
	assert_non_null(s.lev);
	struct sockaddr_storage ss;
	tl_sockname(evsteer_listener_get_fd(s.lev), &ss);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_not_equal(((struct sockaddr_in *)&ss)->sin_port, 0);
	evsteer_listener_free(s.lev);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bind_defaults),
		cmocka_unit_test(test_bind_flag_options),
		cmocka_unit_test(test_bind_reuseport_shares_port),
		cmocka_unit_test(test_bind_option_failure_closes),
		cmocka_unit_test(test_backlog),
		cmocka_unit_test(test_new_on_listening_fd),
		cmocka_unit_test(test_bind_null_address),
	};
	return tl_run_paths("bind", tests, sizeof(tests) / sizeof(tests[0]));
}

/* SPDX-License-Identifier: MIT */
/*
 * Socket activation: evsteer_listen_fds() reads LISTEN_PID, LISTEN_FDS and
 * LISTEN_FDNAMES as systemd sets them (checked in forked children, which
 * may put sockets at descriptors 3..), and evsteer_group_from_fds() makes a
 * steered group of existing sockets or says clearly why not. The real
 * hand-over through systemd-socket-activate is tests/socket_activation.py.
 */
#include "tlib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- evsteer_listen_fds */

/* In a child: n sockets at 3.. and the variables; exit code = failed check. */
static int child_run(int (*body)(void))
{
	fflush(NULL);
	pid_t pid = tl_fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(body());
	return tl_wait_status(pid);
}

static void put_fds(int n)
{
	int tmp[8];
	for (int i = 0; i < n; i++)
		tmp[i] = fcntl(socket(AF_INET, SOCK_STREAM, 0), F_DUPFD, 100);
	for (int i = 0; i < n; i++) {
		dup2(tmp[i], 3 + i); /* no CLOEXEC: as systemd passes them */
		close(tmp[i]);
	}
}

static void set_env(const char *pid, const char *n, const char *names)
{
	char self[32];
	snprintf(self, sizeof(self), "%d", (int)getpid());
	setenv("LISTEN_PID", pid ? pid : self, 1);
	setenv("LISTEN_FDS", n, 1);
	if (names)
		setenv("LISTEN_FDNAMES", names, 1);
	else
		unsetenv("LISTEN_FDNAMES");
}

static int body_names(void)
{
	int fds[4] = {-1, -1, -1, -1};
	put_fds(3);
	set_env(NULL, "3", "web:admin:web");
	if (evsteer_listen_fds("web", fds, 4, 0) != 2 || fds[0] != 3 ||
	    fds[1] != 5)
		return 1;
	if (evsteer_listen_fds("admin", fds, 4, 0) != 1 || fds[0] != 4)
		return 2;
	if (evsteer_listen_fds(NULL, fds, 4, 0) != 3 || fds[2] != 5)
		return 3;
	if (evsteer_listen_fds("nope", fds, 4, 0) != 0)
		return 4;
	/* counting only, and too little room */
	if (evsteer_listen_fds("web", NULL, 0, 0) != -ENOSPC || errno != ENOSPC)
		return 5;
	if (evsteer_listen_fds(NULL, fds, 2, 0) != -ENOSPC)
		return 6;
	/* ours now: not inherited by what we exec */
	for (int fd = 3; fd < 6; fd++)
		if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC))
			return 7;
	/* unset: a second call (or a child) finds nothing */
	if (evsteer_listen_fds("web", fds, 4, 1) != 2)
		return 8;
	if (getenv("LISTEN_PID") || getenv("LISTEN_FDS") ||
	    getenv("LISTEN_FDNAMES"))
		return 9;
	if (evsteer_listen_fds(NULL, fds, 4, 0) != 0)
		return 10;
	return 0;
}

static void test_listen_fds_names(void **state)
{
	(void)state;
	assert_int_equal(child_run(body_names), 0);
}

static int body_unnamed_and_others(void)
{
	int fds[4];
	put_fds(2);
	/* no names: systemd's "unknown" */
	set_env(NULL, "2", NULL);
	if (evsteer_listen_fds("unknown", fds, 4, 0) != 2)
		return 1;
	/* passed to another process (the one that exec'd us) */
	set_env("1", "2", NULL);
	if (evsteer_listen_fds(NULL, fds, 4, 0) != 0)
		return 2;
	/* nothing passed */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	if (evsteer_listen_fds(NULL, fds, 4, 0) != 0)
		return 3;
	return 0;
}

static void test_listen_fds_unnamed(void **state)
{
	(void)state;
	assert_int_equal(child_run(body_unnamed_and_others), 0);
}

static int body_malformed(void)
{
	int fds[4];
	put_fds(2);
	for (int fd = 5; fd < 12; fd++)
		close(fd);
	static const char *const bad[][3] = {
		{NULL, "abc", NULL},  {NULL, "-1", NULL},
		{NULL, "2x", NULL},   {"12x", "2", NULL},
		{NULL, "2", "web"},   {NULL, "2", "a:b:c"},
		{NULL, "9", NULL}, /* 5..11 are not open */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		set_env(bad[i][0], bad[i][1], bad[i][2]);
		int want = i == 6 ? -EBADF : -EINVAL;
		errno = 0;
		if (evsteer_listen_fds(NULL, fds, 4, 0) != want || errno != -want)
			return 10 + (int)i;
	}
	if (evsteer_listen_fds(NULL, NULL, 1, 0) != -EINVAL)
		return 2;
	return 0;
}

static void test_listen_fds_malformed(void **state)
{
	(void)state;
	assert_int_equal(child_run(body_malformed), 0);
}

/* ---- evsteer_group_from_fds */

/* A listening TCP socket on 127.0.0.1:port (0: any), SO_REUSEPORT if asked. */
static int tcp_listener(int port, bool reuseport, bool listening)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	if (listening)
		assert_int_equal(listen(fd, 64), 0);
	return fd;
}

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static void expect_refused(const int *fds, unsigned int n, int err)
{
	errno = 0;
	assert_null(evsteer_group_from_fds(fds, n, 0, NULL));
	assert_int_equal(errno, err);
	for (unsigned int i = 0; fds && i < n; i++)
		assert_true(is_open(fds[i])); /* still the caller's */
}

static void test_from_fds_refuses(void **state)
{
	(void)state;
	int before = tl_count_fds();
	int a = tcp_listener(0, true, true);
	int port = tl_port_of(a);
	int good[2] = {a, tcp_listener(port, true, true)};

	expect_refused(NULL, 1, EINVAL);
	expect_refused(good, 0, EINVAL);
	errno = 0;
	assert_null(evsteer_group_from_fds(good, EVSTEER_MAX_WORKERS + 1, 0, NULL));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(evsteer_group_from_fds(good, 2, 1u << 20, NULL));
	assert_int_equal(errno, EINVAL);
	EVSTEER_GROUP_OPTS(bad, .policy = (enum evsteer_policy)99);
	errno = 0;
	assert_null(evsteer_group_from_fds(good, 2, 0, &bad));
	assert_int_equal(errno, EINVAL);
	EVSTEER_GROUP_OPTS(bad_accept, .accept = (enum evsteer_accept_mode)7);
	errno = 0;
	assert_null(evsteer_group_from_fds(good, 2, 0, &bad_accept));
	assert_int_equal(errno, EINVAL);

	int twice[2] = {a, a};
	expect_refused(twice, 2, EINVAL);
	int p[2];
	assert_int_equal(pipe(p), 0);
	int notsock[2] = {a, p[0]};
	expect_refused(notsock, 2, ENOTSOCK);
	int udp[1] = {socket(AF_INET, SOCK_DGRAM, 0)};
	expect_refused(udp, 1, EPROTONOSUPPORT);
	int unx[1] = {socket(AF_UNIX, SOCK_STREAM, 0)};
	expect_refused(unx, 1, EAFNOSUPPORT);
	int idle[2] = {a, tcp_listener(port, true, false)};
	expect_refused(idle, 2, EINVAL); /* bound, not listening */
	int other[2] = {a, tcp_listener(0, true, true)};
	expect_refused(other, 2, EINVAL); /* another port */
	int plain[1] = {tcp_listener(0, false, true)};
	expect_refused(plain, 1, EINVAL); /* no SO_REUSEPORT */

	int all[] = {good[0], good[1], p[0], p[1], udp[0], unx[0], idle[1],
		     other[1], plain[0]};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		close(all[i]);
	assert_int_equal(tl_count_fds(), before);
}

struct served {
	int n;
};

static void count_cb(struct evsteer_listener *l, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	close(fd);
	((struct served *)arg)->n++;
}

static void serve_group(enum evsteer_bpf_mode mode)
{
	int before = tl_count_fds();
	int a = tcp_listener(0, true, true);
	int fds[3] = {a, tcp_listener(tl_port_of(a), true, true),
		      tcp_listener(tl_port_of(a), true, true)};
	EVSTEER_GROUP_OPTS(o, .policy = EVSTEER_POLICY_ROUND_ROBIN,
			   .stall_us = -1, .bpf = mode,
			   .accept = EVSTEER_ACCEPT_EVENT);
	struct evsteer_group *g = evsteer_group_from_fds(fds, 3, 0, &o);
	assert_non_null(g);
	assert_int_equal(evsteer_group_size(g), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(evsteer_group_get_fd(g, (unsigned)i), fds[i]);
		assert_true(tl_is_nonblocking(fds[i]));
	}
	EVSTEER_PATH_OPTS(p);
	assert_int_equal(evsteer_group_get_path(g, &p), 0);
	assert_int_equal(p.steering, mode == EVSTEER_BPF_OFF ?
					     EVSTEER_STEER_KERNEL_HASH :
					     EVSTEER_STEER_BPF);

	struct event_base *base = tl_base();
	struct served s = {0};
	struct evsteer_listener *l[3];
	for (unsigned int i = 0; i < 3; i++)
		assert_non_null(l[i] = evsteer_group_attach(g, i, base, count_cb, &s));
	evsteer_group_free(g);
	int c[30];
	tl_connect_n(fds[0], c, 30);
	assert_true(tl_loop_until(base, &s.n, 30));
	if (mode != EVSTEER_BPF_OFF) {
		g = evsteer_listener_get_group(l[0]);
		for (unsigned int i = 0; i < 3; i++) {
			EVSTEER_WORKER_STATS_OPTS(st);
			evsteer_group_worker_stats(g, i, &st);
			assert_int_equal(st.steered, 10); /* exact rotation */
		}
	}
	tl_close_n(c, 30);
	for (int i = 0; i < 3; i++)
		evsteer_listener_free(l[i]);
	/* the group owned them */
	for (int i = 0; i < 3; i++)
		assert_false(is_open(fds[i]));
	event_base_free(base);
	assert_int_equal(tl_count_fds(), before);
}

static void test_from_fds_bpf(void **state)
{
	(void)state;
	tl_need_bpf();
	serve_group(EVSTEER_BPF_REQUIRE);
}

static void test_from_fds_kernel_hash(void **state)
{
	(void)state;
	serve_group(EVSTEER_BPF_OFF);
}

/* Never attached: freeing the group closes what it was given. */
static void test_from_fds_free_unattached(void **state)
{
	(void)state;
	int before = tl_count_fds();
	int a = tcp_listener(0, true, true);
	int fds[2] = {a, tcp_listener(tl_port_of(a), true, true)};
	struct evsteer_group *g = evsteer_group_from_fds(fds, 2, 0, NULL);
	assert_non_null(g);
	/* a worker added later binds the same address itself */
	int slot = evsteer_group_add_worker(g);
	assert_int_equal(slot, 2);
	assert_int_equal(tl_port_of(evsteer_group_get_fd(g, 2)), tl_port_of(a));
	evsteer_group_free(g);
	assert_false(is_open(fds[0]));
	assert_false(is_open(fds[1]));
	assert_int_equal(tl_count_fds(), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_listen_fds_names),
		cmocka_unit_test(test_listen_fds_unnamed),
		cmocka_unit_test(test_listen_fds_malformed),
		cmocka_unit_test(test_from_fds_refuses),
		cmocka_unit_test(test_from_fds_bpf),
		cmocka_unit_test(test_from_fds_kernel_hash),
		cmocka_unit_test(test_from_fds_free_unattached),
	};
	return tl_run_once("sdactivate", tests, sizeof(tests) / sizeof(tests[0]));
}

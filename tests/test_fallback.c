/* SPDX-License-Identifier: MIT */
/*
 * BPF unavailable, forced rather than assumed: a seccomp filter in a forked
 * child makes bpf() fail with EPERM or ENOSYS; setpriv runs this binary
 * again with chosen capability sets (CAP_BPF alone must be enough, as uid 0
 * and as an unprivileged uid with ambient CAP_BPF; without it: fallback).
 * In each child the group must keep working on the next rung (classic BPF
 * steering, which needs no capability), report why, and fail creation with
 * a clear error under "require".
 */
#include "tlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/thread.h>

/* ---- the child side: plain C, no cmocka (its state belongs to the parent) */

static void child_fail(int code, const char *what)
{
	fprintf(stderr, "child: %s (errno %d: %s)\n", what, errno,
		strerror(errno));
	_exit(code);
}

struct count {
	int n, want;
};

static bool count_reached(void *arg)
{
	struct count *c = arg;
	return c->n >= c->want;
}

static void count_cb(struct evsteer_listener *l, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	close(fd);
	((struct count *)arg)->n++;
}

/*
 * expect_bpf: BPF must steer (round-robin exact); otherwise the group must
 * run on classic BPF with a reason containing `reason` and not
 * `wrong` (the fix it must not send the operator to), and "require" must
 * fail with `require_errno`.
 */
static void child_check(bool expect_bpf, const char *reason, const char *wrong,
			int require_errno)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_GROUP_OPTS(o, .policy = EVSTEER_POLICY_ROUND_ROBIN, .stall_us = -1);
	struct evsteer_group *g =
		evsteer_group_new((struct sockaddr *)&ss, len, 2, 0, -1, &o);
	if (!g)
		child_fail(10, "group_new (auto) failed");
	EVSTEER_PATH_OPTS(p);
	evsteer_group_get_path(g, &p);
	fprintf(stderr, "child: steering %d, reason \"%s\"\n", p.steering,
		p.steering_reason);
	if (expect_bpf && p.steering != EVSTEER_STEER_BPF)
		child_fail(11, "expected BPF steering");
	/* the next rung: classic BPF (tests/test_cbpf.c tests it further),
	 * with the reason eBPF was refused */
	if (!expect_bpf && (p.steering != EVSTEER_STEER_CBPF ||
			    strcmp(p.name, "cbpf+event") ||
			    !strstr(p.steering_reason, reason) ||
			    (wrong && strstr(p.steering_reason, wrong))))
		child_fail(12, "expected classic BPF with the reason");

	/* the group serves connections either way */
	struct event_base *base = event_base_new();
	struct count c = {.want = 20};
	struct evsteer_listener *l[2];
	for (unsigned int i = 0; i < 2; i++)
		if (!(l[i] = evsteer_group_attach(g, i, base, count_cb, &c)))
			child_fail(13, "attach");
	len = sizeof(ss);
	getsockname(evsteer_group_get_fd(g, 0), (struct sockaddr *)&ss, &len);
	int fds[20];
	for (int i = 0; i < 20; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fds[i], (struct sockaddr *)&ss, len) < 0)
			child_fail(14, "connect");
	}
	if (!tl_loop_until_fn(base, count_reached, &c))
		child_fail(15, "connections not served");
	if (expect_bpf) {
		EVSTEER_WORKER_STATS_OPTS(st);
		evsteer_group_worker_stats(g, 0, &st);
		if (st.steered != 10)
			child_fail(16, "round-robin not exact under CAP_BPF");
	}
	for (int i = 0; i < 20; i++)
		close(fds[i]);
	evsteer_listener_free(l[0]);
	evsteer_listener_free(l[1]);
	evsteer_group_free(g);
	event_base_free(base);

	/* require: a clear error instead of a fallback */
	if (!expect_bpf) {
		tl_addr_loopback(AF_INET, &ss);
		len = sizeof(struct sockaddr_in);
		EVSTEER_GROUP_OPTS(r, .bpf = EVSTEER_BPF_REQUIRE);
		errno = 0;
		g = evsteer_group_new((struct sockaddr *)&ss, len, 2, 0, -1, &r);
		if (g || errno != require_errno)
			child_fail(17, "require did not fail as expected");
		/* the environment says the same for plain evconnlistener code */
		setenv("EVSTEER_BPF", "require", 1);
		errno = 0;
		struct evsteer_listener *x = evsteer_listener_new_bind(
			base = event_base_new(), count_cb, &c,
			EVSTEER_OPT_REUSEABLE_PORT | EVSTEER_OPT_CLOSE_ON_FREE, -1,
			(struct sockaddr *)&ss, len, NULL);
		if (x || errno != require_errno)
			child_fail(18, "EVSTEER_BPF=require did not fail");
		event_base_free(base);
	}
	_exit(0);
}

/* seccomp_err: deny bpf() with it; -1: enter a new user namespace. */
static int run_forked(int seccomp_err, bool expect_bpf, const char *reason,
		      const char *wrong, int require_errno)
{
	fflush(NULL);
	pid_t pid = tl_fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (seccomp_err > 0 && tl_deny_syscall(__NR_bpf, seccomp_err) < 0)
			child_fail(2, "seccomp");
		if (seccomp_err < 0 && unshare(CLONE_NEWUSER) < 0)
			child_fail(3, "unshare(CLONE_NEWUSER)");
		child_check(expect_bpf, reason, wrong, require_errno);
	}
	return tl_wait_status(pid);
}

/* ---- the parent side: cmocka tests. A forced fallback only means
 * something where the real thing works here. */

static void test_seccomp_eperm(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_skip_unless(TL_SECCOMP_ARCH != 0, "bpf", "no seccomp arch constant here");
	/* root holds CAP_BPF: the reason must blame the filter, not ask for
	 * the capability */
	assert_int_equal(run_forked(EPERM, false, "seccomp", "needs CAP_BPF",
				    EPERM),
			 0);
}

static void test_seccomp_enosys(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_skip_unless(TL_SECCOMP_ARCH != 0, "bpf", "no seccomp arch constant here");
	assert_int_equal(run_forked(ENOSYS, false, "unavailable: a seccomp",
				    "CAP_BPF", ENOSYS),
			 0);
}

/* Full capabilities inside a new user namespace do not count for bpf(). */
static void test_user_namespace(void **state)
{
	(void)state;
	tl_need_bpf();
	int max = tl_sysctl_int("user/max_user_namespaces", 1);
	tl_skip_unless(max > 0, "bpf", "user namespaces disabled here");
#if defined(__SANITIZE_THREAD__)
	/* unshare(CLONE_NEWUSER) needs a single-threaded process, and TSan
	 * runs a thread of its own in every process (EINVAL); the plain and
	 * ASan suites run this test. */
	print_message("skip: not under ThreadSanitizer\n");
	skip();
#endif
	assert_int_equal(run_forked(-1, false, "user namespace", "needs CAP_BPF",
				    EPERM),
			 0);
}

static void test_env_off(void **state)
{
	(void)state;
	fflush(NULL);
	pid_t pid = tl_fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setenv("EVSTEER_BPF", "off", 1);
		struct sockaddr_storage ss;
		socklen_t len = tl_addr_loopback(AF_INET, &ss);
		struct evsteer_group *g =
			evsteer_group_new((struct sockaddr *)&ss, len, 2, 0, -1,
					  NULL);
		EVSTEER_PATH_OPTS(p);
		if (!g || evsteer_group_get_path(g, &p) < 0 ||
		    p.steering != EVSTEER_STEER_KERNEL_HASH ||
		    !strstr(p.steering_reason, "off"))
			_exit(1);
		evsteer_group_free(g);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/*
 * io_uring refused (a container's seccomp profile): a listener that asks for
 * it accepts with the event engine and says why; a direct listener, which
 * cannot work without it, fails with the errno.
 */
static void uring_child(int err, const char *reason)
{
	if (tl_deny_syscall(__NR_io_uring_setup, err) < 0)
		child_fail(2, "seccomp");
	struct event_base *base = event_base_new();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct count c = {.want = 5};
	EVSTEER_LISTENER_OPTS(o, .accept = EVSTEER_ACCEPT_URING);
	struct evsteer_listener *l = evsteer_listener_new_bind(
		base, count_cb, &c, EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len, &o);
	if (!l)
		child_fail(20, "listener");
	EVSTEER_PATH_OPTS(p);
	evsteer_listener_get_path(l, &p);
	fprintf(stderr, "child: engine %d, reason \"%s\"\n", p.engine,
		p.engine_reason);
	if (p.engine != EVSTEER_ENGINE_EVENT || !strstr(p.engine_reason, reason))
		child_fail(21, "expected the event engine with the reason");
	len = sizeof(ss);
	getsockname(evsteer_listener_get_fd(l), (struct sockaddr *)&ss, &len);
	int fds[5];
	for (int i = 0; i < 5; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fds[i], (struct sockaddr *)&ss, len) < 0)
			child_fail(22, "connect");
	}
	if (!tl_loop_until_fn(base, count_reached, &c))
		child_fail(23, "not served");
	evsteer_listener_free(l);
	errno = 0;
	tl_addr_loopback(AF_INET, &ss);
	struct evsteer_listener *d = evsteer_listener_new_bind_direct(
		base, NULL, NULL, 0, -1, (struct sockaddr *)&ss,
		sizeof(struct sockaddr_in), 0, NULL);
	if (d || errno != err)
		child_fail(24, "direct listener did not fail with the errno");
	_exit(0);
}

static int run_uring_child(int err, const char *reason)
{
	fflush(NULL);
	pid_t pid = tl_fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
		uring_child(err, reason);
	return tl_wait_status(pid);
}

static void test_uring_seccomp_eperm(void **state)
{
	(void)state;
	tl_need_uring();
	tl_skip_unless(TL_SECCOMP_ARCH != 0, "uring", "no seccomp arch constant here");
	assert_int_equal(run_uring_child(EPERM, "(EPERM) by a seccomp filter"), 0);
}

static void test_uring_seccomp_enosys(void **state)
{
	(void)state;
	tl_need_uring();
	tl_skip_unless(TL_SECCOMP_ARCH != 0, "uring", "no seccomp arch constant here");
	assert_int_equal(run_uring_child(ENOSYS, "(ENOSYS) under a seccomp"), 0);
}

/*
 * Run this binary again under setpriv with `args`, in child mode `mode`,
 * from a staged copy: an unprivileged uid may not reach the build tree
 * (a checkout under /root), and it gets no CAP_DAC_* to help it there.
 */
static int run_setpriv(const char *const *args, const char *mode)
{
	char dir[256], exe[512], libdir[512];
	int err = tl_stage_self(dir, sizeof(dir), exe, sizeof(exe), libdir,
				sizeof(libdir));
	if (err < 0)
		fail_msg("staging the test binary: %s", strerror(-err));
	const char *argv[32];
	int k = 0;
	argv[k++] = "setpriv";
	for (int i = 0; args[i]; i++)
		argv[k++] = args[i];
	argv[k++] = "--";
	argv[k++] = exe;
	argv[k++] = "--child";
	argv[k++] = mode;
	argv[k] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* the staged library, not the build tree's; and a cwd the
		 * child can enter (meson runs us inside the build tree) */
		setenv("LD_LIBRARY_PATH", libdir, 1);
		if (chdir("/") < 0)
			_exit(126);
		execvp("setpriv", (char *const *)argv);
		_exit(127);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	tl_unstage(dir);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static bool have_setpriv(void)
{
	return system("setpriv --version >/dev/null 2>&1") == 0 && geteuid() == 0;
}

static void test_cap_bpf_alone_as_root(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_skip_unless(have_setpriv(), "bpf", "needs root and setpriv");
	const char *a[] = {"--bounding-set=-all,+bpf", "--inh-caps=-all,+bpf",
			   "--ambient-caps=-all,+bpf", NULL};
	assert_int_equal(run_setpriv(a, "expect-bpf"), 0);
}

static void test_cap_bpf_ambient_unprivileged(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_skip_unless(have_setpriv(), "bpf", "needs root and setpriv");
	const char *a[] = {"--reuid=65534", "--regid=65534", "--clear-groups",
			   "--bounding-set=-all,+bpf", "--inh-caps=-all,+bpf",
			   "--ambient-caps=-all,+bpf", NULL};
	assert_int_equal(run_setpriv(a, "expect-bpf"), 0);
}

static void test_no_cap_bpf_falls_back(void **state)
{
	(void)state;
	tl_need_bpf();
	tl_skip_unless(have_setpriv(), "bpf", "needs root and setpriv");
	/* root without CAP_BPF and CAP_SYS_ADMIN (either would allow it) */
	const char *a[] = {"--bounding-set=-all", "--inh-caps=-all", NULL};
	assert_int_equal(run_setpriv(a, "expect-fallback"), 0);
	const char *b[] = {"--reuid=65534", "--regid=65534", "--clear-groups",
			   "--bounding-set=-all", "--inh-caps=-all", NULL};
	assert_int_equal(run_setpriv(b, "expect-fallback"), 0);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--child")) {
		evthread_use_pthreads();
		child_check(!strcmp(argv[2], "expect-bpf"), "needs CAP_BPF",
			    "seccomp", EPERM);
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seccomp_eperm),
		cmocka_unit_test(test_seccomp_enosys),
		cmocka_unit_test(test_user_namespace),
		cmocka_unit_test(test_env_off),
		cmocka_unit_test(test_uring_seccomp_eperm),
		cmocka_unit_test(test_uring_seccomp_enosys),
		cmocka_unit_test(test_cap_bpf_alone_as_root),
		cmocka_unit_test(test_cap_bpf_ambient_unprivileged),
		cmocka_unit_test(test_no_cap_bpf_falls_back),
	};
	return tl_run_once("fallback", tests, sizeof(tests) / sizeof(tests[0]));
}

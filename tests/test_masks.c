/* SPDX-License-Identifier: MIT */
/*
 * EVSTEER_TEST_MASK: each probed kernel feature masked in turn, the direct
 * and the io_uring fd listener still serve connections, and the path
 * report names what is missing, whether masked or missing from the kernel
 * (Linux 6.1 lacks ACCEPT_DONTWAIT, SOCK_NONEMPTY and FIXED_FD_INSTALL),
 * and what is done without it. docs/kernels.md lists the features.
 */
#include "tlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;
	if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

/* ---- serving: the direct listener replies and closes, the fd one too */

struct served {
	int n;
};

static void direct_reply(struct evsteer_listener *lev, struct evsteer_uring *r,
			 int slot, void *arg)
{
	(void)lev;
	struct served *s = arg;
	if (evsteer_uring_send_and_close(r, slot, "hello", 5, NULL, NULL) == 0)
		s->n++;
}

static void fd_reply(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)lev;
	(void)sa;
	(void)len;
	struct served *s = arg;
	if (write(fd, "hello", 5) == 5)
		s->n++;
	close(fd);
}

#define NCONN 4

static void serve(struct event_base *base, struct evsteer_listener *lev,
		  struct served *s)
{
	int c[NCONN];
	tl_connect_n(evsteer_listener_get_fd(lev), c, NCONN);
	assert_true(tl_loop_until(base, &s->n, NCONN));
	for (int i = 0; i < NCONN; i++) {
		char buf[8];
		struct timeval tv = {.tv_sec = TL_TIMEOUT_MS / 1000};
		setsockopt(c[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		/* the direct reply is sent by the ring: run the loop */
		for (int k = 0; k < 100; k++) {
			ssize_t r = recv(c[i], buf, sizeof(buf), MSG_DONTWAIT);
			if (r == 5)
				break;
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				fail_msg("client %d: %zd (%s)", i, r,
					 r < 0 ? strerror(errno) : "EOF");
			tl_loop_for(base, 10);
			if (k == 99)
				fail_msg("client %d: no reply", i);
		}
	}
	tl_close_n(c, NCONN);
}

/* ---- what the path report must say */

struct feat {
	const char *mask;  /* its EVSTEER_TEST_MASK name */
	const char *name;  /* in reasons */
	int major, minor;  /* the kernel that has it */
	bool direct;       /* a direct listener reports it */
};

static const struct feat feats[] = {
	{"accept_dontwait", "IORING_ACCEPT_DONTWAIT", 6, 10, true},
	{"fixed_fd_install", "IORING_OP_FIXED_FD_INSTALL", 6, 8, true},
	/* probed, not used: nothing to report */
	{"sock_nonempty", "IORING_CQE_F_SOCK_NONEMPTY", 6, 10, false},
};

static bool in_mask(const char *mask, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = mask; (p = strstr(p, name)); p += n)
		if ((p == mask || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return true;
	return false;
}

static void check_direct_reason(const char *mask, const char *reason)
{
	print_message("mask %s: direct engine reason \"%s\"\n", mask, reason);
	bool any = false;
	for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++) {
		const struct feat *f = &feats[i];
		char masked[96], lacks[96];
		snprintf(masked, sizeof(masked), "%s masked (EVSTEER_TEST_MASK)",
			 f->name);
		snprintf(lacks, sizeof(lacks), "the kernel lacks %s", f->name);
		bool is_masked = in_mask(mask, f->mask);
		bool kernel_has = kernel_at_least(f->major, f->minor);
		if (!f->direct) {
			if (strstr(reason, f->name))
				fail_msg("mask %s: \"%s\" names %s, which nothing "
					 "uses", mask, reason, f->name);
			continue;
		}
		if (is_masked && !kernel_has) {
			/* either word is true; the kernel's is given */
			if (!strstr(reason, f->name))
				fail_msg("mask %s: \"%s\" lacks %s", mask, reason,
					 f->name);
		} else if (is_masked) {
			if (!strstr(reason, masked))
				fail_msg("mask %s: \"%s\" lacks \"%s\"", mask,
					 reason, masked);
		} else if (!kernel_has) {
			if (!strstr(reason, lacks))
				fail_msg("mask %s: \"%s\" lacks \"%s\"", mask,
					 reason, lacks);
		} else if (strstr(reason, f->name)) {
			fail_msg("mask %s: \"%s\" names %s, which this kernel "
				 "has", mask, reason, f->name);
		}
		any |= is_masked || !kernel_has;
	}
	if (any)
		assert_true(!strncmp(reason, "io_uring: ", 10));
	else
		assert_string_equal(reason, "");
	/* and each lack says what changes */
	if (strstr(reason, "IORING_ACCEPT_DONTWAIT"))
		assert_non_null(strstr(reason, "direct workers do not steal"));
	if (strstr(reason, "IORING_OP_FIXED_FD_INSTALL"))
		assert_non_null(strstr(reason, "evsteer_uring_fd_install() fails "
					       "with EOPNOTSUPP"));
}

/*
 * Under `mask`: a direct listener and an io_uring fd listener, each a
 * one-socket BPF group (REUSEABLE_PORT), serve connections; the path
 * reports say what the mask and the kernel took away.
 */
static void run_masked(const char *mask)
{
	tl_need_bpf();
	tl_need_uring();
	setenv("EVSTEER_TEST_MASK", mask, 1);
	bool no_bpf = in_mask(mask, "bpf");
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	unsigned int fl = EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE_PORT;

	/* direct */
	struct served sd = {0};
	struct evsteer_listener *ld = evsteer_listener_new_bind_direct(
		base, direct_reply, &sd, fl, -1, (struct sockaddr *)&ss, len, 0,
		NULL);
	assert_non_null(ld);
	EVSTEER_PATH_OPTS(pd);
	assert_int_equal(evsteer_listener_get_path(ld, &pd), 0);
	assert_int_equal(pd.engine, EVSTEER_ENGINE_URING_DIRECT);
	if (no_bpf) {
		/* eBPF masked: the next rung, classic BPF */
		assert_string_equal(pd.name, "cbpf+uring-direct");
		assert_int_equal(pd.steering, EVSTEER_STEER_CBPF);
		assert_non_null(strstr(pd.steering_reason,
				       "masked by EVSTEER_TEST_MASK=bpf"));
	} else {
		assert_string_equal(pd.name, "bpf+uring-direct");
		assert_string_equal(pd.steering_reason, "");
	}
	check_direct_reason(mask, pd.engine_reason);
	serve(base, ld, &sd);
	if (strstr(pd.engine_reason, "IORING_OP_FIXED_FD_INSTALL")) {
		/* the degraded call: an error, nothing submitted */
		errno = 0;
		assert_int_equal(evsteer_uring_fd_install(
					 evsteer_listener_get_uring(ld), 0, 1,
					 NULL, NULL),
				 -EOPNOTSUPP);
		assert_int_equal(errno, EOPNOTSUPP);
	}
	evsteer_listener_free(ld);

	/* io_uring into fds, asked for (auto accepts with accept4()) */
	struct served sf = {0};
	len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_LISTENER_OPTS(fo, .accept = EVSTEER_ACCEPT_URING);
	struct evsteer_listener *lf = evsteer_listener_new_bind(
		base, fd_reply, &sf, fl, -1, (struct sockaddr *)&ss, len, &fo);
	assert_non_null(lf);
	EVSTEER_PATH_OPTS(pf);
	assert_int_equal(evsteer_listener_get_path(lf, &pf), 0);
	print_message("mask %s: fd listener %s, \"%s\" / \"%s\"\n", mask, pf.name,
		      pf.steering_reason, pf.engine_reason);
	/* none of the accept features matter to the fd engine */
	assert_string_equal(pf.engine_reason, "");
	if (no_bpf) {
		/* eBPF masked: classic BPF steers the same engine */
		assert_string_equal(pf.name, "cbpf+uring");
		assert_non_null(strstr(pf.steering_reason,
				       "masked by EVSTEER_TEST_MASK=bpf"));
	} else {
		assert_string_equal(pf.name, "bpf+uring");
	}
	serve(base, lf, &sf);
	evsteer_listener_free(lf);

	if (no_bpf) {
		/* require: a creation error, not a fallback */
		EVSTEER_LISTENER_OPTS(o, .bpf = EVSTEER_BPF_REQUIRE);
		len = tl_addr_loopback(AF_INET, &ss);
		assert_null(evsteer_listener_new_bind(base, fd_reply, &sf, fl, -1,
						      (struct sockaddr *)&ss,
						      len, &o));
	}
	event_base_free(base);
	unsetenv("EVSTEER_TEST_MASK");
}

static void test_mask_none(void **state)
{
	(void)state;
	run_masked("");
}

static void test_mask_accept_dontwait(void **state)
{
	(void)state;
	run_masked("accept_dontwait");
}

static void test_mask_fixed_fd_install(void **state)
{
	(void)state;
	run_masked("fixed_fd_install");
}

static void test_mask_sock_nonempty(void **state)
{
	(void)state;
	tl_log_capture_start();
	run_masked("sock_nonempty");
	/* probed and masked, though nothing depends on it; a kernel that
	 * lacks it says so instead */
	assert_true(tl_log_capture_count(kernel_at_least(6, 10) ?
						 "CQE_F_SOCK_NONEMPTY masked" :
						 "CQE_F_SOCK_NONEMPTY no") > 0);
	tl_log_capture_stop();
}

static void test_mask_bpf(void **state)
{
	(void)state;
	run_masked("bpf");
}

/* all of them at once, as a 6.1 kernel without BPF would be */
static void test_mask_all(void **state)
{
	(void)state;
	run_masked("accept_dontwait,fixed_fd_install,sock_nonempty,bpf");
}

static void test_mask_unknown_name(void **state)
{
	(void)state;
	tl_log_capture_start();
	run_masked("no_such_feature");
	assert_true(tl_log_capture_count("EVSTEER_TEST_MASK: unknown feature "
					 "'no_such_feature'") > 0);
	tl_log_capture_stop();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mask_none),
		cmocka_unit_test(test_mask_accept_dontwait),
		cmocka_unit_test(test_mask_fixed_fd_install),
		cmocka_unit_test(test_mask_sock_nonempty),
		cmocka_unit_test(test_mask_bpf),
		cmocka_unit_test(test_mask_all),
		cmocka_unit_test(test_mask_unknown_name),
	};
	return tl_run_once("masks", tests, sizeof(tests) / sizeof(tests[0]));
}

/* SPDX-License-Identifier: MIT */
/* Misuse gets a clear error (NULL/-1 + errno, -errno), a log line, no crash,
 * no leaked descriptor. */
#include "tlib.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void dummy_cb(struct evsteer_listener *l, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	(void)arg;
	close(fd);
}

#define EXPECT_NULL_ERRNO(call, err)                                           \
	do {                                                                   \
		errno = 0;                                                     \
		assert_null(call);                                             \
		assert_int_equal(errno, (err));                                \
	} while (0)

static void test_bad_create_args(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct sockaddr *sa = (struct sockaddr *)&ss;
	int before = tl_count_fds();

	tl_log_capture_start();
	EXPECT_NULL_ERRNO(tl_new_bind(NULL, dummy_cb, NULL, 0, -1, sa, len),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("NULL event_base"), 1);
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 1u << 20, -1, sa,
				      len),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("unknown flags 0x100000"), 1);
	/* NULL address with a length, short lengths, oversize lengths */
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 0, -1, NULL, len),
			  EINVAL);
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 0, -1, sa, 4),
			  EINVAL);
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 0, -1, sa, 1),
			  EINVAL);
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 0, -1, sa,
				      sizeof(ss) + 1),
			  EINVAL);
	assert_true(tl_log_capture_count("bad address") >= 4);
	ss.ss_family = AF_APPLETALK;
	EXPECT_NULL_ERRNO(tl_new_bind(base, dummy_cb, NULL, 0, -1, sa, len),
			  EAFNOSUPPORT);
	tl_addr_loopback(AF_INET, &ss);

	EXPECT_NULL_ERRNO(tl_new(base, dummy_cb, NULL, 0, -1, -1), EINVAL);
	assert_int_equal(tl_log_capture_count("invalid fd -1"), 1);
	EXPECT_NULL_ERRNO(tl_new(NULL, dummy_cb, NULL, 0, -1, 0), EINVAL);
	EXPECT_NULL_ERRNO(tl_new(base, dummy_cb, NULL, 0, -1, 987654), EBADF);
	int p[2];
	assert_int_equal(pipe(p), 0);
	EXPECT_NULL_ERRNO(tl_new(base, dummy_cb, NULL, 0, -1, p[0]), ENOTSOCK);
	assert_int_equal(tl_log_capture_count("is not a usable socket"), 2);
	close(p[0]);
	close(p[1]);
	tl_log_capture_stop();

	assert_int_equal(tl_count_fds(), before);
	event_base_free(base);
}

static void test_bad_opts(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct sockaddr *sa = (struct sockaddr *)&ss;

	struct evsteer_listener_opts small = {.sz = 1};
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL, 0, -1,
						    sa, len, &small),
			  EINVAL);
	/* a newer caller's struct with a field we do not know set */
	struct {
		struct evsteer_listener_opts o;
		unsigned long future;
	} big = {.o.sz = sizeof(big), .future = 1};
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL, 0, -1,
						    sa, len, &big.o),
			  EINVAL);
	/* ...and the same with the unknown field zero is fine */
	big.future = 0;
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, sa, len,
		&big.o);
	assert_non_null(lev);
	/* an older caller's struct (only sz) gets the defaults */
	struct evsteer_listener_opts old = {.sz = sizeof(size_t)};
	struct evsteer_listener *lev2 = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, sa, len, &old);
	assert_non_null(lev2);

	struct evsteer_path small_path = {.sz = 1};
	assert_int_equal(evsteer_listener_get_path(lev, &small_path), -EINVAL);
	assert_int_equal(errno, EINVAL);
	/* an older caller's path struct: only what fits is written */
	struct evsteer_path part = {.sz = offsetof(struct evsteer_path, name)};
	part.name = (const char *)&part;
	assert_int_equal(evsteer_listener_get_path(lev, &part), 0);
	assert_ptr_equal(part.name, (const char *)&part);
	assert_int_equal(part.engine, EVSTEER_ENGINE_EVENT);

	EVSTEER_PATH_OPTS(path);
	assert_int_equal(evsteer_listener_get_path(lev, &path), 0);
	assert_string_equal(path.name, "event");
	assert_int_equal(path.steering, EVSTEER_STEER_NONE);
	assert_non_null(path.steering_reason);
	assert_non_null(path.engine_reason);

	evsteer_listener_free(lev);
	evsteer_listener_free(lev2);
	event_base_free(base);
}

/* Enum options out of range are EINVAL, on listener and group options. */
static void test_enum_opts(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct sockaddr *sa = (struct sockaddr *)&ss;
	int before = tl_count_fds();

	tl_log_capture_start();
	EVSTEER_LISTENER_OPTS(p, .policy = (enum evsteer_policy)9);
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(
				  base, dummy_cb, NULL,
				  EVSTEER_OPT_REUSEABLE_PORT, -1, sa, len, &p),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("policy out of range"), 1);
	EVSTEER_LISTENER_OPTS(a, .accept = (enum evsteer_accept_mode)7);
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL, 0, -1,
						    sa, len, &a),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("accept out of range"), 1);
	EVSTEER_LISTENER_OPTS(b, .bpf = (enum evsteer_bpf_mode)7);
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL, 0, -1,
						    sa, len, &b),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("bpf out of range"), 1);

	EVSTEER_GROUP_OPTS(ga, .accept = (enum evsteer_accept_mode)7);
	EXPECT_NULL_ERRNO(evsteer_group_new(sa, len, 2, 0, -1, &ga), EINVAL);
	EVSTEER_GROUP_OPTS(gb, .bpf = (enum evsteer_bpf_mode)7);
	EXPECT_NULL_ERRNO(evsteer_group_new(sa, len, 2, 0, -1, &gb), EINVAL);
	EVSTEER_GROUP_OPTS(gp, .policy = (enum evsteer_policy)4);
	EXPECT_NULL_ERRNO(evsteer_group_new(sa, len, 2, 0, -1, &gp), EINVAL);
	assert_int_equal(tl_log_capture_count("out of range"), 6);
	tl_log_capture_stop();
	assert_int_equal(tl_count_fds(), before);
	event_base_free(base);
}

/* A wild sz is refused before anything past the known fields is read: the
 * struct sits at the end of a page followed by an inaccessible one. */
static void test_opts_sz_bound(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct sockaddr *sa = (struct sockaddr *)&ss;
	long pg = sysconf(_SC_PAGESIZE);
	char *m = mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(mprotect(m + pg, (size_t)pg, PROT_NONE), 0);

	struct evsteer_listener_opts *o =
		(void *)(m + pg - sizeof(struct evsteer_listener_opts));
	memset(o, 0, sizeof(*o));
	o->sz = 1u << 20;
	tl_log_capture_start();
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL, 0, -1,
						    sa, len, o),
			  EINVAL);
	struct evsteer_group_opts *g =
		(void *)(m + pg - sizeof(struct evsteer_group_opts));
	memset(g, 0, sizeof(*g));
	g->sz = 1u << 20;
	EXPECT_NULL_ERRNO(evsteer_group_new(sa, len, 1, 0, -1, g), EINVAL);
	assert_int_equal(tl_log_capture_count("bad options struct"), 1);
	/* the largest allowed size is still read whole and accepted when zero */
	o = (void *)(m + pg - EVSTEER_OPTS_MAX_SZ);
	memset(o, 0, EVSTEER_OPTS_MAX_SZ);
	o->sz = EVSTEER_OPTS_MAX_SZ;
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, sa, len, o);
	assert_non_null(lev);
	evsteer_listener_free(lev);
	tl_log_capture_stop();
	munmap(m, (size_t)pg * 2);
	event_base_free(base);
}

/* A datagram socket has nothing to accept: EINVAL natively; with
 * libevent_compat (what compat.h passes) created, as libevent does, with a
 * warning. A TCP socket that is not listening, with backlog 0 ("the caller
 * listened"), gets a warning. */
static void test_non_stream_socket(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(u >= 0);
	tl_log_capture_start();
	EXPECT_NULL_ERRNO(tl_new(base, dummy_cb, NULL, 0, 0, u), EINVAL);
	assert_int_equal(tl_log_capture_count("is not a stream socket"), 1);
	EVSTEER_LISTENER_OPTS(c, .libevent_compat = 1);
	tl_path->opts(&c);
	struct evsteer_listener *lev =
		evsteer_listener_new(base, dummy_cb, NULL, 0, 0, u, &c);
	assert_non_null(lev);
	assert_int_equal(tl_log_capture_count("every accept on it will fail"), 1);
	evsteer_listener_free(lev);

	int t = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(t >= 0);
	lev = tl_new(base, dummy_cb, NULL, 0, 0, t);
	assert_non_null(lev);
	assert_int_equal(tl_log_capture_count("is not listening"), 1);
	evsteer_listener_free(lev);
	tl_log_capture_stop();
	close(u);
	close(t);
	event_base_free(base);
}

static void test_null_listener(void **state)
{
	(void)state;
	evsteer_listener_free(NULL);
	assert_int_equal(evsteer_listener_enable(NULL), -EINVAL);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(evsteer_listener_disable(NULL), -EINVAL);
	errno = 0;
	assert_int_equal(evsteer_listener_get_fd(NULL), -1);
	assert_int_equal(errno, EINVAL);
	assert_null(evsteer_listener_get_base(NULL));
	evsteer_listener_set_cb(NULL, dummy_cb, NULL);
	evsteer_listener_set_error_cb(NULL, NULL);
	assert_string_equal(evsteer_listener_path_name(NULL), "");
	EVSTEER_STATS_OPTS(st);
	assert_int_equal(evsteer_listener_get_stats(NULL, &st), -EINVAL);
	EVSTEER_PATH_OPTS(p);
	assert_int_equal(evsteer_listener_get_path(NULL, &p), -EINVAL);
	assert_string_equal(evsteer_version(), "0.3.0");
}

/* The default log sink and a replaced one: set_log returns the previous. */
static void test_log_callback(void **state)
{
	(void)state;
	tl_log_capture_start();
	evsteer_log_fn prev = evsteer_set_log(NULL, NULL, EVSTEER_LOG_WARN);
	assert_non_null(prev);
	assert_null(evsteer_set_log(NULL, NULL, EVSTEER_LOG_WARN));
	tl_log_capture_stop();
	/* a level that does not exist changes nothing */
	tl_log_capture_start();
	errno = 0;
	assert_null(evsteer_set_log(NULL, NULL, (enum evsteer_log_level)99));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(tl_log_capture_count("is not a log level"), 1);
	tl_log_capture_stop();
}

/* Every enum value has the name the environment and the reports use, and
 * a value out of range has none (NULL); the 0.1 policy name says "?". */
static void test_names(void **state)
{
	(void)state;
	static const char *const policies[] = {"least-pending", "hash",
					       "round-robin", "cpu"};
	for (int i = 0; i < 4; i++) {
		assert_string_equal(evsteer_policy_str((enum evsteer_policy)i),
				    policies[i]);
		assert_string_equal(evsteer_policy_name((enum evsteer_policy)i),
				    policies[i]);
	}
	assert_null(evsteer_policy_str((enum evsteer_policy)4));
	assert_string_equal(evsteer_policy_name((enum evsteer_policy)4), "?");
	assert_string_equal(evsteer_bpf_mode_str(EVSTEER_BPF_REQUIRE), "require");
	assert_null(evsteer_bpf_mode_str((enum evsteer_bpf_mode)3));
	assert_string_equal(evsteer_accept_mode_str(EVSTEER_ACCEPT_URING), "uring");
	assert_null(evsteer_accept_mode_str((enum evsteer_accept_mode)-1));
	assert_string_equal(evsteer_steering_str(EVSTEER_STEER_KERNEL_HASH),
			    "kernel-hash");
	assert_string_equal(evsteer_steering_str(EVSTEER_STEER_CBPF), "cbpf");
	assert_null(evsteer_steering_str((enum evsteer_steering)4));
	assert_string_equal(evsteer_engine_str(EVSTEER_ENGINE_URING_DIRECT),
			    "uring-direct");
	assert_null(evsteer_engine_str((enum evsteer_engine)3));
	assert_string_equal(evsteer_log_level_str(EVSTEER_LOG_DEBUG), "debug");
	assert_null(evsteer_log_level_str((enum evsteer_log_level)4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_create_args),
		cmocka_unit_test(test_bad_opts),
		cmocka_unit_test(test_enum_opts),
		cmocka_unit_test(test_opts_sz_bound),
		cmocka_unit_test(test_non_stream_socket),
		cmocka_unit_test(test_null_listener),
		cmocka_unit_test(test_log_callback),
		cmocka_unit_test(test_names),
	};
	return tl_run_paths("misuse", tests, sizeof(tests) / sizeof(tests[0]));
}

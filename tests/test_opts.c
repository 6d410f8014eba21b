/* SPDX-License-Identifier: MIT */
/*
 * Options structs grow the libbpf way: a leading sz, and every byte past the
 * end of the last field the library knows must be zero, up to sz. Past the
 * end of the last *field*, not past sizeof: a field a newer header adds in
 * today's tail padding leaves sizeof alone, and the library must refuse it
 * set rather than ignore it. A smaller sz (an older caller) gets defaults.
 * Output structs are written up to that same end, and no further.
 */
#include "tlib.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>

#define offsetofend(type, field)                                               \
	(offsetof(type, field) + sizeof(((type *)0)->field))

/*
 * Every public struct with a leading sz, and its last field (the library's
 * own list is in src/internal.h). On x86_64 (LP64):
 *   evsteer_listener_opts   last field ends at 40, sizeof 40 (36 / 40, 4 bytes of
 *                           tail padding, before defer_accept_after_block)
 *   evsteer_group_opts      36 / 40: 4 bytes of tail padding (32 / 32 before)
 *   evsteer_path            44 / 48: 4 bytes of tail padding
 *   evsteer_listener_stats  96 / 96
 *   evsteer_worker_stats    288 / 288 (80 / 80 before 0.3's queue wait)
 * A smaller gap than one alignment unit at least rules out a whole field
 * of the struct's alignment after the one named here.
 */
#define LAST(type, last)                                                       \
	static_assert(sizeof(type) - offsetofend(type, last) < _Alignof(type), \
		      #type ": is " #last " its last field?")
LAST(struct evsteer_listener_opts, defer_accept_after_block);
LAST(struct evsteer_group_opts, defer_accept_after_block);
LAST(struct evsteer_path, policy);
LAST(struct evsteer_listener_stats, handed_off);
LAST(struct evsteer_worker_stats, wait_untimed);

#define END_LOPTS                                                              \
	offsetofend(struct evsteer_listener_opts, defer_accept_after_block)
#define END_GOPTS                                                              \
	offsetofend(struct evsteer_group_opts, defer_accept_after_block)
#define END_PATH offsetofend(struct evsteer_path, policy)
#define END_LSTATS offsetofend(struct evsteer_listener_stats, handed_off)
#define END_WSTATS offsetofend(struct evsteer_worker_stats, wait_untimed)
/* what a program built against 0.2 passes */
#define END_WSTATS_0_2 offsetofend(struct evsteer_worker_stats, mine)

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

struct addr {
	struct sockaddr_storage ss;
	socklen_t len;
	struct sockaddr *sa;
};

static void loopback(struct addr *a)
{
	a->len = tl_addr_loopback(AF_INET, &a->ss);
	a->sa = (struct sockaddr *)&a->ss;
}

static void test_layout(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		size_t end, size;
	} t[] = {
		{"evsteer_listener_opts", END_LOPTS,
		 sizeof(struct evsteer_listener_opts)},
		{"evsteer_group_opts", END_GOPTS, sizeof(struct evsteer_group_opts)},
		{"evsteer_path", END_PATH, sizeof(struct evsteer_path)},
		{"evsteer_listener_stats", END_LSTATS,
		 sizeof(struct evsteer_listener_stats)},
		{"evsteer_worker_stats", END_WSTATS,
		 sizeof(struct evsteer_worker_stats)},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		print_message("%-24s last field ends at %3zu, sizeof %3zu: %s\n",
			      t[i].name, t[i].end, t[i].size,
			      t[i].end < t[i].size ? "tail padding" :
						     "no tail padding");
		assert_true(t[i].end <= t[i].size);
	}
}

/* A non-zero byte past the last field, in the tail padding (sz = sizeof)
 * or in a newer caller's larger struct (sz = its size): what a field we
 * do not know looks like to this library. Refused, byte by byte. */
static void test_tail_padding_refused(void **state)
{
	(void)state;
	struct {
		struct evsteer_listener_opts o;
		unsigned char future[8];
	} w;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	int before = tl_count_fds();
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);

	tl_log_capture_start();
	for (size_t i = END_LOPTS; i < sizeof(w); i++) {
		memset(&w, 0, sizeof(w));
		/* the padding of our own struct, or past it */
		w.o.sz = i < sizeof(w.o) ? sizeof(w.o) : sizeof(w);
		((unsigned char *)&w)[i] = 0x01;
		EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL,
							    0, -1, a.sa, a.len,
							    &w.o),
				  EINVAL);
		EXPECT_NULL_ERRNO(evsteer_listener_new(base, dummy_cb, NULL, 0,
						       -1, fd, &w.o),
				  EINVAL);
		char want[128];
		snprintf(want, sizeof(want),
			 "evsteer_listener_opts: non-zero byte at offset %zu,",
			 i);
		assert_int_equal(tl_log_capture_count(want), 2);
	}
	/* the same struct with those bytes zero is fine */
	memset(&w, 0, sizeof(w));
	w.o.sz = sizeof(w);
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa, a.len,
		&w.o);
	assert_non_null(lev);
	evsteer_listener_free(lev);
	tl_log_capture_stop();
	close(fd);
	assert_int_equal(tl_count_fds(), before);
	event_base_free(base);
}

/* A newer caller's struct, larger than ours, with an option we do not have
 * set: refused, the warning naming the struct. Group options too (their
 * tail padding on x86_64 and the bytes past sizeof: the same rule). */
static void test_unknown_option_refused(void **state)
{
	(void)state;
	struct addr a;
	loopback(&a);
	struct {
		struct evsteer_group_opts o;
		unsigned char future[16];
	} g;
	int fds[1] = {-1};
	for (size_t i = END_GOPTS; i < sizeof(g); i++) {
		memset(&g, 0, sizeof(g));
		g.o.sz = sizeof(g);
		((unsigned char *)&g)[i] = 0x80;
		tl_log_capture_start();
		EXPECT_NULL_ERRNO(evsteer_group_new(a.sa, a.len, 1, 0, -1, &g.o),
				  EINVAL);
		/* checked before the descriptors are looked at */
		EXPECT_NULL_ERRNO(evsteer_group_from_fds(fds, 1, 0, &g.o),
				  EINVAL);
		char want[128];
		snprintf(want, sizeof(want),
			 "evsteer_group_opts: non-zero byte at offset %zu,", i);
		assert_int_equal(tl_log_capture_count(want), 2);
		tl_log_capture_stop();
	}
	/* and a wild sz names the struct as well */
	EVSTEER_GROUP_OPTS(wild);
	wild.sz = EVSTEER_OPTS_MAX_SZ + 1;
	tl_log_capture_start();
	EXPECT_NULL_ERRNO(evsteer_group_new(a.sa, a.len, 1, 0, -1, &wild),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("evsteer_group_opts: sz 4097"), 1);
	tl_log_capture_stop();
}

/* A newer caller's larger struct with zeros past our last field works. */
static void test_newer_caller_zeros_accepted(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	struct {
		struct evsteer_listener_opts o;
		unsigned char future[64];
	} l;
	memset(&l, 0, sizeof(l));
	l.o.sz = sizeof(l);
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa, a.len,
		&l.o);
	assert_non_null(lev);
	evsteer_listener_free(lev);

	struct {
		struct evsteer_group_opts o;
		unsigned char future[64];
	} g;
	memset(&g, 0, sizeof(g));
	g.o.sz = sizeof(g);
	struct evsteer_group *grp = evsteer_group_new(a.sa, a.len, 1, 0, -1, &g.o);
	assert_non_null(grp);
	evsteer_group_free(grp);
	event_base_free(base);
}

/* An older caller's smaller struct: the fields past its sz are not read
 * (whatever the memory there holds), and take their defaults. */
static void test_older_caller_defaults(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(u >= 0);

	/* libevent_compat beyond sz: the default (0), so a datagram socket is
	 * refused; the same struct with the field covered is accepted */
	EVSTEER_LISTENER_OPTS(c, .libevent_compat = 1);
	c.sz = offsetof(struct evsteer_listener_opts, libevent_compat);
	tl_log_capture_start();
	EXPECT_NULL_ERRNO(evsteer_listener_new(base, dummy_cb, NULL, 0, 0, u, &c),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("is not a stream socket"), 1);
	c.sz = sizeof(c);
	struct evsteer_listener *lev =
		evsteer_listener_new(base, dummy_cb, NULL, 0, 0, u, &c);
	assert_non_null(lev);
	evsteer_listener_free(lev);
	tl_log_capture_stop();

	/* out-of-range enums beyond sz are never read: defaults, accepted */
	EVSTEER_LISTENER_OPTS(old, .bpf = (enum evsteer_bpf_mode)7,
			      .policy = (enum evsteer_policy)9,
			      .accept = (enum evsteer_accept_mode)7);
	old.sz = offsetof(struct evsteer_listener_opts, bpf);
	lev = evsteer_listener_new_bind(base, dummy_cb, NULL,
					EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa,
					a.len, &old);
	assert_non_null(lev);
	evsteer_listener_free(lev);
	old.sz = sizeof(size_t);
	lev = evsteer_listener_new_bind(base, dummy_cb, NULL,
					EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa,
					a.len, &old);
	assert_non_null(lev);
	evsteer_listener_free(lev);

	EVSTEER_GROUP_OPTS(gold, .bpf = (enum evsteer_bpf_mode)7,
			   .accept = (enum evsteer_accept_mode)7);
	gold.sz = offsetofend(struct evsteer_group_opts, policy);
	struct evsteer_group *g = evsteer_group_new(a.sa, a.len, 1, 0, -1, &gold);
	assert_non_null(g);
	evsteer_group_free(g);
	/* ...and read once covered: out of range */
	gold.sz = sizeof(gold);
	tl_log_capture_start();
	EXPECT_NULL_ERRNO(evsteer_group_new(a.sa, a.len, 1, 0, -1, &gold),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("bpf out of range"), 1);
	tl_log_capture_stop();

	close(u);
	event_base_free(base);
}

/* Leave non-zero bytes where the next call's frame will be. */
__attribute__((noinline)) static void dirty_stack(void)
{
	volatile unsigned char junk[4096];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = 0xee;
}

/* What a declaration left in o's bytes from end to sz (the library
 * refuses them: the test then fails on the call that passes o). */
static void say_padding(const char *how, const void *o, size_t end, size_t sz)
{
	for (size_t i = end; i < sz; i++)
		if (((const unsigned char *)o)[i])
			print_message("%s left 0x%02x at offset %zu\n", how,
				      ((const unsigned char *)o)[i], i);
}

/* Every field named: with a plain initializer GCC -O2 stores the fields
 * one by one and leaves the stack's bytes in the tail padding. */
__attribute__((noinline)) static struct evsteer_listener *
new_bind_every_field(struct event_base *base, const struct addr *a,
		     unsigned int n)
{
	EVSTEER_LISTENER_OPTS(o, .max_accepts_per_wakeup = n,
			      .backoff_max_ms = n, .bpf = EVSTEER_BPF_OFF,
			      .policy = EVSTEER_POLICY_HASH, .stall_us = (int)n,
			      .accept = EVSTEER_ACCEPT_EVENT,
			      .libevent_compat = 1,
			      .defer_accept_after_block = (int)n);
	say_padding("EVSTEER_LISTENER_OPTS()", &o, END_LOPTS, sizeof(o));
	return evsteer_listener_new_bind(base, dummy_cb, NULL,
					 EVSTEER_OPT_CLOSE_ON_FREE, -1, a->sa,
					 a->len, &o);
}

__attribute__((noinline)) static struct evsteer_group *
group_every_field(const struct addr *a, unsigned int n)
{
	EVSTEER_GROUP_OPTS(o, .policy = EVSTEER_POLICY_HASH,
			   .bpf = EVSTEER_BPF_OFF, .stall_us = (int)n,
			   .max_accepts_per_wakeup = n, .backoff_max_ms = n,
			   .accept = EVSTEER_ACCEPT_EVENT,
			   .defer_accept_after_block = (int)n);
	say_padding("EVSTEER_GROUP_OPTS()", &o, END_GOPTS, sizeof(o));
	return evsteer_group_new(a->sa, a->len, 1, 0, -1, &o);
}

/* The *_OPTS() macros zero the padding themselves, so a caller who names
 * every field is not refused for what the compiler left there. */
static void test_macro_zeroes_padding(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	dirty_stack();
	struct evsteer_listener *lev = new_bind_every_field(base, &a, 7);
	assert_non_null(lev);
	evsteer_listener_free(lev);
	/* the group options keep tail padding on x86_64 (36 / 40) */
	dirty_stack();
	struct evsteer_group *g = group_every_field(&a, 7);
	assert_non_null(g);
	evsteer_group_free(g);
	event_base_free(base);
}

/* Bytes of the caller's struct from end up to sz still hold fill. */
static void assert_untouched(const void *out, size_t end, size_t sz,
			     unsigned char fill, const char *what)
{
	const unsigned char *p = out;
	for (size_t i = end; i < sz; i++)
		if (p[i] != fill)
			fail_msg("%s: byte %zu past the last field (ends at %zu) "
				 "was written: 0x%02x", what, i, end, p[i]);
}

/* Output structs: written up to the end of the last field we know, not
 * our tail padding (a newer caller's field there keeps its value) nor
 * anything past it. */
static void test_output_stops_at_last_field(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa, a.len,
		NULL);
	assert_non_null(lev);

	struct {
		struct evsteer_path p;
		unsigned char future[16];
	} path;
	size_t sizes[] = {sizeof(path.p), sizeof(path)};
	for (int k = 0; k < 2; k++) {
		memset(&path, 0xa5, sizeof(path));
		path.p.sz = sizes[k];
		assert_int_equal(evsteer_listener_get_path(lev, &path.p), 0);
		assert_non_null(path.p.name);
		assert_non_null(path.p.engine_reason);
		assert_int_equal(path.p.policy, EVSTEER_POLICY_LEAST_PENDING);
		assert_untouched(&path, END_PATH, sizes[k], 0xa5, "evsteer_path");
	}

	struct {
		struct evsteer_listener_stats s;
		unsigned char future[16];
	} st;
	memset(&st, 0xa5, sizeof(st));
	st.s.sz = sizeof(st);
	assert_int_equal(evsteer_listener_get_stats(lev, &st.s), 0);
	assert_int_equal(st.s.handed_off, 0);
	assert_untouched(&st, END_LSTATS, sizeof(st), 0xa5,
			 "evsteer_listener_stats");
	evsteer_listener_free(lev);

	struct evsteer_group *g = evsteer_group_new(a.sa, a.len, 1, 0, -1, NULL);
	assert_non_null(g);
	for (int k = 0; k < 2; k++) {
		memset(&path, 0x5a, sizeof(path));
		path.p.sz = sizes[k];
		assert_int_equal(evsteer_group_get_path(g, &path.p), 0);
		assert_non_null(path.p.name);
		assert_untouched(&path, END_PATH, sizes[k], 0x5a,
				 "evsteer_path (group)");
	}
	struct {
		struct evsteer_worker_stats w;
		unsigned char future[16];
	} ws;
	memset(&ws, 0xa5, sizeof(ws));
	ws.w.sz = sizeof(ws);
	assert_int_equal(evsteer_group_worker_stats(g, 0, &ws.w), 0);
	assert_untouched(&ws, END_WSTATS, sizeof(ws), 0xa5,
			 "evsteer_worker_stats");
	/* a 0.2 caller's struct ends at mine: nothing written past it */
	memset(&ws, 0xa5, sizeof(ws));
	ws.w.sz = END_WSTATS_0_2;
	assert_int_equal(evsteer_group_worker_stats(g, 0, &ws.w), 0);
	assert_untouched(&ws, END_WSTATS_0_2, sizeof(ws), 0xa5,
			 "evsteer_worker_stats (0.2 size)");
	evsteer_group_free(g);
	event_base_free(base);
}

/* defer_accept_after_block: 0-30 seconds, on a TCP socket; nothing is
 * deferred before a block (test_group.c, defer_after_block, has one); a
 * socket that defers already keeps its own value. */
static void test_defer_after_block_checked(void **state)
{
	(void)state;
	struct event_base *base = tl_base();
	struct addr a;
	loopback(&a);
	int before = tl_count_fds();
	tl_log_capture_start();
	int bad[] = {-1, 31};
	for (int i = 0; i < 2; i++) {
		EVSTEER_LISTENER_OPTS(o, .defer_accept_after_block = bad[i]);
		EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL,
							    0, -1, a.sa, a.len,
							    &o),
				  EINVAL);
		EVSTEER_GROUP_OPTS(g, .defer_accept_after_block = bad[i]);
		EXPECT_NULL_ERRNO(evsteer_group_new(a.sa, a.len, 1, 0, -1, &g),
				  EINVAL);
	}
	assert_int_equal(tl_log_capture_count("defer_accept_after_block -1: "
					      "expected 0 (never) or 1-30"),
			 2);
	assert_int_equal(tl_log_capture_count("defer_accept_after_block 31"), 2);

	/* a stream socket that is not TCP */
	struct sockaddr_storage un;
	socklen_t unlen = tl_addr_unix(&un);
	EVSTEER_LISTENER_OPTS(o, .defer_accept_after_block = 5);
	EXPECT_NULL_ERRNO(evsteer_listener_new_bind(base, dummy_cb, NULL,
						    EVSTEER_OPT_CLOSE_ON_FREE,
						    -1, (struct sockaddr *)&un,
						    unlen, &o),
			  EINVAL);
	assert_int_equal(tl_log_capture_count("defer_accept_after_block: not a "
					      "TCP socket"), 1);
	unlink(((struct sockaddr_un *)&un)->sun_path);
	tl_log_capture_stop();
	assert_int_equal(tl_count_fds(), before);

	/* TCP: made, and not deferring yet; a lone listener (no group, so
	 * no block is ever seen) says it never will */
	tl_log_capture_start();
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, dummy_cb, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1, a.sa, a.len,
		&o);
	assert_non_null(lev);
	assert_int_equal(tl_log_capture_count("not in a worker group, where "
					      "blocks are seen: it never defers"),
			 1);
	tl_log_capture_stop();
	int v = -1;
	socklen_t vl = sizeof(v);
	assert_int_equal(getsockopt(evsteer_listener_get_fd(lev), IPPROTO_TCP,
				    TCP_DEFER_ACCEPT, &v, &vl), 0);
	assert_int_equal(v, 0);
	evsteer_listener_free(lev);

	/* a caller's socket that defers already, in a group: left alone,
	 * and given back as it came */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1, ten = 10;
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
				    sizeof(one)), 0);
	assert_int_equal(bind(fd, a.sa, a.len), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &ten,
				    sizeof(ten)), 0);
	tl_log_capture_start();
	lev = evsteer_listener_new(base, dummy_cb, NULL,
				   EVSTEER_OPT_REUSEABLE_PORT, -1, fd, &o);
	assert_non_null(lev);
	assert_int_equal(tl_log_capture_count("TCP_DEFER_ACCEPT is set already"),
			 1);
	tl_log_capture_stop();
	evsteer_listener_free(lev);
	v = 0;
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &v, &vl),
			 0);
	assert_true(v > 0);
	close(fd);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_tail_padding_refused),
		cmocka_unit_test(test_unknown_option_refused),
		cmocka_unit_test(test_newer_caller_zeros_accepted),
		cmocka_unit_test(test_older_caller_defaults),
		cmocka_unit_test(test_macro_zeroes_padding),
		cmocka_unit_test(test_output_stops_at_last_field),
		cmocka_unit_test(test_defer_after_block_checked),
	};
	return tl_run_once("opts", tests, sizeof(tests) / sizeof(tests[0]));
}

/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine's own cases: direct descriptors end to end, slot -> fd,
 * a full fixed-file table, CQ overflow, cancel-before-close, and no fd or
 * slot leak over 10,000 connections.
 */
#include "tlib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

/* The test's thread also runs the rings, whose task work interrupts its
 * system calls (EINTR; docs/ARCHITECTURE.md, kernel facts): a client's
 * read is retried then, as any program's would be. */
static ssize_t read_intr(int fd, void *buf, size_t len)
{
	ssize_t n;
	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

/* ---- a request/response server on direct descriptors */

#define NCONN 20

struct conn {
	struct srv *srv;
	int slot;
	char req[32];
	char resp[48];
};

struct srv {
	struct evsteer_listener *lev;
	struct conn c[NCONN];
	int accepted, received, sent, closed, errors;
};

static void on_closed(struct evsteer_uring *r, int slot, int res, void *arg)
{
	(void)r;
	(void)slot;
	struct conn *c = arg;
	if (res < 0)
		c->srv->errors++;
	c->srv->closed++;
}

static void on_sent(struct evsteer_uring *r, int slot, int res, void *arg)
{
	struct conn *c = arg;
	if (res != (int)strlen(c->resp))
		c->srv->errors++;
	c->srv->sent++;
	evsteer_uring_close(r, slot, on_closed, c);
}

static void on_recv(struct evsteer_uring *r, int slot, int res, void *arg)
{
	(void)r;
	(void)slot;
	struct conn *c = arg;
	if (res <= 0)
		c->srv->errors++;
	c->srv->received++;
}

static void on_direct(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	struct srv *s = arg;
	if (s->accepted >= NCONN)
		return;
	struct conn *c = &s->c[s->accepted++];
	c->srv = s;
	c->slot = slot;
	assert_ptr_equal(evsteer_listener_get_uring(lev), r);
	if (evsteer_uring_recv(r, slot, c->req, sizeof(c->req) - 1, on_recv, c))
		s->errors++;
}

static struct evsteer_listener *direct_listener(struct event_base *base,
						evsteer_direct_cb cb, void *arg,
						unsigned int table)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	return evsteer_listener_new_bind_direct(base, cb, arg,
						EVSTEER_OPT_CLOSE_ON_FREE, -1,
						(struct sockaddr *)&ss, len,
						table, NULL);
}

static void test_direct_request_response(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct srv s = {0};
	s.lev = direct_listener(base, on_direct, &s, 0);
	assert_non_null(s.lev);
	EVSTEER_PATH_OPTS(p);
	evsteer_listener_get_path(s.lev, &p);
	assert_int_equal(p.engine, EVSTEER_ENGINE_URING_DIRECT);
	struct evsteer_uring *r = evsteer_listener_get_uring(s.lev);
	assert_non_null(r);

	int before = tl_count_fds();
	int c[NCONN];
	tl_connect_n(evsteer_listener_get_fd(s.lev), c, NCONN);
	for (int i = 0; i < NCONN; i++) {
		char msg[32];
		int n = snprintf(msg, sizeof(msg), "ping %d", i);
		assert_int_equal(write(c[i], msg, (size_t)n), n);
	}
	assert_true(tl_loop_until(base, &s.received, NCONN));
	assert_int_equal(s.errors, 0);
	/* 20 connections open on the server side, and not one fd for them */
	assert_int_equal(evsteer_uring_slots_in_use(r), NCONN);
	assert_int_equal(tl_count_fds(), before + NCONN);

	for (int i = 0; i < NCONN; i++) {
		struct conn *k = &s.c[i];
		char num[sizeof(k->req)];
		memcpy(num, k->req + 5, sizeof(num) - 5);
		num[sizeof(num) - 5] = '\0';
		snprintf(k->resp, sizeof(k->resp), "pong %s", num);
		assert_int_equal(evsteer_uring_send(r, k->slot, k->resp,
						    strlen(k->resp), on_sent, k),
				 0);
	}
	assert_true(tl_loop_until(base, &s.closed, NCONN));
	assert_int_equal(s.errors, 0);
	assert_int_equal(evsteer_uring_slots_in_use(r), 0);
	/* each client got the answer to its own request, then EOF */
	for (int i = 0; i < NCONN; i++) {
		char buf[64] = {0}, want[64];
		ssize_t n = read_intr(c[i], buf, sizeof(buf) - 1);
		assert_true(n > 0);
		snprintf(want, sizeof(want), "pong %d", i);
		/* accept order is connect order: request i came on conn i */
		assert_string_equal(buf, want);
		assert_int_equal(read_intr(c[i], buf, sizeof(buf)), 0);
	}
	tl_close_n(c, NCONN);
	evsteer_listener_free(s.lev);
	event_base_free(base);
}

/* ---- a slot becomes a real fd */

struct install {
	int slot, fd, res;
	bool done;
};

static void keep_slot(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)lev;
	(void)r;
	((struct install *)arg)->slot = slot;
}

static void installed(struct evsteer_uring *r, int slot, int res, void *arg)
{
	(void)r;
	(void)slot;
	struct install *in = arg;
	in->res = res;
	in->done = true;
}

static bool install_done(void *arg)
{
	return ((struct install *)arg)->done;
}

static bool slot_seen(void *arg)
{
	return ((struct install *)arg)->slot >= 0;
}

/* Whether this kernel is at least major.minor (uname). */
static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;
	if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

static bool masked(const char *feature)
{
	const char *m = getenv("EVSTEER_TEST_MASK");
	return m && strstr(m, feature);
}

/* Add feature to EVSTEER_TEST_MASK (the direct-masked run sets it
 * already); the value to give back to unmask(). */
static char *mask_also(const char *feature)
{
	const char *m = getenv("EVSTEER_TEST_MASK");
	char *old = m ? strdup(m) : NULL, buf[256];
	snprintf(buf, sizeof(buf), "%s%s%s", m ? m : "", m && *m ? "," : "",
		 feature);
	setenv("EVSTEER_TEST_MASK", buf, 1);
	return old;
}

static void unmask(char *old)
{
	if (old)
		setenv("EVSTEER_TEST_MASK", old, 1);
	else
		unsetenv("EVSTEER_TEST_MASK");
	free(old);
}

/*
 * With IORING_OP_FIXED_FD_INSTALL (Linux 6.8) a slot becomes a real fd;
 * without it (6.1, or EVSTEER_TEST_MASK=fixed_fd_install) the install
 * fails with EOPNOTSUPP, the path report says so, and the slot still
 * works as a slot.
 */
static void slot_to_fd(bool expect_install)
{
	tl_need_uring();
	struct event_base *base = tl_base();
	struct install in = {.slot = -1, .res = -1};
	struct evsteer_listener *lev = direct_listener(base, keep_slot, &in, 0);
	assert_non_null(lev);
	EVSTEER_PATH_OPTS(path);
	assert_int_equal(evsteer_listener_get_path(lev, &path), 0);
	print_message("engine reason \"%s\"\n", path.engine_reason);
	bool said = strstr(path.engine_reason, "IORING_OP_FIXED_FD_INSTALL");
	if (said == expect_install)
		fail_msg("expected %s IORING_OP_FIXED_FD_INSTALL, the path report "
			 "says \"%s\"", expect_install ? "" : "no",
			 path.engine_reason);
	if (said) {
		assert_non_null(strstr(path.engine_reason,
				       "evsteer_uring_fd_install() fails"));
		/* a feature the kernel lacks is not "masked" */
		assert_non_null(strstr(path.engine_reason,
				       masked("fixed_fd_install") &&
						       kernel_at_least(6, 8) ?
					       "masked (EVSTEER_TEST_MASK)" :
					       "the kernel lacks"));
	}
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int c = tl_connect_to(evsteer_listener_get_fd(lev));
	assert_true(tl_loop_until_fn(base, slot_seen, &in));

	int err = evsteer_uring_fd_install(r, in.slot, 1, installed, &in);
	char buf[4];
	if (!expect_install) {
		assert_int_equal(err, -EOPNOTSUPP);
		assert_int_equal(errno, EOPNOTSUPP);
		/* the slot is still the connection's */
		struct install sent = {.slot = -1, .res = -1};
		assert_int_equal(evsteer_uring_send(r, in.slot, "hi", 2,
						    installed, &sent), 0);
		assert_true(tl_loop_until_fn(base, install_done, &sent));
		assert_int_equal(sent.res, 2);
		assert_int_equal(read_intr(c, buf, sizeof(buf)), 2);
		assert_int_equal(evsteer_uring_close(r, in.slot, NULL, NULL), 0);
		close(c);
		evsteer_listener_free(lev);
		event_base_free(base);
		return;
	}
	assert_int_equal(err, 0);
	assert_true(tl_loop_until_fn(base, install_done, &in));
	assert_true(in.res >= 0);
	int fd = in.res;
	assert_true(tl_is_cloexec(fd));
	struct sockaddr_storage peer, want;
	socklen_t plen = sizeof(peer);
	assert_int_equal(getpeername(fd, (struct sockaddr *)&peer, &plen), 0);
	socklen_t wlen = tl_sockname(c, &want);
	assert_int_equal(plen, wlen);
	assert_memory_equal(&peer, &want, wlen);
	/* the fd works as any socket */
	assert_int_equal(write(fd, "hi", 2), 2);
	assert_int_equal(read_intr(c, buf, sizeof(buf)), 2);
	close(fd);
	assert_int_equal(evsteer_uring_close(r, in.slot, NULL, NULL), 0);
	/* misuse is an error, not a crash */
	assert_int_equal(evsteer_uring_send(NULL, 0, "x", 1, NULL, NULL), -EINVAL);
	assert_int_equal(evsteer_uring_recv(r, -1, buf, 1, NULL, NULL), -EINVAL);
	close(c);
	evsteer_listener_free(lev);
	event_base_free(base);
}

/* The kernel's own answer: 6.8 and later have the opcode. */
static void test_slot_to_fd(void **state)
{
	(void)state;
	slot_to_fd(kernel_at_least(6, 8) && !masked("fixed_fd_install"));
}

/* The degraded branch on any kernel. */
static void test_slot_to_fd_mask_install(void **state)
{
	(void)state;
	char *old = mask_also("fixed_fd_install");
	slot_to_fd(false);
	unmask(old);
}

/* The closes are asynchronous: wait for the count, bounded. */
static bool no_slots(void *arg)
{
	return evsteer_uring_slots_in_use(arg) == 0;
}

/* ---- reply and close as one chain; the first loop pass */

struct replier {
	int accepted, sent, errors;
	bool with_cb;
};

static void reply_sent(struct evsteer_uring *r, int slot, int res, void *arg)
{
	(void)r;
	(void)slot;
	struct replier *p = arg;
	if (res != 5)
		p->errors++;
	p->sent++;
}

static void reply_and_close(struct evsteer_listener *lev,
			    struct evsteer_uring *r, int slot, void *arg)
{
	(void)lev;
	struct replier *p = arg;
	p->accepted++;
	if (evsteer_uring_send_and_close(r, slot, "hello", 5,
					 p->with_cb ? reply_sent : NULL, p) < 0)
		p->errors++;
}

static bool replies_sent(void *arg)
{
	struct replier *p = arg;
	return p->sent == p->accepted && p->accepted > 0;
}

/* Each client reads the whole reply, then EOF: the slot was closed after
 * the send, in that order, with and without a completion callback. */
static void send_and_close(bool with_cb)
{
	struct event_base *base = tl_base();
	struct replier p = {.with_cb = with_cb};
	struct evsteer_listener *lev =
		direct_listener(base, reply_and_close, &p, 0);
	assert_non_null(lev);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int c[NCONN];
	tl_connect_n(evsteer_listener_get_fd(lev), c, NCONN);
	assert_true(tl_loop_until(base, &p.accepted, NCONN));
	if (with_cb)
		assert_true(tl_loop_until_fn(base, replies_sent, &p));
	for (int i = 0; i < NCONN; i++) {
		char buf[16];
		size_t got = 0;
		ssize_t n;
		/* bounded: a slot that was never closed fails, not hangs */
		struct timeval tv = {.tv_sec = TL_TIMEOUT_MS / 1000};
		setsockopt(c[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		while ((n = read_intr(c[i], buf + got, sizeof(buf) - got)) > 0)
			got += (size_t)n;
		if (n < 0) /* seen on 6.1 under qemu (and on main) */
			fail_msg("client %d of %d: read: %s after %zu bytes", i,
				 NCONN, strerror(errno), got);
		assert_int_equal(n, 0); /* EOF: the slot was closed */
		assert_int_equal(got, 5);
		assert_memory_equal(buf, "hello", 5);
	}
	assert_int_equal(p.errors, 0);
	assert_int_equal(evsteer_uring_slots_in_use(r), 0);
	/* misuse is an error, not a crash */
	assert_int_equal(evsteer_uring_send_and_close(NULL, 0, "x", 1, NULL, NULL),
			 -EINVAL);
	assert_int_equal(evsteer_uring_send_and_close(r, -1, "x", 1, NULL, NULL),
			 -EINVAL);
	tl_close_n(c, NCONN);
	evsteer_listener_free(lev);
	event_base_free(base);
}

static void test_send_and_close(void **state)
{
	(void)state;
	tl_need_uring();
	send_and_close(true);
}

static void test_send_and_close_no_cb(void **state)
{
	(void)state;
	tl_need_uring();
	send_and_close(false);
}

/* Connections queued before the first loop pass are delivered in it. */
static void test_direct_first_pass(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct replier p = {0};
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct evsteer_listener *lev = evsteer_listener_new_bind_direct(
		base, reply_and_close, &p,
		EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_DISABLED, -1,
		(struct sockaddr *)&ss, len, 0, NULL);
	assert_non_null(lev);
	int c[NCONN];
	tl_connect_n(evsteer_listener_get_fd(lev), c, NCONN);
	tl_wait_queued(evsteer_listener_get_fd(lev), NCONN);
	assert_int_equal(evsteer_listener_enable(lev), 0);
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(p.accepted, NCONN);
	tl_close_n(c, NCONN);
	evsteer_listener_free(lev);
	event_base_free(base);
}

/*
 * evsteer_listener_set_cb() on a direct listener, as it has always behaved
 * (it is typed for fd listeners): NULL disarms, leaving connections
 * queued; a direct callback cast to evsteer_accept_cb re-arms it and is
 * called as a direct callback, with the new argument.
 */
static void test_direct_set_cb(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct install a = {.slot = -1}, b = {.slot = -1};
	struct evsteer_listener *lev = direct_listener(base, keep_slot, &a, 0);
	assert_non_null(lev);
	int lfd = evsteer_listener_get_fd(lev);
	evsteer_listener_set_cb(lev, NULL, NULL);
	int c = tl_connect_to(lfd);
	tl_wait_queued(lfd, 1);
	tl_loop_for(base, 50);
	assert_int_equal(a.slot, -1);
	assert_int_equal(tl_queued(lfd), 1);

	evsteer_listener_set_cb(lev, (evsteer_accept_cb)(void (*)(void))keep_slot,
				&b);
	assert_true(tl_loop_until_fn(base, slot_seen, &b));
	assert_int_equal(a.slot, -1);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	assert_int_equal(evsteer_uring_slots_in_use(r), 1);
	assert_int_equal(evsteer_uring_close(r, b.slot, NULL, NULL), 0);
	close(c);
	evsteer_listener_free(lev);
	event_base_free(base);
}

/* ---- a stalled direct worker's queue is taken by a healthy one */

/*
 * Two direct workers, round-robin, a 20 ms stall threshold; worker 0's
 * loop never runs. With IORING_ACCEPT_DONTWAIT (Linux 6.10) worker 1
 * steals the connection queued on worker 0's socket into its own table
 * and serves it, and new connections go to worker 1 only. Without it
 * (6.1, or EVSTEER_TEST_MASK=accept_dontwait) the path report says that
 * direct workers do not steal, nothing is stolen, the connection waits on
 * worker 0's socket and worker 0 serves it once its loop runs; new
 * connections still go to worker 1 only.
 */
static void stall_steal(bool expect_dontwait)
{
	tl_need_bpf();
	tl_need_uring();
	struct event_base *a = tl_base(), *b = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	/* 20 ms, so that this test does not depend on the machine's speed */
	EVSTEER_LISTENER_OPTS(o, .bpf = EVSTEER_BPF_REQUIRE,
			      .policy = EVSTEER_POLICY_ROUND_ROBIN,
			      .stall_us = 20000);
	struct replier p0 = {0}, p1 = {0};
	unsigned int fl = EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE_PORT;
	struct evsteer_listener *l0 = evsteer_listener_new_bind_direct(
		a, reply_and_close, &p0, fl, -1, (struct sockaddr *)&ss, len, 0, &o);
	assert_non_null(l0);
	len = tl_sockname(evsteer_listener_get_fd(l0), &ss);
	struct evsteer_listener *l1 = evsteer_listener_new_bind_direct(
		b, reply_and_close, &p1, fl, -1, (struct sockaddr *)&ss, len, 0, &o);
	assert_non_null(l1);
	struct evsteer_group *g = evsteer_listener_get_group(l0);
	assert_non_null(g);

	/* the path report says what the kernel (or the mask) took away */
	EVSTEER_PATH_OPTS(path);
	assert_int_equal(evsteer_listener_get_path(l1, &path), 0);
	assert_int_equal(path.engine, EVSTEER_ENGINE_URING_DIRECT);
	assert_string_equal(path.name, "bpf+uring-direct");
	print_message("path %s, engine reason \"%s\"\n", path.name,
		      path.engine_reason);
	bool steals = !strstr(path.engine_reason, "IORING_ACCEPT_DONTWAIT");
	if (expect_dontwait != steals)
		fail_msg("expected %s IORING_ACCEPT_DONTWAIT, the path report "
			 "says \"%s\"", expect_dontwait ? "" : "no",
			 path.engine_reason);
	if (!steals) {
		assert_non_null(strstr(path.engine_reason,
				       "direct workers do not steal"));
		assert_non_null(strstr(path.engine_reason,
				       masked("accept_dontwait") &&
						       kernel_at_least(6, 10) ?
					       "masked (EVSTEER_TEST_MASK)" :
					       "the kernel lacks"));
	} else {
		assert_string_equal(path.engine_reason, "");
	}

	int c[12], n = 0;
	EVSTEER_WORKER_STATS_OPTS(s0);
	/* until one lands on the stalled worker 0 (round-robin: within 2) */
	while (n < 4) {
		c[n++] = tl_connect_to(evsteer_listener_get_fd(l1));
		evsteer_group_worker_stats(g, 0, &s0);
		if (s0.steered)
			break;
		assert_true(tl_loop_until(b, &p1.accepted, p1.accepted + 1));
	}
	assert_int_equal(s0.steered, 1);
	int served1 = p1.accepted;
	/* let worker 0's silence pass the threshold */
	tl_loop_for(b, 60);
	if (steals) {
		for (int i = 0; i < 10; i++)
			c[n++] = tl_connect_to(evsteer_listener_get_fd(l1));
		assert_true(tl_loop_until(b, &p1.accepted, served1 + 11));
	} else {
		/* one at a time, each served before the next: a burst would
		 * leave worker 1 with connections pending and no progress
		 * for the whole burst, which under qemu TCG passes 20 ms;
		 * with every worker stale the program takes one anyway
		 * (round-robin: worker 0's turn), and nothing steals it
		 * back here. Any connection that goes to worker 0 times out
		 * the wait below. */
		for (int i = 0; i < 10; i++) {
			c[n++] = tl_connect_to(evsteer_listener_get_fd(l1));
			if (!tl_loop_until(b, &p1.accepted, served1 + i + 1))
				fail_msg("connection %d of 10 went to the stalled "
					 "worker", i + 1);
		}
	}
	EVSTEER_WORKER_STATS_OPTS(t0);
	EVSTEER_WORKER_STATS_OPTS(t1);
	evsteer_group_worker_stats(g, 0, &t0);
	evsteer_group_worker_stats(g, 1, &t1);
	assert_int_equal(t0.steered, 1);     /* nothing new for the stalled */
	assert_int_equal(p0.accepted, 0);
	if (steals) {
		assert_int_equal(t0.stolen_from, 1); /* its queue was taken */
		assert_int_equal(t0.pending, 0);
		assert_int_equal(t1.stolen, 1);
	} else {
		/* not taken: it waits on worker 0's socket for worker 0 */
		assert_int_equal(t0.stolen_from, 0);
		assert_int_equal(t1.stolen, 0);
		assert_int_equal(t0.pending, 1);
		assert_int_equal(tl_queued(evsteer_listener_get_fd(l0)), 1);
		assert_true(tl_loop_until(a, &p0.accepted, 1));
	}
	/* every client got its reply */
	for (int i = 0; i < n; i++) {
		char buf[8];
		struct timeval tv = {.tv_sec = TL_TIMEOUT_MS / 1000};
		setsockopt(c[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		ssize_t r = read_intr(c[i], buf, sizeof(buf));
		if (r != 5)
			fail_msg("client %d of %d: read %zd (%s)", i, n, r,
				 r < 0 ? strerror(errno) : "");
	}
	tl_close_n(c, n);
	evsteer_listener_free(l0);
	evsteer_listener_free(l1);
	event_base_free(a);
	event_base_free(b);
}

/* The kernel's own answer: 6.10 and later have DONTWAIT (so a probe that
 * wrongly finds it missing fails here), older ones do not. */
static void test_direct_stall_steal(void **state)
{
	(void)state;
	stall_steal(kernel_at_least(6, 10) && !masked("accept_dontwait"));
}

/* The degraded branch on any kernel. */
static void test_direct_stall_steal_mask_dontwait(void **state)
{
	(void)state;
	char *old = mask_also("accept_dontwait");
	stall_steal(false);
	unmask(old);
}

/* ---- a full fixed-file table */

struct holder {
	int slots[8];
	int n;
	int errors, last_errno;
};

static void hold_slot(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)lev;
	(void)r;
	struct holder *h = arg;
	h->slots[h->n++] = slot;
}

static void holder_error(struct evsteer_listener *lev, void *arg)
{
	(void)lev;
	struct holder *h = arg;
	h->last_errno = errno;
	h->errors++;
}

static void test_table_full(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct holder h = {0};
	struct evsteer_listener *lev = direct_listener(base, hold_slot, &h, 4);
	assert_non_null(lev);
	evsteer_listener_set_error_cb(lev, holder_error);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int lfd = evsteer_listener_get_fd(lev);
	int c[6];
	tl_connect_n(lfd, c, 4);
	assert_true(tl_loop_until(base, &h.n, 4));

	/* the fifth has no slot: the kernel closes it; we count and report */
	c[4] = tl_connect_to(lfd);
	assert_true(tl_loop_until(base, &h.errors, 1));
	assert_int_equal(h.last_errno, ENFILE);
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	assert_int_equal(st.table_full, 1);
	char b;
	assert_true(read_intr(c[4], &b, 1) <= 0); /* EOF or reset */

	/* a slot frees up: accepting resumes by itself */
	assert_int_equal(evsteer_uring_close(r, h.slots[0], NULL, NULL), 0);
	c[5] = tl_connect_to(lfd);
	assert_true(tl_loop_until(base, &h.n, 5));
	assert_int_equal(h.errors, 1);
	for (int i = 1; i < 5; i++)
		evsteer_uring_close(r, h.slots[i], NULL, NULL);
	tl_close_n(c, 6);
	evsteer_listener_free(lev);
	event_base_free(base);
}

/* ---- more completions than the CQ holds */

struct closer {
	int n;
};

static void close_at_once(struct evsteer_listener *lev, struct evsteer_uring *r,
			  int slot, void *arg)
{
	(void)lev;
	((struct closer *)arg)->n++;
	evsteer_uring_close(r, slot, NULL, NULL);
}

static void test_cq_overflow(void **state)
{
	(void)state;
	tl_need_uring();
	enum { N = 4600 }; /* the CQ has 4096 entries */
	/* the fixed-file table may not exceed RLIMIT_NOFILE */
	struct rlimit rl, saved;
	getrlimit(RLIMIT_NOFILE, &saved);
	rl = saved;
	if (rl.rlim_cur < 8192)
		rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
	setrlimit(RLIMIT_NOFILE, &rl);
	tl_skip_unless(rl.rlim_cur >= 8192, "uring",
		       "RLIMIT_NOFILE hard limit below 8192: no room for the table");
	struct event_base *base = tl_base();
	struct closer k = {0};
	struct evsteer_listener *lev = direct_listener(base, close_at_once, &k,
						       8192);
	assert_non_null(lev);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int lfd = evsteer_listener_get_fd(lev);
	/* one pass arms the multishot accept; then the loop stays away while
	 * N connections are accepted and their completions pile up. Each
	 * client closes at once (its connection is accepted all the same),
	 * so this needs one client fd, whatever RLIMIT_NOFILE is. It closes
	 * with a reset: a plain close leaves the client port in TIME_WAIT,
	 * and when the machine's TIME_WAIT table is full (busy CI machines)
	 * the port is reused at once while the server side of its previous
	 * connection still waits in the CQ; the new SYN then meets that
	 * socket, gets a challenge ACK and is retried a second later. A reset
	 * takes the server side out of the lookup at once. */
	event_base_loop(base, EVLOOP_NONBLOCK);
	for (int i = 0; i < N; i++) {
		int c = tl_connect_to(lfd);
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c);
	}
	assert_true(tl_loop_until(base, &k.n, N));
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	print_message("%d connections, CQ of 4096: %llu re-arms\n", N,
		      (unsigned long long)st.rearms);
	/* the kernel ends a multishot accept when it cannot post to the CQ;
	 * re-arming picked up what waited in the backlog */
	assert_true(st.rearms >= 1);
	assert_true(tl_loop_until_fn(base, no_slots, r)); /* the closes */
	evsteer_listener_free(lev);
	event_base_free(base);
	setrlimit(RLIMIT_NOFILE, &saved);
}

/* ---- free cancels and reaps before the socket closes */

static void test_free_releases_socket(void **state)
{
	(void)state;
	tl_need_uring();
	for (int direct = 0; direct < 2; direct++) {
		struct event_base *base = tl_base();
		struct sockaddr_storage ss;
		socklen_t len = tl_addr_loopback(AF_INET, &ss);
		struct tl_srv s = {0};
		struct holder h = {0};
		EVSTEER_LISTENER_OPTS(o, .accept = EVSTEER_ACCEPT_URING);
		struct evsteer_listener *lev =
			direct ? direct_listener(base, hold_slot, &h, 0) :
				 evsteer_listener_new_bind(
					 base, tl_srv_accept_cb, &s,
					 EVSTEER_OPT_CLOSE_ON_FREE, -1,
					 (struct sockaddr *)&ss, len, &o);
		assert_non_null(lev);
		len = tl_sockname(evsteer_listener_get_fd(lev), &ss);
		/* armed */
		event_base_loop(base, EVLOOP_NONBLOCK);
		evsteer_listener_free(lev);
		/* a multishot accept still pending would keep the port bound */
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		assert_int_equal(bind(fd, (struct sockaddr *)&ss, len), 0);
		assert_int_equal(listen(fd, 1), 0);
		close(fd);
		assert_true(tl_dispatch_returns(base));
		event_base_free(base);
	}
}

/* ---- 10,000 connections: no fd, no slot left behind */

static void test_no_leak_10k(void **state)
{
	(void)state;
	tl_need_uring();
	int before = tl_count_fds();
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct tl_srv s = {.close_now = true};
	EVSTEER_LISTENER_OPTS(o, .accept = EVSTEER_ACCEPT_URING);
	s.lev = evsteer_listener_new_bind(base, tl_srv_accept_cb, &s,
					  EVSTEER_OPT_CLOSE_ON_FREE, -1,
					  (struct sockaddr *)&ss, len, &o);
	assert_non_null(s.lev);
	struct closer k = {0};
	struct evsteer_listener *d = direct_listener(base, close_at_once, &k, 0);
	assert_non_null(d);
	for (int round = 0; round < 50; round++) {
		int c[200];
		tl_connect_n(evsteer_listener_get_fd(s.lev), c, 100);
		tl_connect_n(evsteer_listener_get_fd(d), c + 100, 100);
		assert_true(tl_loop_until(base, &s.n, (round + 1) * 100));
		assert_true(tl_loop_until(base, &k.n, (round + 1) * 100));
		tl_close_n(c, 200);
	}
	assert_true(tl_loop_until_fn(base, no_slots,
				     evsteer_listener_get_uring(d)));
	evsteer_listener_free(s.lev);
	evsteer_listener_free(d);
	event_base_free(base);
	assert_int_equal(tl_count_fds(), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_direct_request_response),
		cmocka_unit_test(test_slot_to_fd),
		cmocka_unit_test(test_slot_to_fd_mask_install),
		cmocka_unit_test(test_send_and_close),
		cmocka_unit_test(test_send_and_close_no_cb),
		cmocka_unit_test(test_direct_first_pass),
		cmocka_unit_test(test_direct_set_cb),
		cmocka_unit_test(test_direct_stall_steal),
		cmocka_unit_test(test_direct_stall_steal_mask_dontwait),
		cmocka_unit_test(test_table_full),
		cmocka_unit_test(test_cq_overflow),
		cmocka_unit_test(test_free_releases_socket),
		cmocka_unit_test(test_no_leak_10k),
	};
	return tl_run_once("direct", tests, sizeof(tests) / sizeof(tests[0]));
}

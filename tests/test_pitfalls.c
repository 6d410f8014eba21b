/* SPDX-License-Identifier: MIT */
/*
 * The io_uring accept pitfalls other projects reported (issue 20), one
 * case each, named after the report, each failing if evsteer had it:
 *
 * - liburing #932: close() of a listening socket does not end its pending
 *   accepts, which keep the socket in its SO_REUSEPORT group: the kernel
 *   goes on steering connections to a socket nobody accepts from.
 * - netty #14819: a multishot accept that ends without IORING_CQE_F_MORE
 *   and is never armed again: the listener goes deaf.
 * - liburing #1062: multishot accept handing out invalid descriptors
 *   (with DEFER_TASKRUN, 6.6-6.8). evsteer's rings do not use
 *   DEFER_TASKRUN (docs/kernels.md), and the case checks what would show
 *   the bug whatever its cause: every descriptor delivered is a socket
 *   whose peer is one of our clients, once, and matches the address the
 *   callback was given; every direct slot delivered answers its client.
 * - -ENFILE when the fixed-file table is full: the kernel closes that
 *   connection and ends the multishot; it must be counted, reported to
 *   the error callback with errno ENFILE, and accepting must resume.
 */
#include "tlib.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/stat.h>
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

/* ---- servers that answer "hello" and close */

struct served {
	int n;
};

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

static void direct_reply(struct evsteer_listener *lev, struct evsteer_uring *r,
			 int slot, void *arg)
{
	(void)lev;
	struct served *s = arg;
	if (evsteer_uring_send_and_close(r, slot, "hello", 5, NULL, NULL) == 0)
		s->n++;
}

static struct evsteer_listener *worker(struct event_base *base, bool direct,
				       enum evsteer_bpf_mode bpf,
				       struct sockaddr_storage *ss,
				       socklen_t len, struct served *s)
{
	EVSTEER_LISTENER_OPTS(o, .bpf = bpf, .accept = EVSTEER_ACCEPT_URING);
	unsigned int fl = EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE_PORT;
	return direct ? evsteer_listener_new_bind_direct(
				base, direct_reply, s, fl, -1,
				(struct sockaddr *)ss, len, 0, &o) :
			evsteer_listener_new_bind(base, fd_reply, s, fl, -1,
						  (struct sockaddr *)ss, len, &o);
}

/* Every client got "hello" (the base runs while a direct reply is on
 * its way). */
static void replies(struct event_base *base, int *c, int n)
{
	for (int i = 0; i < n; i++) {
		char buf[8];
		int k;
		for (k = 0; k < 500; k++) {
			ssize_t r = recv(c[i], buf, sizeof(buf), MSG_DONTWAIT);
			if (r == 5)
				break;
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				fail_msg("client %d of %d: %s", i, n,
					 r ? strerror(errno) : "EOF, no reply");
			tl_loop_for(base, 10);
		}
		if (k == 500)
			fail_msg("client %d of %d: no reply in 5 s", i, n);
	}
}

/* ---- liburing #1062 */

enum { BURST = 64, ROUNDS = 4 };

struct checked {
	int n, bad;
	unsigned short ports[BURST * ROUNDS]; /* the clients' own ports */
	int seen[BURST * ROUNDS];
	int nports;
};

static void fd_check(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		     int len, void *arg)
{
	(void)lev;
	struct checked *k = arg;
	struct stat st;
	struct sockaddr_in peer;
	socklen_t pl = sizeof(peer);
	bool ok = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
		  getpeername(fd, (struct sockaddr *)&peer, &pl) == 0 &&
		  len == (int)sizeof(peer) &&
		  ((struct sockaddr_in *)sa)->sin_port == peer.sin_port;
	int i;
	for (i = 0; ok && i < k->nports; i++)
		if (k->ports[i] == peer.sin_port)
			break;
	if (!ok || i == k->nports || k->seen[i]++)
		k->bad++;
	k->n++;
	if (write(fd, "hello", 5) != 5)
		k->bad++;
	close(fd);
}

static void test_liburing_1062_accepted_fds_valid(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct checked k = {0};
	EVSTEER_LISTENER_OPTS(o, .accept = EVSTEER_ACCEPT_URING);
	struct evsteer_listener *lev = evsteer_listener_new_bind(
		base, fd_check, &k, EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len, &o);
	assert_non_null(lev);
	assert_string_equal(evsteer_listener_path_name(lev), "uring");
	int lfd = evsteer_listener_get_fd(lev);
	/* bursts: many completions per wake-up, where the bug showed */
	for (int r = 0; r < ROUNDS; r++) {
		int c[BURST];
		tl_connect_n(lfd, c, BURST);
		for (int i = 0; i < BURST; i++) {
			struct sockaddr_in me;
			socklen_t ml = sizeof(me);
			assert_int_equal(getsockname(c[i], (struct sockaddr *)&me, &ml), 0);
			k.ports[k.nports++] = me.sin_port;
		}
		assert_true(tl_loop_until(base, &k.n, (r + 1) * BURST));
		replies(base, c, BURST);
		tl_close_n(c, BURST);
	}
	if (k.bad)
		fail_msg("%d of %d descriptors delivered were not our clients' "
			 "sockets (liburing #1062)", k.bad, k.n);
	evsteer_listener_free(lev);
	event_base_free(base);

	/* direct: every slot delivered answers its own client */
	base = tl_base();
	len = tl_addr_loopback(AF_INET, &ss);
	struct served s = {0};
	lev = evsteer_listener_new_bind_direct(base, direct_reply, &s,
					       EVSTEER_OPT_CLOSE_ON_FREE, -1,
					       (struct sockaddr *)&ss, len, 0,
					       NULL);
	assert_non_null(lev);
	lfd = evsteer_listener_get_fd(lev);
	for (int r = 0; r < ROUNDS; r++) {
		int c[BURST];
		tl_connect_n(lfd, c, BURST);
		assert_true(tl_loop_until(base, &s.n, (r + 1) * BURST));
		replies(base, c, BURST);
		tl_close_n(c, BURST);
	}
	evsteer_listener_free(lev);
	event_base_free(base);
}

/* ---- liburing #932 */

/*
 * Two workers of one port, each with its accepts armed; worker 0 is freed
 * with them pending. No connection may then be steered to, or left
 * queued on, the freed socket: every client, whether it connected before
 * the free (then queued on either socket) or after, is served by worker
 * 1. With the kernel's hash (bpf off) a socket that stayed in the group
 * would get about half the new connections, and they would never be
 * accepted; connections queued on worker 0 when it closes are the
 * kernel's to reset there (no migration without the program), so only
 * those made after the free count.
 */
static void freed_socket_gets_nothing(bool direct, enum evsteer_bpf_mode bpf)
{
	tl_need_uring();
	if (bpf == EVSTEER_BPF_REQUIRE)
		tl_need_bpf();
	struct event_base *a = tl_base(), *b = tl_base();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct served s0 = {0}, s1 = {0};
	struct evsteer_listener *l0 = worker(a, direct, bpf, &ss, len, &s0);
	assert_non_null(l0);
	len = tl_sockname(evsteer_listener_get_fd(l0), &ss);
	struct evsteer_listener *l1 = worker(b, direct, bpf, &ss, len, &s1);
	assert_non_null(l1);
	print_message("%s, bpf %s: path %s\n", direct ? "direct" : "fd",
		      bpf == EVSTEER_BPF_OFF ? "off" : "require",
		      evsteer_listener_path_name(l1));
	/* both armed: accepts pending on both sockets */
	event_base_loop(a, EVLOOP_NONBLOCK);
	event_base_loop(b, EVLOOP_NONBLOCK);

	enum { BEFORE = 8, AFTER = 64 };
	int c[BEFORE + AFTER], n = 0;
	if (bpf == EVSTEER_BPF_REQUIRE)
		/* queued on either socket, or taken by an armed accept of
		 * worker 0's ring: migrated or handed to worker 1 */
		for (; n < BEFORE; n++)
			c[n] = tl_connect_to(evsteer_listener_get_fd(l1));
	evsteer_listener_free(l0);
	int from = n;
	for (; n < from + AFTER; n++)
		c[n] = tl_connect_to(evsteer_listener_get_fd(l1));
	if (!tl_loop_until(b, &s1.n, n))
		fail_msg("worker 1 served %d of %d: the rest went to the freed "
			 "socket (liburing #932)", s1.n, n);
	replies(b, c, n);
	assert_int_equal(s0.n, 0);
	tl_close_n(c, n);
	evsteer_listener_free(l1);
	assert_true(tl_dispatch_returns(a));
	event_base_free(a);
	event_base_free(b);
}

static void test_liburing_932_free_with_accepts_pending(void **state)
{
	(void)state;
	freed_socket_gets_nothing(false, EVSTEER_BPF_OFF);
	freed_socket_gets_nothing(true, EVSTEER_BPF_OFF);
	freed_socket_gets_nothing(false, EVSTEER_BPF_REQUIRE);
	freed_socket_gets_nothing(true, EVSTEER_BPF_REQUIRE);
}

/* ---- netty #14819 and -ENFILE: a one-slot table */

struct holder {
	int slots[4];
	int n, errors, last_errno;
};

static void hold_slot(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)lev;
	(void)r;
	struct holder *h = arg;
	if (h->n < 4)
		h->slots[h->n] = slot;
	h->n++;
}

static void holder_error(struct evsteer_listener *lev, void *arg)
{
	(void)lev;
	struct holder *h = arg;
	h->last_errno = errno;
	h->errors++;
}

static struct evsteer_listener *one_slot_listener(struct event_base *base,
						  struct holder *h)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	struct evsteer_listener *lev = evsteer_listener_new_bind_direct(
		base, hold_slot, h, EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len, 1, NULL);
	assert_non_null(lev);
	evsteer_listener_set_error_cb(lev, holder_error);
	return lev;
}

/*
 * The kernel ends the multishot accept without IORING_CQE_F_MORE when the
 * table is full (-ENFILE). evsteer arms it again (counted in rearms), so
 * once a slot is free the next connection is accepted, not left queued.
 */
static void test_netty_14819_multishot_end_rearmed(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct holder h = {0};
	struct evsteer_listener *lev = one_slot_listener(base, &h);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int lfd = evsteer_listener_get_fd(lev);
	int c[3];
	c[0] = tl_connect_to(lfd);
	assert_true(tl_loop_until(base, &h.n, 1));
	c[1] = tl_connect_to(lfd); /* no slot: the multishot ends */
	assert_true(tl_loop_until(base, &h.errors, 1));
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	uint64_t rearms = st.rearms;
	assert_int_equal(evsteer_uring_close(r, h.slots[0], NULL, NULL), 0);
	c[2] = tl_connect_to(lfd);
	if (!tl_loop_until(base, &h.n, 2))
		fail_msg("not accepted after the multishot ended (netty #14819): "
			 "%d queued", tl_queued(lfd));
	evsteer_listener_get_stats(lev, &st);
	print_message("re-arms: %llu before the slot was freed, %llu after\n",
		      (unsigned long long)rearms, (unsigned long long)st.rearms);
	assert_true(st.rearms >= 1);
	assert_int_equal(tl_queued(lfd), 0);
	evsteer_uring_close(r, h.slots[1], NULL, NULL);
	tl_close_n(c, 3);
	evsteer_listener_free(lev);
	event_base_free(base);
}

/*
 * -ENFILE: the connection that found the table full is closed by the
 * kernel; evsteer counts it (table_full), tells the error callback with
 * errno ENFILE, and goes on.
 */
static void test_enfile_direct_table_full_reported(void **state)
{
	(void)state;
	tl_need_uring();
	struct event_base *base = tl_base();
	struct holder h = {0};
	struct evsteer_listener *lev = one_slot_listener(base, &h);
	struct evsteer_uring *r = evsteer_listener_get_uring(lev);
	int lfd = evsteer_listener_get_fd(lev);
	int c[2];
	c[0] = tl_connect_to(lfd);
	assert_true(tl_loop_until(base, &h.n, 1));
	c[1] = tl_connect_to(lfd);
	if (!tl_loop_until(base, &h.errors, 1))
		fail_msg("a full table was not reported (-ENFILE)");
	assert_int_equal(h.last_errno, ENFILE);
	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	assert_int_equal(st.table_full, 1);
	assert_int_equal(st.accept_errors, 1);
	/* the kernel closed that connection: its client sees EOF or a reset */
	char b;
	struct timeval tv = {.tv_sec = TL_TIMEOUT_MS / 1000};
	setsockopt(c[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_true(read_intr(c[1], &b, 1) <= 0);
	assert_int_equal(h.n, 1);
	evsteer_uring_close(r, h.slots[0], NULL, NULL);
	tl_close_n(c, 2);
	evsteer_listener_free(lev);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_liburing_932_free_with_accepts_pending),
		cmocka_unit_test(test_liburing_1062_accepted_fds_valid),
		cmocka_unit_test(test_netty_14819_multishot_end_rearmed),
		cmocka_unit_test(test_enfile_direct_table_full_reported),
	};
	return tl_run_once("pitfalls", tests, sizeof(tests) / sizeof(tests[0]));
}

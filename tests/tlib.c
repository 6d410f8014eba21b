/* SPDX-License-Identifier: MIT */
#include "tlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <event2/thread.h>
#include <time.h>

const struct tl_path *tl_path;

static void opts_event(struct evsteer_listener_opts *o)
{
	/* REUSEABLE_PORT listeners must not pick up BPF on this path */
	o->bpf = EVSTEER_BPF_OFF;
	o->accept = EVSTEER_ACCEPT_EVENT;
}

static void opts_bpf(struct evsteer_listener_opts *o)
{
	/* the default path: auto's engine where BPF steers */
	o->bpf = EVSTEER_BPF_REQUIRE;
	o->accept = EVSTEER_ACCEPT_AUTO;
}

static void opts_uring(struct evsteer_listener_opts *o)
{
	o->bpf = EVSTEER_BPF_OFF;
	o->accept = EVSTEER_ACCEPT_URING;
}

static void opts_bpf_uring(struct evsteer_listener_opts *o)
{
	/* asked for: auto accepts with accept4() (listener.c) */
	o->bpf = EVSTEER_BPF_REQUIRE;
	o->accept = EVSTEER_ACCEPT_URING;
}

static char uring_why[256];

const char *tl_uring_unavailable(void)
{
	struct event_base *b = event_base_new();
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_LISTENER_OPTS(o, .accept = EVSTEER_ACCEPT_URING,
			      .bpf = EVSTEER_BPF_OFF);
	struct evsteer_listener *l = evsteer_listener_new_bind(
		b, NULL, NULL, EVSTEER_OPT_CLOSE_ON_FREE, -1,
		(struct sockaddr *)&ss, len, &o);
	EVSTEER_PATH_OPTS(p);
	const char *why = NULL;
	if (!l) {
		snprintf(uring_why, sizeof(uring_why), "listener: %s",
			 strerror(errno));
		why = uring_why;
	} else if (evsteer_listener_get_path(l, &p) < 0 ||
		   p.engine != EVSTEER_ENGINE_URING) {
		snprintf(uring_why, sizeof(uring_why), "%s", p.engine_reason);
		why = uring_why;
	}
	evsteer_listener_free(l);
	event_base_free(b);
	return why;
}

static const char *bpf_uring_unavailable(void)
{
	const char *why = tl_bpf_unavailable();
	return why ? why : tl_uring_unavailable();
}

static char bpf_why[256];

const char *tl_bpf_unavailable(void)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	EVSTEER_GROUP_OPTS(o, .bpf = EVSTEER_BPF_REQUIRE);
	struct evsteer_group *g =
		evsteer_group_new((struct sockaddr *)&ss, len, 1, 0, -1, &o);
	if (g) {
		evsteer_group_free(g);
		return NULL;
	}
	snprintf(bpf_why, sizeof(bpf_why), "BPF steering unavailable: %s",
		 strerror(errno));
	return bpf_why;
}

/*
 * "bpf": every inet listener is a REUSEABLE_PORT listener, so it forms a
 * (one-socket) BPF-steered group with its whole accounting path, and must
 * report "bpf+event".
 */
static const struct tl_path paths[] = {
	{.name = "event", .feature = NULL, .unavailable = NULL,
	 .opts = opts_event, .extra_flags = 0},
	{.name = "bpf+event", .feature = "bpf", .unavailable = tl_bpf_unavailable,
	 .opts = opts_bpf, .extra_flags = EVSTEER_OPT_REUSEABLE_PORT},
	{.name = "uring", .feature = "uring", .unavailable = tl_uring_unavailable,
	 .opts = opts_uring, .extra_flags = 0},
	{.name = "bpf+uring", .feature = "bpf", .unavailable = bpf_uring_unavailable,
	 .opts = opts_bpf_uring, .extra_flags = EVSTEER_OPT_REUSEABLE_PORT},
};

bool tl_required(const char *feature)
{
	const char *req = getenv("EVSTEER_TEST_REQUIRE");
	if (!req || !*req)
		return false;
	if (!strcmp(req, "all"))
		return true;
	if (!feature)
		return false;
	/* comma-separated list */
	size_t fl = strlen(feature);
	for (const char *p = req; (p = strstr(p, feature)); p += fl) {
		bool start = p == req || p[-1] == ',';
		bool end = p[fl] == '\0' || p[fl] == ',';
		if (start && end)
			return true;
	}
	return false;
}

void tl_skip_unless(bool have, const char *feature, const char *why)
{
	if (have)
		return;
	if (tl_required(feature))
		fail_msg("%s is required (EVSTEER_TEST_REQUIRE) but: %s",
			 feature ? feature : "feature", why);
	print_message("skip: %s\n", why);
	skip();
}

void tl_need_bpf(void)
{
	const char *why = tl_bpf_unavailable();
	tl_skip_unless(why == NULL, "bpf", why ? why : "");
}

void tl_need_uring(void)
{
	const char *why = tl_uring_unavailable();
	tl_skip_unless(why == NULL, "uring", why ? why : "");
}

void tl_need_ipv6(void)
{
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET6, &ss);
	bool have = fd >= 0 && bind(fd, (struct sockaddr *)&ss, len) == 0;
	if (fd >= 0)
		close(fd);
	tl_skip_unless(have, "ipv6", "no IPv6 loopback on this machine");
}

static bool path_selected(const char *name)
{
	const char *sel = getenv("EVSTEER_TEST_PATHS");
	if (!sel || !*sel)
		return true;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", sel);
	for (char *save, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save))
		if (!strcmp(tok, name))
			return true;
	return false;
}

static void tl_init(void)
{
	/* Every base in the tests is thread-aware, as LEV_OPT_THREADSAFE users
	 * must make theirs. */
	if (evthread_use_pthreads() < 0) {
		fprintf(stderr, "evthread_use_pthreads failed\n");
		exit(1);
	}
}

int tl_run_paths(const char *file, const struct CMUnitTest *tests, size_t n)
{
	int failed = 0, ran = 0, skipped = 0;

	tl_init();

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		const struct tl_path *p = &paths[i];
		if (!path_selected(p->name))
			continue;
		const char *why = p->unavailable ? p->unavailable() : NULL;
		if (why) {
			if (tl_required(p->feature)) {
				fprintf(stderr, "%s: path %s required but: %s\n",
					file, p->name, why);
				failed++;
			} else {
				printf("%s: path %s skipped: %s\n", file, p->name,
				       why);
				skipped++;
			}
			continue;
		}
		tl_path = p;
		char group[128];
		snprintf(group, sizeof(group), "%s[%s]", file, p->name);
		failed += _cmocka_run_group_tests(group, tests, n, NULL, NULL);
		ran++;
	}
	if (failed)
		return 1;
	(void)skipped;
	return ran ? 0 : 77;
}

int tl_run_once(const char *file, const struct CMUnitTest *tests, size_t n)
{
	tl_init();
	tl_path = &paths[0];
	return _cmocka_run_group_tests(file, tests, n, NULL, NULL) ? 1 : 0;
}

struct evsteer_listener *tl_new_bind_opts(struct event_base *base,
					  evsteer_accept_cb cb, void *arg,
					  unsigned int flags, int backlog,
					  const struct sockaddr *sa,
					  socklen_t len,
					  struct evsteer_listener_opts *o)
{
	tl_path->opts(o);
	if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6))
		flags |= tl_path->extra_flags;
	return evsteer_listener_new_bind(base, cb, arg, flags, backlog, sa, len,
					 o);
}

struct evsteer_listener *tl_new_bind(struct event_base *base,
				     evsteer_accept_cb cb, void *arg,
				     unsigned int flags, int backlog,
				     const struct sockaddr *sa, socklen_t len)
{
	EVSTEER_LISTENER_OPTS(o);
	return tl_new_bind_opts(base, cb, arg, flags, backlog, sa, len, &o);
}

struct evsteer_listener *tl_new(struct event_base *base, evsteer_accept_cb cb,
				void *arg, unsigned int flags, int backlog,
				int fd)
{
	EVSTEER_LISTENER_OPTS(o);
	tl_path->opts(&o);
	return evsteer_listener_new(base, cb, arg, flags, backlog, fd, &o);
}

socklen_t tl_addr_loopback(int family, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		return sizeof(*s6);
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	s4->sin_family = AF_INET;
	s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof(*s4);
}

socklen_t tl_addr_unix(struct sockaddr_storage *ss)
{
	static int seq;
	struct sockaddr_un *su = (struct sockaddr_un *)ss;
	memset(ss, 0, sizeof(*ss));
	su->sun_family = AF_UNIX;
	snprintf(su->sun_path, sizeof(su->sun_path), "/tmp/evsteer-test-%d-%d",
		 (int)getpid(), seq++);
	unlink(su->sun_path);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
			   strlen(su->sun_path) + 1);
}

socklen_t tl_sockname(int fd, struct sockaddr_storage *ss)
{
	socklen_t len = sizeof(*ss);
	memset(ss, 0, sizeof(*ss));
	assert_int_equal(getsockname(fd, (struct sockaddr *)ss, &len), 0);
	return len;
}

int tl_port_of(int fd)
{
	struct sockaddr_storage ss;
	tl_sockname(fd, &ss);
	/* sin_port and sin6_port share their offset */
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int tl_connect_to(int listen_fd)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_sockname(listen_fd, &ss);
	int c = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c >= 0);
	/* Loopback connects complete in the kernel's backlog without the
	 * server accepting, so a blocking connect never waits on us. */
	if (connect(c, (struct sockaddr *)&ss, len) < 0)
		fail_msg("connect: %s", strerror(errno));
	return c;
}

void tl_connect_n(int listen_fd, int *out, int n)
{
	for (int i = 0; i < n; i++)
		out[i] = tl_connect_to(listen_fd);
}

void tl_close_n(int *fds, int n)
{
	for (int i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
}

bool tl_loop_until(struct event_base *base, const int *counter, int want)
{
	bool fired = false;
	struct timeval tv = {TL_TIMEOUT_MS / 1000, (TL_TIMEOUT_MS % 1000) * 1000};
	struct event *wd = evtimer_new(base, watchdog_cb, &fired);
	evtimer_add(wd, &tv);
	while (*counter < want && !fired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(wd);
	return *counter >= want;
}

bool tl_loop_until_fn(struct event_base *base, bool (*done)(void *), void *arg)
{
	bool fired = false;
	struct timeval tv = {TL_TIMEOUT_MS / 1000, (TL_TIMEOUT_MS % 1000) * 1000};
	struct event *wd = evtimer_new(base, watchdog_cb, &fired);
	evtimer_add(wd, &tv);
	while (!done(arg) && !fired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(wd);
	return done(arg);
}

void tl_loop_for(struct event_base *base, int ms)
{
	bool fired = false;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	struct event *wd = evtimer_new(base, watchdog_cb, &fired);
	evtimer_add(wd, &tv);
	while (!fired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(wd);
}

struct watchdog {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done, fired;
	struct event_base *base;
};

static void *watchdog_thread(void *arg)
{
	struct watchdog *w = arg;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += TL_TIMEOUT_MS / 1000;
	pthread_mutex_lock(&w->lock);
	while (!w->done) {
		if (pthread_cond_timedwait(&w->cond, &w->lock, &until) ==
		    ETIMEDOUT) {
			w->fired = true;
			event_base_loopbreak(w->base);
			break;
		}
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

bool tl_dispatch_returns(struct event_base *base)
{
	/* A timer in the base would itself keep dispatch alive, so the
	 * watchdog is a thread (bases are thread-aware in the tests). */
	struct watchdog w = {.lock = PTHREAD_MUTEX_INITIALIZER,
			     .cond = PTHREAD_COND_INITIALIZER,
			     .base = base};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, watchdog_thread, &w), 0);
	event_base_dispatch(base);
	pthread_mutex_lock(&w.lock);
	w.done = true;
	pthread_cond_signal(&w.cond);
	pthread_mutex_unlock(&w.lock);
	pthread_join(t, NULL);
	return !w.fired;
}

int tl_sysctl_int(const char *path, int def)
{
	char full[256];
	snprintf(full, sizeof(full), "/proc/sys/%s", path);
	FILE *f = fopen(full, "r");
	int v = def;
	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = def;
		fclose(f);
	}
	return v;
}

int tl_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

bool tl_is_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	assert_true(fl >= 0);
	return fl & O_NONBLOCK;
}

bool tl_is_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	assert_true(fl >= 0);
	return fl & FD_CLOEXEC;
}

int tl_sockopt_int(int fd, int level, int name)
{
	int v = 0;
	socklen_t len = sizeof(v);
	assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
	return v;
}

static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static char cap_buf[65536]; /* libbpf alone logs ~10 KB per program load */
static size_t cap_len;

static void capture_fn(enum evsteer_log_level level, const char *msg,
		       void *arg)
{
	(void)level;
	(void)arg;
	pthread_mutex_lock(&cap_lock);
	int w = snprintf(cap_buf + cap_len, sizeof(cap_buf) - cap_len, "%s\n",
			 msg);
	if (w > 0 && cap_len + (size_t)w < sizeof(cap_buf))
		cap_len += (size_t)w;
	pthread_mutex_unlock(&cap_lock);
}

void tl_log_capture_start(void)
{
	pthread_mutex_lock(&cap_lock);
	cap_len = 0;
	cap_buf[0] = '\0';
	pthread_mutex_unlock(&cap_lock);
	evsteer_set_log(capture_fn, NULL, EVSTEER_LOG_DEBUG);
}

int tl_log_capture_count(const char *needle)
{
	int n = 0;
	pthread_mutex_lock(&cap_lock);
	for (const char *p = cap_buf; (p = strstr(p, needle)); p++)
		n++;
	pthread_mutex_unlock(&cap_lock);
	return n;
}

void tl_log_capture_stop(void)
{
	evsteer_set_log(NULL, NULL, EVSTEER_LOG_WARN);
}

struct event_base *tl_base(void)
{
	struct event_base *b = event_base_new();
	assert_non_null(b);
	return b;
}

void tl_srv_accept_cb(struct evsteer_listener *lev, int fd,
		      struct sockaddr *sa, int len, void *arg)
{
	struct tl_srv *s = arg;
	s->arg_seen = arg;
	if (s->lev && lev != s->lev)
		s->wrong_listener = true;
	int i = s->n++;
	if (i < TL_MAX && !s->close_now) {
		s->fds[i] = fd;
		memcpy(&s->peer[i], sa, (size_t)len);
		s->peerlen[i] = len;
	} else {
		close(fd);
	}
	if (s->n == s->disable_at)
		evsteer_listener_disable(lev);
	if (s->n == s->setnull_at)
		evsteer_listener_set_cb(lev, NULL, NULL);
	if (s->n == s->free_at) {
		evsteer_listener_free(lev);
		s->lev = NULL;
	}
}

void tl_srv_error_cb(struct evsteer_listener *lev, void *arg)
{
	struct tl_srv *s = arg;
	s->last_errno = errno;
	s->errors++;
	if (s->free_on_error) {
		evsteer_listener_free(lev);
		s->lev = NULL;
	}
}

void tl_srv_close(struct tl_srv *s)
{
	int kept = s->close_now ? 0 : (s->n < TL_MAX ? s->n : TL_MAX);
	tl_close_n(s->fds, kept);
}

int tl_srv_listen(struct tl_srv *s, struct event_base *base, unsigned int flags)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_addr_loopback(AF_INET, &ss);
	s->lev = tl_new_bind(base, tl_srv_accept_cb, s, flags, -1,
			     (struct sockaddr *)&ss, len);
	assert_non_null(s->lev);
	return evsteer_listener_get_fd(s->lev);
}

void tl_srv_done(struct tl_srv *s, struct event_base *base, int *c, int n)
{
	tl_close_n(c, n);
	tl_srv_close(s);
	evsteer_listener_free(s->lev);
	event_base_free(base);
}

int tl_queued(int listen_fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(listen_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return -1;
	/* for a listener the kernel reports its accept queue here */
	return (int)ti.tcpi_unacked;
}

void tl_steer_all_to(struct evsteer_group *g, unsigned int slot)
{
	long ncpu = sysconf(_SC_NPROCESSORS_CONF);
	for (long cpu = 0; cpu < ncpu && cpu < 256; cpu++)
		assert_int_equal(evsteer_group_set_cpu(g, (unsigned)cpu, slot), 0);
}

void tl_wait_queued(int listen_fd, int n)
{
	struct sockaddr_storage ss;
	tl_sockname(listen_fd, &ss);
	if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
		return;
	/* The final ACK of a loopback handshake may still be in softirq
	 * when connect() returns; poll the queue, bounded. */
	for (int i = 0; i < TL_TIMEOUT_MS; i++) {
		if (tl_queued(listen_fd) >= n)
			return;
		usleep(1000);
	}
	fail_msg("listener never had %d queued (has %d)", n,
		 tl_queued(listen_fd));
}

bool tl_uring(void)
{
	return strstr(tl_path->name, "uring") != NULL;
}

int tl_waiting(struct evsteer_listener *lev)
{
	EVSTEER_STATS_OPTS(st);
	assert_int_equal(evsteer_listener_get_stats(lev, &st), 0);
	return tl_queued(evsteer_listener_get_fd(lev)) + (int)st.held;
}

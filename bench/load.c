/* SPDX-License-Identifier: MIT */
/*
 * evsteer-bench-load: a loopback load generator, bounded in count and time.
 *
 *   closed --port P --threads T --seconds S [--max N]
 *       T threads, each: connect, read "ok", close, again. Prints
 *       {"connections", "seconds", "conn_per_s", "errors", "p50_ms",
 *       "p99_ms", "p999_ms", "max_ms", "tail"}: the percentiles of every
 *       answered connection's time from socket() to the reply; a
 *       connection unanswered for 5 s is an error.
 *   open --port P --rate R --seconds S [--samples FILE]
 *       Connection i is due at start + i/R; its latency runs from that
 *       scheduled moment to the first byte, so a stalled server cannot hide
 *       the wait it causes (no coordinated omission). Exact percentiles
 *       from every sample, a CDF of 200 points, and "tail": percentiles
 *       spread evenly on a log scale of 1/(1-p) (HdrHistogram style). Connections that got
 *       no reply are counted by what they saw: reset, refused, closed
 *       (EOF), timed_out (no answer 5 s after the run), other. --samples
 *       writes every answered connection's due time (CLOCK_MONOTONIC
 *       seconds) and latency (ms) to FILE, a line each. Between
 *       connections it sleeps until the next is due (to the nanosecond),
 *       so that it takes no more of the server's CPUs than it must.
 *   hold --port P --count N [--rate R]
 *       Open N connections (handshake done, nothing read), print "held",
 *       wait for a line on stdin, then read each: {"served", "reset",
 *       "other"} (drain and emfile scenarios).
 *
 *   --send (every mode): write a small request ("GET / HTTP/1.0") as soon
 *       as a connection is up, for a server that reads before it replies
 *       (evsteer-bench-server --read-first). hold sends it once the
 *       handshake is done, before "held": a held connection then waits
 *       with its request in the server's socket.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static bool send_request;
static const char request[] = "GET / HTTP/1.0\r\n\r\n";

/* --send: the request on a connected socket; false if it failed */
static bool send_req(int fd)
{
	if (!send_request)
		return true;
	return send(fd, request, sizeof(request) - 1, MSG_NOSIGNAL) ==
	       (ssize_t)(sizeof(request) - 1);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* sorted latencies: the value at quantile q */
static double pct(const double *lat, long n, double q)
{
	return n ? lat[(long)(q * (double)(n - 1))] : 0.0;
}

/* ', "tail": [[q, ms], ...]': quantiles at 1/(1-q) = 10^(i/10), ten a
 * decade (p50, p90, p99, p99.9, p99.99 evenly spread, HdrHistogram
 * style), as far as the samples reach (1/(1-q) <= n) */
static void print_tail(const double *lat, long n)
{
	/* 10^(i/10) from a table, not libm: decade * step[i % 10] */
	static const double step[10] = {1.0, 1.2589254, 1.5848932, 1.9952623,
					2.5118864, 3.1622777, 3.9810717,
					5.0118723, 6.3095734, 7.9432823};
	double decade = 1.0;
	printf(", \"tail\": [");
	for (int i = 0; i <= 60; i++) {
		if (i && i % 10 == 0)
			decade *= 10.0;
		double x = decade * step[i % 10];
		if (x > (double)n)
			break;
		double q = 1.0 - 1.0 / x;
		printf("%s[%.6f, %.4f]", i ? ", " : "", q, pct(lat, n, q));
	}
	printf("]");
}

/* ---- closed loop */

struct closed {
	double until;
	long max;
	atomic_long *done;
	long errors;
	double *lat; /* ms, one per answered connection */
	long n, cap;
};

static int one_connection(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* a server that stops answering costs an error, not a hung thread
	 * (SO_SNDTIMEO bounds the connect too) */
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char buf[8];
	int ok = connect(fd, (struct sockaddr *)&target, sizeof(target)) == 0 &&
		 send_req(fd) && read(fd, buf, sizeof(buf)) == 2;
	close(fd);
	return ok ? 0 : -1;
}

static void *closed_thread(void *arg)
{
	struct closed *c = arg;
	while (now_s() < c->until &&
	       (c->max <= 0 || atomic_load(c->done) < c->max)) {
		double t = now_s();
		if (one_connection() < 0) {
			c->errors++;
			continue;
		}
		atomic_fetch_add(c->done, 1);
		if (c->n == c->cap) {
			long cap = c->cap ? 2 * c->cap : 4096;
			double *l = realloc(c->lat, (size_t)cap * sizeof(double));
			if (!l)
				continue; /* counted, not timed */
			c->lat = l;
			c->cap = cap;
		}
		c->lat[c->n++] = (now_s() - t) * 1000.0;
	}
	return NULL;
}

static int run_closed(int threads, double seconds, long max)
{
	atomic_long done = 0;
	struct closed c[64];
	pthread_t t[64];
	if (threads > 64)
		threads = 64;
	double t0 = now_s();
	for (int i = 0; i < threads; i++) {
		c[i] = (struct closed){.until = t0 + seconds, .max = max,
				       .done = &done};
		pthread_create(&t[i], NULL, closed_thread, &c[i]);
	}
	long errors = 0, m = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		errors += c[i].errors;
		m += c[i].n;
	}
	double dt = now_s() - t0;
	long n = atomic_load(&done);
	double *lat = calloc((size_t)m + 1, sizeof(double));
	long k = 0;
	for (int i = 0; i < threads; i++) {
		if (lat)
			memcpy(lat + k, c[i].lat, (size_t)c[i].n * sizeof(double));
		k += c[i].n;
		free(c[i].lat);
	}
	if (!lat)
		m = 0;
	qsort(lat, (size_t)m, sizeof(double), cmp_double);
	printf("{\"connections\": %ld, \"seconds\": %.3f, \"conn_per_s\": %.1f, "
	       "\"errors\": %ld, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
	       "\"p999_ms\": %.3f, \"max_ms\": %.3f",
	       n, dt, n / dt, errors, pct(lat, m, 0.5), pct(lat, m, 0.99),
	       pct(lat, m, 0.999), m ? lat[m - 1] : 0.0);
	print_tail(lat, m);
	printf("}\n");
	fflush(stdout);
	free(lat);
	return 0;
}

/* ---- open loop */

/* epoll_wait() for at most `s` seconds, to the nanosecond where the kernel
 * has epoll_pwait2() (5.11), else in whole ms rounded up (never 0 while
 * something is due later: that would poll). */
static int wait_until(int ep, struct epoll_event *evs, int max, double s)
{
	if (s <= 0)
		return epoll_wait(ep, evs, max, 0);
	static bool no_pwait2;
	if (!no_pwait2) {
		struct timespec ts = {.tv_sec = (time_t)s,
				      .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
		int n = epoll_pwait2(ep, evs, max, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		no_pwait2 = true;
	}
	return epoll_wait(ep, evs, max, (int)(s * 1000) + 1);
}

struct pending {
	int fd;
	double due;
	bool unsent; /* --send: the request waits for the handshake */
};

static int run_open(double rate, double seconds, const char *samples)
{
	/* the default 50 us of timer slack would start connections up to
	 * 50 us after they are due, which the latency counts */
	prctl(PR_SET_TIMERSLACK, 1UL);
	long total = (long)(rate * seconds);
	double *lat = calloc((size_t)total + 1, sizeof(double));
	/* --samples: each answered connection's due time (CLOCK_MONOTONIC s)
	 * and latency, in the order answered */
	double *due = samples ? calloc((size_t)total + 1, sizeof(double)) : NULL;
	struct pending *pend = calloc(65536, sizeof(*pend));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	long next = 0, done = 0, errors = 0, inflight = 0;
	/* what a failed connection saw (restart scenario) */
	long reset = 0, refused = 0, closed = 0, other = 0;
	double t0 = now_s() + 0.01;
	double deadline = t0 + seconds + 5.0; /* stragglers get 5 s */

	while ((next < total || inflight > 0) && now_s() < deadline) {
		double now = now_s();
		/* start everything that is due */
		while (next < total && t0 + next / rate <= now) {
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK |
							 SOCK_CLOEXEC,
					0);
			if (fd < 0 || fd >= 65536) {
				errors++;
				if (fd >= 0)
					close(fd);
				next++;
				continue;
			}
			int r = connect(fd, (struct sockaddr *)&target,
					sizeof(target));
			if (r < 0 && errno != EINPROGRESS) {
				errors++;
				if (errno == ECONNREFUSED)
					refused++;
				else
					other++;
				close(fd);
				next++;
				continue;
			}
			/* loopback often connects at once; otherwise the
			 * request goes out when the socket becomes writable */
			bool unsent = send_request && !(r == 0 && send_req(fd));
			pend[fd] = (struct pending){fd, t0 + next / rate, unsent};
			struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP |
							   (unsent ? EPOLLOUT : 0),
						 .data.fd = fd};
			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			inflight++;
			next++;
		}
		/* sleep until the next connection is due, to the nanosecond:
		 * a timeout in whole ms (0 while the next is under 1 ms away)
		 * made this loop poll, and at 3000 conn/s it took a whole CPU
		 * from the server it measures, which a client on another
		 * machine does not */
		double until = next < total ? t0 + next / rate - now_s() : 0.05;
		struct epoll_event evs[256];
		int n = wait_until(ep, evs, 256, until);
		double t = now_s();
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (pend[fd].unsent &&
			    !(evs[i].events & (EPOLLERR | EPOLLHUP))) {
				if (!(evs[i].events & EPOLLOUT))
					continue;
				pend[fd].unsent = false;
				struct epoll_event in = {.events = EPOLLIN | EPOLLRDHUP,
							 .data.fd = fd};
				epoll_ctl(ep, EPOLL_CTL_MOD, fd, &in);
				/* a failed send shows in the read below */
				if (send_req(fd) && !(evs[i].events & EPOLLIN))
					continue;
			}
			char buf[8];
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r > 0) {
				if (due)
					due[done] = pend[fd].due;
				lat[done++] = (t - pend[fd].due) * 1000.0;
			} else {
				errors++;
				if (r == 0)
					closed++;
				else if (errno == ECONNRESET)
					reset++;
				else if (errno == ECONNREFUSED)
					refused++;
				else
					other++;
			}
			epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
			close(fd);
			inflight--;
		}
	}
	if (samples) {
		FILE *f = due ? fopen(samples, "w") : NULL;
		for (long i = 0; f && i < done; i++)
			fprintf(f, "%.6f %.4f\n", due[i], lat[i]);
		if (!f || fclose(f))
			fprintf(stderr, "--samples %s: %s\n", samples,
				strerror(errno));
		free(due);
	}
	qsort(lat, (size_t)done, sizeof(double), cmp_double);
#define PCT(q) (done ? lat[(long)((q) * (done - 1))] : 0.0)
	/* still in flight at the deadline: no answer in 5 s */
	errors += inflight;
	printf("{\"sent\": %ld, \"completed\": %ld, \"errors\": %ld, "
	       "\"reset\": %ld, \"refused\": %ld, \"closed\": %ld, "
	       "\"timed_out\": %ld, \"other\": %ld, "
	       "\"rate\": %.0f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
	       "\"p999_ms\": %.3f, \"max_ms\": %.3f, \"cdf\": [",
	       next, done, errors, reset, refused, closed, inflight, other, rate,
	       PCT(0.5), PCT(0.99), PCT(0.999), done ? lat[done - 1] : 0.0);
	for (int i = 0; i <= 200 && done; i++) {
		double q = i / 200.0;
		printf("%s[%.4f, %.4f]", i ? ", " : "", PCT(q), q);
	}
	printf("]");
	print_tail(lat, done);
	printf("}\n");
	fflush(stdout);
	close(ep);
	free(lat);
	free(pend);
	return 0;
}

/* ---- hold */

/* Wait (bounded) until every fd in fds[] is connected or failed. */
static void wait_connected(int *fds, long count, double deadline, long *failed)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	long waiting = 0;
	for (long i = 0; i < count; i++) {
		if (fds[i] < 0)
			continue;
		struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
		waiting++;
	}
	while (waiting > 0 && now_s() < deadline) {
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, 50);
		for (int k = 0; k < n; k++) {
			long i = (long)evs[k].data.u64;
			int err = 0;
			socklen_t el = sizeof(err);
			getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
			epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
			waiting--;
			if (!err && !send_req(fds[i]))
				err = errno ? errno : EIO;
			if (err) {
				close(fds[i]);
				fds[i] = -1;
				(*failed)++;
			}
		}
	}
	/* a SYN still unanswered (a full backlog): counted as failed */
	for (long i = 0; i < count && waiting > 0; i++) {
		int err = 0;
		socklen_t el = sizeof(err);
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		if (fds[i] >= 0 &&
		    (getpeername(fds[i], (struct sockaddr *)&ss, &sl) < 0 ||
		     getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err)) {
			close(fds[i]);
			fds[i] = -1;
			(*failed)++;
			waiting--;
		}
	}
	close(ep);
}

static int run_hold(long count, double rate)
{
	int *fds = calloc((size_t)count, sizeof(int));
	long failed = 0;
	double t0 = now_s();
	for (long i = 0; i < count; i++) {
		if (rate > 0) {
			double due = t0 + i / rate;
			while (now_s() < due)
				usleep(200);
		}
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
				0);
		if (fds[i] < 0 ||
		    (connect(fds[i], (struct sockaddr *)&target, sizeof(target)) < 0 &&
		     errno != EINPROGRESS)) {
			failed++;
			if (fds[i] >= 0)
				close(fds[i]);
			fds[i] = -1;
		}
	}
	/* handshakes on loopback take microseconds; 3 s covers a SYN retry */
	wait_connected(fds, count, now_s() + 3.0, &failed);
	long opened = count - failed;
	printf("held %ld %ld\n", opened, failed);
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof(line), stdin)) {
		free(fds);
		return 1;
	}

	/* read every held connection, all at once, bounded in time */
	long served = 0, reset = 0, other = 0, left = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	for (long i = 0; i < count; i++) {
		if (fds[i] < 0)
			continue;
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
					 .data.u64 = (uint64_t)i};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
		left++;
	}
	double deadline = now_s() + 15.0;
	while (left > 0 && now_s() < deadline) {
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, 100);
		for (int k = 0; k < n; k++) {
			long i = (long)evs[k].data.u64;
			char buf[8];
			ssize_t r = read(fds[i], buf, sizeof(buf));
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r == 2)
				served++;
			else if (r < 0 && errno == ECONNRESET)
				reset++;
			else
				other++;
			epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
			close(fds[i]);
			fds[i] = -1;
			left--;
		}
	}
	other += left; /* never answered within the deadline */
	printf("{\"opened\": %ld, \"connect_failed\": %ld, \"served\": %ld, "
	       "\"reset\": %ld, \"other\": %ld}\n",
	       opened, failed, served, reset, other);
	/* flushed before exit: a sanitizer's exit would drop the buffer */
	fflush(stdout);
	for (long i = 0; i < count; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	close(ep);
	free(fds);
	return 0;
}

/* the value after --name, or NULL */
static const char *arg_str(int argc, char **argv, const char *name)
{
	for (int i = 2; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return NULL;
}

static double arg_num(int argc, char **argv, const char *name, double def)
{
	const char *v = arg_str(argc, argv, name);
	return v ? atof(v) : def;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s closed|open|hold --port P [--send] ...\n",
			argv[0]);
		return 2;
	}
	for (int i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--send"))
			send_request = true;
	raise_nofile();
	target.sin_family = AF_INET;
	target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	target.sin_port = htons((uint16_t)arg_num(argc, argv, "--port", 0));
	if (!strcmp(argv[1], "closed"))
		return run_closed((int)arg_num(argc, argv, "--threads", 2),
				  arg_num(argc, argv, "--seconds", 2),
				  (long)arg_num(argc, argv, "--max", 0));
	if (!strcmp(argv[1], "open"))
		return run_open(arg_num(argc, argv, "--rate", 3000),
				arg_num(argc, argv, "--seconds", 2),
				arg_str(argc, argv, "--samples"));
	if (!strcmp(argv[1], "hold"))
		return run_hold((long)arg_num(argc, argv, "--count", 500),
				arg_num(argc, argv, "--rate", 0));
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 2;
}

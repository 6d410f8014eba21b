/* SPDX-License-Identifier: MIT */
/*
 * evsteer-http-server: an ordinary multi-threaded evhttp server, as people
 * write them, built against libevent only (it knows nothing of evsteer; run
 * it under evsteer-run to put evsteer underneath).
 *
 * One thread per worker, each with its own event_base, evhttp and
 * SO_REUSEPORT listening socket of the same port, handed to
 * evhttp_accept_socket_with_handle().
 *
 *   evsteer-http-server [--threads N] [--port P] [--work-us U]
 *                       [--work-mode spin|sleep] [--stall-ms M]
 *                       [--block-fd FD] [--pin]
 *
 * Paths:
 *   /          replies "ok\n" after --work-us of work (default 0): burnt
 *              CPU, or with --work-mode sleep a nanosleep()
 *   /stall     blocks its thread in nanosleep() for --stall-ms (default 50),
 *              as a synchronous database or DNS call would, then replies
 *              "stalled THREAD" (the thread's index: a benchmark leaves
 *              these requests out of each thread's share)
 *   /block     prints "blocked THREAD" on stdout, then blocks its thread in
 *              read() on --block-fd until one byte arrives there (a test
 *              decides when a stall ends), then replies
 *   /thread    replies with the index of the thread that served it
 *
 * --pin: thread i runs only on the i-th CPU the process may use (pin.h),
 * as the bench server's --pin does.
 *
 * Prints "ready PORT" on stdout once every thread listens. On SIGTERM or
 * SIGINT the loops stop and one JSON line goes to stdout: requests served
 * per thread, the process's CPU time, and how long "/" requests were held
 * inside the server (below).
 *
 * Held: the time from accepting a connection to replying to its request on
 * "/", measured here with libevent's own hooks (evhttp makes each new
 * connection's bufferevent through evhttp_set_bevcb() in the accept
 * callback: that moment is stamped). A client's latency adds the kernel's
 * queue and its own side; this part is what a thread that blocks makes the
 * connections it already took wait, which no listener can move. Reported
 * as counts over 5, 10 and 40 ms, from every request, with no correction.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include "pin.h"

#define MAX_THREADS 64
/* accept stamps in flight per thread, direct-mapped by bufferevent address;
 * a collision loses one sample (counted), it never mixes two up */
#define HELD_SLOTS 4096
static const unsigned long held_ms[] = {5, 10, 40};
#define NHELD (sizeof(held_ms) / sizeof(held_ms[0]))

struct stamp {
	const struct bufferevent *bev;
	unsigned long long t_ns;
};

struct worker {
	int id;
	int fd;
	struct event_base *base;
	struct evhttp *http;
	pthread_t thread;
	atomic_ulong served;
	/* the worker's own thread only, read after it is joined */
	unsigned long measured, unmatched, over[NHELD];
	struct stamp stamps[HELD_SLOTS];
};

static struct {
	int threads, port, work_us, stall_ms, block_fd;
	bool work_sleep;
	struct worker w[MAX_THREADS];
} S = {.threads = 2, .stall_ms = 50, .block_fd = -1};

static void sleep_us(int us)
{
	struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void burn_us(int us)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static unsigned long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

static struct stamp *stamp_of(struct worker *w, const struct bufferevent *bev)
{
	unsigned long h = (unsigned long)(uintptr_t)bev;
	h ^= h >> 17;
	h *= 0x9E3779B97F4A7C15UL;
	return &w->stamps[(h >> 40) % HELD_SLOTS];
}

/* evhttp's own bufferevent for a new connection (what it makes without a
 * bevcb), stamped: this runs in the accept callback */
static struct bufferevent *accepted(struct event_base *base, void *arg)
{
	struct worker *w = arg;
	struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (bev)
		*stamp_of(w, bev) = (struct stamp){bev, now_ns()};
	return bev;
}

static void held(struct evhttp_request *req, struct worker *w)
{
	struct evhttp_connection *c = evhttp_request_get_connection(req);
	struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
	struct stamp *st = bev ? stamp_of(w, bev) : NULL;
	if (!st || st->bev != bev) {
		w->unmatched++;
		return;
	}
	unsigned long long d = now_ns() - st->t_ns;
	st->bev = NULL;
	w->measured++;
	for (size_t i = 0; i < NHELD; i++)
		if (d > held_ms[i] * 1000000ULL)
			w->over[i]++;
}

static void reply(struct evhttp_request *req, struct worker *w, const char *body)
{
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	evbuffer_add_printf(out, "%s\n", body);
	evhttp_send_reply(req, HTTP_OK, "OK", NULL);
	atomic_fetch_add_explicit(&w->served, 1, memory_order_relaxed);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct worker *w = arg;
	const char *uri = evhttp_request_get_uri(req);
	if (!strcmp(uri, "/stall")) {
		sleep_us(S.stall_ms * 1000);
		char body[32];
		snprintf(body, sizeof(body), "stalled %d", w->id);
		reply(req, w, body);
		return;
	}
	if (!strcmp(uri, "/block") && S.block_fd >= 0) {
		/* say which thread is stuck, for a test to know */
		printf("blocked %d\n", w->id);
		fflush(stdout);
		char c;
		while (read(S.block_fd, &c, 1) < 0 && errno == EINTR)
			;
		reply(req, w, "unblocked");
		return;
	}
	if (!strcmp(uri, "/thread")) {
		char id[16];
		snprintf(id, sizeof(id), "%d", w->id);
		reply(req, w, id);
		return;
	}
	if (S.work_us > 0 && S.work_sleep)
		sleep_us(S.work_us);
	else if (S.work_us > 0)
		burn_us(S.work_us);
	reply(req, w, "ok");
	held(req, w);
}

static int listen_socket(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		return -1;
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, 1024))
		return -1;
	return fd;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	event_base_dispatch(w->base);
	return NULL;
}

static int arg_int(char **argv, int *i, int argc)
{
	if (*i + 1 >= argc) {
		fprintf(stderr, "%s needs a value\n", argv[*i]);
		exit(2);
	}
	return atoi(argv[++*i]);
}

int main(int argc, char **argv)
{
	bool pin = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads"))
			S.threads = arg_int(argv, &i, argc);
		else if (!strcmp(argv[i], "--port"))
			S.port = arg_int(argv, &i, argc);
		else if (!strcmp(argv[i], "--work-us"))
			S.work_us = arg_int(argv, &i, argc);
		else if (!strcmp(argv[i], "--work-mode") && i + 1 < argc &&
			 (!strcmp(argv[i + 1], "spin") || !strcmp(argv[i + 1], "sleep")))
			S.work_sleep = !strcmp(argv[++i], "sleep");
		else if (!strcmp(argv[i], "--stall-ms"))
			S.stall_ms = arg_int(argv, &i, argc);
		else if (!strcmp(argv[i], "--block-fd"))
			S.block_fd = arg_int(argv, &i, argc);
		else if (!strcmp(argv[i], "--pin"))
			pin = true;
		else {
			fprintf(stderr,
				"usage: %s [--threads N] [--port P] [--work-us U] "
				"[--work-mode spin|sleep] [--stall-ms M] "
				"[--block-fd FD] [--pin]\n",
				argv[0]);
			return 2;
		}
	}
	if (S.threads < 1 || S.threads > MAX_THREADS) {
		fprintf(stderr, "--threads: 1..%d\n", MAX_THREADS);
		return 2;
	}
	evthread_use_pthreads(); /* loopexit from the main thread */

	/* signals are taken by sigwait() below, not by the workers */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	int port = S.port;
	for (int i = 0; i < S.threads; i++) {
		struct worker *w = &S.w[i];
		w->id = i;
		w->fd = listen_socket(port);
		if (w->fd < 0) {
			perror("listen");
			return 1;
		}
		if (!port) { /* the others bind the port the first one got */
			struct sockaddr_in sin;
			socklen_t sl = sizeof(sin);
			getsockname(w->fd, (struct sockaddr *)&sin, &sl);
			port = ntohs(sin.sin_port);
		}
		w->base = event_base_new();
		w->http = w->base ? evhttp_new(w->base) : NULL;
		if (!w->http || !evhttp_accept_socket_with_handle(w->http, w->fd)) {
			fprintf(stderr, "evhttp set-up failed\n");
			return 1;
		}
		evhttp_set_gencb(w->http, on_request, w);
		evhttp_set_bevcb(w->http, accepted, w);
	}
	cpu_set_t allowed;
	int ncpu = pin ? bench_pin_cpus(&allowed) : 0;
	if (pin && ncpu < 1) {
		perror("--pin: sched_getaffinity");
		return 1;
	}
	for (int i = 0; i < S.threads; i++) {
		int err = bench_start_worker(&S.w[i].thread, run, &S.w[i],
					     &allowed, ncpu, i);
		if (err) {
			fprintf(stderr, "pthread_create: %s\n", strerror(err));
			return 1;
		}
	}
	printf("ready %d\n", port);
	fflush(stdout);

	int sig;
	sigwait(&set, &sig);
	for (int i = 0; i < S.threads; i++)
		event_base_loopexit(S.w[i].base, NULL);
	for (int i = 0; i < S.threads; i++)
		pthread_join(S.w[i].thread, NULL);

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"threads\": %d, \"served\": [", S.threads);
	for (int i = 0; i < S.threads; i++)
		printf("%s%lu", i ? ", " : "", atomic_load(&S.w[i].served));
	printf("], \"cpu_s\": %.6f",
	       (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	unsigned long measured = 0, unmatched = 0, over[NHELD] = {0};
	for (int i = 0; i < S.threads; i++) {
		measured += S.w[i].measured;
		unmatched += S.w[i].unmatched;
		for (size_t k = 0; k < NHELD; k++)
			over[k] += S.w[i].over[k];
	}
	printf(", \"held\": {\"measured\": %lu, \"unmatched\": %lu", measured, unmatched);
	for (size_t k = 0; k < NHELD; k++)
		printf(", \"over_%lums\": %lu", held_ms[k], over[k]);
	printf("}}\n");
	for (int i = 0; i < S.threads; i++) {
		evhttp_free(S.w[i].http);
		event_base_free(S.w[i].base);
	}
	return 0;
}

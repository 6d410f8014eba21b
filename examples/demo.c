/* SPDX-License-Identifier: MIT */
/*
 * The evsteer demo: a server written against libevent's evconnlistener API
 * (through <evsteer/compat.h>), one event_base per worker thread, all bound
 * to one port with LEV_OPT_REUSEABLE_PORT, as libevent's maintainers
 * recommend for multi-threaded accept. A loopback client makes short
 * connections (each answered with "ok"), then the demo prints the path in
 * use, the connections each worker accepted, and the rate.
 *
 *   evsteer-demo [--connections N] [--workers W] [--clients C]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <evsteer/compat.h>

#define MAX_WORKERS 16

struct worker {
	int id;
	struct event_base *base;
	struct evconnlistener *lev;
	pthread_t thread;
	atomic_int accepted;
};

static atomic_int total_accepted;

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd,
		      struct sockaddr *sa, int socklen, void *arg)
{
	(void)lev;
	(void)sa;
	(void)socklen;
	struct worker *w = arg;
	/* a short reply; the socket is non-blocking and nearly empty */
	if (write(fd, "ok", 2) != 2)
		perror("write");
	close(fd);
	atomic_fetch_add(&w->accepted, 1);
	atomic_fetch_add(&total_accepted, 1);
}

static void on_error(struct evconnlistener *lev, void *arg)
{
	struct worker *w = arg;
	int err = EVUTIL_SOCKET_ERROR();
	fprintf(stderr, "worker %d: accept error: %s\n", w->id,
		evutil_socket_error_to_string(err));
	(void)lev;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	event_base_dispatch(w->base);
	return NULL;
}

struct client {
	struct sockaddr_in addr;
	int count;
	int failed;
	pthread_t thread;
};

static void *client_main(void *arg)
{
	struct client *c = arg;
	for (int i = 0; i < c->count; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		char buf[8];
		if (fd < 0 ||
		    connect(fd, (struct sockaddr *)&c->addr, sizeof(c->addr)) < 0 ||
		    read(fd, buf, sizeof(buf)) != 2 || memcmp(buf, "ok", 2)) {
			c->failed++;
		}
		if (fd >= 0)
			close(fd);
	}
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int arg_int(int argc, char **argv, const char *name, int def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return atoi(argv[i + 1]);
	return def;
}

int main(int argc, char **argv)
{
	int nconn = arg_int(argc, argv, "--connections", 5000);
	int nworkers = arg_int(argc, argv, "--workers", 2);
	int nclients = arg_int(argc, argv, "--clients", 2);
	if (nconn < 1 || nworkers < 1 || nworkers > MAX_WORKERS || nclients < 1) {
		fprintf(stderr, "usage: %s [--connections N] [--workers 1..%d] "
				"[--clients C]\n",
			argv[0], MAX_WORKERS);
		return 2;
	}
	/* workers are stopped from the main thread */
	evthread_use_pthreads();

	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	struct worker workers[MAX_WORKERS];
	memset(workers, 0, sizeof(workers));
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];
		w->id = i;
		w->base = event_base_new();
		/* The first listener picks a free port; the others join it. */
		w->lev = evconnlistener_new_bind(
			w->base, on_accept, w,
			LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
				LEV_OPT_REUSEABLE_PORT | LEV_OPT_THREADSAFE,
			-1, (struct sockaddr *)&sin, sizeof(sin));
		if (!w->lev) {
			fprintf(stderr, "worker %d: listen: %s\n", i,
				strerror(errno));
			return 1;
		}
		evconnlistener_set_error_cb(w->lev, on_error);
		if (i == 0) {
			socklen_t len = sizeof(sin);
			getsockname(evconnlistener_get_fd(w->lev),
				    (struct sockaddr *)&sin, &len);
		}
	}

	/* The native API reads the path of any evconnlistener. */
	EVSTEER_PATH_OPTS(path);
	evsteer_listener_get_path(workers[0].lev, &path);
	printf("evsteer %s demo: %d workers on 127.0.0.1:%d\n", evsteer_version(),
	       nworkers, ntohs(sin.sin_port));
	printf("path: %s\n", path.name);
	if (path.steering == EVSTEER_STEER_BPF)
		printf("  steering: bpf, policy %s (EVSTEER_POLICY=...)\n",
		       evsteer_policy_name(path.policy));
	else
		printf("  steering: %s\n",
		       path.steering == EVSTEER_STEER_KERNEL_HASH ? "kernel hash" :
		       path.steering == EVSTEER_STEER_CBPF ?
				"classic bpf (hash over the healthy workers)" :
				"none");
	if (*path.steering_reason)
		printf("    why: %s\n", path.steering_reason);
	printf("  accept engine: %s\n",
	       path.engine == EVSTEER_ENGINE_URING ? "io_uring" :
	       path.engine == EVSTEER_ENGINE_URING_DIRECT ? "io_uring direct" :
							    "event (accept4)");
	if (*path.engine_reason)
		printf("    why: %s\n", path.engine_reason);

	for (int i = 0; i < nworkers; i++)
		pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);

	struct client clients[16];
	if (nclients > 16)
		nclients = 16;
	double t0 = now_s();
	for (int i = 0; i < nclients; i++) {
		clients[i] = (struct client){
			.addr = sin,
			.count = nconn / nclients + (i < nconn % nclients),
		};
		pthread_create(&clients[i].thread, NULL, client_main, &clients[i]);
	}
	int failed = 0;
	for (int i = 0; i < nclients; i++) {
		pthread_join(clients[i].thread, NULL);
		failed += clients[i].failed;
	}
	double dt = now_s() - t0;

	/* every client read "ok", so every connection was accepted */
	for (int i = 0; i < nworkers; i++) {
		event_base_loopexit(workers[i].base, NULL);
		pthread_join(workers[i].thread, NULL);
	}

	printf("client: %d connections in %.3f s = %.0f conn/s, %d failed\n",
	       nconn, dt, nconn / dt, failed);
	struct evsteer_group *g = evsteer_listener_get_group(workers[0].lev);
	for (int i = 0; i < nworkers; i++) {
		int n = atomic_load(&workers[i].accepted);
		printf("  worker %d accepted %6d (%4.1f%%)", i, n,
		       100.0 * n / (nconn ? nconn : 1));
		EVSTEER_WORKER_STATS_OPTS(ws);
		if (g && path.steering == EVSTEER_STEER_BPF &&
		    evsteer_group_worker_stats(g, (unsigned)i, &ws) == 0)
			printf("  steered %6llu, stolen %llu",
			       (unsigned long long)ws.steered,
			       (unsigned long long)ws.stolen);
		printf("\n");
		evconnlistener_free(workers[i].lev);
		event_base_free(workers[i].base);
	}
	int total = atomic_load(&total_accepted);
	printf("total accepted %d of %d\n", total, nconn);
	return failed || total != nconn ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The baseline: the system libevent's own evconnlistener, one event_base per
 * worker thread, all bound with LEV_OPT_REUSEABLE_PORT (what users run
 * today). This file includes <event2/listener.h>, so it is built apart from
 * the evsteer implementations.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "server.h"

struct lw {
	struct event_base *base;
	struct evconnlistener *lev;
	pthread_t loop;         /* the worker's thread, once its loop runs */
	atomic_bool looping;    /* its loop has run a callback */
	atomic_bool freed;      /* a free posted to the loop is done */
};

static void drop(struct bench_worker *w);

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
		      struct sockaddr *sa, int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	struct bench_worker *w = arg;
	bench_serve(w, fd);
	if (bench_drop_now(w)) {
		drop(w);
		bench_dropped();
	}
}

static int setup(struct bench_worker *w, int *port)
{
	struct lw *x = calloc(1, sizeof(*x));
	x->base = event_base_new();
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)*port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	x->lev = evconnlistener_new_bind(
		x->base, on_accept, w,
		LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT |
			LEV_OPT_THREADSAFE,
		-1, (struct sockaddr *)&sin, sizeof(sin));
	if (!x->lev)
		return -1;
	socklen_t sl = sizeof(sin);
	getsockname(evconnlistener_get_fd(x->lev), (struct sockaddr *)&sin, &sl);
	*port = ntohs(sin.sin_port);
	w->impl = x;
	w->base = x->base;
	return 0;
}

static void looping_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct lw *x = arg;
	x->loop = pthread_self();
	atomic_store(&x->looping, true);
}

static void *run(void *arg)
{
	struct bench_worker *w = arg;
	struct lw *x = w->impl;
	/* the loop's first pass says it runs (a frozen worker's never does) */
	struct timeval now = {0, 0};
	event_base_once(x->base, -1, EV_TIMEOUT, looping_cb, x, &now);
	bench_run_base(w->cfg, x->base, w->id);
	return NULL;
}

static void stop(struct bench_worker *w)
{
	struct lw *x = w->impl;
	/* see ev_stop(): a break before the loop starts is forgotten */
	event_base_loopexit(x->base, NULL);
}

static void free_in_loop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct lw *x = arg;
	if (x->lev)
		evconnlistener_free(x->lev);
	x->lev = NULL;
	atomic_store(&x->freed, true);
}

/* free the worker's listener, if it still has one: on SIGTERM all a
 * libevent server can do (what is queued on its sockets is reset when
 * they close). From another thread while the loop runs, libevent 2.1 can
 * deadlock: evconnlistener_free() holds the listener's lock into
 * event_del(), which waits for the listener's callback if the loop is
 * just running it, and that callback first takes the same lock (libevent
 * issue #1224, docs/behaviour.md; seen as
 * a server that never exits after SIGTERM, once in CI's bench-smoke). So
 * the loop's own thread frees it; a loop that never ran (a frozen
 * worker) cannot be in the callback, and is freed from here. */
static void drop(struct bench_worker *w)
{
	struct lw *x = w->impl;
	if (!x->lev)
		return;
	if (atomic_load(&x->looping) && !pthread_equal(pthread_self(), x->loop)) {
		atomic_store(&x->freed, false);
		struct timeval now = {0, 0};
		if (event_base_once(x->base, -1, EV_TIMEOUT, free_in_loop, x,
				    &now) == 0) {
			for (int i = 0; i < 10000 && !atomic_load(&x->freed); i++)
				usleep(1000);
			if (!atomic_load(&x->freed))
				fprintf(stderr, "worker %d: its loop did not free its "
					"listener within 10 s\n", w->id);
			return;
		}
	}
	evconnlistener_free(x->lev);
	x->lev = NULL;
}

static void describe(struct bench_worker *w, char *buf, size_t len)
{
	(void)w;
	snprintf(buf, len,
		 "{\"steering\": \"kernel-hash\", \"engine\": \"event\", "
		 "\"policy\": null, \"reasons\": \"system libevent %s\"}",
		 event_get_version());
}

const struct bench_impl bench_libevent = {
	.name = "libevent",
	.setup = setup,
	.run = run,
	.stop = stop,
	.drop = drop,
	.describe = describe,
};

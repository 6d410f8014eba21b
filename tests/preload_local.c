/* SPDX-License-Identifier: MIT */
/*
 * An evhttp server whose libevent is dlopen()ed with RTLD_LOCAL (as a
 * plugin would have it): libevent is not in the global scope, so the
 * preload cannot find "the next" evconnlistener_new. evhttp's calls still
 * reach the preload first; it must hand each to the libevent of the caller
 * and say so once.
 *
 *   preload_local --requests N   prints "ready PORT", serves N requests of
 *                                /hello, exits 0
 */
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct event_base;
struct evhttp;
struct evhttp_request;
struct evhttp_bound_socket;
struct evbuffer;

static struct {
	struct event_base *(*event_base_new)(void);
	int (*event_base_dispatch)(struct event_base *);
	int (*event_base_loopexit)(struct event_base *, const void *);
	void (*event_base_free)(struct event_base *);
	struct evhttp *(*evhttp_new)(struct event_base *);
	void (*evhttp_free)(struct evhttp *);
	void (*evhttp_set_gencb)(struct evhttp *,
				 void (*)(struct evhttp_request *, void *),
				 void *);
	struct evhttp_bound_socket *(*evhttp_bind_socket_with_handle)(
		struct evhttp *, const char *, unsigned short);
	int (*evhttp_bound_socket_get_fd)(struct evhttp_bound_socket *);
	void (*evhttp_send_reply)(struct evhttp_request *, int, const char *,
				  struct evbuffer *);
	void (*evhttp_request_set_on_complete_cb)(
		struct evhttp_request *, void (*)(struct evhttp_request *, void *),
		void *);
	struct evbuffer *(*evbuffer_new)(void);
	int (*evbuffer_add)(struct evbuffer *, const void *, size_t);
	void (*evbuffer_free)(struct evbuffer *);
} L;

static struct event_base *base;
static long remaining;

/* once the answer is out: leaving earlier would drop the last one */
static void on_complete(struct evhttp_request *req, void *arg)
{
	(void)req, (void)arg;
	if (--remaining == 0)
		L.event_base_loopexit(base, NULL);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	(void)arg;
	static const char msg[] = "hello from evhttp\n";
	struct evbuffer *b = L.evbuffer_new();
	L.evhttp_request_set_on_complete_cb(req, on_complete, NULL);
	L.evbuffer_add(b, msg, sizeof(msg) - 1);
	L.evhttp_send_reply(req, 200, "OK", b);
	L.evbuffer_free(b);
}

int main(int argc, char **argv)
{
	remaining = argc == 3 && !strcmp(argv[1], "--requests") ? atol(argv[2]) : 1;
	void *h = dlopen("libevent-2.1.so.7", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
#define SYM(n)                                                                 \
	do {                                                                   \
		*(void **)&L.n = dlsym(h, #n);                                 \
		if (!L.n) {                                                    \
			fprintf(stderr, "dlsym %s: %s\n", #n, dlerror());      \
			return 1;                                              \
		}                                                              \
	} while (0)
	SYM(event_base_new);
	SYM(event_base_dispatch);
	SYM(event_base_loopexit);
	SYM(event_base_free);
	SYM(evhttp_new);
	SYM(evhttp_free);
	SYM(evhttp_set_gencb);
	SYM(evhttp_bind_socket_with_handle);
	SYM(evhttp_bound_socket_get_fd);
	SYM(evhttp_send_reply);
	SYM(evhttp_request_set_on_complete_cb);
	SYM(evbuffer_new);
	SYM(evbuffer_add);
	SYM(evbuffer_free);

	base = L.event_base_new();
	struct evhttp *http = L.evhttp_new(base);
	L.evhttp_set_gencb(http, on_request, NULL);
	struct evhttp_bound_socket *b =
		L.evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
	if (!b) {
		fprintf(stderr, "bind failed\n");
		return 1;
	}
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	getsockname(L.evhttp_bound_socket_get_fd(b), (struct sockaddr *)&sin, &len);
	printf("ready %u\n", ntohs(sin.sin_port));
	fflush(stdout);
	L.event_base_dispatch(base);
	L.evhttp_free(http);
	L.event_base_free(base);
	printf("done\n");
	return 0;
}

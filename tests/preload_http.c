/* SPDX-License-Identifier: MIT */
/*
 * A small evhttp server built against the system libevent (not evsteer):
 * the preload tests run it with and without libevsteer-preload.so and expect
 * the same answers. evhttp makes its listeners inside libevent
 * (evhttp_bind_socket_with_handle: a socket it listened on itself, then
 * evconnlistener_new with a NULL callback and backlog 0, then
 * evconnlistener_set_cb), exactly what a packaged evhttp program does.
 *
 *   preload_http [--requests N] [--unix PATH]
 * prints "ready PORT", serves N requests (0: until killed), frees everything
 * and exits 0. Paths: /hello, /echo?..., /peer (the peer address evhttp got
 * through the accept callback), /listener (what the evconnlistener calls say
 * about the bound socket); anything else is evhttp's 404.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

struct server {
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *tcp;
	long remaining; /* requests left; < 0: no limit */
};

/* Counted once the answer is written out: leaving the loop earlier would
 * close the last connection with its answer still buffered. */
static void on_complete(struct evhttp_request *req, void *arg)
{
	struct server *s = arg;
	(void)req;
	if (s->remaining > 0 && --s->remaining == 0)
		event_base_loopexit(s->base, NULL);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct server *s = arg;
	const char *uri = evhttp_request_get_uri(req);
	struct evbuffer *body = evbuffer_new();

	evhttp_request_set_on_complete_cb(req, on_complete, s);
	if (!strcmp(uri, "/hello")) {
		evbuffer_add_printf(body, "hello from evhttp\n");
	} else if (!strncmp(uri, "/echo?", 6)) {
		evbuffer_add_printf(body, "%s\n", uri + 6);
	} else if (!strcmp(uri, "/peer")) {
		char *host;
		ev_uint16_t port;
		struct evhttp_connection *c = evhttp_request_get_connection(req);
		evhttp_connection_get_peer(c, &host, &port);
		evbuffer_add_printf(body, "peer %s, port %s\n", host,
				    port ? "set" : "zero");
	} else if (!strcmp(uri, "/listener")) {
		struct evconnlistener *l = evhttp_bound_socket_get_listener(s->tcp);
		int fd = evconnlistener_get_fd(l);
		evbuffer_add_printf(body,
				    "fd matches %d, base matches %d, bound fd %d\n",
				    fd == evhttp_bound_socket_get_fd(s->tcp),
				    evconnlistener_get_base(l) == s->base,
				    fd >= 0);
	} else {
		evbuffer_free(body);
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain");
	evhttp_send_reply(req, 200, "OK", body);
	evbuffer_free(body);
}

static int unix_listen(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
	    listen(fd, 64) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	struct server s = {.remaining = -1};
	const char *unix_path = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--requests") && i + 1 < argc)
			s.remaining = atol(argv[++i]) > 0 ? atol(argv[i]) : -1;
		else if (!strcmp(argv[i], "--unix") && i + 1 < argc)
			unix_path = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--requests N] [--unix PATH]\n",
				argv[0]);
			return 2;
		}
	}

	s.base = event_base_new();
	s.http = s.base ? evhttp_new(s.base) : NULL;
	if (!s.http)
		return 1;
	evhttp_set_gencb(s.http, on_request, &s);

	s.tcp = evhttp_bind_socket_with_handle(s.http, "127.0.0.1", 0);
	if (!s.tcp) {
		perror("evhttp_bind_socket_with_handle");
		return 1;
	}
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	if (getsockname(evhttp_bound_socket_get_fd(s.tcp),
			(struct sockaddr *)&sin, &len) < 0) {
		perror("getsockname");
		return 1;
	}
	if (unix_path) {
		int fd = unix_listen(unix_path);
		if (fd < 0 || evhttp_accept_socket(s.http, fd) < 0) {
			perror("unix socket");
			return 1;
		}
	}
	printf("ready %u\n", ntohs(sin.sin_port));
	fflush(stdout);

	event_base_dispatch(s.base);
	evhttp_free(s.http); /* frees the listeners */
	event_base_free(s.base);
	if (unix_path)
		unlink(unix_path);
	printf("done\n");
	return 0;
}

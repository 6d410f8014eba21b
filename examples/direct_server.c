/* SPDX-License-Identifier: MIT */
/*
 * A request/response server on io_uring direct descriptors: connections are
 * accepted straight into the ring's fixed-file table (no fd per connection),
 * each request is read, then answered with "ok" and the slot closed in one
 * linked chain (evsteer_uring_send_and_close), all through evsteer_uring_*
 * completions on the event_base's ring: no system call per connection of
 * its own, the ring submits each loop round's requests together.
 *
 *   evsteer-direct-server [--port P] [--max N]
 *
 * Prints "ready PORT" when listening; exits after N connections (--max) or
 * on SIGTERM/SIGINT, printing one JSON line of counters.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <evsteer/evsteer.h>

struct server {
	struct event_base *base;
	long served, max, errors;
};

struct conn {
	struct server *srv;
	char buf[512];
};

static const char reply[] = "ok";

/* The chain ran: the reply was sent (res bytes, or -errno) and the slot is
 * closed either way. */
static void on_done(struct evsteer_uring *r, int slot, int res, void *arg)
{
	(void)r;
	(void)slot;
	struct conn *c = arg;
	struct server *s = c->srv;
	if (res < 0)
		s->errors++;
	free(c);
	if (++s->served == s->max)
		event_base_loopbreak(s->base);
}

static void on_request(struct evsteer_uring *r, int slot, int res, void *arg)
{
	struct conn *c = arg;
	/* one read is the request here; a real server would parse and loop */
	if (res <= 0 || evsteer_uring_send_and_close(r, slot, reply,
						     sizeof(reply) - 1, on_done,
						     c) < 0) {
		if (res < 0)
			c->srv->errors++;
		evsteer_uring_close(r, slot, on_done, c);
	}
}

static void on_accept(struct evsteer_listener *lev, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)lev;
	struct conn *c = malloc(sizeof(*c));
	if (!c) {
		evsteer_uring_close(r, slot, NULL, NULL);
		return;
	}
	c->srv = arg;
	if (evsteer_uring_recv(r, slot, c->buf, sizeof(c->buf), on_request, c) < 0)
		evsteer_uring_close(r, slot, on_done, c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
	int port = 0;
	struct server s = {.max = -1};
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--max"))
			s.max = atol(argv[i + 1]);
		else {
			fprintf(stderr, "usage: %s [--port P] [--max N]\n", argv[0]);
			return 2;
		}
	}
	s.base = event_base_new();
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct evsteer_listener *lev = evsteer_listener_new_bind_direct(
		s.base, on_accept, &s, EVSTEER_OPT_CLOSE_ON_FREE |
					       EVSTEER_OPT_REUSEABLE,
		-1, (struct sockaddr *)&sin, sizeof(sin), 0, NULL);
	if (!lev) {
		fprintf(stderr, "direct listener: %s\n", strerror(errno));
		return 1;
	}
	socklen_t len = sizeof(sin);
	getsockname(evsteer_listener_get_fd(lev), (struct sockaddr *)&sin, &len);
	struct event *sigterm = evsignal_new(s.base, SIGTERM, on_signal, s.base);
	struct event *sigint = evsignal_new(s.base, SIGINT, on_signal, s.base);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	printf("ready %d\n", ntohs(sin.sin_port));
	fflush(stdout);

	event_base_dispatch(s.base);

	EVSTEER_STATS_OPTS(st);
	evsteer_listener_get_stats(lev, &st);
	printf("{\"path\": \"%s\", \"served\": %ld, \"errors\": %ld, "
	       "\"accepted\": %llu, \"slots_in_use\": %u}\n",
	       evsteer_listener_path_name(lev), s.served, s.errors,
	       (unsigned long long)st.accepted,
	       evsteer_uring_slots_in_use(evsteer_listener_get_uring(lev)));
	event_free(sigterm);
	event_free(sigint);
	evsteer_listener_free(lev);
	event_base_free(s.base);
	return 0;
}

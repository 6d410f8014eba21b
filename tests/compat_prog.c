/* SPDX-License-Identifier: MIT */
/*
 * A program written for libevent's <event2/listener.h>. It is built twice:
 * against libevent, and with the one include line switched to
 * <evsteer/compat.h> (USE_EVSTEER). Both builds must print the same lines.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#ifdef USE_EVSTEER
#include <evsteer/compat.h>
#else
#include <event2/listener.h>
#endif

struct app {
	struct evconnlistener *lev;
	int accepted;
	int peers_ok;
	int nonblock, cloexec;
	int disable_at, free_at;
	int errors, last_err;
	struct sockaddr_in clients[16];
	int nclients;
};

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd,
		      struct sockaddr *sa, int socklen, void *arg)
{
	struct app *a = arg;
	int i = a->accepted++;
	if (socklen == (int)sizeof(struct sockaddr_in) && i < a->nclients &&
	    !memcmp(sa, &a->clients[i], sizeof(struct sockaddr_in)))
		a->peers_ok++;
	a->nonblock += !!(fcntl(fd, F_GETFL) & O_NONBLOCK);
	a->cloexec += !!(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	close(fd);
	if (a->accepted == a->disable_at)
		evconnlistener_disable(lev);
	if (a->accepted == a->free_at) {
		evconnlistener_free(lev);
		a->lev = NULL;
	}
}

static void on_error(struct evconnlistener *lev, void *arg)
{
	struct app *a = arg;
	a->errors++;
	a->last_err = EVUTIL_SOCKET_ERROR();
	evconnlistener_disable(lev);
}

static int connect_n(struct app *a, int *fds, int n)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	getsockname(evconnlistener_get_fd(a->lev), (struct sockaddr *)&sin, &len);
	for (int i = 0; i < n; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fds[i], (struct sockaddr *)&sin, len) < 0)
			return -1;
		len = sizeof(a->clients[0]);
		getsockname(fds[i], (struct sockaddr *)&a->clients[a->nclients++],
			    &len);
		len = sizeof(sin);
	}
	return 0;
}

int main(void)
{
	printf("flags %u %u %u %u %u %u %u %u %u\n",
	       LEV_OPT_LEAVE_SOCKETS_BLOCKING, LEV_OPT_CLOSE_ON_FREE,
	       LEV_OPT_CLOSE_ON_EXEC, LEV_OPT_REUSEABLE, LEV_OPT_THREADSAFE,
	       LEV_OPT_DISABLED, LEV_OPT_DEFERRED_ACCEPT, LEV_OPT_REUSEABLE_PORT,
	       LEV_OPT_BIND_IPV6ONLY);

	struct event_base *base = event_base_new();
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	struct app a = {.disable_at = 2};
	evconnlistener_errorcb ecb = on_error;
	evconnlistener_cb acb = on_accept;
	a.lev = evconnlistener_new_bind(base, acb, &a,
					LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						LEV_OPT_CLOSE_ON_EXEC |
						LEV_OPT_DISABLED,
					-1, (struct sockaddr *)&sin, sizeof(sin));
	if (!a.lev) {
		perror("new_bind");
		return 1;
	}
	printf("base matches %d, fd valid %d\n",
	       evconnlistener_get_base(a.lev) == base,
	       evconnlistener_get_fd(a.lev) >= 0);

	int fds[8];
	if (connect_n(&a, fds, 5) < 0)
		return 1;
	printf("enable %d\n", evconnlistener_enable(a.lev));
	int r = event_base_dispatch(base);
	printf("dispatch %d after disable in callback: accepted %d\n", r,
	       a.accepted);
	a.disable_at = 0;
	a.free_at = 5;
	evconnlistener_enable(a.lev);
	r = event_base_dispatch(base);
	printf("dispatch %d after free in callback: accepted %d peers ok %d "
	       "nonblock %d cloexec %d\n",
	       r, a.accepted, a.peers_ok, a.nonblock, a.cloexec);
	for (int i = 0; i < 5; i++)
		close(fds[i]);

	/* set_cb on a listener made without one; blocking accepted sockets */
	struct app b = {0};
	b.lev = evconnlistener_new_bind(base, NULL, NULL,
					LEV_OPT_CLOSE_ON_FREE |
						LEV_OPT_LEAVE_SOCKETS_BLOCKING,
					16, (struct sockaddr *)&sin, sizeof(sin));
	connect_n(&b, fds, 2);
	printf("null cb dispatch %d\n", event_base_dispatch(base));
	evconnlistener_set_cb(b.lev, on_accept, &b);
	b.disable_at = 2;
	event_base_dispatch(base);
	printf("after set_cb: accepted %d peers ok %d nonblock %d\n", b.accepted,
	       b.peers_ok, b.nonblock);
	close(fds[0]);
	close(fds[1]);

	/* an accept error reaches the error callback with the socket error */
	evconnlistener_set_error_cb(b.lev, ecb);
	shutdown(evconnlistener_get_fd(b.lev), SHUT_RDWR);
	evconnlistener_enable(b.lev);
	event_base_dispatch(base);
	printf("errors %d errno %s\n", b.errors,
	       evutil_socket_error_to_string(b.last_err));
	evconnlistener_free(b.lev);

	errno = 0;
	struct evconnlistener *z = evconnlistener_new_bind(
		base, on_accept, NULL, 0, 0, (struct sockaddr *)&sin, sizeof(sin));
	printf("backlog 0: %s\n", z ? "listener" : "NULL");
	if (z) /* libevent crashes on evconnlistener_free(NULL) */
		evconnlistener_free(z);

	event_base_free(base);
	return 0;
}

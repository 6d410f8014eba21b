/* SPDX-License-Identifier: MIT */
/*
 * Linked against preload_fake_event (a "libevent 2.0"): calls every
 * evconnlistener function and prints what it got back. Run with and without
 * libevsteer-preload.so, it must print the same.
 */
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <event2/listener.h>

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
		      struct sockaddr *sa, int len, void *arg)
{
	(void)l, (void)fd, (void)sa, (void)len, (void)arg;
}

static void on_error(struct evconnlistener *l, void *arg)
{
	(void)l, (void)arg;
}

int main(void)
{
	struct event_base *base = (struct event_base *)(uintptr_t)0x1234;
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;

	struct evconnlistener *a = evconnlistener_new(base, on_accept, &sin,
						      LEV_OPT_CLOSE_ON_FREE, 16, 5);
	printf("new -> %p\n", (void *)a);
	struct evconnlistener *b = evconnlistener_new_bind(
		base, NULL, NULL, LEV_OPT_REUSEABLE, -1,
		(struct sockaddr *)&sin, sizeof(sin));
	printf("new_bind -> %p\n", (void *)b);
	printf("enable -> %d\n", evconnlistener_enable(a));
	printf("disable -> %d\n", evconnlistener_disable(a));
	printf("get_base -> %p\n", (void *)evconnlistener_get_base(a));
	printf("get_fd -> %d\n", (int)evconnlistener_get_fd(a));
	evconnlistener_set_cb(b, on_accept, &sin);
	evconnlistener_set_error_cb(b, on_error);
	evconnlistener_free(a);
	evconnlistener_free(b);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * A stand-in for a libevent that is not 2.1: it reports version 2.0.22 and
 * defines the evconnlistener functions as stubs that print their call and
 * return recognisable values. The preload must hand every call to it
 * unchanged (and say so once); preload_fake_prog prints what came back.
 */
#include <stdint.h>
#include <stdio.h>

#include <event2/event.h>
#include <event2/listener.h>

#define FAKE_LISTENER ((struct evconnlistener *)(uintptr_t)0x5eed)
#define FAKE_BASE ((struct event_base *)(uintptr_t)0xba5e)

ev_uint32_t event_get_version_number(void)
{
	return 0x02001600;
}

const char *event_get_version(void)
{
	return "2.0.22-fake";
}

struct evconnlistener *evconnlistener_new(struct event_base *base,
					  evconnlistener_cb cb, void *ptr,
					  unsigned flags, int backlog,
					  evutil_socket_t fd)
{
	printf("fake new(base %p, cb %d, ptr %d, flags %u, backlog %d, fd %d)\n",
	       (void *)base, cb != NULL, ptr != NULL, flags, backlog, fd);
	return FAKE_LISTENER;
}

struct evconnlistener *evconnlistener_new_bind(struct event_base *base,
					       evconnlistener_cb cb, void *ptr,
					       unsigned flags, int backlog,
					       const struct sockaddr *sa,
					       int socklen)
{
	printf("fake new_bind(base %p, cb %d, ptr %d, flags %u, backlog %d, "
	       "sa %d, socklen %d)\n", (void *)base, cb != NULL, ptr != NULL, flags,
	       backlog, sa != NULL, socklen);
	return FAKE_LISTENER;
}

void evconnlistener_free(struct evconnlistener *lev)
{
	printf("fake free(%p)\n", (void *)lev);
}

int evconnlistener_enable(struct evconnlistener *lev)
{
	printf("fake enable(%p)\n", (void *)lev);
	return 7;
}

int evconnlistener_disable(struct evconnlistener *lev)
{
	printf("fake disable(%p)\n", (void *)lev);
	return 8;
}

struct event_base *evconnlistener_get_base(struct evconnlistener *lev)
{
	printf("fake get_base(%p)\n", (void *)lev);
	return FAKE_BASE;
}

evutil_socket_t evconnlistener_get_fd(struct evconnlistener *lev)
{
	printf("fake get_fd(%p)\n", (void *)lev);
	return 99;
}

void evconnlistener_set_cb(struct evconnlistener *lev, evconnlistener_cb cb,
			   void *arg)
{
	printf("fake set_cb(%p, cb %d, arg %d)\n", (void *)lev, cb != NULL, arg != NULL);
}

void evconnlistener_set_error_cb(struct evconnlistener *lev,
				 evconnlistener_errorcb errorcb)
{
	printf("fake set_error_cb(%p, errorcb %d)\n", (void *)lev,
	       errorcb != NULL);
}

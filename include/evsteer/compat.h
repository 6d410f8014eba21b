/* SPDX-License-Identifier: MIT */
/*
 * Drop-in replacement for libevent's <event2/listener.h>.
 *
 * Replace `#include <event2/listener.h>` by `#include <evsteer/compat.h>` and
 * link `pkg-config --libs evsteer libevent`. The evconnlistener names become
 * static inline wrappers over the native evsteer_listener_* API, so no
 * evconnlistener_* symbol is defined by libevsteer and both libraries link
 * into one program without clashes. `struct evconnlistener` is a macro for
 * `struct evsteer_listener`, so native calls (evsteer_listener_path_name(),
 * evsteer_listener_get_stats(), ...) take an evconnlistener pointer as is.
 *
 * Include this instead of, not beside, <event2/listener.h>: the two declare
 * the same names. Including listener.h after this header is a no-op.
 */
#ifndef EVSTEER_COMPAT_H
#define EVSTEER_COMPAT_H

#ifdef EVENT2_LISTENER_H_INCLUDED_
#error "<evsteer/compat.h> replaces <event2/listener.h>: include only one of them"
#endif
#define EVENT2_LISTENER_H_INCLUDED_ 1

#include <errno.h>
#include <event2/event.h>
#include <evsteer/evsteer.h>

#ifdef __cplusplus
extern "C" {
#endif

#define evconnlistener evsteer_listener

typedef evsteer_accept_cb evconnlistener_cb;
typedef evsteer_error_cb evconnlistener_errorcb;

#define LEV_OPT_LEAVE_SOCKETS_BLOCKING EVSTEER_OPT_LEAVE_SOCKETS_BLOCKING
#define LEV_OPT_CLOSE_ON_FREE EVSTEER_OPT_CLOSE_ON_FREE
#define LEV_OPT_CLOSE_ON_EXEC EVSTEER_OPT_CLOSE_ON_EXEC
#define LEV_OPT_REUSEABLE EVSTEER_OPT_REUSEABLE
#define LEV_OPT_THREADSAFE EVSTEER_OPT_THREADSAFE
#define LEV_OPT_DISABLED EVSTEER_OPT_DISABLED
#define LEV_OPT_DEFERRED_ACCEPT EVSTEER_OPT_DEFERRED_ACCEPT
#define LEV_OPT_REUSEABLE_PORT EVSTEER_OPT_REUSEABLE_PORT
#define LEV_OPT_BIND_IPV6ONLY EVSTEER_OPT_BIND_IPV6ONLY

static inline struct evconnlistener *
evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr,
		   unsigned flags, int backlog, evutil_socket_t fd)
{
	/* libevent takes any socket here, and so do we (with a warning) */
	EVSTEER_LISTENER_OPTS(o, .libevent_compat = 1);
	return evsteer_listener_new(base, cb, ptr, flags, backlog, fd, &o);
}

static inline struct evconnlistener *
evconnlistener_new_bind(struct event_base *base, evconnlistener_cb cb,
			void *ptr, unsigned flags, int backlog,
			const struct sockaddr *sa, int socklen)
{
	if (socklen < 0) {
		errno = EINVAL;
		return NULL;
	}
	return evsteer_listener_new_bind(base, cb, ptr, flags, backlog, sa,
					 (socklen_t)socklen, NULL);
}

static inline void evconnlistener_free(struct evconnlistener *lev)
{
	evsteer_listener_free(lev);
}

static inline int evconnlistener_enable(struct evconnlistener *lev)
{
	return evsteer_listener_enable(lev) < 0 ? -1 : 0;
}

static inline int evconnlistener_disable(struct evconnlistener *lev)
{
	return evsteer_listener_disable(lev) < 0 ? -1 : 0;
}

static inline struct event_base *
evconnlistener_get_base(struct evconnlistener *lev)
{
	return evsteer_listener_get_base(lev);
}

static inline evutil_socket_t evconnlistener_get_fd(struct evconnlistener *lev)
{
	return evsteer_listener_get_fd(lev);
}

static inline void evconnlistener_set_cb(struct evconnlistener *lev,
					 evconnlistener_cb cb, void *arg)
{
	evsteer_listener_set_cb(lev, cb, arg);
}

static inline void evconnlistener_set_error_cb(struct evconnlistener *lev,
					       evconnlistener_errorcb errorcb)
{
	evsteer_listener_set_error_cb(lev, errorcb);
}

#ifdef __cplusplus
}
#endif
#endif /* EVSTEER_COMPAT_H */

/* SPDX-License-Identifier: MIT */
/*
 * The nine evconnlistener_* functions libevent 2.1 exports on Linux, the
 * only symbols the shim exports. In active mode a new listener is evsteer's
 * (made by the core, kept in the registry), and a call on one of ours goes
 * to the core; everything else goes to libevent (resolve.c) unchanged.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "preload.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- creating ----------------------------------------------------------- */

/*
 * Both constructors end here, with a listener made disabled: it goes into
 * the registry before it can deliver (a callback on another thread may call
 * evconnlistener_* on it at once), then is enabled as the program asked.
 */
static struct evconnlistener *adopt(struct evsteer_listener *lev,
				    unsigned int flags, bool close_on_fail)
{
	const struct evst_preload_core *c = pl.core;
	if (!lev)
		return NULL;
	int fd = c->listener_get_fd(lev);
	struct pl_entry *e = calloc(1, sizeof(*e));
	if (!e) {
		c->listener_free(lev);
		if (close_on_fail)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	e->lev = lev;
	pl_format_addr(fd, e->addr, sizeof(e->addr));
	pl_report_made(e);
	pl_reg_insert(e);
	if (!(flags & LEV_OPT_DISABLED) && c->listener_enable(lev) < 0) {
		int err = errno;
		pl_say(EVSTEER_LOG_WARN, "listener %s: enable: %s", e->addr,
		       strerror(err));
		free(pl_reg_remove(lev));
		c->listener_free(lev);
		if (close_on_fail)
			close(fd);
		errno = err;
		return NULL;
	}
	return (struct evconnlistener *)lev;
}

/* libevent ignores bits it does not know; so do we, rather than fail. */
static unsigned int known_flags(unsigned int flags)
{
	if (flags & ~EVSTEER_OPT_ALL)
		pl_say(EVSTEER_LOG_DEBUG, "ignoring unknown LEV_OPT bits 0x%x",
		       flags & ~EVSTEER_OPT_ALL);
	return flags & EVSTEER_OPT_ALL;
}

/*
 * Programs that make their own sockets set SO_REUSEPORT for many reasons:
 * coturn sets it on its two per-thread listeners of the service port (one
 * group would steer between them) but also on the listener it makes for
 * each TCP relay allocation (a group of one: a BPF program loaded, ~5 ms,
 * for nothing). Which port is a worker group is the user's call:
 * EVSTEER_GROUP_PORTS (evsteer-run --group). A listener the program made
 * with LEV_OPT_REUSEABLE_PORT is a group member anyway, as with compat.h.
 * fd's port when it is one of those (read once, for the log lines after
 * it too), else -1.
 */
static int group_port(int fd)
{
	if (!pl.env.ngroup_ports || !pl_has_reuseport(fd))
		return -1;
	int port = pl_local_port(fd);
	for (unsigned int i = 0; i < pl.env.ngroup_ports; i++)
		if (pl.env.group_ports[i] == port)
			return port;
	return -1;
}

/* The default seconds for evhttp's sockets (EVSTEER_DEFER_ACCEPT unset). */
#define HTTP_DEFER_S 5

/* Was the listener asked for by libevent's evhttp (evhttp_bind_socket*,
 * evhttp_accept_socket*: their evconnlistener_new call, return address
 * ra, lies in an exported evhttp_ function)? Then the socket speaks HTTP,
 * whose client speaks first. */
static bool from_evhttp(const void *ra)
{
	Dl_info di;
	return ra && dladdr(ra, &di) && di.dli_sname &&
	       !strncmp(di.dli_sname, "evhttp_", 7);
}

/*
 * TCP_DEFER_ACCEPT on a group port's TCP socket: the kernel completes a
 * connection only once its first bytes came, so the program reads a
 * request in the pass after its accept, before a request that came later;
 * without it, a connection accepted just before a handler blocks may be
 * read behind the blocking request and wait out the block, the program's
 * by then, where no sibling can take it (bench/JOURNAL.md, "TCP_DEFER_ACCEPT
 * on evhttp's sockets"). Only for protocols where the client speaks first: a
 * connection that sends nothing is handed over only when the kernel gives
 * up waiting (about that many seconds). So by default only evhttp's
 * sockets get it (HTTP_DEFER_S), and only while a thread's loop has
 * blocked lately (the listener's defer_accept_after_block: deferring
 * costs a loopback client a server wake-up per connection: a median of
 * 56 us a request at 1 in flight against 37-38, bench/JOURNAL.md
 * "Deferred accept only after a block"); EVSTEER_DEFER_ACCEPT (evsteer-run
 * --defer-accept) sets it for good on every group port, or 0 for none.
 * *after_block: the seconds to give the listener, 0 where the socket got
 * it now. True if either.
 */
static bool defer_accept(int fd, int port, bool http, int *after_block)
{
	int proto = 0, s = pl.env.defer_accept_s;
	*after_block = 0;
	if (s < 0)
		s = http ? HTTP_DEFER_S : 0;
	socklen_t len = sizeof(proto);
	if (!s || getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0 ||
	    proto != IPPROTO_TCP)
		return false;
	if (pl.env.defer_accept_s < 0) {
		*after_block = s;
		pl_say(EVSTEER_LOG_INFO, "port %d: TCP_DEFER_ACCEPT %d s on a "
		       "thread's socket after its loop blocks (evhttp's "
		       "socket: HTTP's client speaks first)", port, s);
		return true;
	}
	if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &s, sizeof(s)) < 0) {
		pl_say(EVSTEER_LOG_WARN, "port %d: TCP_DEFER_ACCEPT: %s", port,
		       strerror(errno));
		return false;
	}
	pl_say(EVSTEER_LOG_INFO, "port %d: TCP_DEFER_ACCEPT %d s "
	       "(EVSTEER_DEFER_ACCEPT)", port, s);
	return true;
}

/*
 * The policy of a group port's socket with TCP_DEFER_ACCEPT, unless
 * EVSTEER_POLICY (evsteer-run --policy) names one: the program's hash.
 * Least-pending counts a connection from its SYN, and such a socket holds
 * it back until its client has spoken; a worker whose clients are slow to
 * (a loaded machine, a network) looks loaded while it waits with nothing
 * to do, gets nothing new, and its sibling gets it all: wrk's p99 on the
 * evhttp server 1.12-1.34x plain libevent's against the hash's 0.87-1.01x,
 * stall handling alike (bench/JOURNAL.md, "Steady evhttp by policy").
 */
static void deferred_policy(struct evsteer_listener_opts *o, int port)
{
	if (pl.env.policy_set)
		return;
	o->policy = EVSTEER_POLICY_HASH;
	pl_say(EVSTEER_LOG_INFO, "port %d: policy hash (least-pending would "
	       "count connections TCP_DEFER_ACCEPT holds until their client "
	       "speaks; EVSTEER_POLICY or --policy to choose)", port);
}

EXPORT struct evconnlistener *
evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr,
		   unsigned flags, int backlog, evutil_socket_t fd)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	/* A NULL base (libevent then uses event_init()'s global base) or
	 * something that is not a socket: libevent's own answer. */
	if (pl.mode == MODE_ACTIVE && base && pl_is_socket(fd)) {
		unsigned int f = known_flags(flags);
		bool deferred = false;
		int after_block = 0;
		int port = group_port(fd);
		if (port >= 0) {
			f |= LEV_OPT_REUSEABLE_PORT;
			deferred = defer_accept(fd, port, from_evhttp(ra),
						&after_block);
		}
		/* libevent takes any socket here (a datagram one fails
		 * every accept): so does evsteer in compat mode */
		EVSTEER_LISTENER_OPTS(o, .libevent_compat = 1,
				      .defer_accept_after_block = after_block);
		if (deferred)
			deferred_policy(&o, port);
		pl_creating(true);
		struct evsteer_listener *lev = pl.core->listener_new(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, fd, &o);
		struct evconnlistener *r = adopt(lev, f, false);
		pl_creating(false);
		return r;
	}
	__typeof__(evconnlistener_new) *real = PL_REAL(evconnlistener_new, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(base, cb, ptr, flags, backlog, fd);
}

EXPORT struct evconnlistener *
evconnlistener_new_bind(struct event_base *base, evconnlistener_cb cb,
			void *ptr, unsigned flags, int backlog,
			const struct sockaddr *sa, int socklen)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	/*
	 * The families evsteer binds itself. Anything else (no address:
	 * libevent then fails with EAFNOSUPPORT; another family; backlog 0,
	 * which libevent refuses) goes to libevent, whose new_bind then calls
	 * evconnlistener_new, i.e. us, with the socket it made.
	 */
	if (pl.mode == MODE_ACTIVE && base && sa && socklen > 0 && backlog != 0 &&
	    (sa->sa_family == AF_INET || sa->sa_family == AF_INET6 ||
	     sa->sa_family == AF_UNIX)) {
		unsigned int f = known_flags(flags);
		pl_creating(true);
		struct evsteer_listener *lev = pl.core->listener_new_bind(
			base, (evsteer_accept_cb)cb, ptr, f | LEV_OPT_DISABLED,
			backlog, sa, (socklen_t)socklen, NULL);
		/* on failure libevent closes the socket it made */
		struct evconnlistener *r =
			adopt(lev, f, !(f & LEV_OPT_CLOSE_ON_FREE));
		pl_creating(false);
		return r;
	}
	__typeof__(evconnlistener_new_bind) *real =
		PL_REAL(evconnlistener_new_bind, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(base, cb, ptr, flags, backlog, sa, socklen);
}

/* ---- the rest: ours to the core, anything else to libevent --------------- */

/* In active mode NULL is ours too: evsteer answers it with an error where
 * libevent would crash. */
static bool ours(const void *lev)
{
	return pl.mode == MODE_ACTIVE && (!lev || pl_reg_has(lev));
}

EXPORT void evconnlistener_free(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (pl.mode == MODE_ACTIVE) {
		struct pl_entry *e = lev ? pl_reg_remove(lev) : NULL;
		if (e || !lev) {
			if (e)
				pl_report_free(e);
			pl.core->listener_free((struct evsteer_listener *)lev);
			free(e);
			return;
		}
	}
	__typeof__(evconnlistener_free) *real = PL_REAL(evconnlistener_free, ra);
	if (real)
		real(lev);
}

EXPORT int evconnlistener_enable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_enable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_enable) *real =
		PL_REAL(evconnlistener_enable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT int evconnlistener_disable(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_disable((struct evsteer_listener *)lev) < 0 ?
			       -1 : 0;
	__typeof__(evconnlistener_disable) *real =
		PL_REAL(evconnlistener_disable, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT struct event_base *evconnlistener_get_base(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_get_base((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_base) *real =
		PL_REAL(evconnlistener_get_base, ra);
	if (!real) {
		errno = ENOSYS;
		return NULL;
	}
	return real(lev);
}

EXPORT evutil_socket_t evconnlistener_get_fd(struct evconnlistener *lev)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev))
		return pl.core->listener_get_fd((struct evsteer_listener *)lev);
	__typeof__(evconnlistener_get_fd) *real =
		PL_REAL(evconnlistener_get_fd, ra);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(lev);
}

EXPORT void evconnlistener_set_cb(struct evconnlistener *lev,
				  evconnlistener_cb cb, void *arg)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev)) {
		pl.core->listener_set_cb((struct evsteer_listener *)lev,
					 (evsteer_accept_cb)cb, arg);
		return;
	}
	__typeof__(evconnlistener_set_cb) *real =
		PL_REAL(evconnlistener_set_cb, ra);
	if (real)
		real(lev, cb, arg);
}

EXPORT void evconnlistener_set_error_cb(struct evconnlistener *lev,
					evconnlistener_errorcb errorcb)
{
	const void *ra = __builtin_return_address(0);
	pl_init();
	if (ours(lev)) {
		pl.core->listener_set_error_cb((struct evsteer_listener *)lev,
					       (evsteer_error_cb)errorcb);
		return;
	}
	__typeof__(evconnlistener_set_error_cb) *real =
		PL_REAL(evconnlistener_set_error_cb, ra);
	if (real)
		real(lev, errorcb);
}

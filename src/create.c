/* SPDX-License-Identifier: MIT */
/*
 * The public constructors: argument checks, the socket for new_bind, and
 * membership: an inet listener with SO_REUSEPORT joins the steering group
 * of its address (group/member.c) before it starts. The top of the layers:
 * create.c -> group/ -> listener.c -> engine/ (docs/ARCHITECTURE.md).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "internal.h"
#include "common/options.h"

/* A REUSEABLE_PORT listener joins the steering group of its address
 * (group/member.c checks the rest: TCP, inet, SO_REUSEPORT on the socket). */
static const struct evst_member_ops *member_for(unsigned int flags)
{
	return flags & EVSTEER_OPT_REUSEABLE_PORT ? &evst_group_member : NULL;
}

static bool common_args_ok(const char *fn, struct event_base *base,
			   unsigned int flags,
			   const struct evsteer_listener_opts *opts)
{
	if (!base) {
		evst_warn("%s: NULL event_base", fn);
		return false;
	}
	if (flags & ~EVSTEER_OPT_ALL) {
		evst_warn("%s: unknown flags 0x%x", fn, flags & ~EVSTEER_OPT_ALL);
		return false;
	}
	return evst_listener_opts_ok(fn, opts);
}

struct evsteer_listener *
evsteer_listener_new(struct event_base *base, evsteer_accept_cb cb, void *arg,
		     unsigned int flags, int backlog, int fd,
		     const struct evsteer_listener_opts *opts)
{
	if (!common_args_ok("evsteer_listener_new", base, flags, opts))
		return evst_fail_null(EINVAL);
	if (fd < 0) {
		evst_warn("evsteer_listener_new: invalid fd %d", fd);
		return evst_fail_null(EINVAL);
	}
	int type, acc = 1;
	socklen_t tlen = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0) {
		int err = errno;
		evst_warn("evsteer_listener_new: fd %d is not a usable socket: %s", fd,
			  strerror(err));
		return evst_fail_null(err);
	}
	bool compat = EVST_OPT(opts, struct evsteer_listener_opts,
			       libevent_compat, 0);
	if (type != SOCK_STREAM && type != SOCK_SEQPACKET) {
		evst_warn("evsteer_listener_new: fd %d is not a stream socket "
			  "(type %d): %s",
			  fd, type,
			  compat ? "every accept on it will fail (as in libevent)" :
				   "nothing to accept");
		if (!compat)
			return evst_fail_null(EINVAL);
	} else if (backlog == 0) {
		tlen = sizeof(acc);
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &tlen) == 0 &&
		    !acc)
			evst_warn("evsteer_listener_new: fd %d is not listening "
				  "and backlog is 0 (\"the caller listened\"): "
				  "every accept will fail until listen() is called",
				  fd);
	}
	return evst_listener_create(base, cb, arg, flags, backlog, fd, opts,
				    member_for(flags), NULL, 0);
}

static struct evsteer_listener *
bind_and_create(const char *fn, struct event_base *base, struct evst_user_cb cb,
		void *arg, unsigned int flags, int backlog,
		const struct sockaddr *sa, socklen_t len,
		const struct evsteer_listener_opts *opts, unsigned int direct_table)
{
	if (!common_args_ok(fn, base, flags, opts))
		return evst_fail_null(EINVAL);
	if (backlog == 0) {
		evst_warn("%s: backlog 0 would leave the socket not listening",
			  fn);
		return evst_fail_null(EINVAL);
	}
	int err = evst_validate_sockaddr(sa, len);
	if (err < 0) {
		evst_warn("%s: bad address (family %d, length %u)", fn,
			  sa ? sa->sa_family : -1, (unsigned int)len);
		return evst_fail_null(-err);
	}

	int family = sa ? sa->sa_family : AF_INET;
	int type = SOCK_STREAM | SOCK_NONBLOCK |
		   (flags & EVSTEER_OPT_CLOSE_ON_EXEC ? SOCK_CLOEXEC : 0);
	int fd = socket(family, type, 0);
	if (fd < 0)
		return NULL;

	err = evst_apply_sockopts(fd, flags);
	if (err < 0) {
		errno = -err;
		goto err;
	}
	if (sa && bind(fd, sa, len) < 0)
		goto err;
	struct evsteer_listener *lev = evst_listener_create_cb(
		base, cb, arg, flags, backlog, fd, opts,
		member_for(flags), NULL, direct_table);
	if (lev)
		return lev;
err:
	err = errno;
	evst_debug("%s: %s", fn, strerror(err));
	close(fd);
	return evst_fail_null(err);
}

struct evsteer_listener *
evsteer_listener_new_bind(struct event_base *base, evsteer_accept_cb cb,
			  void *arg, unsigned int flags, int backlog,
			  const struct sockaddr *sa, socklen_t len,
			  const struct evsteer_listener_opts *opts)
{
	struct evst_user_cb ucb = {.kind = EVST_CB_FD, .fd = cb};
	return bind_and_create("evsteer_listener_new_bind", base, ucb, arg,
			       flags, backlog, sa, len, opts, 0);
}

#if EVSTEER_HAVE_LIBURING
struct evsteer_listener *
evsteer_listener_new_bind_direct(struct event_base *base, evsteer_direct_cb cb,
				 void *arg, unsigned int flags, int backlog,
				 const struct sockaddr *sa, socklen_t len,
				 unsigned int table_size,
				 const struct evsteer_listener_opts *opts)
{
	struct evst_user_cb ucb = {.kind = EVST_CB_DIRECT, .direct = cb};
	return bind_and_create("evsteer_listener_new_bind_direct", base, ucb,
			       arg, flags, backlog, sa, len, opts,
			       table_size ? table_size : 4096);
}
#endif


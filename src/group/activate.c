/* SPDX-License-Identifier: MIT */
/*
 * Socket activation: the LISTEN_FDS protocol read directly (it is three
 * environment variables and a descriptor range), so the library does not
 * pull in libsystemd; and worker groups made of the sockets it passes.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"
#include "common/env.h"
#include "common/options.h"

#define LISTEN_FDS_START 3 /* SD_LISTEN_FDS_START */

/* A decimal number making up the whole string, in 0..max. */
static int parse_num(const char *s, long max, long *out)
{
	char *end;
	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int listen_fds(const char *name, int *fds, unsigned int max)
{
	static const char fn[] = "evsteer_listen_fds";
	long pid, n;
	struct evst_env_listen env;
	evst_env_listen(&env);
	const char *e = env.pid;
	if (!e)
		return 0;
	if (parse_num(e, INT_MAX, &pid) < 0) {
		evst_warn("%s: LISTEN_PID=%s is not a process id", fn, e);
		return -EINVAL;
	}
	/* passed to the process that exec'd us, not to us */
	if (pid != (long)getpid())
		return 0;
	e = env.fds;
	if (!e)
		return 0;
	if (parse_num(e, INT_MAX - LISTEN_FDS_START, &n) < 0) {
		evst_warn("%s: LISTEN_FDS=%s is not a count", fn, e);
		return -EINVAL;
	}
	for (long i = 0; i < n; i++) {
		int fd = (int)(LISTEN_FDS_START + i);
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0) {
			evst_warn("%s: passed descriptor %d is not open", fn, fd);
			return -EBADF;
		}
		/* ours now: not for whatever we exec */
		if (!(fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
			return -errno;
	}

	/* names: colon-separated, one per descriptor; none means "unknown" */
	const char *names = env.fdnames;
	unsigned int found = 0;
	const char *p = names;
	for (long i = 0; i < n; i++) {
		const char *nm = "unknown";
		size_t len = strlen(nm);
		if (names) {
			if (!p) {
				evst_warn("%s: LISTEN_FDNAMES has fewer names than "
					  "LISTEN_FDS=%ld", fn, n);
				return -EINVAL;
			}
			const char *colon = strchr(p, ':');
			nm = p;
			len = colon ? (size_t)(colon - p) : strlen(p);
			p = colon ? colon + 1 : NULL;
		}
		if (name && (strlen(name) != len || strncmp(name, nm, len)))
			continue;
		if (found < max)
			fds[found] = (int)(LISTEN_FDS_START + i);
		found++;
	}
	if (names && p) {
		evst_warn("%s: LISTEN_FDNAMES has more names than LISTEN_FDS=%ld",
			  fn, n);
		return -EINVAL;
	}
	if (found > max) {
		evst_warn("%s: %u sockets named %s, room for %u", fn, found,
			  name ? name : "(any)", max);
		return -ENOSPC;
	}
	return (int)found;
}

int evsteer_listen_fds(const char *name, int *fds, unsigned int max,
		       int unset_env)
{
	int r = !fds && max ? -EINVAL : listen_fds(name, fds, max);
	if (unset_env) {
		unsetenv("LISTEN_PID");
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_FDNAMES");
	}
	return r < 0 ? evst_fail(-r) : r;
}

static int sockopt(int fd, int opt, int *v)
{
	socklen_t len = sizeof(*v);
	return getsockopt(fd, SOL_SOCKET, opt, v, &len) < 0 ? -errno : 0;
}

/* One worker socket as a group needs it; 0 or -errno (why logged). */
static int check_fd(int fd, const struct sockaddr_storage *first,
		    socklen_t first_len)
{
	static const char fn[] = "evsteer_group_from_fds";
	int domain, type, proto, listening, reuseport, err;
	if ((err = sockopt(fd, SO_DOMAIN, &domain)) < 0 ||
	    (err = sockopt(fd, SO_TYPE, &type)) < 0 ||
	    (err = sockopt(fd, SO_PROTOCOL, &proto)) < 0 ||
	    (err = sockopt(fd, SO_ACCEPTCONN, &listening)) < 0 ||
	    (err = sockopt(fd, SO_REUSEPORT, &reuseport)) < 0) {
		evst_warn("%s: fd %d: %s", fn, fd, strerror(-err));
		return err;
	}
	const char *why = NULL;
	err = -EINVAL;
	if (domain != AF_INET && domain != AF_INET6) {
		why = "not an IPv4 or IPv6 socket";
		err = -EAFNOSUPPORT;
	} else if (type != SOCK_STREAM || proto != IPPROTO_TCP) {
		why = "not a TCP socket";
		err = -EPROTONOSUPPORT;
	} else if (!listening) {
		why = "not listening";
	} else if (!reuseport) {
		why = "no SO_REUSEPORT (ReusePort=yes in the .socket unit)";
	} else if (first) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
			return -errno;
		if (len != first_len || memcmp(&ss, first, len))
			why = "bound to another address than the first socket";
	}
	if (why) {
		evst_warn("%s: fd %d: %s", fn, fd, why);
		return err;
	}
	return 0;
}

struct evsteer_group *evsteer_group_from_fds(const int *fds, unsigned int n,
					     unsigned int flags,
					     const struct evsteer_group_opts *opts)
{
	static const char fn[] = "evsteer_group_from_fds";
	const char *bad = NULL;
	if (!fds)
		bad = "NULL fds";
	else if (n < 1 || n > EVSTEER_MAX_WORKERS)
		bad = "n not in 1..EVSTEER_MAX_WORKERS";
	else if (flags & ~EVSTEER_OPT_ALL)
		bad = "bad flags";
	if (bad)
		evst_warn("%s: %s", fn, bad);
	if (bad || !evst_group_opts_ok(fn, opts)) {
		errno = EINVAL;
		return NULL;
	}
	struct sockaddr_storage first;
	socklen_t first_len = sizeof(first);
	int err = check_fd(fds[0], NULL, 0);
	if (!err && getsockname(fds[0], (struct sockaddr *)&first, &first_len) < 0)
		err = -errno;
	for (unsigned int i = 0; i < n && !err; i++) {
		for (unsigned int k = 0; k < i && !err; k++)
			if (fds[k] == fds[i]) {
				evst_warn("%s: fd %d given twice", fn, fds[i]);
				err = -EINVAL;
			}
		if (!err && i)
			err = check_fd(fds[i], &first, first_len);
	}
	/* as evsteer_group_new()'s own sockets: non-blocking, CLOEXEC if asked */
	for (unsigned int i = 0; i < n && !err; i++) {
		int fl = fcntl(fds[i], F_GETFL);
		if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) < 0)
			err = -errno;
		if (!err && (flags & EVSTEER_OPT_CLOSE_ON_EXEC) &&
		    fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0)
			err = -errno;
	}
	if (err) {
		errno = -err;
		return NULL;
	}
	struct evsteer_group *g = evst_group_adopt(fds, n, flags, opts);
	if (!g)
		evst_warn("%s: %s", fn, strerror(errno));
	return g;
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/un.h>

#include "internal.h"

/*
 * bind() would reject most of these too, but only after we made a socket of
 * the wrong family; checking first gives the caller a precise message.
 */
int evst_validate_sockaddr(const struct sockaddr *sa, socklen_t len)
{
	if (!sa)
		return len == 0 ? 0 : -EINVAL;
	if (len < sizeof(sa_family_t) || len > sizeof(struct sockaddr_storage))
		return -EINVAL;
	switch (sa->sa_family) {
	case AF_INET:
		return len >= sizeof(struct sockaddr_in) ? 0 : -EINVAL;
	case AF_INET6:
		return len >= sizeof(struct sockaddr_in6) ? 0 : -EINVAL;
	case AF_UNIX:
		/* abstract or path: at least one byte after the family */
		return len > offsetof(struct sockaddr_un, sun_path) ? 0 : -EINVAL;
	default:
		return -EAFNOSUPPORT;
	}
}

bool evst_opts_valid(const void *opts, size_t known_sz)
{
	if (!opts)
		return true;
	size_t sz = *(const size_t *)opts;
	/* bounded before reading past what we know: a wild sz must not walk
	 * off the end of the caller's memory */
	if (sz < sizeof(size_t) || sz > EVSTEER_OPTS_MAX_SZ)
		return false;
	/* a newer caller's struct: fine as long as what we don't know is zero */
	const unsigned char *p = opts;
	for (size_t i = known_sz; i < sz; i++)
		if (p[i])
			return false;
	return true;
}

static int on(int fd, int level, int name)
{
	int one = 1;
	return setsockopt(fd, level, name, &one, sizeof(one)) < 0 ? -errno : 0;
}

int evst_apply_sockopts(int fd, unsigned int flags)
{
	int err = on(fd, SOL_SOCKET, SO_KEEPALIVE);
	if (!err && (flags & EVSTEER_OPT_REUSEABLE))
		err = on(fd, SOL_SOCKET, SO_REUSEADDR);
	if (!err && (flags & EVSTEER_OPT_REUSEABLE_PORT))
		err = on(fd, SOL_SOCKET, SO_REUSEPORT);
	if (!err && (flags & EVSTEER_OPT_DEFERRED_ACCEPT))
		err = on(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT);
	if (!err && (flags & EVSTEER_OPT_BIND_IPV6ONLY))
		err = on(fd, IPPROTO_IPV6, IPV6_V6ONLY);
	return err;
}

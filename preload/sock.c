/* SPDX-License-Identifier: MIT */
/* What the shim asks of a socket: whether it is one, its port, its name. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "preload.h"

bool pl_is_socket(int fd)
{
	int type;
	socklen_t len = sizeof(type);
	return fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
}

bool pl_has_reuseport(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);
	return getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, &len) == 0 && on;
}

int pl_local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

/* "127.0.0.1:80", "[::1]:80", "unix:/path", "unix:@abstract". */
void pl_format_addr(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		snprintf(out, len, "fd %d (getsockname: %s)", fd, strerror(errno));
		return;
	}
	switch (ss.ss_family) {
	case AF_INET: {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
		break;
	}
	case AF_UNIX: {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
		size_t n = sl > offsetof(struct sockaddr_un, sun_path) ?
				   sl - offsetof(struct sockaddr_un, sun_path) : 0;
		if (!n)
			snprintf(out, len, "unix:(unnamed)");
		else if (sun->sun_path[0] == '\0')
			snprintf(out, len, "unix:@%.*s", (int)(n - 1), sun->sun_path + 1);
		else
			snprintf(out, len, "unix:%.*s", (int)strnlen(sun->sun_path, n),
				 sun->sun_path);
		break;
	}
	default:
		snprintf(out, len, "family %d", ss.ss_family);
	}
}

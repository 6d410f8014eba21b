/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>

#include "config.h"
#include "internal.h"
#include "common/process.h"

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

bool evst_opts_valid(const void *opts, size_t known_end, const char *type_name,
		     const char *last_field)
{
	if (!opts)
		return true;
	size_t sz = *(const size_t *)opts;
	/* bounded before reading past what we know: a wild sz must not walk
	 * off the end of the caller's memory */
	if (sz < sizeof(size_t) || sz > EVSTEER_OPTS_MAX_SZ) {
		evst_warn("%s: sz %zu not in %zu..%d", type_name, sz,
			  sizeof(size_t), EVSTEER_OPTS_MAX_SZ);
		return false;
	}
	/* a newer caller's struct: fine as long as what we don't know is
	 * zero, from the end of our last field (our tail padding included) */
	const unsigned char *p = opts;
	for (size_t i = known_end; i < sz; i++)
		if (p[i]) {
			evst_warn("%s: non-zero byte at offset %zu, past its last "
				  "field known to evsteer " EVSTEER_VERSION
				  " (%s, ending at %zu): a newer caller's "
				  "option this library does not have",
				  type_name, i, last_field, known_end);
			return false;
		}
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

uint64_t evst_sock_cookie(int fd)
{
	uint64_t c = 0;
	socklen_t l = sizeof(c);
	return getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) < 0 ? 0 : c;
}

uint64_t evst_netns_cookie(int fd)
{
	uint64_t c = 0;
	socklen_t l = sizeof(c);
#ifdef SO_NETNS_COOKIE
	if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &c, &l) < 0)
		c = 0;
#else
	(void)fd;
	(void)l;
#endif
	return c;
}

/* The local port and address of sa (AF_INET or AF_INET6). */
static void port_addr(const struct sockaddr *sa, __be16 *port,
		      const void **addr, size_t *alen)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
		*port = s->sin_port;
		*addr = &s->sin_addr;
		*alen = 4;
	} else {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
		*port = s->sin6_port;
		*addr = &s->sin6_addr;
		*alen = 16;
	}
}

/* One sock_diag dump of the TCP sockets of family in the states (a mask
 * of 1 << TCP_*), each message to fn. Returns 0 or -errno. */
static int diag_dump(int family, unsigned int states,
		     void (*fn)(const struct inet_diag_msg *m, void *arg),
		     void *arg)
{
	int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (nl < 0)
		return -errno;
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 r;
	} req = {
		.nlh = {.nlmsg_len = sizeof(req),
			.nlmsg_type = SOCK_DIAG_BY_FAMILY,
			.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
		.r = {.sdiag_family = (__u8)family,
		      .sdiag_protocol = IPPROTO_TCP,
		      .idiag_states = states},
	};
	struct sockaddr_nl k = {.nl_family = AF_NETLINK};
	if (sendto(nl, &req, sizeof(req), 0, (struct sockaddr *)&k, sizeof(k)) < 0) {
		int err = -errno;
		close(nl);
		return err;
	}
	int err = 0;
	long buf[8192 / sizeof(long)];
	for (bool done = false; !done;) {
		ssize_t len = recv(nl, buf, sizeof(buf), 0);
		if (len < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (len == 0)
			break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf;
		     NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
			if (h->nlmsg_type == NLMSG_DONE) {
				done = true;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *e = NLMSG_DATA(h);
				err = e->error < 0 ? e->error : -EIO;
				done = true;
				break;
			}
			fn(NLMSG_DATA(h), arg);
		}
	}
	close(nl);
	return err;
}

static uint64_t diag_cookie(const struct inet_diag_msg *m)
{
	return (uint64_t)m->id.idiag_cookie[0] |
	       (uint64_t)m->id.idiag_cookie[1] << 32;
}

struct listing {
	__be16 port;
	const void *addr;
	size_t alen;
	struct evst_sock_info *out;
	uint64_t *cookies;
	int n, max;
};

static void listener_seen(const struct inet_diag_msg *m, void *arg)
{
	struct listing *l = arg;
	if (m->id.idiag_sport != l->port ||
	    memcmp(m->id.idiag_src, l->addr, l->alen) || l->n >= l->max)
		return;
	l->out[l->n++] = (struct evst_sock_info){
		.cookie = diag_cookie(m),
		.uid = m->idiag_uid,
		.inode = m->idiag_inode,
	};
}

/*
 * The TCP listeners bound to exactly sa (address and port) in this network
 * namespace, from the kernel's socket diagnostics (what `ss -ltne` shows):
 * cookie, owner uid and inode of each. Returns how many (at most max) or
 * -errno.
 */
int evst_list_listeners(const struct sockaddr *sa, struct evst_sock_info *out,
			int max)
{
	struct listing l = {.out = out, .max = max};
	port_addr(sa, &l.port, &l.addr, &l.alen);
	int err = diag_dump(sa->sa_family, 1u << 10 /* TCP_LISTEN */,
			    listener_seen, &l);
	return err ? err : l.n;
}

static void handshake_seen(const struct inet_diag_msg *m, void *arg)
{
	struct listing *l = arg;
	if (m->id.idiag_sport != l->port)
		return;
	if (l->n < l->max)
		l->cookies[l->n] = diag_cookie(m);
	l->n++;
}

/*
 * The handshakes in flight to sa's port in this network namespace: the
 * request sockets (SYN-RECV, what `ss -tn state syn-recv` shows) of every
 * listener on the port, whatever its address (a wildcard listener's
 * requests carry the address the SYN was sent to), IPv4 ones too for an
 * IPv6 address (a dual-stack listener's). The kernel does not say whose
 * listener each is. Their cookies into out (at most max); returns how
 * many there are, which may be more than max, or -errno.
 */
int evst_list_handshakes(const struct sockaddr *sa, uint64_t *out, int max)
{
	struct listing l = {.cookies = out, .max = max};
	const void *addr;
	size_t alen;
	port_addr(sa, &l.port, &addr, &alen);
	/* TCP_SYN_RECV; the kernel adds TCP_NEW_SYN_RECV, a request's state */
	unsigned int st = 1u << 3 | 1u << 12;
	int err = diag_dump(AF_INET, st, handshake_seen, &l);
	if (!err && sa->sa_family == AF_INET6)
		err = diag_dump(AF_INET6, st, handshake_seen, &l);
	return err ? err : l.n;
}

static pthread_mutex_t listen_order = PTHREAD_MUTEX_INITIALIZER;

void evst_listen_order_lock(void)
{
	pthread_mutex_lock(&listen_order);
}

bool evst_listen_order_trylock(void)
{
	return pthread_mutex_trylock(&listen_order) == 0;
}

void evst_listen_order_unlock(void)
{
	pthread_mutex_unlock(&listen_order);
}

/* fork (common/process.h): the child starts with the lock free; nothing
 * it lists belongs to the child */
void evst_listen_order_registry_fork_prepare(void)
{
	pthread_mutex_lock(&listen_order);
}

void evst_listen_order_registry_fork_parent(void)
{
	pthread_mutex_unlock(&listen_order);
}

void evst_listen_order_registry_fork_child(void)
{
	pthread_mutex_unlock(&listen_order);
}

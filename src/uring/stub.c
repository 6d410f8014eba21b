/* SPDX-License-Identifier: MIT */
/* Built without liburing (meson -During=disabled): the direct-descriptor
 * API exists and says so, so programs link the same either way. */
#include <errno.h>

#include "internal.h"
#include "common/process.h"

static int unsupported(void)
{
	errno = EOPNOTSUPP;
	return -EOPNOTSUPP;
}

struct evsteer_listener *
evsteer_listener_new_bind_direct(struct event_base *base, evsteer_direct_cb cb,
				 void *arg, unsigned int flags, int backlog,
				 const struct sockaddr *addr, socklen_t len,
				 unsigned int table_size,
				 const struct evsteer_listener_opts *opts)
{
	(void)base, (void)cb, (void)arg, (void)flags, (void)backlog;
	(void)addr, (void)len, (void)table_size, (void)opts;
	evst_warn("direct listener: io_uring engine not built");
	errno = EOPNOTSUPP;
	return NULL;
}

struct evsteer_uring *evsteer_listener_get_uring(const struct evsteer_listener *lev)
{
	(void)lev;
	errno = EOPNOTSUPP;
	return NULL;
}

int evsteer_uring_send(struct evsteer_uring *r, int slot, const void *buf,
		       size_t len, evsteer_io_cb cb, void *arg)
{
	(void)r, (void)slot, (void)buf, (void)len, (void)cb, (void)arg;
	return unsupported();
}

int evsteer_uring_send_and_close(struct evsteer_uring *r, int slot,
				 const void *buf, size_t len, evsteer_io_cb cb,
				 void *arg)
{
	(void)r, (void)slot, (void)buf, (void)len, (void)cb, (void)arg;
	return unsupported();
}

int evsteer_uring_recv(struct evsteer_uring *r, int slot, void *buf, size_t len,
		       evsteer_io_cb cb, void *arg)
{
	(void)r, (void)slot, (void)buf, (void)len, (void)cb, (void)arg;
	return unsupported();
}

int evsteer_uring_close(struct evsteer_uring *r, int slot, evsteer_io_cb cb,
			void *arg)
{
	(void)r, (void)slot, (void)cb, (void)arg;
	return unsupported();
}

int evsteer_uring_fd_install(struct evsteer_uring *r, int slot, int cloexec,
			     evsteer_io_cb cb, void *arg)
{
	(void)r, (void)slot, (void)cloexec, (void)cb, (void)arg;
	return unsupported();
}

unsigned int evsteer_uring_slots_in_use(const struct evsteer_uring *r)
{
	(void)r;
	return 0;
}

/* No rings without io_uring: nothing to do around fork. */
void evst_ring_registry_fork_prepare(void)
{
}

void evst_ring_registry_fork_parent(void)
{
}

void evst_ring_registry_fork_child(void)
{
}

/* SPDX-License-Identifier: MIT */
/*
 * The rendezvous socket and the thread that serves it (see rendezvous.h).
 * One SOCK_SEQPACKET exchange per peer: a joiner's HELLO, then WELCOME
 * carrying the descriptors; or a looker's request (evsteer-stat: LOOK or
 * SET), then its answer; then both close. Liveness of members is not
 * tracked here.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/process.h"
#include "steering/rendezvous.h"

#define RDV_MAGIC EVST_RDV_MAGIC
#define RDV_PROTO EVST_RDV_PROTO


static pthread_mutex_t rdv_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rdv_cond = PTHREAD_COND_INITIALIZER;
static struct evst_rdv *entries;
static struct evst_rdv *busy;   /* the entry the thread works on unlocked */
static pthread_t thread;
static bool running, stopping;
static int wake_fd = -1;

void evst_rdv_name(struct evst_rdv *r, const char *key)
{
	memset(&r->name, 0, sizeof(r->name));
	r->name.sun_family = AF_UNIX;
	size_t n = strlen(key);
	if (n > sizeof(r->name.sun_path) - 1)
		n = sizeof(r->name.sun_path) - 1;
	memcpy(r->name.sun_path + 1, key, n);
	r->namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int peer_cred(int fd, struct ucred *uc)
{
	socklen_t l = sizeof(*uc);
	return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, uc, &l) < 0 ? -errno : 0;
}

static void set_timeout(int fd, int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int evst_rdv_join(const struct evst_rdv *r, int fds[EVST_RDV_NFDS], uid_t *uid,
		  pid_t *pid)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	int err = 0;
	if (connect(s, (const struct sockaddr *)&r->name, r->namelen) < 0) {
		/* ECONNREFUSED: bound, not (or no longer) listening */
		err = errno == ECONNREFUSED || errno == ENOENT ? -ENOENT : -errno;
		goto out;
	}
	struct ucred uc;
	if ((err = peer_cred(s, &uc)) < 0)
		goto out;
	*uid = uc.uid;
	*pid = uc.pid;
	/* Someone else's descriptors would steer our connections: only a
	 * server of our own uid is trusted. */
	if (uc.uid != geteuid()) {
		err = -EACCES;
		goto out;
	}
	set_timeout(s, EVST_RDV_TIMEOUT_MS);
	struct evst_rdv_msg m = {RDV_MAGIC, RDV_PROTO, r->layout, 0,
			    (uint32_t)getpid()};
	if (send(s, &m, sizeof(m), MSG_NOSIGNAL) != sizeof(m)) {
		err = errno == EAGAIN ? -ETIMEDOUT : -ENOENT;
		goto out;
	}
	union {
		char buf[CMSG_SPACE(sizeof(int) * EVST_RDV_NFDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
	ssize_t n = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0) {
		err = errno == EAGAIN ? -ETIMEDOUT : -errno;
		goto out;
	}
	/* A server that went away before answering: try again later. */
	if (n == 0) {
		err = -ENOENT;
		goto out;
	}
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	int got = 0;
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
		got = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)(got < EVST_RDV_NFDS ?
								got : EVST_RDV_NFDS));
	}
	if (n != sizeof(m) || m.magic != RDV_MAGIC || m.proto != RDV_PROTO ||
	    m.layout != r->layout || m.status || got != EVST_RDV_NFDS ||
	    (mh.msg_flags & MSG_CTRUNC)) {
		for (int i = 0; i < got && i < EVST_RDV_NFDS; i++)
			close(fds[i]);
		err = n == sizeof(m) && m.status > 0 ? -m.status : -EPROTO;
	}
out:
	close(s);
	return err;
}

int evst_rdv_bind(struct evst_rdv *r)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;
	/* up to EVST_MAX_WORKERS member processes may join at once (a
	 * prefork server starting): past the backlog they wait in connect() */
	if (bind(s, (const struct sockaddr *)&r->name, r->namelen) < 0 ||
	    listen(s, SOMAXCONN) < 0) {
		int err = -errno;
		close(s);
		return err;
	}
	r->lfd = s;
	return 0;
}

/* Send an answer with n descriptors (n 0: none). */
static int answer(int c, const void *msg, size_t len, const int *fds, int n)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * EVST_RDV_NFDS)];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n > 0) {
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n);
	}
	return sendmsg(c, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

/* A proto 2 request (evsteer-stat): look, or set. Same uid or root. */
static void serve_ctl(struct evst_rdv *r, int c, const struct evst_rdv_req *q,
		      const struct ucred *uc)
{
	struct evst_rdv_req a = *q;
	a.h.magic = RDV_MAGIC;
	a.h.proto = EVST_RDV_PROTO_CTL;
	a.h.layout = r->layout;
	a.h.pid = (uint32_t)getpid();
	int32_t status = 0;
	int nfds = 0;
	if (uc->uid != geteuid() && uc->uid != 0)
		status = EACCES;
	else if (q->op == EVST_RDV_OP_LOOK) {
		/* no layout check: the answer carries ours, the looker
		 * decides whether it can read it */
		if (r->look_fds[0] < 0 || r->look_fds[1] < 0)
			status = EOPNOTSUPP;
		else
			nfds = EVST_RDV_LOOK_NFDS;
	} else if (q->op == EVST_RDV_OP_SET_POLICY ||
		   q->op == EVST_RDV_OP_SET_WEIGHT) {
		if (q->h.layout != r->layout)
			status = EPROTO;
		else
			status = r->control ? r->control(r->arg, q, uc->pid, uc->uid) :
					      EOPNOTSUPP;
	} else {
		status = EOPNOTSUPP;
	}
	a.h.status = status;
	int e = answer(c, &a, sizeof(a), r->look_fds, status ? 0 : nfds);
	if (e < 0)
		evst_debug("rendezvous: answering pid %d: %s", (int)uc->pid,
			   strerror(-e));
	else if (status == EACCES)
		evst_info("rendezvous: refused a look by pid %d (uid %u): "
			  "another user", (int)uc->pid, (unsigned)uc->uid);
}

/* Thread, on a served name: answer every joiner waiting. */
static void serve(struct evst_rdv *r)
{
	for (;;) {
		int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return;
		/* a joiner that connects and says nothing must not hold the
		 * thread for long */
		set_timeout(c, 500);
		union {
			struct evst_rdv_msg m;
			struct evst_rdv_req q;
		} in;
		struct ucred uc;
		ssize_t n;
		if (peer_cred(c, &uc) < 0 ||
		    (n = recv(c, &in, sizeof(in), 0)) < (ssize_t)sizeof(in.m) ||
		    in.m.magic != RDV_MAGIC) {
			close(c);
			continue;
		}
		if (in.m.proto == EVST_RDV_PROTO_CTL && n == sizeof(in.q)) {
			serve_ctl(r, c, &in.q, &uc);
			close(c);
			continue;
		}
		struct evst_rdv_msg m = in.m;
		int32_t status = 0;
		if (uc.uid != geteuid())
			status = EACCES;
		else if (m.proto != RDV_PROTO || m.layout != r->layout)
			status = EPROTO;
		struct evst_rdv_msg a = {RDV_MAGIC, RDV_PROTO, r->layout, status,
				    (uint32_t)getpid()};
		int e = answer(c, &a, sizeof(a), r->fds, status ? 0 : EVST_RDV_NFDS);
		if (e < 0)
			evst_debug("rendezvous: answering pid %d: %s", (int)uc.pid,
				   strerror(-e));
		else if (status)
			evst_info("rendezvous: refused pid %d (uid %u): %s",
				  (int)uc.pid, (unsigned)uc.uid, strerror(status));
		close(c);
	}
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* rdv_lock held; the lock is dropped around fn, r marked busy. */
static void run_unlocked(struct evst_rdv *r, void (*fn)(struct evst_rdv *))
{
	busy = r;
	pthread_mutex_unlock(&rdv_lock);
	fn(r);
	pthread_mutex_lock(&rdv_lock);
	busy = NULL;
	pthread_cond_broadcast(&rdv_cond);
}

static void take_over(struct evst_rdv *r)
{
	/* the server went away: the first member to bind the name serves */
	if (r->lfd < 0 && evst_rdv_bind(r) == 0)
		evst_info("rendezvous: now serving %s", r->name.sun_path + 1);
}

static void tick(struct evst_rdv *r)
{
	r->tick(r->arg);
}

static void *thread_main(void *arg)
{
	(void)arg;
	uint64_t next = now_ms() + EVST_RDV_TICK_MS;
	pthread_mutex_lock(&rdv_lock);
	while (!stopping) {
		struct pollfd pf[1 + 64];
		struct evst_rdv *who[1 + 64];
		int n = 0;
		pf[n++] = (struct pollfd){.fd = wake_fd, .events = POLLIN};
		for (struct evst_rdv *r = entries; r && n < 65; r = r->next)
			if (r->lfd >= 0) {
				who[n] = r;
				pf[n++] = (struct pollfd){.fd = r->lfd,
							  .events = POLLIN};
			}
		uint64_t now = now_ms();
		int wait = next > now ? (int)(next - now) : 0;
		pthread_mutex_unlock(&rdv_lock);
		int k = poll(pf, (nfds_t)n, wait);
		pthread_mutex_lock(&rdv_lock);
		if (k > 0 && (pf[0].revents & POLLIN)) {
			uint64_t v;
			if (read(wake_fd, &v, sizeof(v)) < 0) {
				/* nothing: it is a wake-up only */
			}
		}
		for (int i = 1; k > 0 && i < n && !stopping; i++) {
			if (!pf[i].revents)
				continue;
			/* still registered? (removed while we polled) */
			struct evst_rdv *r;
			for (r = entries; r && r != who[i]; r = r->next)
				;
			if (r && r->lfd >= 0)
				run_unlocked(r, serve);
		}
		if (now_ms() >= next && !stopping) {
			next = now_ms() + EVST_RDV_TICK_MS;
			/* each entry once; the list may change between */
			for (struct evst_rdv *r = entries; r;) {
				run_unlocked(r, take_over);
				run_unlocked(r, tick);
				struct evst_rdv *q;
				for (q = entries; q && q != r; q = q->next)
					;
				r = q ? q->next : entries;
				if (!q)
					break;
			}
		}
	}
	pthread_mutex_unlock(&rdv_lock);
	return NULL;
}

static void wake(void)
{
	uint64_t one = 1;
	if (write(wake_fd, &one, sizeof(one)) < 0) {
		/* the counter is full: a wake-up is pending anyway */
	}
}

/* fork (common/process.h): the child has no thread and must not serve
 * the parent's names: close what it inherited and start from nothing.
 * Its groups are the parent's; the child rendezvouses anew for its own. */
void evst_rdv_registry_fork_prepare(void)
{
	pthread_mutex_lock(&rdv_lock);
}

void evst_rdv_registry_fork_parent(void)
{
	pthread_mutex_unlock(&rdv_lock);
}

void evst_rdv_registry_fork_child(void)
{
	for (struct evst_rdv *r = entries; r; r = r->next)
		if (r->lfd >= 0) {
			close(r->lfd);
			r->lfd = -1;
		}
	entries = NULL;
	busy = NULL;
	running = stopping = false;
	if (wake_fd >= 0)
		close(wake_fd);
	wake_fd = -1;
	/* held since the prepare step, by this (the forking) thread */
	pthread_mutex_unlock(&rdv_lock);
}

int evst_rdv_add(struct evst_rdv *r)
{
	pthread_mutex_lock(&rdv_lock);
	if (!running) {
		wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (wake_fd < 0) {
			int err = -errno;
			pthread_mutex_unlock(&rdv_lock);
			return err;
		}
		/* the host's signals are the host's: none is delivered here */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		stopping = false;
		int err = pthread_create(&thread, NULL, thread_main, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (err) {
			close(wake_fd);
			wake_fd = -1;
			pthread_mutex_unlock(&rdv_lock);
			return -err;
		}
		running = true;
	}
	r->next = entries;
	entries = r;
	wake();
	pthread_mutex_unlock(&rdv_lock);
	return 0;
}

void evst_rdv_remove(struct evst_rdv *r)
{
	pthread_mutex_lock(&rdv_lock);
	struct evst_rdv **pp = &entries;
	while (*pp && *pp != r)
		pp = &(*pp)->next;
	if (*pp)
		*pp = r->next;
	while (busy == r)
		pthread_cond_wait(&rdv_cond, &rdv_lock);
	if (r->lfd >= 0) {
		close(r->lfd);
		r->lfd = -1;
	}
	bool last = running && !entries;
	if (last) {
		stopping = true;
		wake();
	}
	pthread_mutex_unlock(&rdv_lock);
	if (last) {
		pthread_join(thread, NULL);
		pthread_mutex_lock(&rdv_lock);
		/* a new entry may have been added while we joined: it waits
		 * for a thread, start one */
		running = false;
		close(wake_fd);
		wake_fd = -1;
		struct evst_rdv *again = entries;
		entries = NULL;
		pthread_mutex_unlock(&rdv_lock);
		while (again) {
			struct evst_rdv *n = again->next;
			evst_rdv_add(again);
			again = n;
		}
	}
}

/* SPDX-License-Identifier: MIT */
/*
 * The steering of an address across processes (steering.h, shared.h):
 * found in this process, joined from the process that serves it, or
 * created (loading the program) and served from here.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "common/env.h"
#include "common/process.h"
#include "steering/steering.h"
#include "steering/steer.h"

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evst_shared *registry;

#if EVSTEER_HAVE_BPF
/* A failed load is not retried: the process's privileges do not grow, and
 * the reason is logged once. */
static int probe_err;
static char probe_reason[256];
#endif

void evst_addr_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)ss;
		inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
		port = ntohs(s->sin_port);
		snprintf(buf, len, "%s:%u", a, port);
	} else {
		const struct sockaddr_in6 *s = (const void *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
		port = ntohs(s->sin6_port);
		snprintf(buf, len, "[%s]:%u", a, port);
	}
}

void evst_set_reason(struct evst_shared *sh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sh->reason_buf, sizeof(sh->reason_buf), fmt, ap);
	va_end(ap);
	sh->reason = sh->reason_buf;
}

#if EVSTEER_HAVE_BPF
/* Listeners on our address other than `self`: a group whose rendezvous is
 * changing hands, or someone else's sockets. */
static bool others_listen(struct evst_shared *sh, uint64_t self)
{
	struct evst_sock_info li[8];
	int n = evst_list_listeners((struct sockaddr *)&sh->addr, li, 8);
	for (int i = 0; i < n; i++)
		if (li[i].cookie != self)
			return true;
	return false;
}
#endif

#if EVSTEER_HAVE_BPF
/* The group's descriptors, received from pid: open them. 0 or -errno with
 * the reason. */
static int join_served(struct evst_shared *sh, int fds[EVST_RDV_NFDS],
		       pid_t pid, const char *a)
{
	sh->steer = evst_steer_open(fds);
	if (!sh->steer) {
		close(fds[3]);
		evst_set_reason(sh, "bpf: descriptors from pid %d for %s are not "
			   "a steering group (%s)",
			   (int)pid, a, strerror(errno));
		return -EPROTO;
	}
	int r = evst_ctl_map(sh, fds[3], false);
	if (r < 0) {
		evst_set_reason(sh, "bpf: the group of %s (pid %d) has another "
			   "layout: %s",
			   a, (int)pid, strerror(-r));
		return r;
	}
	evst_debug("group %s: joined (served by pid %d)", a, (int)pid);
	return 0;
}

/* Why joining failed with r (not -ENOENT: nobody serves); returns r. */
static int join_refused(struct evst_shared *sh, int r, uid_t uid, pid_t pid,
			const char *a)
{
	if (r == -EACCES)
		evst_set_reason(sh, "bpf: the rendezvous of %s is held by uid %u "
			   "(pid %d), not by us: not joining it",
			   a, (unsigned)uid, (int)pid);
	else if (r == -EPROTO)
		evst_set_reason(sh, "bpf: the group of %s (pid %d) is run by "
			   "another evsteer version: not joining it",
			   a, (int)pid);
	else if (r == -ETIMEDOUT)
		evst_set_reason(sh, "bpf: the process serving the group of %s "
			   "(pid %d) did not answer",
			   a, (int)pid);
	else
		evst_set_reason(sh, "bpf: rendezvous for %s: %s", a, strerror(-r));
	return r;
}

/* Nobody serves the address: load the program and make the control page.
 * 0 or -errno with the reason (a failed load is remembered). */
static int load_own(struct evst_shared *sh)
{
	if (probe_err) {
		evst_set_reason(sh, "%s", probe_reason);
		return -probe_err;
	}
	int fds[EVST_RDV_NFDS];
	int r = evst_steer_load(fds, sh->reason_buf, sizeof(sh->reason_buf));
	if (r < 0) {
		probe_err = -r;
		snprintf(probe_reason, sizeof(probe_reason), "%s", sh->reason_buf);
		evst_info("%s; using the kernel's SO_REUSEPORT hash", probe_reason);
		sh->reason = sh->reason_buf;
		return r;
	}
	fds[3] = memfd_create("evsteer-group", MFD_CLOEXEC);
	if (fds[3] < 0) {
		r = -errno;
		for (int i = 0; i < 3; i++)
			close(fds[i]);
		evst_set_reason(sh, "bpf: memfd_create: %s", strerror(-r));
		return r;
	}
	sh->steer = evst_steer_open(fds);
	if (!sh->steer) {
		r = -errno;
		close(fds[3]);
		evst_set_reason(sh, "bpf: %s", strerror(-r));
		return r;
	}
	r = evst_ctl_map(sh, fds[3], true);
	if (r < 0)
		evst_set_reason(sh, "bpf: control page: %s", strerror(-r));
	return r;
}

/* Someone bound the rendezvous first by a hair: drop what load_own made. */
static void drop_own(struct evst_shared *sh)
{
	munmap(sh->ctl, sizeof(*sh->ctl));
	close(sh->ctl_fd);
	sh->ctl = NULL;
	sh->ctl_fd = -1;
	evst_steer_close(sh->steer);
	sh->steer = NULL;
}

/*
 * Could a member of an eBPF group of this address be alive in this network
 * namespace? Each holds an abstract name "<key>/m<id>" (ctl.c) while its
 * process lives, and abstract names are listed in /proc/net/unix. When
 * none is, the others listening are no eBPF group (a plain program, a
 * classic BPF group, which has no rendezvous): no server will come, and
 * waiting for one would leave our socket, listening already, unserved for
 * the whole wait (issue 21: 0.5 s tails at a restart). True when it cannot
 * tell.
 */
static bool members_may_live(const struct evst_shared *sh)
{
	FILE *f = fopen("/proc/net/unix", "re");
	if (!f)
		return true;
	char want[160], line[512];
	int n = snprintf(want, sizeof(want), "@%s/m", sh->key);
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		/* the path is the last field; abstract names start with @ */
		const char *at = strrchr(line, ' ');
		found = at && n > 0 && (size_t)n < sizeof(want) &&
			!strncmp(at + 1, want, (size_t)n);
	}
	bool err = ferror(f);
	fclose(f);
	return found || err;
}

/*
 * While the server of a group leaves, its name is free for up to a tick
 * before another member takes it: a newcomer that loaded its own program
 * then would replace the group's. So when others listen on the address,
 * wait a few ticks for a server before creating one. True: wait (it
 * slept a little), try joining again.
 */
static bool wait_for_server(struct evst_shared *sh, uint64_t self,
			    uint64_t *until)
{
	if (!others_listen(sh, self))
		return false;
	if (!*until && !members_may_live(sh)) {
		evst_debug("group %s: others listen, but no member of an eBPF "
			   "group of the address is alive: not waiting for a "
			   "server", sh->key);
		return false;
	}
	uint64_t now = evst_now_ns();
	if (!*until) {
		*until = now + 3ull * EVST_RDV_TICK_MS * 1000000;
		evst_debug("group %s: a member may be alive: waiting up to %d ms "
			   "for its server", sh->key, 3 * EVST_RDV_TICK_MS);
	}
	if (now >= *until)
		return false;
	struct timespec ts = {0, 5000000L};
	nanosleep(&ts, NULL);
	return true;
}
#endif

/*
 * Join whoever serves the address, or create the objects and serve them.
 * 0 (joined) or 1 (created) with sh->steer set; or -errno with sh->reason
 * saying why not.
 */
static int rendezvous(struct evst_shared *sh, uint64_t self)
{
#if EVSTEER_HAVE_BPF
	char a[64];
	evst_addr_str(&sh->addr, a, sizeof(a));
	/* a test's stand-in for a kernel that refuses the program: neither
	 * load nor join (joining would give this process BPF all the same);
	 * not cached, unlike a real refusal */
	if (evst_env_test_mask() & EVST_MASK_BPF) {
		evst_set_reason(sh, "bpf: masked by EVSTEER_TEST_MASK=bpf (as if "
				"the kernel refused the sk_reuseport program)");
		return -EOPNOTSUPP;
	}
	bool loaded = false;
	uint64_t wait_until = 0;
	for (int attempt = 0; attempt < 400; attempt++) {
		if (!loaded) {
			int fds[EVST_RDV_NFDS];
			uid_t uid = 0;
			pid_t pid = 0;
			int r = evst_rdv_join(&sh->rdv, fds, &uid, &pid);
			if (r == 0)
				return join_served(sh, fds, pid, a);
			if (r != -ENOENT)
				return join_refused(sh, r, uid, pid, a);
			/* nobody serves it: be the first */
			if (wait_for_server(sh, self, &wait_until))
				continue;
			r = load_own(sh);
			if (r < 0)
				return r;
			loaded = true;
		}
		int r = evst_rdv_bind(&sh->rdv);
		if (r == 0)
			return 1; /* created */
		if (r != -EADDRINUSE) {
			evst_set_reason(sh, "bpf: cannot serve the rendezvous of %s: %s",
				   a, strerror(-r));
			return r;
		}
		/* someone was first by a hair: drop ours, join theirs */
		drop_own(sh);
		loaded = false;
		struct timespec ts = {0, 1000000L * (attempt < 10 ? 1 : 10)};
		nanosleep(&ts, NULL);
	}
	evst_set_reason(sh, "bpf: no rendezvous for %s after 400 attempts", a);
	return -ETIMEDOUT;
#else
	(void)self;
	evst_set_reason(sh, "bpf: not built (meson -Dbpf=disabled or no toolchain)");
	return -EOPNOTSUPP;
#endif
}

/* What evsteer-stat receives: the program's state, and the control page
 * through a descriptor opened read-only (a memfd reopened through /proc),
 * so that a looker cannot write it even by mistake. Without /proc the
 * page is not handed to lookers. */
static void look_fds(struct evst_shared *sh)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", sh->ctl_fd);
	sh->ctl_ro_fd = open(p, O_RDONLY | O_CLOEXEC);
	if (sh->ctl_ro_fd < 0)
		evst_debug("group %s: no read-only control page for evsteer-stat: "
			   "%s", sh->key, strerror(errno));
	sh->rdv.look_fds[0] = evst_steer_fds(sh->steer)[EVST_FD_BSS];
	sh->rdv.look_fds[1] = sh->ctl_ro_fd;
}

static bool same_addr(const struct evst_shared *sh,
		      const struct sockaddr_storage *ss, socklen_t len,
		      uint64_t netns)
{
	return sh->netns == netns && sh->addrlen == len &&
	       !memcmp(&sh->addr, ss, len);
}

/* fork (common/process.h): a child is a process of its own. It does not
 * inherit its parent's membership (the parent's objects stay in its copy
 * of memory, for evst_shared_forget()); its groups rendezvous anew and
 * join the parent's as members. */
void evst_shared_registry_fork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

void evst_shared_registry_fork_parent(void)
{
	pthread_mutex_unlock(&reg_lock);
}

void evst_shared_registry_fork_child(void)
{
	for (struct evst_shared *sh = registry; sh; sh = sh->next)
		if (sh->alive_fd >= 0) {
			close(sh->alive_fd);
			sh->alive_fd = -1;
		}
	registry = NULL;
	pthread_mutex_unlock(&reg_lock);
}

/* reg_lock held: this process's steering of the address, a reference
 * taken; NULL (errno 0) if there is none yet, or NULL with EOPNOTSUPP. */
static struct evst_shared *find_ref(const struct sockaddr_storage *ss,
				    socklen_t len, uint64_t netns,
				    const struct evst_shared_opts *o)
{
	errno = 0;
	struct evst_shared *sh;
	for (sh = registry; sh; sh = sh->next)
		if (same_addr(sh, ss, len, netns))
			break;
	if (!sh)
		return NULL;
	/* one address, one group: a member that requires BPF cannot have it
	 * when the address's group runs on the hash */
	if (o->mode == EVSTEER_BPF_REQUIRE && !evst_shared_bpf(sh)) {
		evst_warn("BPF steering required, but the group of this address "
			  "runs on the kernel hash: %s",
			  evst_shared_reason(sh));
		errno = EOPNOTSUPP;
		return NULL;
	}
	sh->refcnt++;
	return sh;
}

static struct evst_shared *shared_new(const struct sockaddr_storage *ss,
				      socklen_t len, uint64_t netns)
{
	struct evst_shared *sh = calloc(1, sizeof(*sh));
	if (!sh)
		return NULL;
	sh->refcnt = 1;
	sh->addr = *ss;
	sh->addrlen = len;
	sh->netns = netns;
	sh->ctl_fd = -1;
	sh->ctl_ro_fd = -1;
	sh->alive_fd = -1;
	sh->rdv.lfd = -1;
	sh->rdv.look_fds[0] = sh->rdv.look_fds[1] = -1;
	sh->member = -1;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		sh->local_fd[i] = -1;
	char a[64];
	evst_addr_str(ss, a, sizeof(a));
	snprintf(sh->key, sizeof(sh->key), "evsteer/%llx/%s",
		 (unsigned long long)netns, a);
	evst_rdv_name(&sh->rdv, sh->key);
	sh->rdv.layout = LAYOUT;
	return sh;
}

/* BPF steering for sh: joined or created (rendezvous()), then this process
 * a member, serving the rendezvous too. 0 joined, 1 created, or -errno
 * with the reason. */
static int steer(struct evst_shared *sh, int fd,
		 const struct evst_shared_opts *o, const char *a)
{
	if (o->mode == EVSTEER_BPF_OFF) {
		sh->reason = "bpf: off (EVSTEER_BPF=off or the bpf option)";
		return -EPERM;
	}
	int r = rendezvous(sh, evst_sock_cookie(fd));
	if (r < 0)
		return r;
	evst_steer_view(sh->steer, &sh->v);
	int e = evst_ctl_join(sh);
	if (e == 0) {
		memcpy(sh->rdv.fds, evst_steer_fds(sh->steer), sizeof(int) * 3);
		sh->rdv.fds[3] = sh->ctl_fd;
		look_fds(sh);
		sh->rdv.tick = evst_shared_tick;
		sh->rdv.control = evst_shared_control;
		sh->rdv.arg = sh;
		e = evst_rdv_add(&sh->rdv);
	}
	if (e < 0) {
		evst_set_reason(sh, "bpf: joining the group of %s: %s", a,
			   strerror(-e));
		if (sh->rdv.lfd >= 0)
			close(sh->rdv.lfd);
		sh->rdv.lfd = -1;
		if (sh->ctl_ro_fd >= 0)
			close(sh->ctl_ro_fd);
		sh->ctl_ro_fd = -1;
		return e;
	}
	return r;
}

/* No BPF steering (err, with the reason set): sh goes process-local on the
 * kernel hash, or, when BPF is required, away. 1 (ours to configure), or
 * -errno with sh freed. */
static int fall_back(struct evst_shared *sh, int err,
		     const struct evst_shared_opts *o, const char *a)
{
	if (o->mode == EVSTEER_BPF_REQUIRE) {
		evst_warn("BPF steering required but unavailable: %s", sh->reason);
		if (sh->steer)
			evst_steer_close(sh->steer);
		if (sh->ctl_fd >= 0) {
			munmap(sh->ctl, sizeof(*sh->ctl));
			close(sh->ctl_fd);
		}
		free(sh);
		return err == -EPERM ? -EPERM : err;
	}
	evst_ctl_local(sh);
	if (!sh->ctl || !sh->local) {
		free(sh->ctl);
		free(sh->local);
		free(sh);
		return -ENOMEM;
	}
	/* the next rung of the ladder: a classic program needs no
	 * capability and no bpf() (cbpf.c); "off" means libevent's hash */
	bool classic = o->mode != EVSTEER_BPF_OFF;
	if (classic && (evst_env_test_mask() & EVST_MASK_CBPF)) {
		char r[sizeof(sh->reason_buf)];
		snprintf(r, sizeof(r), "%s", sh->reason);
		evst_set_reason(sh, "%s; cbpf: masked by EVSTEER_TEST_MASK=cbpf",
				r);
		classic = false;
	}
	if (classic && evst_cbpf_start(sh) < 0)
		classic = false;
	if (classic)
		evst_info("group %s: %s", a, sh->reason);
	else if (err != -EPERM || o->mode != EVSTEER_BPF_OFF)
		evst_info("group %s: %s; the kernel's SO_REUSEPORT hash steers", a,
			  sh->reason);
	evst_ctl_join(sh);
	return 1;
}

/* The group's settings: ours to set when we made it (created), else
 * whatever it runs, said when it is not what we asked for. */
static void configure(struct evst_shared *sh, bool created,
		      const struct evst_shared_opts *o, const char *a)
{
	if (created) {
		__atomic_store_n(sh->v.policy, (__u32)o->policy, __ATOMIC_RELAXED);
		__atomic_store_n(sh->v.stall_ns,
				 o->stall_us < 0 ? 0 :
				 (__u64)(o->stall_us ? o->stall_us :
						       EVSTEER_DEFAULT_STALL_US) * 1000,
				 __ATOMIC_RELAXED);
	} else if ((unsigned int)o->policy != evst_shared_policy(sh) &&
		   o->policy != EVSTEER_POLICY_LEAST_PENDING) {
		evst_info("group %s: joined with policy %s (asked for %s)", a,
			  evsteer_policy_name(evst_shared_policy(sh)),
			  evsteer_policy_name(o->policy));
	}
}

struct evst_shared *evst_shared_get(int fd, const struct evst_shared_opts *o)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return NULL;
	if (ss.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&ss)->sin6_flowinfo = 0;
	uint64_t netns = evst_netns_cookie(fd);

	/* held across the BPF load and the rendezvous: creations are rare */
	pthread_mutex_lock(&reg_lock);
	struct evst_shared *sh = find_ref(&ss, len, netns, o);
	if (sh || errno) {
		pthread_mutex_unlock(&reg_lock);
		return sh;
	}
	sh = shared_new(&ss, len, netns);
	if (!sh) {
		pthread_mutex_unlock(&reg_lock);
		errno = ENOMEM;
		return NULL;
	}
	char a[64];
	evst_addr_str(&ss, a, sizeof(a));
	int r = steer(sh, fd, o, a);
	if (r < 0)
		r = fall_back(sh, r, o, a); /* frees sh on failure */
	if (r < 0) {
		pthread_mutex_unlock(&reg_lock);
		errno = -r;
		return NULL;
	}
	configure(sh, r == 1, o, a);
	sh->next = registry;
	registry = sh;
	pthread_mutex_unlock(&reg_lock);
	return sh;
}

/*
 * What sh holds in this process: views, descriptors, memory. mine: made
 * here (not inherited over fork), so the process-private control page's
 * lock is ours to destroy.
 */
static void release(struct evst_shared *sh, bool mine)
{
	if (sh->alive_fd >= 0)
		close(sh->alive_fd);
	if (sh->ctl_ro_fd >= 0)
		close(sh->ctl_ro_fd);
	if (sh->ctl_fd >= 0) {
		munmap(sh->ctl, sizeof(*sh->ctl));
		close(sh->ctl_fd);
	} else {
		if (mine)
			pthread_mutex_destroy(&sh->ctl->lock);
		free(sh->ctl);
	}
	evst_steer_close(sh->steer);
	evst_cbpf_free(sh);
	free(sh->local);
	for (struct reason_node *r = sh->detach_reason, *p; r; r = p) {
		p = r->prev;
		free(r);
	}
	free(sh);
}

void evst_shared_put(struct evst_shared *sh)
{
	pthread_mutex_lock(&reg_lock);
	if (--sh->refcnt > 0) {
		pthread_mutex_unlock(&reg_lock);
		return;
	}
	struct evst_shared **pp = &registry;
	while (*pp && *pp != sh)
		pp = &(*pp)->next;
	if (*pp)
		*pp = sh->next;
	pthread_mutex_unlock(&reg_lock);

	if (sh->steer)
		evst_rdv_remove(&sh->rdv);
	evst_ctl_lock(sh);
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->ctl->slots[i].owner == sh->id && sh->id)
			evst_ctl_free_slot(sh, i);
	if (sh->member >= 0) {
		sh->ctl->members[sh->member].id = 0;
		sh->ctl->members[sh->member].pid = 0;
	}
	evst_ctl_unlock(sh);
	release(sh, true);
}

void evst_shared_forget(struct evst_shared *sh)
{
	/* reg_lock was reset at fork: usable; ctl->lock is the parent's */
	pthread_mutex_lock(&reg_lock);
	bool last = --sh->refcnt == 0;
	pthread_mutex_unlock(&reg_lock);
	if (last)
		release(sh, false);
}

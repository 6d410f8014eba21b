/* SPDX-License-Identifier: MIT */
/*
 * The steering group of an address across processes (see shared.h).
 *
 * Locks: `reg_lock` guards this process's registry of addresses and their
 * refcounts, and is held while one is created (a load takes milliseconds;
 * creations are rare). `ctl->lock` (robust, process-shared, in the control
 * page) guards the slot and member tables, the steering table, the CPU map
 * and attach/detach, in every member process. Order: reg_lock, then
 * ctl->lock. The rendezvous thread's tick takes ctl->lock only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rendezvous.h"
#include "shared.h"

#define EVST_SHARED_VERSION 2 /* 2: evst_worker.stolen_ns */
#define EVST_MAX_MEMBERS 64

struct evst_slot_rec {
	uint32_t owner; /* member id; 0: free */
	uint32_t pid;
	uint64_t cookie; /* SO_COOKIE of the socket in the sockarray */
	uint32_t weight;
	uint32_t pad;
	struct evst_slot_counters c;
	uint64_t pad2[2];
};

struct evst_member_rec {
	uint32_t id; /* 0: free */
	uint32_t pid;
};

/* The control page: a memfd every member maps. */
struct evst_ctl {
	uint32_t magic, layout;
	uint32_t next_id;
	uint32_t detached; /* stood down for a foreign listener */
	pthread_mutex_t lock;
	char reason[256];  /* why detached */
	struct evst_member_rec members[EVST_MAX_MEMBERS];
	struct evst_slot_rec slots[EVST_MAX_WORKERS];
};

#define CTL_MAGIC 0x4c544345u
#define LAYOUT ((uint32_t)EVST_SHARED_VERSION << 24 | (uint32_t)sizeof(struct evst_ctl))

/* The program's state when there is no program. */
struct evst_local_state {
	struct evst_worker workers[EVST_MAX_WORKERS];
	__u32 table[EVST_TABLE_SIZE];
	__u32 table_len, policy, nslots;
	__u64 stall_ns;
	__u32 cpu_map[EVST_MAX_CPUS];
};

#define MAX_SUSPECTS 16

struct reason_node {
	struct reason_node *prev;
	char text[];
};

struct evst_shared {
	int refcnt; /* reg_lock */
	struct evst_shared *next;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint64_t netns;
	char key[96];

	struct evst_ctl *ctl;
	int ctl_fd;                 /* -1 when process-local */
	struct evst_steer *steer;   /* NULL: kernel hash */
	struct evst_local_state *local;
	struct evst_shared_view v;
	uint32_t id;                /* our member id */
	int member;                 /* our index in ctl->members */
	int alive_fd;               /* holds our liveness name */
	struct evst_rdv rdv;
	int local_fd[EVST_MAX_WORKERS]; /* our sockets by slot (ctl->lock) */

	const char *reason;         /* why not BPF (fixed) */
	char reason_buf[256];
	/* copy of ctl->reason, for readers without the lock: a new string
	 * each time it changes (rarely), all kept until sh goes */
	struct reason_node *detach_reason;
	/* foreign check, tick only */
	uint64_t suspects[MAX_SUSPECTS];
	int nsuspects, quiet_ticks;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct evst_shared *registry;

/* A failed load is not retried: the process's privileges do not grow, and
 * the reason is logged once. */
static int probe_err;
static char probe_reason[256];

static uint64_t ld64(const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

uint64_t evst_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The worker's loop ran: its heartbeat. Past the last theft (stolen_ns),
 * it is back in the steering. */
void evst_made_progress(struct evst_worker *w, uint64_t now)
{
	__atomic_store_n(&w->progress_ns, now, __ATOMIC_RELAXED);
}

void evst_ws_resync(struct evst_worker *w)
{
	__atomic_store_n(&w->dequeued, ld64(&w->steered), __ATOMIC_RELAXED);
}

uint64_t evst_worker_pending(const struct evst_worker *w)
{
	int64_t p = (int64_t)(ld64(&w->steered) - ld64(&w->dequeued));
	return p > 0 ? (uint64_t)p : 0;
}

static void addr_str(const struct sockaddr_storage *ss, char *buf, size_t len)
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

static void ctl_lock(struct evst_shared *sh);

static void ctl_unlock(struct evst_shared *sh)
{
	pthread_mutex_unlock(&sh->ctl->lock);
}

/* ctl->lock held. Rebuild the weighted table of live workers. */
static void rebuild_table(struct evst_shared *sh)
{
	__u32 n = 0, hi = 0;
	for (unsigned int w = 0; w < 16; w++) {
		for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
			struct evst_slot_rec *s = &sh->ctl->slots[i];
			if (!__atomic_load_n(&s->owner, __ATOMIC_RELAXED) ||
			    !__atomic_load_n(&sh->v.workers[i].live,
					     __ATOMIC_RELAXED))
				continue;
			hi = i + 1;
			if (w < s->weight && n < EVST_TABLE_SIZE)
				__atomic_store_n(&sh->v.table[n++], i,
						 __ATOMIC_RELAXED);
		}
	}
	/* the program reads the length first: publish entries before it */
	__atomic_store_n(sh->v.nslots, hi, __ATOMIC_RELEASE);
	__atomic_store_n(sh->v.table_len, n, __ATOMIC_RELEASE);
}

static void ctl_lock(struct evst_shared *sh)
{
	int r = pthread_mutex_lock(&sh->ctl->lock);
	if (r == EOWNERDEAD) {
		/* A member died in the middle of a change: everything under
		 * the lock is rebuilt from the slot table. */
		pthread_mutex_consistent(&sh->ctl->lock);
		rebuild_table(sh);
		evst_info("group: a member process died holding the group lock; "
			  "table rebuilt");
	}
}

/* ctl->lock held: the slot's owner is gone or leaving. */
static void free_slot(struct evst_shared *sh, unsigned int i)
{
	struct evst_slot_rec *s = &sh->ctl->slots[i];
	__atomic_store_n(&sh->v.workers[i].live, 0, __ATOMIC_RELAXED);
	rebuild_table(sh);
	if (sh->steer)
		evst_steer_set_slot(sh->steer, i, -1);
	for (unsigned int c = 0; c < EVST_MAX_CPUS; c++)
		if (__atomic_load_n(&sh->v.cpu_map[c], __ATOMIC_RELAXED) == i + 1)
			__atomic_store_n(&sh->v.cpu_map[c], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&s->cookie, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->pid, 0, __ATOMIC_RELAXED);
	sh->local_fd[i] = -1;
}

/* ---- membership */

static void member_name(const struct evst_shared *sh, uint32_t id,
			struct evst_rdv *tmp)
{
	char k[128];
	snprintf(k, sizeof(k), "%s/m%u", sh->key, id);
	evst_rdv_name(tmp, k);
}

/* Bind our liveness name: held while this process lives (the kernel frees
 * an abstract name with its last socket, killed or not). */
static int hold_name(const struct evst_shared *sh, uint32_t id)
{
	struct evst_rdv tmp;
	member_name(sh, id, &tmp);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (bind(s, (struct sockaddr *)&tmp.name, tmp.namelen) < 0) {
		int err = -errno;
		close(s);
		return err;
	}
	return s;
}

static bool member_alive(const struct evst_shared *sh, uint32_t id)
{
	int s = hold_name(sh, id);
	if (s == -EADDRINUSE)
		return true;
	if (s >= 0)
		close(s);
	return s < 0; /* cannot tell: alive */
}

/* ctl->lock held: release what a dead member left. */
static void reap_member(struct evst_shared *sh, int m)
{
	uint32_t id = sh->ctl->members[m].id;
	int n = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->ctl->slots[i].owner == id) {
			free_slot(sh, i);
			n++;
		}
	evst_info("group %s: member pid %u is gone; released its %d slot(s)",
		  sh->key, sh->ctl->members[m].pid, n);
	sh->ctl->members[m].id = 0;
	sh->ctl->members[m].pid = 0;
}

static void local_fallback(struct evst_shared *sh);

static int join_as_member(struct evst_shared *sh)
{
	ctl_lock(sh);
	int m;
	for (m = 0; m < EVST_MAX_MEMBERS && sh->ctl->members[m].id; m++)
		;
	if (m == EVST_MAX_MEMBERS) {
		ctl_unlock(sh);
		return -EUSERS;
	}
	uint32_t id = ++sh->ctl->next_id;
	if (!id)
		id = ++sh->ctl->next_id;
	int fd = sh->ctl_fd >= 0 ? hold_name(sh, id) : -1;
	if (sh->ctl_fd >= 0 && fd < 0) {
		ctl_unlock(sh);
		return fd;
	}
	sh->ctl->members[m].id = id;
	sh->ctl->members[m].pid = (uint32_t)getpid();
	ctl_unlock(sh);
	sh->id = id;
	sh->member = m;
	sh->alive_fd = fd;
	return 0;
}

/* ---- the tick: dead members, foreign listeners */

static int any_local_fd(struct evst_shared *sh)
{
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->local_fd[i] >= 0)
			return sh->local_fd[i];
	return -1;
}

static bool known_cookie(struct evst_shared *sh, uint64_t c)
{
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (__atomic_load_n(&sh->ctl->slots[i].owner, __ATOMIC_ACQUIRE) &&
		    sh->ctl->slots[i].cookie == c)
			return true;
	return false;
}

/* ctl->lock held: our copy of the shared stand-down reason, up to date
 * (a new immutable string when it changed: readers hold no lock). */
static const char *detach_reason(struct evst_shared *sh)
{
	struct reason_node *cur = sh->detach_reason;
	if (!cur || strcmp(cur->text, sh->ctl->reason)) {
		size_t n = strnlen(sh->ctl->reason, sizeof(sh->ctl->reason));
		struct reason_node *r = malloc(sizeof(*r) + n + 1);
		if (!r)
			return cur ? cur->text : "bpf: stood down";
		memcpy(r->text, sh->ctl->reason, n);
		r->text[n] = '\0';
		r->prev = cur;
		__atomic_store_n(&sh->detach_reason, r, __ATOMIC_RELEASE);
		cur = r;
	}
	return cur->text;
}

/*
 * A listener on our address that no member has claimed is foreign once it
 * is still there a tick later (a member between bind and claim is not).
 * Our program would starve it: stand down to the kernel's hash, which
 * spreads over every socket, and say so; steer again once it is gone.
 */
static void check_foreign(struct evst_shared *sh)
{
	struct evst_sock_info li[EVST_MAX_WORKERS + MAX_SUSPECTS];
	int n = evst_list_listeners((struct sockaddr *)&sh->addr, li,
				    (int)(sizeof(li) / sizeof(li[0])));
	if (n < 0)
		return;
	uint64_t now[MAX_SUSPECTS];
	int nn = 0, confirmed = -1;
	ctl_lock(sh);
	for (int i = 0; i < n; i++) {
		if (known_cookie(sh, li[i].cookie) || nn == MAX_SUSPECTS)
			continue;
		for (int k = 0; k < sh->nsuspects; k++)
			if (sh->suspects[k] == li[i].cookie && confirmed < 0)
				confirmed = i;
		now[nn++] = li[i].cookie;
	}
	memcpy(sh->suspects, now, sizeof(now[0]) * (size_t)nn);
	sh->nsuspects = nn;
	sh->quiet_ticks = nn ? 0 : sh->quiet_ticks + 1;
	int fd = any_local_fd(sh);
	char a[56];
	addr_str(&sh->addr, a, sizeof(a));
	if (confirmed >= 0 && !sh->ctl->detached && fd >= 0 &&
	    evst_steer_detach(fd) == 0) {
		snprintf(sh->ctl->reason, sizeof(sh->ctl->reason),
			 "bpf: stood down: a listener that is not ours is on %s "
			 "(socket inode %llu, uid %u); the kernel's SO_REUSEPORT "
			 "hash spreads connections over all of them",
			 a, (unsigned long long)li[confirmed].inode,
			 li[confirmed].uid);
		__atomic_store_n(&sh->ctl->detached, 1, __ATOMIC_RELEASE);
		evst_warn("%s", sh->ctl->reason);
	} else if (!nn && sh->quiet_ticks >= 2 && sh->ctl->detached && fd >= 0 &&
		   evst_steer_attach(sh->steer, fd) == 0) {
		__atomic_store_n(&sh->ctl->detached, 0, __ATOMIC_RELEASE);
		evst_info("group %s: the foreign listener is gone; BPF steering "
			  "again", a);
	}
	ctl_unlock(sh);
}

static void tick(void *arg)
{
	struct evst_shared *sh = arg;
	/* Reaping is the serving member's job (one per group, not one per
	 * member: each look costs a bind per member); the next server takes
	 * it over with the name. The thread owns rdv.lfd: no race. */
	if (sh->rdv.lfd < 0) {
		check_foreign(sh);
		return;
	}
	ctl_lock(sh);
	for (int m = 0; m < EVST_MAX_MEMBERS; m++) {
		uint32_t id = sh->ctl->members[m].id;
		if (id && id != sh->id && !member_alive(sh, id))
			reap_member(sh, m);
	}
	/* a socket that left the sockarray without its member saying so
	 * (closed behind our back): free its slot */
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		struct evst_slot_rec *s = &sh->ctl->slots[i];
		if (s->owner && s->cookie &&
		    evst_steer_slot_cookie(sh->steer, i) != s->cookie) {
			evst_info("group %s: slot %u's socket is gone; released",
				  sh->key, i);
			free_slot(sh, i);
		}
	}
	ctl_unlock(sh);
	check_foreign(sh);
}

/* ---- creation */

static void view_local(struct evst_shared *sh)
{
	struct evst_local_state *l = sh->local;
	sh->v = (struct evst_shared_view){
		.workers = l->workers, .table = l->table,
		.table_len = &l->table_len, .policy = &l->policy,
		.stall_ns = &l->stall_ns, .cpu_map = &l->cpu_map[0],
		.nslots = &l->nslots};
}

static int init_ctl_lock(struct evst_ctl *c, bool pshared)
{
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	if (pshared)
		pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	int err = pthread_mutex_init(&c->lock, &a);
	pthread_mutexattr_destroy(&a);
	return -err;
}

/* The group lives in this process only: kernel hash. */
static void local_fallback(struct evst_shared *sh)
{
	if (sh->steer) {
		evst_steer_close(sh->steer);
		sh->steer = NULL;
	}
	if (sh->ctl && sh->ctl_fd >= 0)
		munmap(sh->ctl, sizeof(*sh->ctl));
	if (sh->ctl_fd >= 0)
		close(sh->ctl_fd);
	sh->ctl_fd = -1;
	sh->ctl = calloc(1, sizeof(*sh->ctl));
	sh->local = calloc(1, sizeof(*sh->local));
	if (sh->ctl)
		init_ctl_lock(sh->ctl, false);
	if (sh->local)
		view_local(sh);
}

static int map_ctl(struct evst_shared *sh, int fd, bool create)
{
	if (create && ftruncate(fd, sizeof(struct evst_ctl)) < 0)
		return -errno;
	void *p = mmap(NULL, sizeof(struct evst_ctl), PROT_READ | PROT_WRITE,
		       MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	sh->ctl = p;
	sh->ctl_fd = fd;
	if (create) {
		sh->ctl->magic = CTL_MAGIC;
		sh->ctl->layout = LAYOUT;
		return init_ctl_lock(sh->ctl, true);
	}
	if (sh->ctl->magic != CTL_MAGIC || sh->ctl->layout != LAYOUT)
		return -EPROTO;
	return 0;
}

static void set_reason(struct evst_shared *sh, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_reason(struct evst_shared *sh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sh->reason_buf, sizeof(sh->reason_buf), fmt, ap);
	va_end(ap);
	sh->reason = sh->reason_buf;
}


/*
 * Join whoever serves the address, or create the objects and serve them.
 * 0 with sh->steer set; or -errno with sh->reason saying why not.
 */
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

static int rendezvous(struct evst_shared *sh, uint64_t self)
{
#if EVSTEER_HAVE_BPF
	char a[64];
	addr_str(&sh->addr, a, sizeof(a));
	int fds[EVST_RDV_NFDS];
	bool loaded = false;
	/* While the server of a group leaves, its name is free for up to a
	 * tick before another member takes it: a newcomer that loaded its own
	 * program then would replace the group's. So when others listen on
	 * the address, wait a few ticks for a server before creating one. */
	uint64_t wait_until = 0;
	for (int attempt = 0; attempt < 400; attempt++) {
		uid_t uid = 0;
		pid_t pid = 0;
		int r = loaded ? -ENOENT : evst_rdv_join(&sh->rdv, fds, &uid, &pid);
		if (r == 0) {
			sh->steer = evst_steer_open(fds);
			if (!sh->steer) {
				close(fds[3]);
				set_reason(sh, "bpf: descriptors from pid %d for %s "
					   "are not a steering group (%s)",
					   (int)pid, a, strerror(errno));
				return -EPROTO;
			}
			r = map_ctl(sh, fds[3], false);
			if (r < 0) {
				set_reason(sh, "bpf: the group of %s (pid %d) has "
					   "another layout: %s", a, (int)pid,
					   strerror(-r));
				return r;
			}
			evst_debug("group %s: joined (served by pid %d)", a,
				   (int)pid);
			return 0;
		}
		if (r == -EACCES) {
			set_reason(sh, "bpf: the rendezvous of %s is held by uid "
				   "%u (pid %d), not by us: not joining it",
				   a, (unsigned)uid, (int)pid);
			return r;
		}
		if (r == -EPROTO) {
			set_reason(sh, "bpf: the group of %s (pid %d) is run by "
				   "another evsteer version: not joining it",
				   a, (int)pid);
			return r;
		}
		if (r == -ETIMEDOUT) {
			set_reason(sh, "bpf: the process serving the group of %s "
				   "(pid %d) did not answer", a, (int)pid);
			return r;
		}
		if (r != -ENOENT) {
			set_reason(sh, "bpf: rendezvous for %s: %s", a,
				   strerror(-r));
			return r;
		}
		/* nobody serves it: be the first (see above) */
		if (!loaded && others_listen(sh, self)) {
			uint64_t now = evst_now_ns();
			if (!wait_until)
				wait_until = now + 3ull * EVST_RDV_TICK_MS * 1000000;
			if (now < wait_until) {
				struct timespec ts = {0, 5000000L};
				nanosleep(&ts, NULL);
				continue;
			}
		}
		if (!loaded) {
			if (probe_err) {
				set_reason(sh, "%s", probe_reason);
				return -probe_err;
			}
			r = evst_steer_load(fds, sh->reason_buf,
					    sizeof(sh->reason_buf));
			if (r < 0) {
				probe_err = -r;
				snprintf(probe_reason, sizeof(probe_reason), "%s",
					 sh->reason_buf);
				evst_info("%s; using the kernel's SO_REUSEPORT hash",
					  probe_reason);
				sh->reason = sh->reason_buf;
				return r;
			}
			fds[3] = memfd_create("evsteer-group", MFD_CLOEXEC);
			if (fds[3] < 0) {
				r = -errno;
				for (int i = 0; i < 3; i++)
					close(fds[i]);
				set_reason(sh, "bpf: memfd_create: %s", strerror(-r));
				return r;
			}
			sh->steer = evst_steer_open(fds);
			if (!sh->steer) {
				r = -errno;
				close(fds[3]);
				set_reason(sh, "bpf: %s", strerror(-r));
				return r;
			}
			r = map_ctl(sh, fds[3], true);
			if (r < 0) {
				set_reason(sh, "bpf: control page: %s", strerror(-r));
				return r;
			}
			loaded = true;
		}
		r = evst_rdv_bind(&sh->rdv);
		if (r == 0)
			return 1; /* created */
		if (r != -EADDRINUSE) {
			set_reason(sh, "bpf: cannot serve the rendezvous of %s: %s",
				   a, strerror(-r));
			return r;
		}
		/* someone was first by a hair: drop ours, join theirs */
		munmap(sh->ctl, sizeof(*sh->ctl));
		close(sh->ctl_fd);
		sh->ctl = NULL;
		sh->ctl_fd = -1;
		evst_steer_close(sh->steer);
		sh->steer = NULL;
		loaded = false;
		struct timespec ts = {0, 1000000L * (attempt < 10 ? 1 : 10)};
		nanosleep(&ts, NULL);
	}
	set_reason(sh, "bpf: no rendezvous for %s after 400 attempts", a);
	return -ETIMEDOUT;
#else
	set_reason(sh, "bpf: not built (meson -Dbpf=disabled or no toolchain)");
	return -EOPNOTSUPP;
#endif
}

static bool same_addr(const struct evst_shared *sh,
		      const struct sockaddr_storage *ss, socklen_t len,
		      uint64_t netns)
{
	return sh->netns == netns && sh->addrlen == len &&
	       !memcmp(&sh->addr, ss, len);
}

/* A child of fork() is a process of its own: it does not inherit its
 * parent's membership (the parent's objects stay, unused, in its copy of
 * memory); its groups rendezvous anew and join the parent's as members. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&reg_lock);
}

static void atfork_child(void)
{
	for (struct evst_shared *sh = registry; sh; sh = sh->next)
		if (sh->alive_fd >= 0) {
			close(sh->alive_fd);
			sh->alive_fd = -1;
		}
	registry = NULL;
	pthread_mutex_unlock(&reg_lock);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
	/* the rendezvous's handlers first: prepare handlers run in reverse
	 * order of registration, so reg_lock is taken before rdv_lock, as
	 * everywhere else */
	evst_rdv_atfork();
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

struct evst_shared *evst_shared_get(int fd, const struct evst_shared_opts *o)
{
	pthread_once(&atfork_once, atfork_register);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return NULL;
	if (ss.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&ss)->sin6_flowinfo = 0;
	uint64_t netns = evst_netns_cookie(fd);

	pthread_mutex_lock(&reg_lock);
	struct evst_shared *sh;
	for (sh = registry; sh; sh = sh->next)
		if (same_addr(sh, &ss, len, netns))
			break;
	if (sh) {
		/* one address, one group: a member that requires BPF cannot
		 * have it when the address's group runs on the hash */
		if (o->mode == EVSTEER_BPF_REQUIRE && !evst_shared_bpf(sh)) {
			evst_warn("BPF steering required, but the group of this "
				  "address runs on the kernel hash: %s",
				  evst_shared_reason(sh));
			pthread_mutex_unlock(&reg_lock);
			errno = EOPNOTSUPP;
			return NULL;
		}
		sh->refcnt++;
		pthread_mutex_unlock(&reg_lock);
		return sh;
	}
	sh = calloc(1, sizeof(*sh));
	if (!sh) {
		pthread_mutex_unlock(&reg_lock);
		errno = ENOMEM;
		return NULL;
	}
	sh->refcnt = 1;
	sh->addr = ss;
	sh->addrlen = len;
	sh->netns = netns;
	sh->ctl_fd = -1;
	sh->alive_fd = -1;
	sh->rdv.lfd = -1;
	sh->member = -1;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		sh->local_fd[i] = -1;
	char a[64];
	addr_str(&ss, a, sizeof(a));
	snprintf(sh->key, sizeof(sh->key), "evsteer/%llx/%s",
		 (unsigned long long)netns, a);
	evst_rdv_name(&sh->rdv, sh->key);
	sh->rdv.layout = LAYOUT;

	int r;
	if (o->mode == EVSTEER_BPF_OFF) {
		sh->reason = "bpf: off (EVSTEER_BPF=off or the bpf option)";
		r = -EPERM;
	} else {
		r = rendezvous(sh, evst_sock_cookie(fd));
	}
	if (r >= 0) {
		evst_steer_view(sh->steer, &sh->v);
		int e = join_as_member(sh);
		if (e == 0) {
			memcpy(sh->rdv.fds, evst_steer_fds(sh->steer),
			       sizeof(int) * 3);
			sh->rdv.fds[3] = sh->ctl_fd;
			sh->rdv.tick = tick;
			sh->rdv.arg = sh;
			e = evst_rdv_add(&sh->rdv);
		}
		if (e < 0) {
			set_reason(sh, "bpf: joining the group of %s: %s", a,
				   strerror(-e));
			if (sh->rdv.lfd >= 0)
				close(sh->rdv.lfd);
			sh->rdv.lfd = -1;
			r = e;
		}
	}
	if (r < 0) {
		if (o->mode == EVSTEER_BPF_REQUIRE) {
			evst_warn("BPF steering required but unavailable: %s",
				  sh->reason);
			pthread_mutex_unlock(&reg_lock);
			if (sh->steer)
				evst_steer_close(sh->steer);
			if (sh->ctl_fd >= 0) {
				munmap(sh->ctl, sizeof(*sh->ctl));
				close(sh->ctl_fd);
			}
			free(sh);
			errno = r == -EPERM ? EPERM : -r;
			return NULL;
		}
		if (r != -EPERM || o->mode != EVSTEER_BPF_OFF)
			evst_info("group %s: %s; the kernel's SO_REUSEPORT hash "
				  "steers",
				  a, sh->reason);
		local_fallback(sh);
		if (!sh->ctl || !sh->local) {
			pthread_mutex_unlock(&reg_lock);
			free(sh->ctl);
			free(sh->local);
			free(sh);
			errno = ENOMEM;
			return NULL;
		}
		join_as_member(sh);
		r = 1; /* ours to configure */
	}
	if (r == 1) {
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
	sh->next = registry;
	registry = sh;
	pthread_mutex_unlock(&reg_lock);
	return sh;
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
	ctl_lock(sh);
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->ctl->slots[i].owner == sh->id && sh->id)
			free_slot(sh, i);
	if (sh->member >= 0) {
		sh->ctl->members[sh->member].id = 0;
		sh->ctl->members[sh->member].pid = 0;
	}
	ctl_unlock(sh);
	if (sh->alive_fd >= 0)
		close(sh->alive_fd);
	if (sh->ctl_fd >= 0) {
		munmap(sh->ctl, sizeof(*sh->ctl));
		close(sh->ctl_fd);
	} else {
		pthread_mutex_destroy(&sh->ctl->lock);
		free(sh->ctl);
	}
	evst_steer_close(sh->steer);
	free(sh->local);
	for (struct reason_node *r = sh->detach_reason, *p; r; r = p) {
		p = r->prev;
		free(r);
	}
	free(sh);
}

/* ---- slots */

/* ctl->lock held: the default CPU map, cpu % used slots, over all. */
static void default_cpu_map(struct evst_shared *sh)
{
	unsigned int used[EVST_MAX_WORKERS], n = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (sh->ctl->slots[i].owner)
			used[n++] = i;
	for (unsigned int c = 0; c < EVST_MAX_CPUS && n; c++)
		__atomic_store_n(&sh->v.cpu_map[c], used[c % n] + 1,
				 __ATOMIC_RELAXED);
}

int evst_shared_claim(struct evst_shared *sh, int fd)
{
	uint64_t cookie = evst_sock_cookie(fd);
	ctl_lock(sh);
	unsigned int i;
	for (i = 0; i < EVST_MAX_WORKERS && sh->ctl->slots[i].owner; i++)
		;
	if (i == EVST_MAX_WORKERS) {
		ctl_unlock(sh);
		return -ENOSPC;
	}
	/* Field by field, atomically: siblings read these without the lock
	 * (a worker entry may be looked at while it is being reused). */
	struct evst_worker *w = &sh->v.workers[i];
	__atomic_store_n(&w->live, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->steered, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->dequeued, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->progress_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->migrated, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->stolen_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->weight, 1, __ATOMIC_RELAXED);
	struct evst_slot_rec *s = &sh->ctl->slots[i];
	__atomic_store_n(&s->c.accepted, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->c.stolen, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->c.stolen_from, 0, __ATOMIC_RELAXED);
	if (sh->steer) {
		int err = evst_steer_set_slot(sh->steer, i, fd);
		/* One attach covers the kernel's whole reuseport group, also
		 * sockets that join later; attaching at each claim re-creates
		 * it when every socket of the group had closed meanwhile. */
		if (!err && !__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE)) {
			err = evst_steer_attach(sh->steer, fd);
			if (err)
				evst_steer_set_slot(sh->steer, i, -1);
		}
		if (err) {
			ctl_unlock(sh);
			return err;
		}
	}
	s->weight = 1;
	__atomic_store_n(&s->pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
	__atomic_store_n(&s->cookie, cookie, __ATOMIC_RELAXED);
	__atomic_store_n(&s->owner, sh->id, __ATOMIC_RELEASE);
	sh->local_fd[i] = fd;
	default_cpu_map(sh);
	ctl_unlock(sh);
	return (int)i;
}

void evst_shared_release(struct evst_shared *sh, unsigned int slot)
{
	ctl_lock(sh);
	if (sh->ctl->slots[slot].owner == sh->id)
		free_slot(sh, slot);
	ctl_unlock(sh);
}

void evst_shared_set_live(struct evst_shared *sh, unsigned int slot, bool live)
{
	ctl_lock(sh);
	struct evst_worker *w = &sh->v.workers[slot];
	if (sh->ctl->slots[slot].owner == sh->id &&
	    (bool)__atomic_load_n(&w->live, __ATOMIC_RELAXED) != live) {
		if (live)
			__atomic_store_n(&w->progress_ns, evst_now_ns(),
					 __ATOMIC_RELAXED);
		__atomic_store_n(&w->live, live ? 1 : 0, __ATOMIC_RELAXED);
		rebuild_table(sh);
	}
	ctl_unlock(sh);
}

void evst_shared_set_weight(struct evst_shared *sh, unsigned int slot,
			    unsigned int weight)
{
	ctl_lock(sh);
	sh->ctl->slots[slot].weight = weight;
	__atomic_store_n(&sh->v.workers[slot].weight, weight, __ATOMIC_RELAXED);
	rebuild_table(sh);
	ctl_unlock(sh);
}

void evst_shared_set_cpu(struct evst_shared *sh, unsigned int cpu,
			 unsigned int slot)
{
	__atomic_store_n(&sh->v.cpu_map[cpu], slot + 1, __ATOMIC_RELAXED);
}

void evst_shared_set_policy(struct evst_shared *sh, unsigned int policy)
{
	__atomic_store_n(sh->v.policy, (__u32)policy, __ATOMIC_RELAXED);
}

unsigned int evst_shared_policy(const struct evst_shared *sh)
{
	return __atomic_load_n(sh->v.policy, __ATOMIC_RELAXED);
}

const __u64 *evst_shared_stall_ptr(const struct evst_shared *sh)
{
	return sh->v.stall_ns;
}

uint64_t evst_shared_stall_ns(const struct evst_shared *sh)
{
	return ld64(sh->v.stall_ns);
}

bool evst_shared_bpf(const struct evst_shared *sh)
{
	return sh && sh->steer &&
	       !__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE);
}

const char *evst_shared_reason(const struct evst_shared *sh)
{
	if (!sh->steer)
		return sh->reason ? sh->reason : "";
	if (__atomic_load_n(&sh->ctl->detached, __ATOMIC_ACQUIRE)) {
		/* the path report is not a hot path: take the lock, so the
		 * reason is the one that goes with the state */
		struct evst_shared *m = (struct evst_shared *)sh;
		ctl_lock(m);
		const char *r = sh->ctl->detached ? detach_reason(m) : "";
		ctl_unlock(m);
		return r;
	}
	return "";
}

struct evst_worker *evst_shared_worker(struct evst_shared *sh, unsigned int slot)
{
	return &sh->v.workers[slot];
}

struct evst_slot_counters *evst_shared_counters(struct evst_shared *sh,
						unsigned int slot)
{
	return &sh->ctl->slots[slot].c;
}

unsigned int evst_shared_nslots(const struct evst_shared *sh)
{
	unsigned int hi = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (__atomic_load_n(&sh->ctl->slots[i].owner, __ATOMIC_RELAXED))
			hi = i + 1;
	return hi;
}

uint32_t evst_shared_slot_pid(const struct evst_shared *sh, unsigned int slot)
{
	return __atomic_load_n(&sh->ctl->slots[slot].owner, __ATOMIC_ACQUIRE) ?
		       __atomic_load_n(&sh->ctl->slots[slot].pid, __ATOMIC_RELAXED) :
		       0;
}

/* SPDX-License-Identifier: MIT */
/*
 * evsteer-stat: what every evsteer group of this network namespace is
 * doing, read from the groups' own shared memory (man evsteer-stat(1),
 * docs/operating.md).
 *
 * Finding groups: each group serves an abstract unix socket named
 * "evsteer/<netns>/<address>" (src/steering/rendezvous.h); the listening
 * ones are in /proc/net/unix. We connect to each and ask (proto 2, LOOK)
 * for the program's state (the .bss map) and a read-only descriptor of the
 * control page, and map both read-only. The server lets the same uid or
 * root look; we do not even ask a server of another user unless we are
 * root.
 *
 * Reading never takes a lock: counters are relaxed loads; a slot record is
 * read between two loads of its owner and socket cookie, and read again
 * when either changed (the slot was freed and claimed again meanwhile).
 *
 * SET (policy, weight) goes to the serving member, which checks the
 * caller the same way, applies it and logs it through its log callback.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "steering/steering.h"
#include "steer.skel.h"

#define MAX_GROUPS 256
/* Same rule as the program's stale(): bpf/steer.bpf.c PROBE_STALLS. */
#define PROBE_STALLS 50

struct sample {
	bool used;
	uint32_t owner, pid, tid, weight, engine, flags, live;
	uint64_t cookie, steered, dequeued, accepted, stolen, stolen_from,
		migrated, stalls, progress_ns, stolen_ns;
	/* queue wait (struct evst_wait_hist) */
	uint64_t wait[EVSTEER_WAIT_BUCKETS], wait_sum_ns, wait_untimed;
};

struct group {
	char name[108];  /* the rendezvous name, without the leading NUL */
	char addr[64];   /* address:port, as in the name */
	unsigned long inode; /* of the serving socket: a new server, look anew */
	uid_t uid;
	pid_t server;
	int status;      /* 0: mapped; else why not (errno) */
	const struct evst_ctl *ctl;
	const struct steer_bpf__bss *bss;
	size_t bss_len;
	bool seen;
	uint64_t looked_ns; /* last look: one a second at most when it failed */
	/* the previous sample, for rates */
	struct sample prev[EVST_MAX_WORKERS];
	uint64_t prev_ns;
	bool have_prev;
};

static struct group *groups[MAX_GROUPS];
static int ngroups;
/* scan() looks at what it finds; set only needs the names */
static bool scan_looks = true;
/* PORT or ADDRESS:PORT given: only those groups (matches()) */
static const char *only;
static bool matches(const struct group *g, const char *target);

enum fmt { FMT_TABLE, FMT_JSON, FMT_PROM };

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- asking a group ---------------------------------------------------- */

static int connect_name(const char *name, struct ucred *uc)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(name);
	if (n > sizeof(sa.sun_path) - 1)
		return -ENAMETOOLONG;
	memcpy(sa.sun_path + 1, name, n);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	socklen_t l = sizeof(*uc);
	if (connect(s, (struct sockaddr *)&sa, len) < 0 ||
	    getsockopt(s, SOL_SOCKET, SO_PEERCRED, uc, &l) < 0) {
		int err = -errno;
		close(s);
		return err;
	}
	struct timeval tv = {.tv_sec = 2};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return s;
}

/* One request, one answer; fds[] gets up to EVST_RDV_LOOK_NFDS. The
 * answer's status (>= 0) or -errno. */
static int request(int s, uint32_t op, uint32_t slot, uint32_t value,
		   int fds[EVST_RDV_LOOK_NFDS], int *nfds, uint32_t *layout)
{
	struct evst_rdv_req q = {
		.h = {EVST_RDV_MAGIC, EVST_RDV_PROTO_CTL, LAYOUT, 0,
		      (uint32_t)getpid()},
		.op = op, .slot = slot, .value = value};
	if (send(s, &q, sizeof(q), MSG_NOSIGNAL) != sizeof(q))
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	union {
		char buf[CMSG_SPACE(sizeof(int) * EVST_RDV_NFDS)];
		struct cmsghdr align;
	} u;
	struct evst_rdv_req a;
	struct iovec iov = {.iov_base = &a, .iov_len = sizeof(a)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
	ssize_t n = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	*nfds = 0;
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
		int got = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int *p = (int *)CMSG_DATA(c);
		for (int i = 0; i < got; i++) {
			if (*nfds < EVST_RDV_LOOK_NFDS)
				fds[(*nfds)++] = p[i];
			else
				close(p[i]);
		}
	}
	/* an older server answers proto 2 with a join message: EPROTO */
	if (n < (ssize_t)sizeof(a.h) || a.h.magic != EVST_RDV_MAGIC)
		return -EPROTO;
	*layout = a.h.layout;
	return a.h.status;
}

static void unmap(struct group *g)
{
	if (g->ctl)
		munmap((void *)g->ctl, sizeof(*g->ctl));
	if (g->bss)
		munmap((void *)g->bss, g->bss_len);
	g->ctl = NULL;
	g->bss = NULL;
	g->have_prev = false;
}

/* Look at g: map its state read-only, or set g->status. */
static void look(struct group *g)
{
	unmap(g);
	g->looked_ns = now_ns();
	struct ucred uc;
	int s = connect_name(g->name, &uc);
	if (s < 0) {
		g->status = -s;
		return;
	}
	g->uid = uc.uid;
	g->server = uc.pid;
	if (geteuid() != 0 && uc.uid != geteuid()) {
		/* the server would refuse; do not even ask */
		g->status = EACCES;
		close(s);
		return;
	}
	int fds[EVST_RDV_LOOK_NFDS], nfds = 0;
	uint32_t layout = 0;
	int r = request(s, EVST_RDV_OP_LOOK, 0, 0, fds, &nfds, &layout);
	close(s);
	if (r == 0 && (nfds != EVST_RDV_LOOK_NFDS || layout != LAYOUT))
		r = EPROTO;
	if (r < 0)
		r = -r;
	g->status = r;
	if (!r) {
		long page = sysconf(_SC_PAGESIZE);
		g->bss_len = (sizeof(struct steer_bpf__bss) + (size_t)page - 1) &
			     ~((size_t)page - 1);
		struct stat st;
		void *b = mmap(NULL, g->bss_len, PROT_READ, MAP_SHARED, fds[0], 0);
		void *c = fstat(fds[1], &st) == 0 &&
				  (size_t)st.st_size >= sizeof(struct evst_ctl) ?
			  mmap(NULL, sizeof(struct evst_ctl), PROT_READ, MAP_SHARED,
			       fds[1], 0) : MAP_FAILED;
		if (b == MAP_FAILED || c == MAP_FAILED) {
			g->status = errno ? errno : EPROTO;
			if (b != MAP_FAILED)
				munmap(b, g->bss_len);
			if (c != MAP_FAILED)
				munmap(c, sizeof(struct evst_ctl));
		} else {
			g->bss = b;
			g->ctl = c;
			if (g->ctl->magic != CTL_MAGIC || g->ctl->layout != LAYOUT) {
				unmap(g);
				g->status = EPROTO;
			}
		}
	}
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
}

/* ---- finding groups ---------------------------------------------------- */

/* "evsteer/<hex>/<address>", not a member's liveness name ".../m<id>". */
static bool group_name(const char *n, char *addr, size_t len)
{
	if (strncmp(n, "evsteer/", 8))
		return false;
	const char *p = strchr(n + 8, '/');
	if (!p || p == n + 8 || strchr(p + 1, '/'))
		return false;
	size_t k = strlen(p + 1);
	if (!k || k >= len)
		return false;
	memcpy(addr, p + 1, k + 1);
	return true;
}

static struct group *find(const char *name)
{
	for (int i = 0; i < ngroups; i++)
		if (!strcmp(groups[i]->name, name))
			return groups[i];
	return NULL;
}

static int by_addr(const void *a, const void *b)
{
	const struct group *x = *(struct group *const *)a,
			   *y = *(struct group *const *)b;
	return strcmp(x->addr, y->addr);
}

/* Read /proc/net/unix: the listening rendezvous names of this netns.
 * Groups found again keep their mapping (unless served anew), new ones
 * are looked at, gone ones dropped. 0 or -errno. */
static int scan(void)
{
	FILE *f = fopen("/proc/net/unix", "re");
	if (!f)
		return -errno;
	for (int i = 0; i < ngroups; i++)
		groups[i]->seen = false;
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		unsigned long flags, type, st, inode;
		char path[256] = "";
		unsigned refs, proto;
		if (sscanf(line, "%*s %x %x %lx %lx %lx %lu %255s", &refs, &proto,
			   &flags, &type, &st, &inode, path) < 7)
			continue;
		/* listening (__SO_ACCEPTCON), abstract */
		if (!(flags & 0x10000) || path[0] != '@')
			continue;
		char addr[64];
		if (!group_name(path + 1, addr, sizeof(addr)))
			continue;
		if (strlen(path + 1) >= sizeof(groups[0]->name))
			continue;
		struct group *g = find(path + 1);
		if (!g) {
			if (ngroups == MAX_GROUPS)
				continue;
			g = calloc(1, sizeof(*g));
			if (!g)
				break;
			memcpy(g->name, path + 1, strlen(path + 1) + 1);
			memcpy(g->addr, addr, strlen(addr) + 1);
			if (only && !matches(g, only)) {
				free(g);
				continue;
			}
			groups[ngroups++] = g;
			g->inode = inode;
			if (scan_looks)
				look(g);
		} else if (scan_looks &&
			   (g->inode != inode ||
			    (g->status && g->status != EACCES &&
			     now_ns() - g->looked_ns > 1000000000ull))) {
			/* served by another process now, or not readable
			 * before: its objects may be others */
			g->inode = inode;
			look(g);
		}
		g->seen = true;
	}
	fclose(f);
	for (int i = 0; i < ngroups;) {
		if (groups[i]->seen) {
			i++;
			continue;
		}
		unmap(groups[i]);
		free(groups[i]);
		groups[i] = groups[--ngroups];
	}
	qsort(groups, (size_t)ngroups, sizeof(groups[0]), by_addr);
	return 0;
}

/* ---- reading a group --------------------------------------------------- */

/* Loads of whatever integer type the field has. Acquire, so that the
 * re-read of the owner in read_slot() cannot move before them (a fence
 * would say it once, but TSan refuses fences; on x86 both are plain
 * loads). */
#define ld64(p) ((uint64_t)__atomic_load_n((p), __ATOMIC_ACQUIRE))
#define ld32(p) ((uint32_t)__atomic_load_n((p), __ATOMIC_ACQUIRE))

/* Slot i, consistent: false when free. */
static bool read_slot(const struct group *g, unsigned int i, struct sample *s)
{
	const struct evst_slot_rec *r = &g->ctl->slots[i];
	const struct evst_worker *w = &g->bss->workers[i];
	for (int tries = 0; tries < 8; tries++) {
		uint32_t o = __atomic_load_n(&r->owner, __ATOMIC_ACQUIRE);
		if (!o)
			return false;
		uint64_t c = ld64(&r->cookie);
		*s = (struct sample){
			.used = true, .owner = o, .cookie = c,
			.pid = ld32(&r->pid), .tid = ld32(&r->tid),
			.weight = ld32(&w->weight), .engine = ld32(&r->info.engine),
			.flags = ld32(&r->info.flags), .live = ld32(&w->live),
			.steered = ld64(&w->steered), .dequeued = ld64(&w->dequeued),
			.accepted = ld64(&r->c.accepted),
			.stolen = ld64(&r->c.stolen),
			.stolen_from = ld64(&r->c.stolen_from),
			.migrated = ld64(&w->migrated),
			.stalls = ld64(&r->info.stalls),
			.progress_ns = ld64(&w->progress_ns),
			.stolen_ns = ld64(&w->stolen_ns)};
		const struct evst_wait_hist *h = &g->ctl->waits[i];
		for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
			s->wait[k] = ld64(&h->bucket[k]);
		s->wait_sum_ns = ld64(&h->sum_ns);
		s->wait_untimed = ld64(&h->untimed);
		if (__atomic_load_n(&r->owner, __ATOMIC_RELAXED) == o &&
		    ld64(&r->cookie) == c)
			return true;
	}
	return false; /* changing too fast to tell: shown next time */
}

struct view {
	unsigned int slot;
	struct sample s;
	uint64_t pending, beat_ns;
	bool have_beat;
	const char *state;   /* ok, STALLED, held, off, retired */
	bool stalled;
	double rate;         /* accepted/s, < 0: unknown */
};

struct gview {
	struct group *g;
	unsigned int policy;
	uint64_t stall_ns;
	bool detached;
	char reason[256];
	int nmembers;
	uint32_t mpid[EVST_MAX_MEMBERS], mid[EVST_MAX_MEMBERS];
	int n;
	struct view w[EVST_MAX_WORKERS];
};

static void read_group(struct group *g, struct gview *v, uint64_t now)
{
	memset(v, 0, sizeof(*v));
	v->g = g;
	v->policy = ld32(&g->bss->policy);
	v->stall_ns = ld64(&g->bss->stall_ns);
	v->detached = __atomic_load_n(&g->ctl->detached, __ATOMIC_ACQUIRE);
	if (v->detached) {
		/* written under the lock we do not take: keep what is
		 * printable, it is a sentence for a person */
		memcpy(v->reason, (const char *)g->ctl->reason, sizeof(v->reason));
		v->reason[sizeof(v->reason) - 1] = '\0';
		for (char *p = v->reason; *p; p++)
			if ((unsigned char)*p < 32 || *p == '"' || *p == '\\')
				*p = ' ';
	}
	for (int m = 0; m < EVST_MAX_MEMBERS; m++) {
		uint32_t id = ld32(&g->ctl->members[m].id);
		if (id) {
			v->mid[v->nmembers] = id;
			v->mpid[v->nmembers++] = ld32(&g->ctl->members[m].pid);
		}
	}
	double dt = g->have_prev ? (double)(now - g->prev_ns) / 1e9 : 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		struct view *x = &v->w[v->n];
		if (!read_slot(g, i, &x->s)) {
			g->prev[i].used = false;
			continue;
		}
		x->slot = i;
		int64_t p = (int64_t)(x->s.steered - x->s.dequeued);
		x->pending = p > 0 ? (uint64_t)p : 0;
		int64_t age = (int64_t)(now - x->s.progress_ns);
		x->have_beat = x->s.progress_ns != 0;
		x->beat_ns = age > 0 ? (uint64_t)age : 0;
		uint64_t st = v->stall_ns;
		if (!x->s.live)
			x->state = x->s.flags & EVST_SLOT_RETIRED ? "retired" : "off";
		else if (st && x->pending && age > (int64_t)st)
			x->state = "STALLED", x->stalled = true;
		else if (st && x->s.stolen_ns > x->s.progress_ns &&
			 now - x->s.stolen_ns <= st * PROBE_STALLS)
			x->state = "held";
		else
			x->state = "ok";
		const struct sample *o = &g->prev[i];
		x->rate = dt > 0 && o->used && o->cookie == x->s.cookie &&
				  x->s.accepted >= o->accepted ?
			  (double)(x->s.accepted - o->accepted) / dt : -1;
		v->n++;
	}
}

/* Remember this read for the next rates. */
static void keep(struct gview *v, uint64_t now)
{
	struct group *g = v->g;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		g->prev[i].used = false;
	for (int k = 0; k < v->n; k++)
		g->prev[v->w[k].slot] = v->w[k].s;
	g->prev_ns = now;
	g->have_prev = true;
}

static const char *policy_str(unsigned int p)
{
	const char *s = evsteer_policy_str((enum evsteer_policy)p);
	return s ? s : "?";
}

static const char *engine_str(uint32_t e)
{
	const char *s = e ? evsteer_engine_str((enum evsteer_engine)(e - 1)) : NULL;
	return s ? s : "?";
}

static const char *why(int status)
{
	switch (status) {
	case EACCES:
		return "served by another user: only that user or root may look";
	case EPROTO:
		return "served by another evsteer version, which cannot be looked "
		       "at by this one";
	case ETIMEDOUT:
		return "the serving process did not answer";
	case ECONNREFUSED:
	case ENOENT:
		return "changing hands (no server right now)";
	case EOPNOTSUPP:
		return "the serving process does not hand out its state (no /proc?)";
	default:
		return strerror(status);
	}
}

/* ---- output ------------------------------------------------------------ */

static bool color;

static void fmt_age(char *b, size_t n, const struct view *x)
{
	if (!x->have_beat)
		snprintf(b, n, "-");
	else if (x->beat_ns < 10000000)
		snprintf(b, n, "%.1fms", (double)x->beat_ns / 1e6);
	else if (x->beat_ns < 10000000000ull)
		snprintf(b, n, "%.0fms", (double)x->beat_ns / 1e6);
	else
		snprintf(b, n, "%.0fs", (double)x->beat_ns / 1e9);
}

static uint64_t waits(const struct sample *s)
{
	uint64_t n = 0;
	for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
		n += s->wait[k];
	return n;
}

/* The queue wait at quantile q: the upper bound of the bucket it falls in
 * (log2 buckets: within 2x); 0 without samples. *open: in the last bucket,
 * which has no upper bound (the value is then its lower bound). */
static uint64_t wait_at(const struct sample *s, double q, bool *open)
{
	uint64_t n = waits(s), c = 0;
	*open = false;
	if (!n)
		return 0;
	for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++) {
		c += s->wait[k];
		if ((double)c >= q * (double)n) {
			if (k == EVSTEER_WAIT_BUCKETS - 1) {
				*open = true;
				return EVSTEER_WAIT_BUCKET_NS(k - 1);
			}
			return EVSTEER_WAIT_BUCKET_NS(k);
		}
	}
	return 0;
}

static void fmt_wait(char *b, size_t n, const struct sample *s, double q)
{
	bool open;
	uint64_t ns = wait_at(s, q, &open);
	const char *pre = open ? ">" : "<";
	if (!ns)
		snprintf(b, n, "-");
	else if (ns < 1000000)
		snprintf(b, n, "%s%.0fus", pre, (double)ns / 1e3);
	else if (ns < 1000000000)
		snprintf(b, n, "%s%.0fms", pre, (double)ns / 1e6);
	else
		snprintf(b, n, "%s%.1fs", pre, (double)ns / 1e9);
}

static void print_table(FILE *o, struct gview *vs, int nv, const char *hdr)
{
	const char *b = color ? "\033[1m" : "", *r = color ? "\033[0m" : "",
		   *red = color ? "\033[1;7;31m" : "", *dim = color ? "\033[2m" : "";
	fprintf(o, "%s%s%s\n", b, hdr, r);
	int hidden = 0;
	uid_t huid = 0;
	for (int i = 0; i < ngroups; i++)
		if (groups[i]->status == EACCES) {
			hidden++;
			huid = groups[i]->uid;
		}
	for (int k = 0; k < nv; k++) {
		struct gview *v = &vs[k];
		char stall[32] = "off";
		if (v->stall_ns)
			snprintf(stall, sizeof(stall), "%.1fms",
				 (double)v->stall_ns / 1e6);
		int retired = 0;
		for (int i = 0; i < v->n; i++)
			retired += !!(v->w[i].s.flags & EVST_SLOT_RETIRED);
		fprintf(o, "\n%s%s%s  policy %s  path %s  stall %s  members %d "
			"(served by pid %d)%s\n", b, v->g->addr, r,
			policy_str(v->policy),
			v->detached ? "kernel-hash (stood down)" : "bpf", stall,
			v->nmembers, (int)v->g->server,
			retired ? "  RESTART: retired workers draining" : "");
		if (v->detached)
			fprintf(o, "  %s%s%s\n", dim, v->reason, r);
		fprintf(o, "%s%8s %8s %4s %-12s %-7s %2s %10s %8s %5s %6s %8s %8s "
			"%8s %7s %7s%s\n", b, "PID", "TID", "SLOT", "ENGINE", "STATE", "W",
			"ACCEPTED", "ACC/S", "PEND", "STALLS", "STOLEN", "ST.FROM",
			"MIGRATED", "BEAT", "WAIT99", r);
		for (int i = 0; i < v->n; i++) {
			struct view *x = &v->w[i];
			char rate[16], tid[16], beat[16], w99[16];
			fmt_wait(w99, sizeof(w99), &x->s, 0.99);
			if (x->rate < 0)
				snprintf(rate, sizeof(rate), "-");
			else
				snprintf(rate, sizeof(rate), "%.0f", x->rate);
			if (x->s.tid)
				snprintf(tid, sizeof(tid), "%u", x->s.tid);
			else
				snprintf(tid, sizeof(tid), "-");
			fmt_age(beat, sizeof(beat), x);
			fprintf(o, "%8u %8s %4u %-12s %s%-7s%s %2u %10" PRIu64
				" %8s %5" PRIu64 " %6" PRIu64 " %8" PRIu64 " %8" PRIu64
				" %8" PRIu64 " %7s %7s\n", x->s.pid, tid, x->slot,
				engine_str(x->s.engine), x->stalled ? red : "", x->state,
				x->stalled ? r : "", x->s.weight, x->s.accepted, rate,
				x->pending, x->s.stalls, x->s.stolen, x->s.stolen_from,
				x->s.migrated, beat, w99);
		}
		if (!v->n)
			fprintf(o, "%s  (no worker slots in use)%s\n", dim, r);
	}
	for (int i = 0; i < ngroups; i++)
		if (groups[i]->status && groups[i]->status != EACCES)
			fprintf(o, "\n%s%s%s  not readable: %s (pid %d)\n", b,
				groups[i]->addr, r, why(groups[i]->status),
				(int)groups[i]->server);
	if (hidden)
		fprintf(o, "\n%d group%s not shown: served by another user (uid %u%s); "
			"only the group's user or root may look\n", hidden,
			hidden > 1 ? "s" : "", (unsigned)huid,
			hidden > 1 ? ", ..." : "");
	if (!nv && !hidden && !ngroups && only)
		fprintf(o, "\nno evsteer group on %s in this network namespace\n",
			only);
	else if (!nv && !hidden && !ngroups)
		fprintf(o, "\nno evsteer group in this network namespace (only "
			"BPF-steered groups are visible: a group on the kernel's "
			"hash lives in one process)\n");
}

static void json_str(FILE *o, const char *s)
{
	fputc('"', o);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(o, "\\%c", *s);
		else if ((unsigned char)*s < 32)
			fprintf(o, "\\u%04x", (unsigned char)*s);
		else
			fputc(*s, o);
	}
	fputc('"', o);
}

/* --watch --json: one document a line (NDJSON), for readers line by line */
static bool json_lines;

static void print_json(FILE *o, struct gview *vs, int nv, double interval)
{
	const char *nl = json_lines ? "" : "\n", *i2 = json_lines ? "" : "  ",
		   *i4 = json_lines ? "" : "    ";
	fprintf(o, "{\"evsteer_stat\": 1, \"version\": ");
	json_str(o, evsteer_version());
	/* the queue-wait buckets' upper bounds (the last has none: null) */
	fprintf(o, ", \"interval_s\": %.3f, \"queue_wait_le_ns\": [", interval);
	for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
		if (k == EVSTEER_WAIT_BUCKETS - 1)
			fprintf(o, ", null");
		else
			fprintf(o, "%s%llu", k ? ", " : "", EVSTEER_WAIT_BUCKET_NS(k));
	fprintf(o, "], \"groups\": [");
	for (int k = 0; k < nv; k++) {
		struct gview *v = &vs[k];
		fprintf(o, "%s%s%s{\"address\": ", k ? "," : "", nl, i2);
		json_str(o, v->g->addr);
		fprintf(o, ", \"name\": ");
		json_str(o, v->g->name);
		fprintf(o, ", \"uid\": %u, \"serving_pid\": %d, \"policy\": \"%s\", "
			"\"path\": \"%s\", \"stood_down\": %s, \"reason\": ",
			(unsigned)v->g->uid, (int)v->g->server, policy_str(v->policy),
			v->detached ? "kernel-hash" : "bpf",
			v->detached ? "true" : "false");
		json_str(o, v->reason);
		fprintf(o, ", \"stall_us\": %" PRIu64 ", \"members\": [",
			v->stall_ns / 1000);
		for (int m = 0; m < v->nmembers; m++) {
			fprintf(o, "%s{\"pid\": %u, \"id\": %u, \"slots\": [", m ? ", " : "",
				v->mpid[m], v->mid[m]);
			int c = 0;
			for (int i = 0; i < v->n; i++)
				if (v->w[i].s.owner == v->mid[m])
					fprintf(o, "%s%u", c++ ? ", " : "", v->w[i].slot);
			fprintf(o, "]}");
		}
		fprintf(o, "], \"workers\": [");
		for (int i = 0; i < v->n; i++) {
			struct view *x = &v->w[i];
			fprintf(o, "%s%s%s{\"slot\": %u, \"pid\": %u, \"tid\": %u, "
				"\"engine\": \"%s\", \"path\": \"%s%s\", \"live\": %s, "
				"\"retired\": %s, \"weight\": %u, \"state\": \"%s\", "
				"\"stalled\": %s, \"accepted\": %" PRIu64 ", "
				"\"accepted_per_s\": ", i ? "," : "", nl, i4, x->slot, x->s.pid,
				x->s.tid, engine_str(x->s.engine),
				v->detached ? "" : "bpf+", engine_str(x->s.engine),
				x->s.live ? "true" : "false",
				x->s.flags & EVST_SLOT_RETIRED ? "true" : "false",
				x->s.weight, x->state, x->stalled ? "true" : "false",
				x->s.accepted);
			if (x->rate < 0)
				fprintf(o, "null");
			else
				fprintf(o, "%.1f", x->rate);
			fprintf(o, ", \"steered\": %" PRIu64 ", \"pending\": %" PRIu64
				", \"stalls\": %" PRIu64 ", \"stolen\": %" PRIu64
				", \"stolen_from\": %" PRIu64 ", \"migrated\": %" PRIu64
				", \"heartbeat_age_ms\": ", x->s.steered, x->pending,
				x->s.stalls, x->s.stolen, x->s.stolen_from, x->s.migrated);
			if (x->have_beat)
				fprintf(o, "%.3f", (double)x->beat_ns / 1e6);
			else
				fprintf(o, "null");
			/* counts[k]: waits below queue_wait_le_ns[k] (top level) */
			fprintf(o, ", \"queue_wait\": {\"count\": %" PRIu64
				", \"sum_ns\": %" PRIu64 ", \"untimed\": %" PRIu64
				", \"counts\": [", waits(&x->s), x->s.wait_sum_ns,
				x->s.wait_untimed);
			for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++)
				fprintf(o, "%s%" PRIu64, k ? ", " : "", x->s.wait[k]);
			fprintf(o, "]}}");
		}
		fprintf(o, "]}");
	}
	fprintf(o, "%s], \"not_readable\": [", nv ? nl : "");
	int c = 0;
	for (int i = 0; i < ngroups; i++)
		if (groups[i]->status && groups[i]->status != EACCES) {
			fprintf(o, "%s{\"address\": ", c++ ? ", " : "");
			json_str(o, groups[i]->addr);
			fprintf(o, ", \"pid\": %d, \"reason\": ", (int)groups[i]->server);
			json_str(o, why(groups[i]->status));
			fprintf(o, "}");
		}
	/* another user's groups: how many and whose, nothing of them */
	fprintf(o, "], \"not_shown\": [");
	c = 0;
	for (int i = 0; i < ngroups; i++)
		if (groups[i]->status == EACCES) {
			fprintf(o, "%s{\"uid\": %u, \"reason\": ", c++ ? ", " : "",
				(unsigned)groups[i]->uid);
			json_str(o, why(EACCES));
			fprintf(o, "}");
		}
	fprintf(o, "]}\n");
}

/* {address=...[,pid=...,slot=...][,le=...]} */
static void prom_labels_le(FILE *o, const char *addr, const struct view *x,
			   const char *le)
{
	fprintf(o, "{address=\"");
	for (const char *p = addr; *p; p++) {
		if (*p == '"' || *p == '\\')
			fputc('\\', o);
		fputc(*p, o);
	}
	fputc('"', o);
	if (x)
		fprintf(o, ",pid=\"%u\",slot=\"%u\"", x->s.pid, x->slot);
	if (le)
		fprintf(o, ",le=\"%s\"", le);
	fputc('}', o);
}

static void prom_labels(FILE *o, const char *addr, const struct view *x)
{
	prom_labels_le(o, addr, x, NULL);
}

/* The queue-wait histogram of one worker, in the exposition format's
 * histogram type: cumulative buckets, +Inf, _sum, _count. */
static void prom_wait(FILE *o, const char *addr, const struct view *x)
{
	static const char *name = "evsteer_queue_wait_seconds";
	uint64_t c = 0;
	for (int k = 0; k < EVSTEER_WAIT_BUCKETS; k++) {
		c += x->s.wait[k];
		char le[32];
		if (k == EVSTEER_WAIT_BUCKETS - 1)
			snprintf(le, sizeof(le), "+Inf");
		else
			snprintf(le, sizeof(le), "%.9g",
				 (double)EVSTEER_WAIT_BUCKET_NS(k) / 1e9);
		fprintf(o, "%s_bucket", name);
		prom_labels_le(o, addr, x, le);
		fprintf(o, " %" PRIu64 "\n", c);
	}
	fprintf(o, "%s_sum", name);
	prom_labels(o, addr, x);
	fprintf(o, " %.9f\n%s_count", (double)x->s.wait_sum_ns / 1e9, name);
	prom_labels(o, addr, x);
	fprintf(o, " %" PRIu64 "\n", c);
}

struct metric {
	const char *name, *type, *help;
};

static void print_prom(FILE *o, struct gview *vs, int nv)
{
	static const struct metric gm[] = {
		{"evsteer_group_info", "gauge",
		 "An evsteer group: its policy and path as labels (value 1)."},
		{"evsteer_group_members", "gauge", "Member processes of the group."},
		{"evsteer_group_stall_threshold_seconds", "gauge",
		 "Progress age past which a worker with pending connections is "
		 "stalled (0: off)."},
	};
	static const struct metric wm[] = {
		{"evsteer_worker_info", "gauge",
		 "A worker slot: its thread and engine as labels (value 1)."},
		{"evsteer_connections_steered_total", "counter",
		 "Connections the program steered to the worker."},
		{"evsteer_connections_accepted_total", "counter",
		 "Connections the worker accepted from its own queue."},
		{"evsteer_connections_pending", "gauge",
		 "Connections steered to the worker and not yet accepted."},
		{"evsteer_connections_stolen_total", "counter",
		 "Connections the worker took from stuck siblings (not in "
		 "accepted_total)."},
		{"evsteer_connections_stolen_from_total", "counter",
		 "Connections siblings took from the worker while it was stuck."},
		{"evsteer_connections_migrated_total", "counter",
		 "Connections moved to the worker from a closing sibling."},
		{"evsteer_worker_stalled", "gauge",
		 "1 while the worker is stalled (pending, no progress)."},
		{"evsteer_worker_stalls_total", "counter",
		 "Times a sibling found the worker stuck."},
		{"evsteer_worker_live", "gauge",
		 "1 while the worker is in the steering table."},
		{"evsteer_worker_retired", "gauge",
		 "1 once its group is retired (a restart in progress)."},
		{"evsteer_worker_weight", "gauge", "The worker's steering weight."},
		{"evsteer_worker_heartbeat_age_seconds", "gauge",
		 "Time since the worker's loop last made progress."},
	};
	for (size_t m = 0; m < sizeof(gm) / sizeof(gm[0]); m++) {
		fprintf(o, "# HELP %s %s\n# TYPE %s %s\n", gm[m].name, gm[m].help,
			gm[m].name, gm[m].type);
		for (int k = 0; k < nv; k++) {
			struct gview *v = &vs[k];
			fprintf(o, "%s", gm[m].name);
			if (m == 0) {
				fprintf(o, "{address=\"%s\",policy=\"%s\",path=\"%s\","
					"serving_pid=\"%d\"} 1\n", v->g->addr,
					policy_str(v->policy),
					v->detached ? "kernel-hash" : "bpf",
					(int)v->g->server);
				continue;
			}
			prom_labels(o, v->g->addr, NULL);
			if (m == 1)
				fprintf(o, " %d\n", v->nmembers);
			else
				fprintf(o, " %.6f\n", (double)v->stall_ns / 1e9);
		}
	}
	for (size_t m = 0; m < sizeof(wm) / sizeof(wm[0]); m++) {
		fprintf(o, "# HELP %s %s\n# TYPE %s %s\n", wm[m].name, wm[m].help,
			wm[m].name, wm[m].type);
		for (int k = 0; k < nv; k++) {
			struct gview *v = &vs[k];
			for (int i = 0; i < v->n; i++) {
				struct view *x = &v->w[i];
				fprintf(o, "%s", wm[m].name);
				if (m == 0) {
					fprintf(o, "{address=\"%s\",pid=\"%u\",slot=\"%u\","
						"tid=\"%u\",engine=\"%s\"} 1\n",
						v->g->addr, x->s.pid, x->slot, x->s.tid,
						engine_str(x->s.engine));
					continue;
				}
				prom_labels(o, v->g->addr, x);
				uint64_t val = 0;
				switch (m) {
				case 1: val = x->s.steered; break;
				case 2: val = x->s.accepted; break;
				case 3: val = x->pending; break;
				case 4: val = x->s.stolen; break;
				case 5: val = x->s.stolen_from; break;
				case 6: val = x->s.migrated; break;
				case 7: val = x->stalled; break;
				case 8: val = x->s.stalls; break;
				case 9: val = x->s.live != 0; break;
				case 10: val = (x->s.flags & EVST_SLOT_RETIRED) != 0; break;
				case 11: val = x->s.weight; break;
				default:
					fprintf(o, " %.6f\n", x->have_beat ?
						(double)x->beat_ns / 1e9 : NAN);
					continue;
				}
				fprintf(o, " %" PRIu64 "\n", val);
			}
		}
	}
	fprintf(o, "# HELP evsteer_queue_wait_seconds Time from the program's "
		"steering decision (SYN or migration) to the accept that took the "
		"connection off the worker's socket.\n"
		"# TYPE evsteer_queue_wait_seconds histogram\n");
	for (int k = 0; k < nv; k++)
		for (int i = 0; i < vs[k].n; i++)
			prom_wait(o, vs[k].g->addr, &vs[k].w[i]);
	fprintf(o, "# HELP evsteer_queue_wait_untimed_total Connections taken "
		"with no steering time known (more than %d steered after them).\n"
		"# TYPE evsteer_queue_wait_untimed_total counter\n",
		EVST_WAIT_STAMPS);
	for (int k = 0; k < nv; k++)
		for (int i = 0; i < vs[k].n; i++) {
			fprintf(o, "evsteer_queue_wait_untimed_total");
			prom_labels(o, vs[k].g->addr, &vs[k].w[i]);
			fprintf(o, " %" PRIu64 "\n", vs[k].w[i].s.wait_untimed);
		}
}

/* ---- driving ----------------------------------------------------------- */

/* On the heap, one per group found: with 1,024 workers a view is ~390 KiB,
 * and a static array of MAX_GROUPS of them was 100 MB of .bss (which
 * strict overcommit would refuse to map at exec). */
static struct gview *views;
static int nviews;

/* Read every readable group; with rates when a previous read exists. */
static int read_all(void)
{
	uint64_t now = now_ns();
	int nv = 0;
	if (ngroups > nviews) {
		struct gview *v = realloc(views, sizeof(*v) * (size_t)ngroups);
		if (!v) {
			fprintf(stderr, "evsteer-stat: %s\n", strerror(ENOMEM));
			return 0;
		}
		views = v;
		nviews = ngroups;
	}
	for (int i = 0; i < ngroups; i++)
		if (!groups[i]->status) {
			read_group(groups[i], &views[nv], now);
			nv++;
		}
	for (int k = 0; k < nv; k++)
		keep(&views[k], now);
	return nv;
}

static void header(char *b, size_t n, double interval, bool watch)
{
	time_t t = time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	char ts[16];
	strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
	int shown = 0;
	for (int i = 0; i < ngroups; i++)
		shown += !groups[i]->status;
	if (watch)
		snprintf(b, n, "evsteer-stat %s  %s  %d group%s  every %.1fs  "
			 "(q: quit)", evsteer_version(), ts, shown,
			 shown == 1 ? "" : "s", interval);
	else
		snprintf(b, n, "evsteer-stat %s  %s  %d group%s", evsteer_version(),
			 ts, shown, shown == 1 ? "" : "s");
}

static volatile sig_atomic_t quit;
static struct termios saved_tio;
static bool tio_saved, alt_screen;

static void on_signal(int sig)
{
	(void)sig;
	quit = 1;
}

static void restore_tty(void)
{
	if (alt_screen)
		fputs("\033[?25h\033[?1049l", stdout);
	fflush(stdout);
	if (tio_saved)
		tcsetattr(0, TCSANOW, &saved_tio);
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = {(time_t)(ns / 1000000000ull),
			      (long)(ns % 1000000000ull)};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !quit)
		;
}

static int watch(enum fmt f, double interval)
{
	bool tty = isatty(1);
	if (isatty(0) && tcgetattr(0, &saved_tio) == 0) {
		struct termios t = saved_tio;
		t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		t.c_cc[VMIN] = 0;
		t.c_cc[VTIME] = 0;
		tio_saved = tcsetattr(0, TCSANOW, &t) == 0;
	}
	if (tty && f == FMT_TABLE) {
		fputs("\033[?1049h\033[?25l", stdout);
		alt_screen = true;
	}
	atexit(restore_tty);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* the menu of a frame: built in memory, written at once (no flicker) */
	while (!quit) {
		scan();
		int nv = read_all();
		char *buf = NULL;
		size_t len = 0;
		FILE *m = open_memstream(&buf, &len);
		if (!m)
			return 1;
		if (f == FMT_TABLE) {
			char h[160];
			header(h, sizeof(h), interval, true);
			if (tty)
				fputs("\033[H\033[2J", m);
			print_table(m, views, nv, h);
		} else if (f == FMT_JSON) {
			print_json(m, views, nv, interval);
		} else {
			print_prom(m, views, nv);
			fputs("\n", m);
		}
		fclose(m);
		fwrite(buf, 1, len, stdout);
		fflush(stdout);
		free(buf);
		uint64_t until = now_ns() + (uint64_t)(interval * 1e9);
		while (!quit) {
			uint64_t now = now_ns();
			if (now >= until)
				break;
			if (!tio_saved) {
				sleep_ns(until - now);
				continue;
			}
			struct pollfd p = {.fd = 0, .events = POLLIN};
			int ms = (int)((until - now + 999999) / 1000000);
			if (poll(&p, 1, ms) > 0) {
				char c;
				ssize_t n = read(0, &c, 1);
				if (n <= 0 || c == 'q' || c == 'Q')
					quit = 1;
				else if (c == ' ')
					break; /* redraw now */
			}
		}
	}
	return 0;
}

static bool parse_policy(const char *s, unsigned int *p)
{
	for (unsigned int i = 0; i <= EVSTEER_POLICY_CPU; i++)
		if (!strcmp(s, policy_str(i))) {
			*p = i;
			return true;
		}
	return false;
}

/* TARGET: a port, or address:port as the listing prints it. */
static bool matches(const struct group *g, const char *target)
{
	if (!strcmp(g->addr, target))
		return true;
	const char *c = strrchr(g->addr, ':');
	return strspn(target, "0123456789") == strlen(target) && c &&
	       !strcmp(c + 1, target);
}

static int do_set(int argc, char **argv)
{
	if (argc < 3)
		goto usage;
	const char *target = argv[0], *what = argv[1];
	uint32_t op, slot = 0, value = 0;
	if (!strcmp(what, "policy") && argc == 3) {
		unsigned int p;
		if (!parse_policy(argv[2], &p)) {
			fprintf(stderr, "evsteer-stat: unknown policy '%s' "
				"(least-pending, hash, round-robin, cpu)\n", argv[2]);
			return 2;
		}
		op = EVST_RDV_OP_SET_POLICY;
		value = p;
	} else if (!strcmp(what, "weight") && argc == 4) {
		char *e1, *e2;
		unsigned long s = strtoul(argv[2], &e1, 10),
			      w = strtoul(argv[3], &e2, 10);
		if (*e1 || *e2 || !*argv[2] || !*argv[3] || s >= EVST_MAX_WORKERS ||
		    w < 1 || w > 16) {
			fprintf(stderr, "evsteer-stat: weight SLOT W: slot 0..%d, "
				"weight 1..16\n", EVST_MAX_WORKERS - 1);
			return 2;
		}
		op = EVST_RDV_OP_SET_WEIGHT;
		slot = (uint32_t)s;
		value = (uint32_t)w;
	} else {
		goto usage;
	}
	scan_looks = false;
	if (scan() < 0) {
		fprintf(stderr, "evsteer-stat: /proc/net/unix: %s\n", strerror(errno));
		return 1;
	}
	int found = 0, failed = 0;
	for (int i = 0; i < ngroups; i++) {
		struct group *g = groups[i];
		if (!matches(g, target))
			continue;
		found++;
		struct ucred uc;
		int s = connect_name(g->name, &uc);
		int r;
		if (s < 0) {
			r = -s;
		} else if (geteuid() != 0 && uc.uid != geteuid()) {
			r = EACCES;
			close(s);
		} else {
			int fds[EVST_RDV_LOOK_NFDS], nfds = 0;
			uint32_t layout;
			r = request(s, op, slot, value, fds, &nfds, &layout);
			for (int k = 0; k < nfds; k++)
				close(fds[k]);
			close(s);
			if (r < 0)
				r = -r;
		}
		if (r) {
			failed++;
			fprintf(stderr, "evsteer-stat: %s: %s\n", g->addr,
				r == EACCES || r == EPROTO || r == ETIMEDOUT ? why(r) :
				r == ENOENT ? "no such slot in use" : strerror(r));
		} else if (op == EVST_RDV_OP_SET_POLICY) {
			printf("%s: policy %s (set by the group's pid %d, logged "
			       "there)\n", g->addr, argv[2], (int)uc.pid);
		} else {
			printf("%s: slot %u weight %u (set by the group's pid %d, "
			       "logged there)\n", g->addr, slot, value, (int)uc.pid);
		}
	}
	if (!found) {
		fprintf(stderr, "evsteer-stat: no evsteer group on %s in this network "
			"namespace\n", target);
		return 1;
	}
	return failed ? 1 : 0;
usage:
	fprintf(stderr, "usage: evsteer-stat set PORT|ADDRESS:PORT policy "
		"least-pending|hash|round-robin|cpu\n"
		"       evsteer-stat set PORT|ADDRESS:PORT weight SLOT 1..16\n");
	return 2;
}

static void usage(FILE *o)
{
	fprintf(o,
		"usage: evsteer-stat [--json|--prometheus] [--watch [SECONDS]] "
		"[--interval SECONDS] [--color|--no-color] [PORT|ADDRESS:PORT]\n"
		"       evsteer-stat set PORT|ADDRESS:PORT policy "
		"least-pending|hash|round-robin|cpu\n"
		"       evsteer-stat set PORT|ADDRESS:PORT weight SLOT 1..16\n"
		"Every BPF-steered evsteer group of this network namespace that "
		"the caller may see\n(same user, or root): members, workers and "
		"their counters. See evsteer-stat(1).\n");
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "set"))
		return do_set(argc - 2, argv + 2);
	enum fmt f = FMT_TABLE;
	bool watching = false;
	double interval = -1;
	int col = -1;
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"prometheus", no_argument, NULL, 'p'},
		{"watch", optional_argument, NULL, 'w'},
		{"interval", required_argument, NULL, 'i'},
		{"color", no_argument, NULL, 'c'},
		{"no-color", no_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "jpw::i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': f = FMT_JSON; break;
		case 'p': f = FMT_PROM; break;
		case 'w':
			watching = true;
			/* --watch 2 as well as --watch=2 */
			if (!optarg && optind < argc && argv[optind][0] &&
			    strspn(argv[optind], "0123456789.") == strlen(argv[optind]))
				optarg = argv[optind++];
			if (optarg)
				interval = atof(optarg);
			break;
		case 'i': interval = atof(optarg); break;
		case 'c': col = 1; break;
		case 'C': col = 0; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("evsteer-stat %s\n", evsteer_version()); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc)
		only = argv[optind++];
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	color = col >= 0 ? col : isatty(1) && getenv("NO_COLOR") == NULL;
	if (watching) {
		if (interval <= 0)
			interval = 1.0;
		if (interval < 0.01)
			interval = 0.01;
		json_lines = f == FMT_JSON;
		return watch(f, interval);
	}
	/* once: two reads `interval` apart give accepted/s (0: no rate);
	 * Prometheus computes its own rates */
	if (interval < 0)
		interval = f == FMT_PROM ? 0 : 0.2;
	if (scan() < 0) {
		fprintf(stderr, "evsteer-stat: /proc/net/unix: %s\n", strerror(errno));
		return 1;
	}
	int nv = read_all();
	if (interval > 0) {
		sleep_ns((uint64_t)(interval * 1e9));
		nv = read_all();
	}
	if (f == FMT_JSON) {
		print_json(stdout, views, nv, interval);
	} else if (f == FMT_PROM) {
		print_prom(stdout, views, nv);
	} else {
		char h[160];
		header(h, sizeof(h), interval, false);
		print_table(stdout, views, nv, h);
	}
	int hidden = 0;
	for (int i = 0; i < ngroups; i++)
		hidden += groups[i]->status == EACCES;
	if (hidden && f != FMT_TABLE)
		fprintf(stderr, "evsteer-stat: %d group%s not shown: served by "
			"another user; only the group's user or root may look\n",
			hidden, hidden > 1 ? "s" : "");
	return 0;
}

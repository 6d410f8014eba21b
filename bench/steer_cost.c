/* SPDX-License-Identifier: MIT */
/*
 * evsteer-bench-steer: what a group of N workers costs (issue 23).
 *
 *   evsteer-bench-steer [--workers 2,16,128,1024] [--conns 20000]
 *                       [--policy least-pending|hash|round-robin|cpu]
 *                       [--batch 64] [--stall-us US] [--accept event|auto]
 *                       [--repeat R] [--floor select,clock,count|all]
 *
 * For each N (each in a fresh child process, so that one run's memory
 * and one-time costs do not show in the next; --repeat times, the sizes
 * interleaved): make an N-worker group on a loopback port (evsteer_group_new
 * and N attaches, every listener on one event_base served by the main
 * thread), then drive --conns connections from a client thread (--batch
 * blocking connects, wait until they are delivered, close, again) and
 * report, one JSON line per N:
 *
 * - join_ms: evsteer_group_new() + the N attaches (the program's load,
 *   the control page, N sockets, N claims);
 * - rss_kib_per_worker: the process's VmRSS after the join minus before,
 *   divided by N (shared state mapped and touched included); fds_per_worker
 *   likewise;
 * - ns_per_syn: the steering program's run_time_ns / run_cnt over the
 *   drive, read from the program descriptor's /proc/self/fdinfo (the
 *   counters `bpftool prog show` prints). Statistics are turned on for
 *   the run with BPF_ENABLE_STATS (needs CAP_SYS_ADMIN), else they must
 *   be on already (sysctl kernel.bpf_stats_enabled=1); else null.
 *
 * --floor runs, beside each group and in the same rounds, N plain
 * SO_REUSEPORT sockets (no library) under one of bpf/bench_floor.bpf.c's
 * programs: a random select only (what any program pays here), with a
 * clock read, with a count on a line the accepting thread writes too. The
 * steering program's cost above them is its own; theirs is the machine's.
 * The same JSON line per run, with "floor" in place of the group's fields.
 *
 * At the end, a markdown table of the medians (the one in bench/JOURNAL.md).
 *
 * Only the public API: the same source builds against older versions of
 * the library (capped at their EVSTEER_MAX_WORKERS) for a before/after,
 * without --floor unless EVSTEER_BENCH_FLOOR and the floor's skeleton are
 * given. Exit 77 where no program loads (no privilege), as the tests.
 * A benchmark: nothing here fails on a figure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <evsteer/evsteer.h>

static struct {
	atomic_ulong total;
	struct sockaddr_in addr;
	unsigned long conns;
	int batch;
	atomic_int failed;
} R;

/* A run's exit when this machine cannot load a program (the tests'
 * skip status; a failure when EVSTEER_TEST_REQUIRE names bpf). */
#define BPF_MISSING 77

/* What a run reports to the parent, for the medians. */
struct result {
	unsigned int workers;
	int ok;
	double ns_per_syn; /* < 0: unknown */
	double join_ms, rss_kib, fds_per_worker;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long status_kib(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl))
			v = strtol(line + kl, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += de->d_name[0] != '.';
	if (d)
		closedir(d);
	return n - 1;
}

/* The sk_reuseport program this process holds (the group's; one group at
 * a time here): its run counters from fdinfo. 0, or -1 when none. */
static int prog_stats(uint64_t *run_ns, uint64_t *runs)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int found = -1;
	while (d && found < 0 && (de = readdir(d))) {
		char p[300], target[64];
		snprintf(p, sizeof(p), "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(p, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strcmp(target, "anon_inode:bpf-prog"))
			continue;
		snprintf(p, sizeof(p), "/proc/self/fdinfo/%s", de->d_name);
		FILE *f = fopen(p, "r");
		char line[128];
		bool reuseport = false;
		uint64_t t = 0, c = 0;
		while (f && fgets(line, sizeof(line), f)) {
			/* prog_type 21: BPF_PROG_TYPE_SK_REUSEPORT */
			if (!strncmp(line, "prog_type:", 10))
				reuseport = atoi(line + 10) == BPF_PROG_TYPE_SK_REUSEPORT;
			else if (!strncmp(line, "run_time_ns:", 12))
				t = strtoull(line + 12, NULL, 10);
			else if (!strncmp(line, "run_cnt:", 8))
				c = strtoull(line + 8, NULL, 10);
		}
		if (f)
			fclose(f);
		if (reuseport) {
			*run_ns = t;
			*runs = c;
			found = 0;
		}
	}
	if (d)
		closedir(d);
	return found;
}

/* Statistics on for as long as the returned descriptor is open (-1: could
 * not; then the sysctl decides). */
static int enable_stats(void)
{
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.enable_stats.type = BPF_STATS_RUN_TIME;
	return (int)syscall(__NR_bpf, BPF_ENABLE_STATS, &a, sizeof(a));
}

static void accept_cb(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		      int socklen, void *arg)
{
	(void)lev, (void)sa, (void)socklen, (void)arg;
	close(fd);
	atomic_fetch_add(&R.total, 1);
}

/* The client: batches of blocking connects, each delivered before the
 * next (the server thread's loop takes them meanwhile). */
static void *client_main(void *arg)
{
	(void)arg;
	int *c = calloc((size_t)R.batch, sizeof(int));
	unsigned long sent = 0;
	while (c && sent < R.conns && !atomic_load(&R.failed)) {
		int k = R.conns - sent < (unsigned long)R.batch ?
				(int)(R.conns - sent) : R.batch;
		for (int i = 0; i < k; i++) {
			c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			/* ECONNRESET: made, steered and queued, reset on
			 * its way out of connect(): delivered all the same */
			if (c[i] < 0 || (connect(c[i], (struct sockaddr *)&R.addr,
						 sizeof(R.addr)) < 0 &&
					 errno != ECONNRESET)) {
				perror("connect");
				atomic_store(&R.failed, 1);
				k = i + (c[i] >= 0);
				break;
			}
		}
		sent += (unsigned long)k;
		uint64_t deadline = now_ns() + 30000000000ull;
		while (atomic_load(&R.total) < sent && !atomic_load(&R.failed)) {
			if (now_ns() > deadline) {
				fprintf(stderr, "delivered %lu of %lu\n",
					atomic_load(&R.total), sent);
				atomic_store(&R.failed, 1);
			}
			struct timespec ts = {0, 20000};
			nanosleep(&ts, NULL);
		}
		/* reset (the server closed first): no TIME_WAIT on either
		 * side over many runs on one machine */
		for (int i = 0; i < k; i++) {
			struct linger l = {.l_onoff = 1, .l_linger = 0};
			setsockopt(c[i], SOL_SOCKET, SO_LINGER, &l, sizeof(l));
			close(c[i]);
		}
	}
	free(c);
	return NULL;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct event_base *base = arg;
	if (atomic_load(&R.total) >= R.conns || atomic_load(&R.failed))
		event_base_loopexit(base, NULL);
}

/* Before a run: loopback, port 0 (the run's first socket says which),
 * nothing delivered yet. */
static void drive_reset(void)
{
	memset(&R.addr, 0, sizeof(R.addr));
	R.addr.sin_family = AF_INET;
	R.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	atomic_store(&R.total, 0);
	atomic_store(&R.failed, 0);
}

/* What one drive of R.conns connections measured. */
struct drive {
	double ns_per_syn; /* < 0: unknown */
	unsigned long long runs;
	double conn_per_s;
};

/*
 * Drive R.conns connections at R.addr from a client thread while base
 * (whose listeners count them in R.total) runs in this one; the steering
 * program's cost per run over the drive, from its statistics.
 */
static void drive(struct event_base *base, bool have_stats, struct drive *dr)
{
	uint64_t ns0 = 0, c0 = 0, ns1 = 0, c1 = 0;
	bool stats = have_stats && prog_stats(&ns0, &c0) == 0;
	struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, base);
	struct timeval tv = {0, 10000};
	event_add(tick, &tv);
	pthread_t cl;
	uint64_t d0 = now_ns();
	pthread_create(&cl, NULL, client_main, NULL);
	event_base_dispatch(base);
	pthread_join(cl, NULL);
	uint64_t d1 = now_ns();
	stats = stats && prog_stats(&ns1, &c1) == 0 && c1 > c0;
	event_free(tick);
	dr->ns_per_syn = stats ? (double)(ns1 - ns0) / (double)(c1 - c0) : -1;
	dr->runs = stats ? c1 - c0 : 0;
	dr->conn_per_s = (double)atomic_load(&R.total) / ((double)(d1 - d0) / 1e9);
}

/* dr's cost per SYN as a JSON value: null where unknown. */
static const char *ns_json(const struct drive *dr, char *buf, size_t len)
{
	if (dr->ns_per_syn < 0)
		return "null";
	snprintf(buf, len, "%.1f", dr->ns_per_syn);
	return buf;
}

static enum evsteer_policy policy_of(const char *s)
{
	return !strcmp(s, "hash")	 ? EVSTEER_POLICY_HASH :
	       !strcmp(s, "round-robin") ? EVSTEER_POLICY_ROUND_ROBIN :
	       !strcmp(s, "cpu")	 ? EVSTEER_POLICY_CPU :
					   EVSTEER_POLICY_LEAST_PENDING;
}

static int run(unsigned int n, enum evsteer_policy policy, int stall_us,
	       enum evsteer_accept_mode accept, bool have_stats,
	       struct result *res)
{
	struct evsteer_listener **lev = calloc(n, sizeof(*lev));
	struct event_base *base = event_base_new();
	if (!lev || !base)
		return -1;
	drive_reset();

	long rss0 = status_kib("VmRSS:");
	int fds0 = count_fds();
	uint64_t t0 = now_ns();
	EVSTEER_GROUP_OPTS(o, .policy = policy, .stall_us = stall_us,
			   .bpf = EVSTEER_BPF_REQUIRE, .accept = accept);
	struct evsteer_group *g = evsteer_group_new((struct sockaddr *)&R.addr,
						    sizeof(R.addr), n,
						    EVSTEER_OPT_REUSEABLE, -1, &o);
	if (!g) {
		int err = errno;
		fprintf(stderr, "evsteer_group_new(%u): %s\n", n, strerror(err));
		/* no BPF here (no privilege, no program type): nothing to
		 * measure, not a failure of the measurement */
		return err == EPERM || err == EOPNOTSUPP || err == ENOSYS ||
				       err == EINVAL ?
			       BPF_MISSING : -1;
	}
	for (unsigned int i = 0; i < n; i++) {
		lev[i] = evsteer_group_attach(g, i, base, accept_cb, NULL);
		if (!lev[i]) {
			fprintf(stderr, "attach %u: %s\n", i, strerror(errno));
			return -1;
		}
	}
	uint64_t t1 = now_ns();
	long rss1 = status_kib("VmRSS:");
	int fds1 = count_fds();
	socklen_t al = sizeof(R.addr);
	getsockname(evsteer_group_get_fd(g, 0), (struct sockaddr *)&R.addr, &al);

	struct drive dr;
	drive(base, have_stats, &dr);

	char path[64];
	snprintf(path, sizeof(path), "%s", evsteer_listener_path_name(lev[0]));
	uint64_t t2 = now_ns();
	for (unsigned int i = 0; i < n; i++)
		evsteer_listener_free(lev[i]);
	evsteer_group_free(g);
	uint64_t t3 = now_ns();
	event_base_free(base);
	free(lev);

	char cost[32];
	printf("{\"workers\": %u, \"policy\": \"%s\", \"stall_us\": %d, "
	       "\"path\": \"%s\", \"conns\": %lu, \"failed\": %d, "
	       "\"join_ms\": %.2f, \"join_us_per_worker\": %.1f, "
	       "\"leave_ms\": %.2f, \"rss_kib_per_worker\": %.2f, "
	       "\"fds_per_worker\": %.2f, \"ns_per_syn\": %s, \"runs\": %llu, "
	       "\"conn_per_s\": %.0f}\n",
	       n, evsteer_policy_name(policy), stall_us,
	       path,
	       atomic_load(&R.total), atomic_load(&R.failed),
	       (double)(t1 - t0) / 1e6, (double)(t1 - t0) / 1e3 / n,
	       (double)(t3 - t2) / 1e6, (double)(rss1 - rss0) / n,
	       (double)(fds1 - fds0) / n, ns_json(&dr, cost, sizeof(cost)),
	       (unsigned long long)dr.runs, dr.conn_per_s);
	fflush(stdout);
	*res = (struct result){
		.workers = n, .ok = !atomic_load(&R.failed),
		.ns_per_syn = dr.ns_per_syn,
		.join_ms = (double)(t1 - t0) / 1e6,
		.rss_kib = (double)(rss1 - rss0),
		.fds_per_worker = (double)(fds1 - fds0) / n,
	};
	return atomic_load(&R.failed) ? -1 : 0;
}

#ifdef EVSTEER_BENCH_FLOOR
/*
 * --floor: the same drive against N plain SO_REUSEPORT sockets (no
 * library) under one of bpf/bench_floor.bpf.c's programs, which select a
 * socket at random and do one more thing each: what any program pays on
 * this machine, under what steer.bpf.c pays (issue 23's <= 200 ns).
 */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>
#include "bench_floor.h"
#include "bench_floor.skel.h"

static const char *const floor_names[] = {"select", "clock", "count"};
#define NFLOORS 3

struct floor_sock {
	int fd;
	unsigned int k;
	struct event *ev;
	struct bench_floor_bpf *skel;
	bool count;
};

/* Accept what is queued; under floor_count, as the library does: a take
 * counted on the slot the program counts on, and a look at its count. */
static void floor_accept_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct floor_sock *s = arg;
	struct floor_slot *slot = &s->skel->bss->slots[s->k];
	for (;;) {
		int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return;
		close(c);
		atomic_fetch_add(&R.total, 1);
		if (s->count &&
		    __atomic_add_fetch(&slot->taken, 1, __ATOMIC_RELAXED) ==
			    __atomic_load_n(&slot->steered, __ATOMIC_RELAXED))
			return; /* counted empty */
	}
}

static int run_floor(unsigned int n, int kind, bool have_stats,
		     struct result *res)
{
	struct floor_sock *socks = calloc(n, sizeof(*socks));
	struct event_base *base = event_base_new();
	struct bench_floor_bpf *skel = bench_floor_bpf__open();
	if (!socks || !base || !skel)
		return -1;
	struct bpf_program *progs[NFLOORS] = {skel->progs.floor_select,
					      skel->progs.floor_clock,
					      skel->progs.floor_count};
	for (int i = 0; i < NFLOORS; i++)
		bpf_program__set_autoload(progs[i], i == kind);
	skel->bss->nsocks = n;
	if (bench_floor_bpf__load(skel)) {
		int err = errno;
		fprintf(stderr, "floor: load: %s\n", strerror(err));
		/* (EACCES: the verifier refused it, a bug here) */
		return err == EPERM ? BPF_MISSING : -1;
	}
	drive_reset();
	int one = 1, map = bpf_map__fd(skel->maps.floor_socks);
	for (unsigned int i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		uint64_t v = (uint64_t)fd;
		if (fd < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
		    bind(fd, (struct sockaddr *)&R.addr, sizeof(R.addr)) ||
		    listen(fd, 4096) || bpf_map_update_elem(map, &i, &v, BPF_ANY)) {
			fprintf(stderr, "floor: socket %u: %s\n", i, strerror(errno));
			return -1;
		}
		if (i == 0) { /* the port the others join */
			socklen_t al = sizeof(R.addr);
			getsockname(fd, (struct sockaddr *)&R.addr, &al);
		}
		socks[i] = (struct floor_sock){.fd = fd, .k = i, .skel = skel,
					       .count = kind == 2};
		socks[i].ev = event_new(base, fd, EV_READ | EV_PERSIST,
					floor_accept_cb, &socks[i]);
		event_add(socks[i].ev, NULL);
	}
	int pfd = bpf_program__fd(progs[kind]);
	if (setsockopt(socks[0].fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &pfd,
		       sizeof(pfd))) {
		fprintf(stderr, "floor: attach: %s\n", strerror(errno));
		return -1;
	}
	struct drive dr;
	drive(base, have_stats, &dr);
	for (unsigned int i = 0; i < n; i++) {
		event_free(socks[i].ev);
		close(socks[i].fd);
	}
	bench_floor_bpf__destroy(skel);
	event_base_free(base);
	free(socks);
	char cost[32];
	printf("{\"workers\": %u, \"floor\": \"%s\", \"conns\": %lu, "
	       "\"failed\": %d, \"ns_per_syn\": %s, \"runs\": %llu, "
	       "\"conn_per_s\": %.0f}\n",
	       n, floor_names[kind], atomic_load(&R.total),
	       atomic_load(&R.failed), ns_json(&dr, cost, sizeof(cost)), dr.runs,
	       dr.conn_per_s);
	fflush(stdout);
	*res = (struct result){.workers = n, .ok = !atomic_load(&R.failed),
			       .ns_per_syn = dr.ns_per_syn};
	return atomic_load(&R.failed) ? -1 : 0;
}
#else
#define NFLOORS 0
static const char *const floor_names[] = {NULL};
static int run_floor(unsigned int n, int kind, bool have_stats,
		     struct result *res)
{
	(void)n, (void)kind, (void)have_stats, (void)res;
	return -1;
}
#endif

/* One run in a child; its result through a pipe. */
static int run_child(unsigned int n, enum evsteer_policy policy, int stall_us,
		     enum evsteer_accept_mode accept, int floor,
		     bool have_stats, struct result *res)
{
	int p[2];
	if (pipe(p) < 0)
		return -1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(p[0]);
		struct result r = {0};
		int rc = floor >= 0 ? run_floor(n, floor, have_stats, &r) :
				      run(n, policy, stall_us, accept, have_stats, &r);
		if (write(p[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
			rc = -1;
		_exit(rc == BPF_MISSING ? BPF_MISSING : rc < 0);
	}
	close(p[1]);
	ssize_t got = read(p[0], res, sizeof(*res));
	close(p[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	if (WIFEXITED(st) && WEXITSTATUS(st) == BPF_MISSING)
		return BPF_MISSING;
	return got == (ssize_t)sizeof(*res) && WIFEXITED(st) &&
			       !WEXITSTATUS(st) ? 0 : -1;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The median of field `off` over k results (unknown ones left out). */
static double median(const struct result *r, int k, size_t off)
{
	double v[64];
	int m = 0;
	for (int i = 0; i < k && m < 64; i++) {
		double x = *(const double *)((const char *)&r[i] + off);
		if (r[i].ok && x >= 0)
			v[m++] = x;
	}
	if (!m)
		return -1;
	qsort(v, (size_t)m, sizeof(v[0]), cmp_double);
	return m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
}

/* No BPF on this machine: skipped (77), unless EVSTEER_TEST_REQUIRE
 * names bpf (or all), as the tests do. */
static int bpf_missing(const char *prog)
{
	const char *req = getenv("EVSTEER_TEST_REQUIRE");
	bool required = false;
	char *list = req ? strdup(req) : NULL;
	for (char *save = NULL, *t = list ? strtok_r(list, ",", &save) : NULL;
	     t; t = strtok_r(NULL, ",", &save))
		required = required || !strcmp(t, "all") || !strcmp(t, "bpf");
	free(list);
	fprintf(stderr, "%s: no BPF steering here: %s\n", prog,
		required ? "required (EVSTEER_TEST_REQUIRE), failed" :
			   "nothing measured (exit 77)");
	return required ? 1 : BPF_MISSING;
}

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return def;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: %s [--workers 2,16,128,1024] [--conns N] "
			       "[--policy P] [--batch B] [--stall-us US] "
			       "[--accept event|auto] [--repeat R] "
			       "[--floor select,clock,count|all]\n", argv[0]);
			return 0;
		}
	const char *workers = arg(argc, argv, "--workers", "2,16,128,1024");
	R.conns = strtoul(arg(argc, argv, "--conns", "20000"), NULL, 10);
	R.batch = atoi(arg(argc, argv, "--batch", "64"));
	const char *pol = arg(argc, argv, "--policy", "least-pending");
	int stall_us = atoi(arg(argc, argv, "--stall-us", "0"));
	enum evsteer_accept_mode accept =
		!strcmp(arg(argc, argv, "--accept", "event"), "auto") ?
			EVSTEER_ACCEPT_AUTO : EVSTEER_ACCEPT_EVENT;
	if (R.batch < 1 || !R.conns) {
		fprintf(stderr, "%s: --batch and --conns must be positive\n",
			argv[0]);
		return 2;
	}
	evthread_use_pthreads();
	/* a socket and an eventfd per worker, and the client's batch */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int sfd = enable_stats();
	bool have_stats = sfd >= 0;
	if (!have_stats) {
		FILE *f = fopen("/proc/sys/kernel/bpf_stats_enabled", "r");
		have_stats = f && fgetc(f) == '1';
		if (f)
			fclose(f);
		if (!have_stats)
			fprintf(stderr, "%s: BPF statistics off (BPF_ENABLE_STATS: "
				"%s; sysctl kernel.bpf_stats_enabled=0): no cost "
				"per SYN\n", argv[0], strerror(errno));
	}
	int repeat = atoi(arg(argc, argv, "--repeat", "1"));
	if (repeat < 1 || repeat > 64) {
		fprintf(stderr, "%s: --repeat 1..64\n", argv[0]);
		return 2;
	}
	/* --floor: which of bench_floor.bpf.c's programs run beside */
	bool floors[NFLOORS + 1] = {false};
	int nfl = 0;
	bool bad = false;
	const char *fl = arg(argc, argv, "--floor", NULL);
	if (fl && !NFLOORS) {
		fprintf(stderr, "%s: --floor: built without BPF\n", argv[0]);
		return 2;
	}
	char *fls = fl ? strdup(fl) : NULL;
	for (char *save = NULL, *t = fls ? strtok_r(fls, ",", &save) : NULL; t;
	     t = strtok_r(NULL, ",", &save)) {
		bool known = false;
		for (int k = 0; k < NFLOORS; k++)
			if (!strcmp(t, floor_names[k]) || !strcmp(t, "all"))
				known = floors[k] = true;
		bad = bad || !known;
	}
	free(fls);
	for (int k = 0; k < NFLOORS; k++)
		nfl += floors[k];
	if (fl && (bad || !nfl)) {
		fprintf(stderr, "%s: --floor select,clock,count or all\n", argv[0]);
		return 2;
	}
	unsigned int sizes[32];
	int ns = 0, rc = 0;
	char *list = strdup(workers);
	for (char *save = NULL, *t = strtok_r(list, ",", &save); t && ns < 32;
	     t = strtok_r(NULL, ",", &save)) {
		unsigned int n = (unsigned int)strtoul(t, NULL, 10);
		if (n < 1 || n > EVSTEER_MAX_WORKERS) {
			fprintf(stderr, "%s: %u workers: not in 1..%d (this "
				"library's EVSTEER_MAX_WORKERS)\n", argv[0], n,
				EVSTEER_MAX_WORKERS);
			rc = 1;
			continue;
		}
		sizes[ns++] = n;
	}
	free(list);
	/* [0]: the library's group; [1 + k]: floor k */
	static struct result res[NFLOORS + 1][32][64];
	for (int r = 0; r < repeat; r++)
		for (int i = 0; i < ns; i++)
			for (int k = -1; k < NFLOORS; k++) {
				if (k >= 0 && !floors[k])
					continue;
				struct result *x = &res[k + 1][i][r];
				int got = run_child(sizes[i], policy_of(pol),
						    stall_us, accept, k,
						    have_stats, x);
				if (got == BPF_MISSING)
					return bpf_missing(argv[0]);
				if (got < 0) {
					x->ok = 0;
					rc = 1;
				}
			}
	printf("\n| workers | steering ns/SYN |");
	for (int k = 0; k < NFLOORS; k++)
		if (floors[k])
			printf(" floor: %s |", floor_names[k]);
	printf(" join ms | join us/worker | RSS KiB the join added | "
	       "fds/worker |\n|---|---|");
	for (int k = 0; k < nfl; k++)
		printf("---|");
	printf("---|---|---|---|\n");
	for (int i = 0; i < ns; i++) {
		printf("| %u |", sizes[i]);
		for (int k = -1; k < NFLOORS; k++) {
			if (k >= 0 && !floors[k])
				continue;
			double c = median(res[k + 1][i], repeat,
					  offsetof(struct result, ns_per_syn));
			if (c >= 0)
				printf(" %.0f |", c);
			else
				printf(" n/a |");
		}
		double j = median(res[0][i], repeat, offsetof(struct result, join_ms));
		printf(" %.1f | %.0f | %.0f | %.2f |\n", j, j * 1000 / sizes[i],
		       median(res[0][i], repeat, offsetof(struct result, rss_kib)),
		       median(res[0][i], repeat,
			      offsetof(struct result, fds_per_worker)));
	}
	if (sfd >= 0)
		close(sfd);
	return rc;
}

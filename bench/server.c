/* SPDX-License-Identifier: MIT */
/*
 * evsteer-bench-server: one server, several implementations, driven by the
 * load generator and the harness. For every connection it writes "ok" and
 * closes; with --read-first it reads the client's request before (event
 * implementations: a read event in the worker's base; evsteer-direct:
 * evsteer_uring_recv() on the slot; the floors: an io_uring recv), and with
 * --work-us it spends that long on each connection before replying
 * (spinning, or in nanosleep() with --work-mode sleep). A client that never
 * sends is closed after 10 s by the event implementations; the ring ones
 * (evsteer-direct, the floors) have no time-out on their recv, like the rest of
 * their I/O here: the load generator always sends (--send).
 *
 *   --impl libevent|evsteer|evsteer-event|evsteer-bpf-event|evsteer-bpf-uring|
 *          evsteer-direct|evsteer-cbpf|floor|floor-epoll|floor-direct
 *   --workers N --port P [--policy least-pending|hash|round-robin|cpu]
 *   [--work-us U] [--work-mode spin|sleep] [--read-first]
 *   [--stall-worker W --stall-ms M --stall-every-ms E [--stall-log FILE]]
 *   [--freeze-worker W]
 *   [--slow-worker W --slow-us U] [--cpu-to W]
 *
 * evsteer is the default path (auto: BPF steering where it loads, the
 * event engine), evsteer-event the event engine without BPF (the kernel's
 * hash), evsteer-bpf-event the event engine with BPF steering asked for by
 * name (the default path since auto stopped picking io_uring),
 * evsteer-bpf-uring the io_uring engine with BPF steering.
 * evsteer-cbpf is evsteer in a process whose seccomp filter refuses bpf()
 * with EPERM (what a container's default profile does): classic BPF
 * steering, the event engine. The floors, bare io_uring loops with no
 * library, are in server_floor.c.
 *
 * Prints "ready PORT" when listening. SIGUSR1 frees the frozen worker's
 * listener (drain), or has the slow worker free its own from its next
 * accept callback (drain-running); SIGUSR2 toggles descriptor exhaustion
 * (emfile); SIGTERM leaves gracefully (evsteer: evsteer_group_retire(),
 * wait until what was steered here is served, free the listeners: another
 * process on the port takes over without loss; libevent: free the
 * listeners; either way, requests being read are answered first, bounded),
 * then prints one JSON line (path, accepted per worker, CPU
 * time, leave time) and exits.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <evsteer/evsteer.h>
#include <liburing.h>

#include "pin.h"
#include "server.h"

/* ---- shared helpers */

static pthread_mutex_t freeze_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t freeze_cond = PTHREAD_COND_INITIALIZER;
static bool unfrozen;
static atomic_bool stopping;

static void spin_us(long us)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000 <
	       us);
}

void bench_spin_ms(int ms)
{
	spin_us((long)ms * 1000);
}

void bench_freeze_if(struct bench_cfg *cfg, int id)
{
	if (cfg->freeze_worker != id)
		return;
	pthread_mutex_lock(&freeze_lock);
	while (!unfrozen)
		pthread_cond_wait(&freeze_cond, &freeze_lock);
	pthread_mutex_unlock(&freeze_lock);
}

void bench_unfreeze(void)
{
	pthread_mutex_lock(&freeze_lock);
	unfrozen = true;
	pthread_cond_broadcast(&freeze_cond);
	pthread_mutex_unlock(&freeze_lock);
}

bool bench_stopping(void)
{
	return atomic_load(&stopping);
}

void bench_stall(const struct bench_cfg *cfg)
{
	if (cfg->stall_log) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		fprintf(cfg->stall_log, "%lld.%09ld\n", (long long)ts.tv_sec,
			ts.tv_nsec);
		fflush(cfg->stall_log);
	}
	bench_spin_ms(cfg->stall_ms);
}

static void stall_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	bench_stall(arg);
}

void bench_add_stall(struct event_base *base, struct bench_cfg *cfg, int id)
{
	if (cfg->stall_worker != id || cfg->stall_ms <= 0 ||
	    cfg->stall_every_ms <= 0)
		return;
	struct event *ev = event_new(base, -1, EV_PERSIST, stall_cb, cfg);
	struct timeval tv = {cfg->stall_every_ms / 1000,
			     (cfg->stall_every_ms % 1000) * 1000};
	event_add(ev, &tv);
}

void bench_run_base(struct bench_cfg *cfg, struct event_base *base, int id)
{
	bench_freeze_if(cfg, id);
	/* let go at exit (stop() then needs no loop to end) */
	if (atomic_load(&stopping))
		return;
	bench_add_stall(base, cfg, id);
	event_base_dispatch(base);
}

void bench_work(struct bench_worker *w)
{
	const struct bench_cfg *cfg = w->cfg;
	if (cfg->work_us > 0 && cfg->work_sleep) {
		/* a blocking call (a database, a file): the thread sleeps */
		struct timespec ts = {cfg->work_us / 1000000,
				      (long)(cfg->work_us % 1000000) * 1000};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	} else if (cfg->work_us > 0) {
		spin_us(cfg->work_us);
	}
}

void bench_take(struct bench_worker *w)
{
	atomic_fetch_add_explicit(&w->taken, 1, memory_order_relaxed);
	if (w->cfg->slow_worker == w->id && w->cfg->slow_us > 0)
		spin_us(w->cfg->slow_us);
}

static atomic_bool drop_asked, drop_done;
static pthread_mutex_t drop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t drop_cond = PTHREAD_COND_INITIALIZER;

bool bench_drop_now(struct bench_worker *w)
{
	return w->cfg->slow_worker == w->id &&
	       atomic_exchange(&drop_asked, false);
}

void bench_dropped(void)
{
	pthread_mutex_lock(&drop_lock);
	atomic_store(&drop_done, true);
	pthread_cond_broadcast(&drop_cond);
	pthread_mutex_unlock(&drop_lock);
}

void bench_reply(struct bench_worker *w, int fd)
{
	bench_work(w);
	if (write(fd, "ok", 2) < 0) {
		/* the client went away; nothing to do */
	}
	close(fd);
	atomic_fetch_add_explicit(&w->accepted, 1, memory_order_relaxed);
}

/* a silent client must not hold a descriptor for ever */
static const struct timeval request_timeout = {10, 0};

static void on_request(evutil_socket_t fd, short what, void *arg)
{
	struct bench_worker *w = arg;
	char buf[BENCH_REQ_MAX];
	ssize_t n = -1;
	if (what & EV_READ) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && (errno == EAGAIN || errno == EINTR) &&
		    event_base_once(w->base, fd, EV_READ, on_request, w,
				    &request_timeout) == 0)
			return; /* a spurious wake-up: wait again */
	}
	atomic_fetch_sub_explicit(&w->reading, 1, memory_order_relaxed);
	if (n <= 0) {
		/* gone, or silent until the time-out: no reply, not counted */
		close(fd);
		return;
	}
	bench_reply(w, fd);
}

void bench_serve(struct bench_worker *w, int fd)
{
	bench_take(w);
	if (!w->cfg->read_first) {
		bench_reply(w, fd);
		return;
	}
	/* what servers do: wait in the loop for the request, then answer */
	atomic_fetch_add_explicit(&w->reading, 1, memory_order_relaxed);
	if (event_base_once(w->base, fd, EV_READ, on_request, w,
			    &request_timeout) < 0) {
		atomic_fetch_sub_explicit(&w->reading, 1, memory_order_relaxed);
		close(fd);
	}
}

/* ---- evsteer, evsteer-event, evsteer-direct */

struct ew {
	struct event_base *base;
	struct evsteer_listener *lev;
};

static void ev_drop(struct bench_worker *w);

static void ev_accept(struct evsteer_listener *l, int fd, struct sockaddr *sa,
		      int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	struct bench_worker *w = arg;
	bench_serve(w, fd);
	if (bench_drop_now(w)) {
		ev_drop(w);
		bench_dropped();
	}
}

static void direct_reply(struct bench_worker *w, struct evsteer_uring *r,
			 int slot)
{
	bench_work(w);
	/* the reply and the close as one chain, no completion to handle */
	if (evsteer_uring_send_and_close(r, slot, "ok", 2, NULL, NULL) < 0)
		evsteer_uring_close(r, slot, NULL, NULL);
	atomic_fetch_add_explicit(&w->accepted, 1, memory_order_relaxed);
}

struct direct_req {
	struct bench_worker *w;
	char buf[BENCH_REQ_MAX];
};

static void direct_request(struct evsteer_uring *r, int slot, int res,
			   void *arg)
{
	struct direct_req *q = arg;
	struct bench_worker *w = q->w;
	free(q);
	atomic_fetch_sub_explicit(&w->reading, 1, memory_order_relaxed);
	if (res <= 0) { /* the client went away: no reply, not counted */
		evsteer_uring_close(r, slot, NULL, NULL);
		return;
	}
	direct_reply(w, r, slot);
}

static void ev_direct(struct evsteer_listener *l, struct evsteer_uring *r,
		      int slot, void *arg)
{
	(void)l;
	struct bench_worker *w = arg;
	bench_take(w);
	if (!w->cfg->read_first) {
		direct_reply(w, r, slot);
	} else {
		/* the request through the ring as well: no fd, no event */
		struct direct_req *q = malloc(sizeof(*q));
		if (q)
			q->w = w;
		atomic_fetch_add_explicit(&w->reading, 1, memory_order_relaxed);
		if (!q || evsteer_uring_recv(r, slot, q->buf, sizeof(q->buf),
					     direct_request, q) < 0) {
			free(q);
			atomic_fetch_sub_explicit(&w->reading, 1,
						  memory_order_relaxed);
			evsteer_uring_close(r, slot, NULL, NULL);
		}
	}
	if (bench_drop_now(w)) {
		ev_drop(w);
		bench_dropped();
	}
}

static enum evsteer_policy policy_of(const char *p)
{
	if (!p || !strcmp(p, "least-pending"))
		return EVSTEER_POLICY_LEAST_PENDING;
	if (!strcmp(p, "hash"))
		return EVSTEER_POLICY_HASH;
	if (!strcmp(p, "round-robin"))
		return EVSTEER_POLICY_ROUND_ROBIN;
	return EVSTEER_POLICY_CPU;
}

static int ev_setup(struct bench_worker *w, int *port)
{
	struct bench_cfg *cfg = w->cfg;
	struct ew *x = calloc(1, sizeof(*x));
	x->base = event_base_new();
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)*port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	unsigned int flags = EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE |
			     EVSTEER_OPT_REUSEABLE_PORT | EVSTEER_OPT_THREADSAFE;
	EVSTEER_LISTENER_OPTS(o, .policy = policy_of(cfg->policy));
	if (!strcmp(cfg->impl, "evsteer-event")) {
		o.bpf = EVSTEER_BPF_OFF;
		o.accept = EVSTEER_ACCEPT_EVENT;
	}
	if (!strcmp(cfg->impl, "evsteer-bpf-event"))
		o.accept = EVSTEER_ACCEPT_EVENT; /* BPF as auto decides */
	if (!strcmp(cfg->impl, "evsteer-bpf-uring"))
		o.accept = EVSTEER_ACCEPT_URING; /* BPF as auto decides */
	if (!strcmp(cfg->impl, "evsteer-direct"))
		x->lev = evsteer_listener_new_bind_direct(
			x->base, ev_direct, w, flags, -1, (struct sockaddr *)&sin,
			sizeof(sin), 0, &o);
	else
		x->lev = evsteer_listener_new_bind(x->base, ev_accept, w, flags,
						   -1, (struct sockaddr *)&sin,
						   sizeof(sin), &o);
	if (!x->lev)
		return -1;
	socklen_t sl = sizeof(sin);
	getsockname(evsteer_listener_get_fd(x->lev), (struct sockaddr *)&sin, &sl);
	*port = ntohs(sin.sin_port);
	w->impl = x;
	w->base = x->base;
	/* the listeners of one address form a group, slot = worker id; once
	 * the chosen worker's slot exists, route every CPU to it */
	struct evsteer_group *g = evsteer_listener_get_group(x->lev);
	if (g && cfg->cpu_to == w->id)
		for (unsigned int cpu = 0; cpu < 256; cpu++)
			evsteer_group_set_cpu(g, cpu, (unsigned int)w->id);
	return 0;
}

static void *ev_run(void *arg)
{
	struct bench_worker *w = arg;
	struct ew *x = w->impl;
	bench_run_base(w->cfg, x->base, w->id);
	return NULL;
}

static void ev_stop(struct bench_worker *w)
{
	/* loopexit, not loopbreak: a loop that has not started yet (the
	 * frozen worker, just let go) would forget a break */
	event_base_loopexit(((struct ew *)w->impl)->base, NULL);
}

/* free the worker's listener, if it still has one */
static void ev_drop(struct bench_worker *w)
{
	struct ew *x = w->impl;
	evsteer_listener_free(x->lev);
	x->lev = NULL;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ev_leave(struct bench_worker *w, int n)
{
	struct evsteer_group *g = NULL;
	for (int i = 0; i < n && !g; i++)
		if (((struct ew *)w[i].impl)->lev)
			g = evsteer_listener_get_group(((struct ew *)w[i].impl)->lev);
	if (g && evsteer_group_retire(g) == 0) {
		/* the loops keep running: they serve what was steered here
		 * (a busy worker's share included), bounded */
		double until = mono_s() + 2.0;
		while (evsteer_group_pending(g) > 0 && mono_s() < until)
			usleep(1000);
	}
}

static void ev_describe(struct bench_worker *w, char *buf, size_t len)
{
	struct ew *x = w->impl;
	EVSTEER_PATH_OPTS(p);
	evsteer_listener_get_path(x->lev, &p);
	snprintf(buf, len,
		 "{\"steering\": \"%s\", \"engine\": \"%s\", \"name\": \"%s\", "
		 "\"policy\": \"%s\", \"steering_reason\": \"%s\", "
		 "\"engine_reason\": \"%s\"}",
		 evsteer_steering_str(p.steering),
		 p.engine == EVSTEER_ENGINE_EVENT ? "event" :
		 p.engine == EVSTEER_ENGINE_URING ? "io_uring" :
						    "io_uring-direct",
		 p.name,
		 evsteer_policy_name(p.policy), p.steering_reason,
		 p.engine_reason);
}

static const struct bench_impl bench_evsteer = {
	.name = "evsteer",
	.setup = ev_setup,
	.run = ev_run,
	.stop = ev_stop,
	.drop = ev_drop,
	.leave = ev_leave,
	.describe = ev_describe,
};

/* Wait, bounded, until no worker awaits a request (read_first). */
static void settle(struct bench_worker *w, int n)
{
	double until = mono_s() + 2.0;
	for (;;) {
		long reading = 0;
		for (int i = 0; i < n; i++)
			reading += atomic_load(&w[i].reading);
		if (reading <= 0 || mono_s() >= until)
			return;
		usleep(1000);
	}
}

/* ---- descriptor exhaustion on demand (the emfile scenario) */

static int fillers[65536];
static int nfill;

static void exhaust_toggle(void)
{
	if (nfill) {
		for (int i = 0; i < nfill; i++)
			close(fillers[i]);
		nfill = 0;
		return;
	}
	int d = open("/dev/null", O_RDONLY | O_CLOEXEC);
	while (d >= 0 && nfill < 65536) {
		fillers[nfill++] = d;
		d = dup(fillers[0]);
	}
}

/* ---- main */

static int arg_int(int argc, char **argv, const char *name, int def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return atoi(argv[i + 1]);
	return def;
}

static bool arg_flag(int argc, char **argv, const char *name)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

static const char *arg_str(int argc, char **argv, const char *name,
			   const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return def;
}

/* evsteer-cbpf: bpf() refused by a seccomp filter, as in a container with
 * Docker's default profile (no_new_privs first, as an unprivileged
 * process must). 0 or -1. */
static int deny_bpf(void)
{
#if defined(__x86_64__)
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bpf, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
	errno = ENOTSUP;
	return -1;
#endif
}

int main(int argc, char **argv)
{
	struct bench_cfg cfg = {
		.impl = arg_str(argc, argv, "--impl", "evsteer"),
		.workers = arg_int(argc, argv, "--workers", 2),
		.port = arg_int(argc, argv, "--port", 0),
		.policy = arg_str(argc, argv, "--policy", NULL),
		.stall_worker = arg_int(argc, argv, "--stall-worker", -1),
		.stall_ms = arg_int(argc, argv, "--stall-ms", 50),
		.stall_every_ms = arg_int(argc, argv, "--stall-every-ms", 250),
		.freeze_worker = arg_int(argc, argv, "--freeze-worker", -1),
		.slow_worker = arg_int(argc, argv, "--slow-worker", -1),
		.slow_us = arg_int(argc, argv, "--slow-us", 0),
		.cpu_to = arg_int(argc, argv, "--cpu-to", -1),
		.work_us = arg_int(argc, argv, "--work-us", 0),
		.work_sleep = !strcmp(arg_str(argc, argv, "--work-mode", "spin"),
				      "sleep"),
		.read_first = arg_flag(argc, argv, "--read-first"),
	};
	const char *work_mode = arg_str(argc, argv, "--work-mode", "spin");
	const char *stall_log = arg_str(argc, argv, "--stall-log", NULL);
	if (stall_log && !(cfg.stall_log = fopen(stall_log, "w"))) {
		fprintf(stderr, "--stall-log %s: %s\n", stall_log, strerror(errno));
		return 2;
	}
	const struct bench_impl *impl =
		!strcmp(cfg.impl, "libevent") ? &bench_libevent :
		!strcmp(cfg.impl, "floor") ||
		!strcmp(cfg.impl, "floor-epoll") ||
		!strcmp(cfg.impl, "floor-direct") ? &bench_floor :
		!strncmp(cfg.impl, "evsteer", 7) ? &bench_evsteer :
						   NULL;
	if (!impl || cfg.workers < 1 || cfg.workers > MAX_WORKERS ||
	    cfg.work_us < 0 ||
	    (strcmp(work_mode, "spin") && strcmp(work_mode, "sleep"))) {
		fprintf(stderr, "usage: %s --impl libevent|evsteer|evsteer-event|"
				"evsteer-direct|floor|floor-epoll|floor-direct --workers 1..%d [--port P] "
				"[--policy P] [--work-us U] [--work-mode spin|sleep] "
				"[--read-first] [--stall-worker W --stall-ms M "
				"--stall-every-ms E [--stall-log FILE]] "
				"[--freeze-worker W] [--pin]\n",
			argv[0], MAX_WORKERS);
		return 2;
	}
	/* a descriptor limit to exhaust quickly (emfile) */
	int fdlim = arg_int(argc, argv, "--fd-limit", 0);
	if (fdlim > 0) {
		struct rlimit rl;
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = (rlim_t)fdlim;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (!strcmp(cfg.impl, "evsteer-cbpf") && deny_bpf() < 0) {
		fprintf(stderr, "evsteer-cbpf: seccomp: %s\n", strerror(errno));
		return 1;
	}
	evthread_use_pthreads();

	/* signals are taken by sigwait() in this thread only */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	static struct bench_worker w[MAX_WORKERS];
	int port = cfg.port;
	for (int i = 0; i < cfg.workers; i++) {
		w[i].id = i;
		w[i].cfg = &cfg;
		if (impl->setup(&w[i], &port) < 0) {
			fprintf(stderr, "worker %d: setup: %s\n", i, strerror(errno));
			return 1;
		}
	}
	/* --pin: worker i on the i-th CPU this process may use (pin.h) */
	cpu_set_t allowed;
	int ncpu = 0;
	bool pin = arg_flag(argc, argv, "--pin");
	if (pin)
		ncpu = bench_pin_cpus(&allowed);
	if (pin && ncpu < 1) {
		fprintf(stderr, "--pin: sched_getaffinity: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < cfg.workers; i++) {
		int err = bench_start_worker(&w[i].thread, impl->run, &w[i],
					     &allowed, ncpu, i);
		if (err) {
			fprintf(stderr, "worker %d: pthread_create: %s\n", i,
				strerror(err));
			return 1;
		}
	}
	printf("ready %d\n", port);
	fflush(stdout);

	for (;;) {
		int sig;
		sigwait(&set, &sig);
		if (sig == SIGUSR1 && cfg.slow_worker >= 0 &&
		    cfg.slow_worker < cfg.workers) {
			/* the slow worker frees its own listener from its next
			 * callback, with connections in flight to it */
			long before = 0;
			for (int i = 0; i < cfg.workers; i++)
				if (i != cfg.slow_worker)
					before += atomic_load(&w[i].taken);
			atomic_store(&drop_asked, true);
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += 10;
			pthread_mutex_lock(&drop_lock);
			while (!atomic_load(&drop_done) &&
			       pthread_cond_timedwait(&drop_cond, &drop_lock,
						      &until) == 0)
				;
			pthread_mutex_unlock(&drop_lock);
			printf("{\"dropped\": %d, \"taken_by_others_before\": %ld, "
			       "\"in_callback\": %s}\n",
			       cfg.slow_worker, before,
			       atomic_load(&drop_done) ? "true" : "false");
			fflush(stdout);
			continue;
		}
		if (sig == SIGUSR1 && cfg.freeze_worker >= 0 &&
		    cfg.freeze_worker < cfg.workers) {
			/* what the others had taken when the frozen one left
			 * (answered or not: with read_first a reply waits for
			 * the request) */
			long before = 0;
			for (int i = 0; i < cfg.workers; i++)
				if (i != cfg.freeze_worker)
					before += atomic_load(&w[i].taken);
			impl->drop(&w[cfg.freeze_worker]);
			printf("{\"dropped\": %d, \"taken_by_others_before\": %ld}\n",
			       cfg.freeze_worker, before);
			fflush(stdout);
			continue;
		}
		if (sig == SIGUSR2) {
			exhaust_toggle();
			continue;
		}
		if (sig == SIGTERM || sig == SIGINT)
			break;
	}

	char path[1024];
	/* a worker that is still there (the drains drop worker 0) */
	impl->describe(&w[(cfg.freeze_worker == 0 || cfg.slow_worker == 0) &&
				  cfg.workers > 1 ?
			  1 :
			  0],
		       path, sizeof(path));
	double t0 = mono_s();
	bench_unfreeze();
	if (impl->leave)
		impl->leave(w, cfg.workers);
	/* requests being read are answered before the listeners go (freeing
	 * the last listener of a ring cancels evsteer-direct's recvs) and
	 * again after (libevent's last accepts), before the loops stop */
	settle(w, cfg.workers);
	for (int i = 0; i < cfg.workers; i++)
		impl->drop(&w[i]);
	settle(w, cfg.workers);
	double leave_s = mono_s() - t0;
	atomic_store(&stopping, true);
	for (int i = 0; i < cfg.workers; i++)
		impl->stop(&w[i]);
	for (int i = 0; i < cfg.workers; i++)
		pthread_join(w[i].thread, NULL);

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	long total = 0;
	printf("{\"impl\": \"%s\", \"path\": %s, \"per_worker\": [", cfg.impl, path);
	for (int i = 0; i < cfg.workers; i++) {
		long n = atomic_load(&w[i].accepted);
		total += n;
		printf("%s%ld", i ? ", " : "", n);
	}
	printf("], \"accepted\": %ld, \"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, "
	       "\"leave_s\": %.3f, \"work_us\": %d, \"work_mode\": \"%s\", "
	       "\"read_first\": %s}\n",
	       total, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, leave_s,
	       cfg.work_us, cfg.work_sleep ? "sleep" : "spin",
	       cfg.read_first ? "true" : "false");
	fflush(stdout);
	return 0;
}

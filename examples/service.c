/* SPDX-License-Identifier: MIT */
/*
 * evsteer-service: a small TCP service as deployed (container image,
 * Kubernetes, systemd). One worker thread and event_base per socket of a
 * worker group; each connection gets "ok\n" and is closed.
 *
 *   evsteer-service [--address A] [--port P] [--workers N] [--fdname NAME]
 *                   [--exit-after N]
 *
 * Under socket activation (systemd, systemd-socket-activate) the group is
 * made of the sockets passed in LISTEN_FDS, those named NAME
 * (FileDescriptorName=) if given: one worker per socket. Otherwise it binds
 * N workers to A:P (default 0.0.0.0:8080). It prints the path in use and
 * why, then "ready"; SIGTERM or SIGINT (or N connections with --exit-after)
 * stop it, printing what each worker accepted.
 *
 * It links libevsteer statically, so that it also runs with file
 * capabilities (setcap cap_bpf=ep), where the dynamic loader ignores
 * $ORIGIN and LD_LIBRARY_PATH.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <evsteer/evsteer.h>

struct worker {
	struct event_base *base;
	struct evsteer_listener *lev;
	pthread_t thread;
	atomic_long accepted;
};

static atomic_long total;
static long exit_after;

static void on_accept(struct evsteer_listener *lev, int fd, struct sockaddr *sa,
		      int len, void *arg)
{
	(void)lev;
	(void)sa;
	(void)len;
	struct worker *w = arg;
	if (write(fd, "ok\n", 3) < 0) {
		/* the client left; nothing to tell it */
	}
	close(fd);
	atomic_fetch_add(&w->accepted, 1);
	if (atomic_fetch_add(&total, 1) + 1 == exit_after)
		kill(getpid(), SIGTERM); /* the main thread waits for it */
}

static void *worker_main(void *arg)
{
	event_base_dispatch(((struct worker *)arg)->base);
	return NULL;
}

static const char *arg_str(int argc, char **argv, const char *name,
			   const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return def;
}

static void print_path(struct evsteer_listener *lev)
{
	EVSTEER_PATH_OPTS(p);
	evsteer_listener_get_path(lev, &p);
	printf("path: %s\n", p.name);
	if (p.steering == EVSTEER_STEER_BPF)
		printf("  steering: bpf, policy %s\n", evsteer_policy_name(p.policy));
	else if (p.steering == EVSTEER_STEER_CBPF)
		printf("  steering: classic bpf (hash over the healthy workers)\n");
	else
		printf("  steering: kernel hash\n");
	if (*p.steering_reason)
		printf("    why: %s\n", p.steering_reason);
	printf("  accept engine: %s\n",
	       p.engine == EVSTEER_ENGINE_URING ? "io_uring" : "event (accept4)");
	if (*p.engine_reason)
		printf("    why: %s\n", p.engine_reason);
}

int main(int argc, char **argv)
{
	const char *addr = arg_str(argc, argv, "--address", "0.0.0.0");
	int port = atoi(arg_str(argc, argv, "--port", "8080"));
	int nworkers = atoi(arg_str(argc, argv, "--workers", "2"));
	const char *fdname = arg_str(argc, argv, "--fdname", NULL);
	exit_after = atol(arg_str(argc, argv, "--exit-after", "0"));
	if (port < 0 || port > 65535 || nworkers < 1 ||
	    nworkers > EVSTEER_MAX_WORKERS || exit_after < 0) {
		fprintf(stderr, "usage: %s [--address A] [--port P] [--workers N] "
				"[--fdname NAME] [--exit-after N]\n",
			argv[0]);
		return 2;
	}
	evthread_use_pthreads();
	/* SIGTERM/SIGINT are taken by the main thread only (sigwait) */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	int fds[EVSTEER_MAX_WORKERS];
	int n = evsteer_listen_fds(fdname, fds, EVSTEER_MAX_WORKERS, 1);
	struct evsteer_group *g;
	const char *origin;
	if (n < 0) {
		fprintf(stderr, "evsteer-service: LISTEN_FDS: %s\n", strerror(-n));
		return 1;
	} else if (n > 0) {
		origin = "passed in LISTEN_FDS";
		g = evsteer_group_from_fds(fds, (unsigned)n,
					   EVSTEER_OPT_CLOSE_ON_EXEC, NULL);
	} else {
		origin = "bound here";
		struct sockaddr_in sin = {.sin_family = AF_INET,
					  .sin_port = htons((uint16_t)port)};
		if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
			fprintf(stderr, "evsteer-service: bad address %s\n", addr);
			return 2;
		}
		n = nworkers;
		g = evsteer_group_new((struct sockaddr *)&sin, sizeof(sin),
				      (unsigned)n,
				      EVSTEER_OPT_CLOSE_ON_EXEC | EVSTEER_OPT_REUSEABLE,
				      -1, NULL);
	}
	if (!g) {
		fprintf(stderr, "evsteer-service: group: %s\n", strerror(errno));
		return 1;
	}

	struct worker *w = calloc((size_t)n, sizeof(*w));
	for (int i = 0; i < n; i++) {
		w[i].base = event_base_new();
		w[i].lev = evsteer_group_attach(g, (unsigned)i, w[i].base,
						on_accept, &w[i]);
		if (!w[i].base || !w[i].lev) {
			fprintf(stderr, "evsteer-service: worker %d: %s\n", i,
				strerror(errno));
			return 1;
		}
	}
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	getsockname(evsteer_group_get_fd(g, 0), (struct sockaddr *)&ss, &len);
	void *ip = ss.ss_family == AF_INET6 ?
			   (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr :
			   (void *)&((struct sockaddr_in *)&ss)->sin_addr;
	inet_ntop(ss.ss_family, ip, host, sizeof(host));
	printf("evsteer-service %s: %d workers on %s port %d, sockets %s\n",
	       evsteer_version(), n, host,
	       ntohs(((struct sockaddr_in *)&ss)->sin_port), origin);
	print_path(w[0].lev);
	evsteer_group_free(g); /* the listeners keep it */

	for (int i = 0; i < n; i++)
		pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
	printf("ready\n");
	fflush(stdout);

	int sig;
	sigwait(&stop, &sig);
	for (int i = 0; i < n; i++)
		event_base_loopexit(w[i].base, NULL);
	for (int i = 0; i < n; i++)
		pthread_join(w[i].thread, NULL);
	g = evsteer_listener_get_group(w[0].lev);
	for (int i = 0; i < n; i++) {
		EVSTEER_WORKER_STATS_OPTS(st);
		evsteer_group_worker_stats(g, (unsigned)i, &st);
		printf("worker %d accepted %ld (steered %llu, stolen %llu)\n", i,
		       atomic_load(&w[i].accepted), (unsigned long long)st.steered,
		       (unsigned long long)st.stolen);
	}
	for (int i = 0; i < n; i++) {
		evsteer_listener_free(w[i].lev);
		event_base_free(w[i].base);
	}
	printf("stopped (%s): %ld connections\n", strsignal(sig),
	       atomic_load(&total));
	free(w);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * A small server for the cross-process tests (test_xproc): one process of
 * a prefork or restarting service. N worker threads, each with its own
 * event_base and listener on 127.0.0.1:PORT, either from one native group
 * or as implicit REUSEABLE_PORT listeners. Each connection is answered
 * with this process's pid and a newline, then closed.
 *
 *   xproc_server --port P --workers N [--implicit] [--policy NAME]
 *                [--stall-us N] [--accept auto|event|uring]
 *                [--bpf auto|off|require] [--frozen]
 *
 * Prints "ready PORT PATH STEERING_REASON" once listening. Then reads
 * commands on stdin, one a line:
 *   path      -> "path NAME REASON"
 *   stats     -> "slots N", then "slot G pid P mine M live L steered S
 *                accepted A migrated M" for each global slot, then "end"
 *   unfreeze  -> the workers' loops start (--frozen: they wait, so
 *                connections queue on this process's sockets)
 *   retire    -> evsteer_group_retire(): "retired"
 *   pending   -> "pending N" (evsteer_group_pending())
 *   leave     -> free every listener and the group (a graceful leave),
 *                then "left ACCEPTED"
 * and leaves the same way at end of input or SIGTERM.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <evsteer/evsteer.h>

#define MAXW 16

struct worker {
	struct event_base *base;
	struct evsteer_listener *lev;
	pthread_t t;
};

static struct worker w[MAXW];
static int nw;
static struct evsteer_group *group;
static atomic_long accepted;
static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool frozen;

static void on_accept(struct evsteer_listener *l, int fd, struct sockaddr *sa,
		      int len, void *arg)
{
	(void)l, (void)sa, (void)len, (void)arg;
	char b[32];
	int n = snprintf(b, sizeof(b), "%d\n", (int)getpid());
	if (write(fd, b, (size_t)n) < 0) {
		/* the client went away */
	}
	close(fd);
	atomic_fetch_add(&accepted, 1);
}

static void *run(void *arg)
{
	struct worker *x = arg;
	pthread_mutex_lock(&lk);
	while (frozen)
		pthread_cond_wait(&cv, &lk);
	pthread_mutex_unlock(&lk);
	event_base_dispatch(x->base);
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

static bool arg_flag(int argc, char **argv, const char *name)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

static void leave(void)
{
	for (int i = 0; i < nw; i++) {
		evsteer_listener_free(w[i].lev);
		w[i].lev = NULL;
	}
	evsteer_group_free(group);
	group = NULL;
	pthread_mutex_lock(&lk);
	frozen = false;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&lk);
	for (int i = 0; i < nw; i++) {
		pthread_join(w[i].t, NULL);
		event_base_free(w[i].base);
	}
	printf("left %ld\n", atomic_load(&accepted));
	fflush(stdout);
}

static void print_path(const char *tag)
{
	EVSTEER_PATH_OPTS(p);
	evsteer_listener_get_path(w[0].lev, &p);
	printf("%s %s %s\n", tag, p.name,
	       *p.steering_reason ? p.steering_reason : "-");
	fflush(stdout);
}

static void print_stats(void)
{
	struct evsteer_group *g = evsteer_listener_get_group(w[0].lev);
	unsigned int n = evsteer_group_global_size(g);
	printf("slots %u\n", n);
	for (unsigned int i = 0; i < n; i++) {
		EVSTEER_WORKER_STATS_OPTS(st);
		evsteer_group_global_stats(g, i, &st);
		printf("slot %u pid %d mine %d live %d steered %llu accepted %llu "
		       "migrated %llu\n",
		       i, st.pid, st.mine, st.live, (unsigned long long)st.steered,
		       (unsigned long long)st.accepted,
		       (unsigned long long)st.migrated);
	}
	printf("end\n");
	fflush(stdout);
}

static enum evsteer_policy policy_of(const char *p)
{
	for (int i = 0; i <= EVSTEER_POLICY_CPU; i++)
		if (!strcmp(p, evsteer_policy_name((enum evsteer_policy)i)))
			return (enum evsteer_policy)i;
	return EVSTEER_POLICY_LEAST_PENDING;
}

int main(int argc, char **argv)
{
	int port = atoi(arg_str(argc, argv, "--port", "0"));
	nw = atoi(arg_str(argc, argv, "--workers", "2"));
	const char *acc = arg_str(argc, argv, "--accept", "auto");
	const char *bpf = arg_str(argc, argv, "--bpf", "auto");
	frozen = arg_flag(argc, argv, "--frozen");
	if (nw < 1 || nw > MAXW)
		return 2;
	evthread_use_pthreads();
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	enum evsteer_accept_mode am = !strcmp(acc, "event") ? EVSTEER_ACCEPT_EVENT :
				      !strcmp(acc, "uring") ? EVSTEER_ACCEPT_URING :
							      EVSTEER_ACCEPT_AUTO;
	enum evsteer_bpf_mode bm = !strcmp(bpf, "off")	   ? EVSTEER_BPF_OFF :
				   !strcmp(bpf, "require") ? EVSTEER_BPF_REQUIRE :
							     EVSTEER_BPF_AUTO;
	enum evsteer_policy pol =
		policy_of(arg_str(argc, argv, "--policy", "least-pending"));
	int stall = atoi(arg_str(argc, argv, "--stall-us", "0"));

	if (!arg_flag(argc, argv, "--implicit")) {
		EVSTEER_GROUP_OPTS(o, .policy = pol, .bpf = bm, .accept = am,
				   .stall_us = stall);
		group = evsteer_group_new((struct sockaddr *)&sin, sizeof(sin),
					  (unsigned)nw,
					  EVSTEER_OPT_REUSEABLE | EVSTEER_OPT_THREADSAFE, -1,
					  &o);
		if (!group) {
			printf("error %d %s\n", errno, strerror(errno));
			return 1;
		}
	}
	for (int i = 0; i < nw; i++) {
		w[i].base = event_base_new();
		if (group) {
			w[i].lev = evsteer_group_attach(group, (unsigned)i,
							w[i].base, on_accept, NULL);
		} else {
			EVSTEER_LISTENER_OPTS(o, .policy = pol, .bpf = bm,
					      .accept = am, .stall_us = stall);
			w[i].lev = evsteer_listener_new_bind(
				w[i].base, on_accept, NULL,
				EVSTEER_OPT_CLOSE_ON_FREE | EVSTEER_OPT_REUSEABLE |
					EVSTEER_OPT_REUSEABLE_PORT |
					EVSTEER_OPT_THREADSAFE,
				-1, (struct sockaddr *)&sin, sizeof(sin), &o);
		}
		if (!w[i].lev) {
			printf("error %d %s\n", errno, strerror(errno));
			return 1;
		}
		if (i == 0) {
			socklen_t sl = sizeof(sin);
			getsockname(evsteer_listener_get_fd(w[0].lev),
				    (struct sockaddr *)&sin, &sl);
		}
	}
	for (int i = 0; i < nw; i++)
		pthread_create(&w[i].t, NULL, run, &w[i]);
	printf("ready %d ", ntohs(sin.sin_port));
	print_path("");

	/* commands on stdin; SIGTERM ends it too (sigwait in a thread would
	 * be tidier; a blocking read plus SIGTERM's default is enough: the
	 * tests send "leave" for a graceful exit) */
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	char line[64];
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "path", 4)) {
			print_path("path");
		} else if (!strncmp(line, "stats", 5)) {
			print_stats();
		} else if (!strncmp(line, "unfreeze", 8)) {
			pthread_mutex_lock(&lk);
			frozen = false;
			pthread_cond_broadcast(&cv);
			pthread_mutex_unlock(&lk);
			printf("unfrozen\n");
			fflush(stdout);
		} else if (!strncmp(line, "retire", 6)) {
			int r = evsteer_group_retire(
				evsteer_listener_get_group(w[0].lev));
			printf("retired %d\n", r);
			fflush(stdout);
		} else if (!strncmp(line, "pending", 7)) {
			printf("pending %d\n", evsteer_group_pending(
				evsteer_listener_get_group(w[0].lev)));
			fflush(stdout);
		} else if (!strncmp(line, "leave", 5)) {
			break;
		}
	}
	leave();
	return 0;
}

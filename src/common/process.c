/* SPDX-License-Identifier: MIT */
/*
 * One set of fork handlers for the whole library, registered at load: the
 * order in which the registries are locked before fork() is written here
 * once, not decided by which module happened to register first.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "common/process.h"

static unsigned int gen;

unsigned int evst_process_gen(void)
{
	return __atomic_load_n(&gen, __ATOMIC_RELAXED);
}

int evst_thread_run_delay(unsigned int tid, uint64_t *waited, uint64_t *on_cpu)
{
	char path[64], buf[96];
	if (tid)
		snprintf(path, sizeof(path), "/proc/self/task/%u/schedstat", tid);
	else
		snprintf(path, sizeof(path), "/proc/thread-self/schedstat");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	/* "<on-CPU ns> <waiting ns> <slices>" */
	char *end;
	*on_cpu = strtoull(buf, &end, 10);
	if (end == buf || *end != ' ')
		return -1;
	*waited = strtoull(end + 1, NULL, 10);
	return 0;
}

void evst_inherited_call(const char *fn)
{
	evst_warn("%s: the object was made before fork() by the parent "
		  "process; in the child only evsteer_listener_free() or "
		  "evsteer_group_free() may be called on it",
		  fn);
	errno = EINVAL;
}

/* struct fork_part: one registry's three steps. */
struct fork_part {
	void (*prepare)(void);
	void (*parent)(void);
	void (*child)(void);
};

#define PART(name) {name##_fork_prepare, name##_fork_parent, name##_fork_child}

/*
 * Lock order: a thread may hold an earlier registry's lock while it takes
 * a later one (shared -> rendezvous, anything -> log), never the other
 * way, so taking them all in this order cannot deadlock with a thread
 * that runs on while we fork. Without the stubs of a build without BPF or
 * io_uring, every part exists in every build.
 */
static const struct fork_part parts[] = {
	PART(evst_listen_order_registry),
	PART(evst_group_registry),
	PART(evst_shared_registry),
	PART(evst_rdv_registry),
	PART(evst_ring_registry),
	PART(evst_watch_registry),
	PART(evst_log_registry),
};
#define NPARTS (sizeof(parts) / sizeof(parts[0]))

static void prepare(void)
{
	for (unsigned int i = 0; i < NPARTS; i++)
		parts[i].prepare();
}

static void parent(void)
{
	for (unsigned int i = NPARTS; i-- > 0;)
		parts[i].parent();
}

static void child(void)
{
	__atomic_store_n(&gen, gen + 1, __ATOMIC_RELAXED);
	for (unsigned int i = NPARTS; i-- > 0;)
		parts[i].child();
}

/* At load, before any thread of ours or any object exists: a fork at any
 * later moment finds the handlers in place. */
__attribute__((constructor)) static void process_init(void)
{
	pthread_atfork(prepare, parent, child);
}

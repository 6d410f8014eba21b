/* SPDX-License-Identifier: MIT */
/* Test helpers for forked children (no cmocka here: its state is the
 * parent's). */
#include "tlib.h"

#include <errno.h>
#include <unistd.h>
#include <string.h>
#include <stdio.h>
#include <signal.h>
#include <dirent.h>
#include <time.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/wait.h>

int tl_deny_syscall(long nr, int err)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TL_SECCOMP_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K,
			 SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

/* A child that has not exited this long after its work is hung: what each
 * of its threads waits in, then it is killed (a bounded wait, and the
 * reason on record). */
#define CHILD_WAIT_S 60

/* The first line of file path into buf (without its newline); "" if none. */
static void read_line(const char *path, char *buf, size_t len)
{
	buf[0] = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	if (!fgets(buf, (int)len, f))
		buf[0] = 0;
	buf[strcspn(buf, "\n")] = 0;
	fclose(f);
}

static void say_where_hung(pid_t pid)
{
	char path[320];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char wchan[256], sys[128];
		snprintf(path, sizeof(path), "/proc/%d/task/%s/wchan", (int)pid,
			 e->d_name);
		read_line(path, wchan, sizeof(wchan));
		snprintf(path, sizeof(path), "/proc/%d/task/%s/syscall",
			 (int)pid, e->d_name);
		read_line(path, sys, sizeof(sys));
		fprintf(stderr, "hung child %d, thread %s: wchan %s, syscall %s\n",
			(int)pid, e->d_name, wchan, sys);
	}
	if (d)
		closedir(d);
}

uint64_t tl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#if defined(__SANITIZE_ADDRESS__)
/* The state letter of thread tid of this process (R, S, D, ...); 0 if it
 * is gone. */
static char thread_state(const char *tid)
{
	char path[128], line[512];
	snprintf(path, sizeof(path), "/proc/self/task/%s/stat", tid);
	read_line(path, line, sizeof(line));
	/* "tid (comm) S ...": comm may hold spaces and parentheses */
	const char *p = strrchr(line, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

/* Does every thread of this process but the caller sleep? An io_uring
 * worker idles in S or I. */
static bool others_asleep(void)
{
	char self[32];
	snprintf(self, sizeof(self), "%ld", (long)gettid());
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return true; /* nothing to go by: fork as asked */
	bool asleep = true;
	struct dirent *e;
	while (asleep && (e = readdir(d))) {
		if (e->d_name[0] == '.' || !strcmp(e->d_name, self))
			continue;
		char st = thread_state(e->d_name);
		asleep = !st || st == 'S' || st == 'I';
	}
	closedir(d);
	return asleep;
}

#endif

/*
 * Seen in gdb (test_fork, ASan, a loaded machine): the parent forked while
 * the stall watch thread it had just made was in AsanThread::Init, which
 * allocates; the child's own watch thread then waited for ever in
 * SizeClassAllocator64::GetFromAllocator on that size class's lock.
 * glibc's malloc takes and resets its locks around fork; GCC 12's ASan
 * does not (LLVM's runtime has done so since llvm/llvm-project#75290,
 * December 2023). A sleeping thread is not inside the allocator: the
 * library's threads allocate as they start, and sleep between rounds.
 */
pid_t tl_fork(void)
{
#if defined(__SANITIZE_ADDRESS__)
	uint64_t until = tl_now_ms() + 10000;
	while (!others_asleep()) {
		if (tl_now_ms() >= until) {
			/* said, so that a hung child has its context */
			fprintf(stderr, "tl_fork: a thread still runs after "
					"10 s; forking anyway\n");
			break;
		}
		usleep(1000);
	}
#endif
	return fork();
}

int tl_wait_status(pid_t pid)
{
	int st;
	pid_t r;
	/* polled, not blocked in waitpid(): a child that exits at once is
	 * seen within a millisecond */
	for (uint64_t until = tl_now_ms() + CHILD_WAIT_S * 1000;
	     tl_now_ms() < until;) {
		r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		if (r < 0 && errno != EINTR)
			return -1;
		usleep(1000);
	}
	say_where_hung(pid);
	kill(pid, SIGKILL);
	while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
		;
	errno = ETIMEDOUT;
	return -1;
}

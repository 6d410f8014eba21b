/* SPDX-License-Identifier: MIT */
/*
 * Fallback reasons: each cause gets its own sentence naming its fix, and
 * never the fix of another cause. The table covers causes that cannot be
 * forced on a test machine without disturbing it (kernel.io_uring_disabled
 * is global, an old kernel, an LSM); the facts the library gathers are
 * checked against the real process, a seccomp filter and a user namespace
 * (test_fallback.c and the container tests check the whole path).
 */
#include "tlib.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/reasons.h"

/* what group.c and uring.c give these functions */
#define BPF_REASON_LEN 192
#define URING_REASON_LEN 160

struct bpf_case {
	struct evst_bpf_facts f;
	const char *want[3];
	const char *not[2];
};

static void test_bpf_table(void **state)
{
	(void)state;
	static const struct bpf_case cases[] = {
		/* no capability, nothing else in the way */
		{{EPERM, EINVAL, 0, 0, 0, 6, 1, 0, 0}, {"needs CAP_BPF", "--cap-add BPF"},
		 {"seccomp"}},
		/* no capability under Docker's profile: the capability is the fix
		 * (the profile allows bpf with it) */
		{{EPERM, EPERM, 0, 2, 0, 6, 1, 0, 0}, {"needs CAP_BPF", "seccomp"}, {NULL}},
		/* CAP_BPF held, seccomp refuses the call (podman's default) */
		{{EPERM, EPERM, 1, 2, 0, 6, 1, 0, 0},
		 {"CAP_BPF is held", "seccomp", "deploy/seccomp/evsteer.json"},
		 {"needs CAP_BPF", "lacks"}},
		/* user namespace: all capabilities, none that count */
		{{EPERM, EINVAL, 1, 0, 1, 6, 1, 0, 0},
		 {"user namespace", "host's user namespace"},
		 {"needs CAP_BPF", "seccomp"}},
		/* an LSM refusing every call */
		{{EACCES, EACCES, 1, 0, 0, 6, 1, 0, 0}, {"LSM", "audit"},
		 {"needs CAP_BPF", "seccomp"}},
		/* an LSM refusing the load only */
		{{EPERM, EINVAL, 1, 0, 0, 6, 1, 0, 0}, {"LSM", "lockdown"},
		 {"needs CAP_BPF", "seccomp"}},
		/* an old kernel charging memlock */
		{{EPERM, EINVAL, 1, 0, 0, 5, 10, 0, 0}, {"RLIMIT_MEMLOCK", "LimitMEMLOCK"},
		 {"needs CAP_BPF"}},
		/* capabilities unreadable: say what it could be */
		{{EPERM, EINVAL, -1, -1, -1, -1, -1, 0, 0}, {"CAP_BPF", "seccomp"}, {NULL}},
		{{ENOSYS, ENOSYS, 1, 2, 0, 6, 1, 0, 0}, {"unavailable", "seccomp"},
		 {"CAP_BPF"}},
		{{ENOSYS, ENOSYS, 1, 0, 0, 6, 1, 0, 0},
		 {"unavailable", "CONFIG_BPF_SYSCALL"}, {"seccomp"}},
		{{EINVAL, EINVAL, 1, 0, 0, 5, 10, 0, 0}, {"kernel 5.10 is too old", "5.14"},
		 {"verifier"}},
		{{EINVAL, EINVAL, 1, 0, 0, 6, 18, 0, 0}, {"verifier", "EVSTEER_LOG=debug"},
		 {"too old"}},
		{{E2BIG, EINVAL, 1, 0, 0, 4, 19, 0, 0}, {"too old"}, {NULL}},
		{{ENOMEM, EINVAL, 1, 0, 0, 6, 1, 0, 0}, {"Cannot allocate memory"},
		 {"CAP_BPF"}},
		/* the verifier refused the program (it wrote a log): EACCES
		 * from a stack rule is the verifier's, never an LSM's (6.1
		 * with CAP_BPF alone, issue 20) */
		{{EACCES, EINVAL, 1, 0, 0, 6, 1, 1, 0},
		 {"verifier rejected", "CAP_PERFMON", "EVSTEER_LOG=debug"},
		 {"LSM", "audit"}},
		{{EPERM, EINVAL, 1, 0, 0, 6, 1, 1, 1},
		 {"verifier rejected", "EVSTEER_LOG=debug"}, {"LSM", "PERFMON"}},
		{{EINVAL, EINVAL, 1, 0, 0, 5, 10, 1, 1}, {"verifier rejected"},
		 {"LSM", "too old"}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct bpf_case *c = &cases[i];
		char big[512], buf[BPF_REASON_LEN];
		evst_bpf_reason(&c->f, big, sizeof(big));
		evst_bpf_reason(&c->f, buf, sizeof(buf));
		print_message("case %zu: %s\n", i, big);
		/* fits the buffers the library gives it: no cut-off fix */
		assert_true(strlen(big) < sizeof(buf));
		assert_string_equal(big, buf);
		assert_true(!strncmp(big, "bpf: ", 5));
		for (int k = 0; k < 3 && c->want[k]; k++)
			if (!strstr(big, c->want[k]))
				fail_msg("case %zu: \"%s\" lacks \"%s\"", i, big,
					 c->want[k]);
		for (int k = 0; k < 2 && c->not[k]; k++)
			if (strstr(big, c->not[k]))
				fail_msg("case %zu: \"%s\" says \"%s\"", i, big,
					 c->not[k]);
	}
}

struct uring_case {
	struct evst_uring_facts f;
	const char *want[2];
	const char *not;
};

static void test_uring_table(void **state)
{
	(void)state;
	static const struct uring_case cases[] = {
		{{EPERM, 2, 0, 0}, {"kernel.io_uring_disabled=2", "=0"}, "seccomp"},
		/* the sysctl is the cause even under a seccomp filter */
		{{EPERM, 2, 1, 2}, {"kernel.io_uring_disabled=2"}, "seccomp"},
		{{EPERM, 1, 0, 0}, {"kernel.io_uring_disabled=1", "io_uring_group"},
		 "seccomp"},
		/* =1 but allowed (in the group): then it is the filter */
		{{EPERM, 1, 1, 2}, {"seccomp", "deploy/seccomp/evsteer.json"},
		 "io_uring_disabled"},
		{{EPERM, 0, 0, 2}, {"(EPERM) by a seccomp filter", "io_uring_*"},
		 "io_uring_disabled"},
		/* before Linux 6.6 there is no sysctl */
		{{EPERM, -1, -1, 2}, {"seccomp"}, "io_uring_disabled"},
		{{EPERM, 0, 0, 0}, {"LSM"}, "seccomp"},
		{{ENOSYS, 0, 0, 2}, {"(ENOSYS) under a seccomp", "io_uring_*"},
		 "CONFIG"},
		{{ENOSYS, -1, 0, 0}, {"(ENOSYS)", "CONFIG_IO_URING"}, "seccomp"},
		{{EOPNOTSUPP, 0, 0, 0}, {"multishot accept", "5.19"}, "seccomp"},
		{{ENOMEM, 0, 0, 0}, {"Cannot allocate memory"}, "seccomp"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct uring_case *c = &cases[i];
		char big[512], buf[URING_REASON_LEN];
		evst_uring_reason(&c->f, big, sizeof(big));
		evst_uring_reason(&c->f, buf, sizeof(buf));
		print_message("case %zu: %s\n", i, big);
		assert_true(strlen(big) < sizeof(buf));
		assert_true(!strncmp(big, "io_uring: ", 10));
		for (int k = 0; k < 2 && c->want[k]; k++)
			if (!strstr(big, c->want[k]))
				fail_msg("case %zu: \"%s\" lacks \"%s\"", i, big,
					 c->want[k]);
		if (c->not && strstr(big, c->not))
			fail_msg("case %zu: \"%s\" says \"%s\"", i, big, c->not);
	}
}

/* ---- the facts, from real processes */

/* mode 0: as is; 1: under a seccomp filter on bpf; 2: in a user namespace.
 * Exit code 0 when the gathered facts are what that world implies. */
static int facts_child(int mode)
{
	fflush(NULL);
	pid_t pid = tl_fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (mode == 1 && tl_deny_syscall(__NR_bpf, EPERM) < 0)
			_exit(2);
		if (mode == 2 && unshare(CLONE_NEWUSER) < 0)
			_exit(3);
		struct evst_bpf_facts f;
		evst_bpf_facts_gather(EPERM, &f);
		fprintf(stderr,
			"mode %d: probe %d cap %d seccomp %d userns %d kernel %d.%d\n",
			mode, f.probe_err, f.cap_bpf, f.seccomp, f.userns, f.kmajor,
			f.kminor);
		if (f.kmajor < 3)
			_exit(10);
		switch (mode) {
		case 0: /* root with every capability, unconfined */
			_exit(f.probe_err == EINVAL && f.cap_bpf == 1 &&
					      f.seccomp == 0 && f.userns == 0 ?
				      0 :
				      11);
		case 1:
			_exit(f.probe_err == EPERM && f.cap_bpf == 1 &&
					      f.seccomp == 2 && f.userns == 0 ?
				      0 :
				      12);
		default: /* capabilities in the namespace, the call reachable */
			_exit(f.probe_err == EINVAL && f.cap_bpf == 1 &&
					      f.seccomp == 0 && f.userns == 1 ?
				      0 :
				      13);
		}
	}
	return tl_wait_status(pid);
}

static void test_facts_real(void **state)
{
	(void)state;
	tl_skip_unless(geteuid() == 0, "bpf", "needs root (full capabilities)");
	assert_int_equal(facts_child(0), 0);
	tl_skip_unless(TL_SECCOMP_ARCH != 0, "bpf", "no seccomp arch constant here");
	assert_int_equal(facts_child(1), 0);
	tl_skip_unless(tl_sysctl_int("user/max_user_namespaces", 1) > 0, "bpf",
		       "user namespaces disabled here");
#if defined(__SANITIZE_THREAD__)
	/* unshare(CLONE_NEWUSER) needs a single-threaded process, and TSan
	 * runs a thread of its own in every process (EINVAL); the plain and
	 * ASan suites run this part. */
	print_message("skip: the user-namespace case, under ThreadSanitizer\n");
	return;
#endif
	assert_int_equal(facts_child(2), 0);
}

static void test_uring_facts_real(void **state)
{
	(void)state;
	struct evst_uring_facts f;
	evst_uring_facts_gather(EPERM, &f);
	/* the sysctl as the kernel shows it (absent before 6.6) */
	assert_int_equal(f.disabled,
			 tl_sysctl_int("kernel/io_uring_disabled", -1));
	assert_int_equal(f.seccomp, 0);
	if (geteuid() == 0)
		assert_int_equal(f.in_group, 1); /* CAP_SYS_ADMIN */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bpf_table),
		cmocka_unit_test(test_uring_table),
		cmocka_unit_test(test_facts_real),
		cmocka_unit_test(test_uring_facts_real),
	};
	return tl_run_once("reasons", tests, sizeof(tests) / sizeof(tests[0]));
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <linux/capability.h>

#include "reasons.h"

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif
#define EVST_ENOTSUPP 524 /* the kernel's internal "not supported" */

/* capget, not libcap: one call, and /proc may not be mounted */
static int cap_effective(int cap)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3,
					     .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) < 0)
		return -1;
	return (d[cap / 32].effective >> (cap % 32)) & 1;
}

static int seccomp_mode(void)
{
	int m = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
	return m < 0 ? -1 : m;
}

/*
 * The initial user namespace has a fixed inode number (PROC_USER_INIT_INO
 * in the kernel); failing that, it maps every uid to itself. A new
 * namespace has no map until one is written.
 */
static int in_userns(void)
{
	struct stat st;
	if (stat("/proc/self/ns/user", &st) == 0)
		return st.st_ino != 0xEFFFFFFDu;
	FILE *f = fopen("/proc/self/uid_map", "re");
	if (!f)
		return -1;
	unsigned long a, b, c;
	int lines = 0, full = 0;
	while (fscanf(f, "%lu %lu %lu", &a, &b, &c) == 3) {
		lines++;
		full = a == 0 && b == 0 && c == 4294967295ul;
	}
	fclose(f);
	return !(lines == 1 && full);
}

static int sysctl_int(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int v;
	if (fscanf(f, "%d", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static void kernel_version(int *major, int *minor)
{
	struct utsname u;
	*major = *minor = -1;
	if (uname(&u) == 0 && sscanf(u.release, "%d.%d", major, minor) != 2)
		*major = *minor = -1;
}

void evst_bpf_facts_gather(int err, struct evst_bpf_facts *f)
{
	f->err = err;
	/* No such command: the kernel answers EINVAL once the call gets past
	 * seccomp and the LSM hook; nothing is created. */
	long r = syscall(SYS_bpf, 0x7fff, NULL, 0);
	f->probe_err = r < 0 ? errno : 0;
	int bpf = cap_effective(CAP_BPF), admin = cap_effective(CAP_SYS_ADMIN);
	f->cap_bpf = bpf < 0 || admin < 0 ? -1 : bpf || admin;
	int perfmon = cap_effective(CAP_PERFMON);
	f->cap_perfmon = perfmon < 0 || admin < 0 ? -1 : perfmon || admin;
	f->verifier = 0;
	f->seccomp = seccomp_mode();
	f->userns = in_userns();
	kernel_version(&f->kmajor, &f->kminor);
}

void evst_uring_facts_gather(int err, struct evst_uring_facts *f)
{
	f->err = err;
	f->disabled = sysctl_int("/proc/sys/kernel/io_uring_disabled");
	f->seccomp = seccomp_mode();
	f->in_group = cap_effective(CAP_SYS_ADMIN);
	int gid = sysctl_int("/proc/sys/kernel/io_uring_group");
	if (f->in_group == 0 && gid >= 0) {
		gid_t groups[256];
		int n = getgroups(256, groups);
		if ((gid_t)gid == getegid())
			f->in_group = 1;
		for (int i = 0; i < n; i++)
			if (groups[i] == (gid_t)gid)
				f->in_group = 1;
	}
}

static int older(const struct evst_bpf_facts *f, int major, int minor)
{
	return f->kmajor >= 0 &&
	       (f->kmajor < major || (f->kmajor == major && f->kminor < minor));
}

void evst_bpf_reason(const struct evst_bpf_facts *f, char *buf, size_t len)
{
	/* a filter refused the call itself, before the kernel looked */
	int filtered = f->probe_err != 0 && f->probe_err != EINVAL;
	const char *why;
	char tmp[96];
	/*
	 * The verifier wrote a log: the kernel looked at the program and
	 * refused it, whatever the errno (EACCES for a stack or pointer rule,
	 * which without this would read as an LSM's). Without CAP_PERFMON the
	 * verifier is stricter (no pointer leaks, speculative paths walked).
	 */
	if (f->verifier == 1) {
		why = f->cap_bpf == 1 && f->cap_perfmon == 0 ?
			      "the kernel's verifier rejected the sk_reuseport "
			      "program as loaded with CAP_BPF but not CAP_PERFMON "
			      "(EVSTEER_LOG=debug shows its log)" :
			      "the kernel's verifier rejected the sk_reuseport "
			      "program (EVSTEER_LOG=debug shows its log)";
		snprintf(buf, len, "bpf: %s: %s", strerror(f->err), why);
		return;
	}
	switch (f->err) {
	case EPERM:
	case EACCES:
		if (f->cap_bpf == 0)
			why = filtered && f->seccomp == 2 ?
				      "the sk_reuseport program needs CAP_BPF, which this "
				      "process lacks (its seccomp filter also refuses bpf()): "
				      "grant it (--cap-add BPF)" :
				      "loading the sk_reuseport program needs CAP_BPF, which "
				      "this process lacks: grant it (--cap-add BPF, "
				      "AmbientCapabilities=CAP_BPF)";
		else if (f->cap_bpf < 0)
			why = "loading the sk_reuseport program needs CAP_BPF, or "
			      "seccomp, an LSM or a user namespace refused it";
		else if (filtered && f->seccomp == 2)
			why = "CAP_BPF is held but a seccomp filter refuses bpf(): "
			      "allow bpf in the profile (deploy/seccomp/evsteer.json "
			      "does, with CAP_BPF)";
		else if (f->userns == 1)
			why = "CAP_BPF is held only inside a user namespace, which "
			      "bpf() ignores: run in the host's user namespace (not "
			      "rootless, no userns-remap)";
		else if (filtered)
			why = "CAP_BPF is held but every bpf() call is refused: a "
			      "security module (LSM) policy denies it; see the audit log";
		else if (older(f, 5, 11))
			why = "CAP_BPF is held; kernels before 5.11 charge BPF maps to "
			      "RLIMIT_MEMLOCK: raise it (LimitMEMLOCK=, ulimit -l)";
		else
			why = "CAP_BPF is held but loading is refused: an LSM (SELinux, "
			      "AppArmor, BPF LSM) or lockdown denies it; see the audit log";
		break;
	case ENOSYS:
		why = f->seccomp == 2 ?
			      "bpf() is unavailable: a seccomp filter returns ENOSYS "
			      "for it; allow bpf in the profile "
			      "(deploy/seccomp/evsteer.json)" :
			      "bpf() is unavailable: the kernel lacks CONFIG_BPF_SYSCALL";
		break;
	case EINVAL:
	case E2BIG:
	case EOPNOTSUPP:
	case EVST_ENOTSUPP:
		if (older(f, 5, 14)) {
			snprintf(tmp, sizeof(tmp),
				 "kernel %d.%d is too old for the sk_reuseport/migrate "
				 "program (needs Linux 5.14+)",
				 f->kmajor, f->kminor);
			why = tmp;
		} else {
			why = "the kernel's verifier rejected the sk_reuseport "
			      "program (EVSTEER_LOG=debug shows its log)";
		}
		break;
	default:
		why = "loading the sk_reuseport program failed";
	}
	snprintf(buf, len, "bpf: %s: %s", strerror(f->err), why);
}

void evst_uring_reason(const struct evst_uring_facts *f, char *buf, size_t len)
{
	const char *why;
	switch (f->err) {
	case EPERM:
		if (f->disabled == 2)
			why = "refused (EPERM): kernel.io_uring_disabled=2; "
			      "allow it: sysctl kernel.io_uring_disabled=0";
		else if (f->disabled == 1 && f->in_group == 0)
			why = "refused (EPERM): kernel.io_uring_disabled=1 and not in "
			      "kernel.io_uring_group: add the gid, or set it to 0";
		else if (f->seccomp == 2)
			why = "refused (EPERM) by a seccomp filter (Docker 25+'s "
			      "default): allow io_uring_*: deploy/seccomp/evsteer.json";
		else
			why = "refused (EPERM) by a security module (LSM)";
		break;
	case ENOSYS:
		why = f->seccomp == 2 ?
			      "is not available (ENOSYS) under a seccomp filter: "
			      "allow io_uring_*: deploy/seccomp/evsteer.json" :
			      "is not available (ENOSYS): the kernel lacks "
			      "CONFIG_IO_URING";
		break;
	case EOPNOTSUPP:
		snprintf(buf, len,
			 "io_uring: the kernel lacks multishot accept (Linux 5.19+)");
		return;
	default:
		snprintf(buf, len, "io_uring: set-up failed: %s", strerror(f->err));
		return;
	}
	snprintf(buf, len, "io_uring: io_uring_setup() %s", why);
}

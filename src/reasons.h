/* SPDX-License-Identifier: MIT */
/*
 * Why a fast path is refused, and what fixes it. A failed bpf() or
 * io_uring_setup() says only EPERM or ENOSYS; the operator needs to know
 * whether to add a capability, change a seccomp profile or a sysctl, or
 * leave the user namespace. The facts are gathered once when a probe fails
 * (capabilities, seccomp mode, user namespace, sysctls, kernel version) and
 * turned into a sentence by pure functions, so every branch can be tested.
 */
#ifndef EVSTEER_REASONS_H
#define EVSTEER_REASONS_H

#include <stddef.h>

#define EVST_HIDDEN_R __attribute__((visibility("hidden")))

/* -1 in any field: unknown (could not be read). */
struct evst_bpf_facts {
	int err;       /* errno of the failed load */
	/* errno of bpf() with an invalid command: EINVAL means the call
	 * reached the kernel's bpf code; EPERM/ENOSYS mean a filter (seccomp
	 * or an LSM hook on every call) refused it before any check */
	int probe_err;
	int cap_bpf;   /* CAP_BPF or CAP_SYS_ADMIN in the effective set */
	int seccomp;   /* PR_GET_SECCOMP: 0 none, 2 filter */
	int userns;    /* 1: not the initial user namespace */
	int kmajor, kminor;
	/* 1: the kernel's verifier ran and wrote a log for the failed load
	 * (libbpf printed one): the program was refused, not the caller.
	 * Set by the loader, 0 from evst_bpf_facts_gather(). */
	int verifier;
	int cap_perfmon; /* CAP_PERFMON or CAP_SYS_ADMIN in the effective set */
};

struct evst_uring_facts {
	int err;       /* errno of io_uring_setup() */
	int disabled;  /* kernel.io_uring_disabled (Linux 6.6+) */
	int in_group;  /* member of kernel.io_uring_group, or CAP_SYS_ADMIN */
	int seccomp;
};

/* Look at this process and kernel after a load failed with err. */
EVST_HIDDEN_R void evst_bpf_facts_gather(int err, struct evst_bpf_facts *f);
EVST_HIDDEN_R void evst_uring_facts_gather(int err, struct evst_uring_facts *f);

/* "bpf: <error>: <why>; <fix>" / "io_uring: ...", truncated to len. */
EVST_HIDDEN_R void evst_bpf_reason(const struct evst_bpf_facts *f, char *buf,
				   size_t len);
EVST_HIDDEN_R void evst_uring_reason(const struct evst_uring_facts *f,
				     char *buf, size_t len);

#endif

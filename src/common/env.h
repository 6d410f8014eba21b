/* SPDX-License-Identifier: MIT */
/*
 * The environment, read in one place (env.c) and nowhere else: every
 * EVSTEER_* variable, and systemd's LISTEN_* of socket activation.
 * docs/behaviour.md lists them. Each function reads when it is called (a
 * host may set a variable before it makes a listener), warns through the
 * log on a malformed value and falls back to the option it was given.
 * An option the caller set explicitly (non-zero) wins over the variable.
 */
#ifndef EVSTEER_COMMON_ENV_H
#define EVSTEER_COMMON_ENV_H

#include <stdint.h>

#include <evsteer/evsteer.h>

#include "internal.h"

/* EVSTEER_BPF=auto|off|require (also 0, 1), when opt is AUTO. */
EVST_HIDDEN enum evsteer_bpf_mode evst_env_bpf(enum evsteer_bpf_mode opt);
/* EVSTEER_ACCEPT=auto|event|uring, when opt is AUTO. */
EVST_HIDDEN enum evsteer_accept_mode
evst_env_accept(enum evsteer_accept_mode opt);
/* EVSTEER_POLICY=least-pending|hash|round-robin|cpu, when opt is 0
 * (least-pending: so the variable also overrides an explicit 0). */
EVST_HIDDEN enum evsteer_policy evst_env_policy(enum evsteer_policy opt);
/* EVSTEER_STALL_US=microseconds (up to 60 s) or -1 (off), when opt is 0. */
EVST_HIDDEN int evst_env_stall_us(int opt);
/* EVSTEER_MAX_ACCEPTS=count (0: the default), when opt is 0. */
EVST_HIDDEN unsigned int evst_env_max_accepts(unsigned int opt);
/* EVSTEER_LOG=error|warn|info|debug: the level, or -1 when unset or
 * unknown (then ignored silently: the log is what would say so). */
EVST_HIDDEN int evst_env_log_level(void);

/*
 * EVSTEER_TEST_MASK=feature,...: for tests, pretend the kernel lacks these
 * probed features, so each degraded branch runs on a kernel that has them.
 * The bits of the names given (unknown names are warned about and
 * ignored); 0 when unset. docs/kernels.md lists what each one changes.
 */
enum evst_mask {
	EVST_MASK_ACCEPT_DONTWAIT = 1u << 0,  /* "accept_dontwait" */
	EVST_MASK_FIXED_FD_INSTALL = 1u << 1, /* "fixed_fd_install" */
	EVST_MASK_SOCK_NONEMPTY = 1u << 2,    /* "sock_nonempty" */
	EVST_MASK_BPF = 1u << 3,              /* "bpf" */
	/* classic BPF steering, the rung below eBPF (as if
	 * SO_ATTACH_REUSEPORT_CBPF were refused) */
	EVST_MASK_CBPF = 1u << 4,             /* "cbpf" */
};
EVST_HIDDEN unsigned int evst_env_test_mask(void);

/* systemd's socket activation: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES
 * as they are (NULL when unset). */
struct evst_env_listen {
	const char *pid, *fds, *fdnames;
};
EVST_HIDDEN void evst_env_listen(struct evst_env_listen *out);

#endif

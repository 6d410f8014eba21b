/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "reasons.h"
#include "steer.h"
#include "steer.skel.h"

struct evst_steer {
	struct steer_bpf *skel;
	int map_fd;
};

/* libbpf's messages during our load go to our log at debug level. */
static int libbpf_to_evst(enum libbpf_print_level level, const char *fmt,
			  va_list ap)
{
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	if (n && msg[n - 1] == '\n')
		msg[n - 1] = '\0';
	/* The outcome reaches the user as a fallback reason; libbpf's own
	 * lines (the verifier's log, probes) are detail for debugging. */
	(void)level;
	evst_debug("libbpf: %s", msg);
	return 0;
}

/* The errno alone cannot tell "grant CAP_BPF" from "fix the seccomp
 * profile" or "leave the user namespace": look at the process first. */
static void explain(int err, char *reason, size_t len)
{
	struct evst_bpf_facts f;
	evst_bpf_facts_gather(err, &f);
	evst_bpf_reason(&f, reason, len);
}

struct evst_steer *evst_steer_load(char *reason, size_t len)
{
	struct evst_steer *s = calloc(1, sizeof(*s));
	if (!s) {
		explain(ENOMEM, reason, len);
		errno = ENOMEM;
		return NULL;
	}
	/* Only for the duration of our load; the host's printer comes back. */
	libbpf_print_fn_t prev = libbpf_set_print(libbpf_to_evst);
	s->skel = steer_bpf__open_and_load();
	int err = s->skel ? 0 : errno;
	libbpf_set_print(prev);
	if (!s->skel) {
		if (!err)
			err = EINVAL;
		explain(err, reason, len);
		free(s);
		errno = err;
		return NULL;
	}
	s->map_fd = bpf_map__fd(s->skel->maps.socks);
	return s;
}

int evst_steer_attach(struct evst_steer *s, int fd)
{
	int prog = bpf_program__fd(s->skel->progs.evsteer_select);
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog,
		       sizeof(prog)) < 0)
		return -errno;
	return 0;
}

int evst_steer_set_slot(struct evst_steer *s, unsigned int slot, int fd)
{
	__u32 key = slot;
	int r;
	if (fd < 0) {
		r = bpf_map_delete_elem(s->map_fd, &key);
		/* an entry goes away by itself when its socket closes */
		return r < 0 && errno != ENOENT ? -errno : 0;
	}
	__u64 val = (__u64)fd;
	r = bpf_map_update_elem(s->map_fd, &key, &val, BPF_ANY);
	return r < 0 ? -errno : 0;
}

void evst_steer_view(struct evst_steer *s, struct evst_shared_view *v)
{
	struct steer_bpf__bss *b = s->skel->bss;
	v->workers = b->workers;
	v->table = b->table;
	v->table_len = &b->table_len;
	v->policy = &b->policy;
	v->stall_ns = &b->stall_ns;
	v->cpu_map = b->cpu_map;
	v->nslots = &b->nslots;
}

void evst_steer_destroy(struct evst_steer *s)
{
	if (!s)
		return;
	steer_bpf__destroy(s->skel);
	free(s);
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "reasons.h"
#include "steering/steer.h"
#include "steer.skel.h"

struct evst_steer {
	int fds[EVST_STEER_NFDS];
	struct steer_bpf__bss *bss; /* mmapped */
	size_t bss_len;
};

/* Set by libbpf_to_evst() when libbpf prints the verifier's log of a
 * failed load: the kernel ran the verifier, which refused the program.
 * Loads run one at a time (shared.c's reg_lock). */
static bool verifier_log;

/* The end of a verifier log holds the refusal; its start, the walk that
 * got there. Keep this many lines of it. */
#define LOG_TAIL_LINES 60

/* libbpf's messages during our load go to our log at debug level, line by
 * line (evst_log() has a fixed buffer, and a verifier log is long). */
static int libbpf_to_evst(enum libbpf_print_level level, const char *fmt,
			  va_list ap)
{
	/* The outcome reaches the user as a fallback reason; libbpf's own
	 * lines (the verifier's log, probes) are detail for debugging. */
	(void)level;
	char *msg = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		return 0;
	if (strstr(msg, "-- BEGIN PROG LOAD LOG --"))
		verifier_log = true;
	size_t lines = 0;
	for (const char *c = msg; *c; c++)
		lines += *c == '\n';
	size_t skip = lines > LOG_TAIL_LINES ? lines - LOG_TAIL_LINES : 0;
	char *save = NULL, *line = strtok_r(msg, "\n", &save);
	for (size_t i = 0; line; i++, line = strtok_r(NULL, "\n", &save)) {
		if (i == 0 || i >= skip) {
			/* libbpf's own lines say "libbpf: " already */
			evst_debug("%s%s", strncmp(line, "libbpf: ", 8) ?
						   "libbpf: " : "", line);
		} else if (i == 1) {
			evst_debug("libbpf: (%zu lines left out; the last %d "
				   "follow)", skip - 1, LOG_TAIL_LINES);
		}
	}
	free(msg);
	return 0;
}

/* The errno alone cannot tell "grant CAP_BPF" from "fix the seccomp
 * profile" or "leave the user namespace": look at the process first. */
static void explain(int err, char *reason, size_t len)
{
	struct evst_bpf_facts f;
	evst_bpf_facts_gather(err, &f);
	f.verifier = verifier_log;
	evst_bpf_reason(&f, reason, len);
}

int evst_steer_load(int fds[EVST_STEER_NFDS], char *reason, size_t len)
{
	/* Only for the duration of our load; the host's printer comes back. */
	verifier_log = false;
	libbpf_print_fn_t prev = libbpf_set_print(libbpf_to_evst);
	struct steer_bpf *skel = steer_bpf__open_and_load();
	int err = skel ? 0 : errno;
	libbpf_set_print(prev);
	if (!skel) {
		if (!err)
			err = EINVAL;
		explain(err, reason, len);
		return -err;
	}
	/* Our own copies, so that the creator and every joiner hold the same
	 * three descriptors and nothing else: the skeleton goes. */
	int src[EVST_STEER_NFDS] = {
		[EVST_FD_PROG] = bpf_program__fd(skel->progs.evsteer_select),
		[EVST_FD_SOCKS] = bpf_map__fd(skel->maps.socks),
		[EVST_FD_BSS] = bpf_map__fd(skel->maps.bss),
	};
	int i;
	for (i = 0; i < EVST_STEER_NFDS; i++) {
		fds[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3);
		if (fds[i] < 0)
			break;
	}
	err = i == EVST_STEER_NFDS ? 0 : errno;
	steer_bpf__destroy(skel);
	if (err) {
		while (i-- > 0)
			close(fds[i]);
		verifier_log = false; /* a dup failed, not the load */
		explain(err, reason, len);
		return -err;
	}
	return 0;
}

static bool map_is(int fd, enum bpf_map_type type, __u32 value_size,
		   __u32 max_entries, __u32 *id)
{
	struct bpf_map_info info = {0};
	__u32 il = sizeof(info);
	if (bpf_obj_get_info_by_fd(fd, &info, &il) < 0)
		return false;
	*id = info.id;
	return info.type == type && info.max_entries == max_entries &&
	       (!value_size || ((info.value_size + 7) & ~7u) == value_size);
	/* (the C struct of .bss is padded to 8 bytes, the map value not) */
}

/* Received descriptors come from another process of ours; still, check
 * that they are a program of our type using exactly these two maps. */
static int check_fds(const int fds[EVST_STEER_NFDS])
{
	__u32 socks_id, bss_id;
	if (!map_is(fds[EVST_FD_SOCKS], BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 0,
		    EVST_MAX_WORKERS, &socks_id) ||
	    !map_is(fds[EVST_FD_BSS], BPF_MAP_TYPE_ARRAY,
		    sizeof(struct steer_bpf__bss), 1, &bss_id))
		return -EPROTO;
	__u32 ids[8];
	struct bpf_prog_info info = {0};
	info.nr_map_ids = 8;
	info.map_ids = (__u64)(uintptr_t)ids;
	__u32 il = sizeof(info);
	if (bpf_obj_get_info_by_fd(fds[EVST_FD_PROG], &info, &il) < 0)
		return -errno;
	if (info.type != BPF_PROG_TYPE_SK_REUSEPORT)
		return -EPROTO;
	bool s = false, b = false;
	for (__u32 i = 0; i < info.nr_map_ids && i < 8; i++) {
		s |= ids[i] == socks_id;
		b |= ids[i] == bss_id;
	}
	return s && b ? 0 : -EPROTO;
}

struct evst_steer *evst_steer_open(int fds[EVST_STEER_NFDS])
{
	int err = check_fds(fds);
	struct evst_steer *s = err ? NULL : calloc(1, sizeof(*s));
	if (!s) {
		err = err ? err : -ENOMEM;
		goto fail;
	}
	long page = sysconf(_SC_PAGESIZE);
	s->bss_len = (sizeof(struct steer_bpf__bss) + (size_t)page - 1) &
		     ~((size_t)page - 1);
	void *p = mmap(NULL, s->bss_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		       fds[EVST_FD_BSS], 0);
	if (p == MAP_FAILED) {
		err = -errno;
		free(s);
		goto fail;
	}
	s->bss = p;
	memcpy(s->fds, fds, sizeof(s->fds));
	return s;
fail:
	for (int i = 0; i < EVST_STEER_NFDS; i++)
		close(fds[i]);
	errno = -err;
	return NULL;
}

const int *evst_steer_fds(const struct evst_steer *s)
{
	return s->fds;
}

int evst_steer_attach(struct evst_steer *s, int fd)
{
	int prog = s->fds[EVST_FD_PROG];
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog,
		       sizeof(prog)) < 0)
		return -errno;
	return 0;
}

int evst_steer_detach(int fd)
{
	int dummy = 0;
	if (setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &dummy,
		       sizeof(dummy)) < 0)
		return errno == ENOENT ? 0 : -errno;
	return 0;
}

int evst_steer_set_slot(struct evst_steer *s, unsigned int slot, int fd)
{
	__u32 key = slot;
	int r;
	if (fd < 0) {
		r = bpf_map_delete_elem(s->fds[EVST_FD_SOCKS], &key);
		/* an entry goes away by itself when its socket closes */
		return r < 0 && errno != ENOENT ? -errno : 0;
	}
	__u64 val = (__u64)fd;
	r = bpf_map_update_elem(s->fds[EVST_FD_SOCKS], &key, &val, BPF_ANY);
	return r < 0 ? -errno : 0;
}

uint64_t evst_steer_slot_cookie(struct evst_steer *s, unsigned int slot)
{
	__u32 key = slot;
	__u64 cookie = 0;
	if (bpf_map_lookup_elem(s->fds[EVST_FD_SOCKS], &key, &cookie) < 0)
		return 0;
	return cookie;
}

void evst_steer_view(struct evst_steer *s, struct evst_shared_view *v)
{
	struct steer_bpf__bss *b = s->bss;
	v->workers = b->workers;
	v->table = b->table;
	v->table_len = &b->table_len;
	v->live = b->live;
	v->live_len = &b->live_len;
	v->policy = &b->policy;
	v->stall_ns = &b->stall_ns;
	v->cpu_map = b->cpu_map;
	v->nslots = &b->nslots;
	v->stamps = b->stamps;
}

void evst_steer_close(struct evst_steer *s)
{
	if (!s)
		return;
	munmap(s->bss, s->bss_len);
	for (int i = 0; i < EVST_STEER_NFDS; i++)
		close(s->fds[i]);
	free(s);
}

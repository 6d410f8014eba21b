/*
 * What the running kernel offers of the io_uring and BPF features evsteer
 * uses, each tried for real (a feature the headers know is no evidence):
 * one "feature: yes|no (detail)" line each. deploy/vmtest.sh runs it in the
 * guest so a failing test can be matched to the missing feature. It is not
 * part of the library and never decides anything for it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <liburing.h>

/* enum values and bits newer than liburing 2.3's header */
#define P_OP_MSG_RING 40
#define P_OP_SOCKET 45
#define P_OP_SEND_ZC 47
#define P_OP_FIXED_FD_INSTALL 54
#define P_ACCEPT_MULTISHOT (1U << 0)
#define P_ACCEPT_DONTWAIT (1U << 1)
#define P_ACCEPT_POLL_FIRST (1U << 2)
#define P_CQE_F_SOCK_NONEMPTY (1U << 2)
#define P_REGISTER_SYNC_CANCEL 24
#define P_REGISTER_FILE_ALLOC_RANGE 25

static void line(const char *what, bool yes, const char *fmt, int v)
{
	printf("%-44s %s", what, yes ? "yes" : "no");
	if (fmt) {
		printf(" (");
		printf(fmt, v);
		printf(")");
	}
	printf("\n");
}

static int listener(struct sockaddr_in *sa)
{
	socklen_t len = sizeof(*sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)sa, len) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)sa, &len) < 0)
		return -1;
	return fd;
}

static int connect_to(const struct sockaddr_in *sa)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c >= 0 && connect(c, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
		close(c);
		return -1;
	}
	return c;
}

/* one accept on `fd` with ioprio flags; returns res, *flags the CQE's */
static int accept_once(struct io_uring *r, int fd, unsigned int ioprio,
		       unsigned int *flags)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(r);
	struct io_uring_cqe *cqe;
	io_uring_prep_accept(sqe, fd, NULL, NULL, 0);
	sqe->ioprio |= ioprio;
	io_uring_submit(r);
	struct __kernel_timespec ts = {2, 0};
	if (io_uring_wait_cqe_timeout(r, &cqe, &ts) < 0)
		return -ETIME;
	int res = cqe->res;
	*flags = cqe->flags;
	io_uring_cqe_seen(r, cqe);
	if (res >= 0)
		close(res);
	return res;
}

static void probe_uring(void)
{
	struct io_uring r;
	int ret = io_uring_queue_init(8, &r, 0);
	line("io_uring_setup", ret == 0, ret ? "%d" : NULL, ret);
	if (ret)
		return;
	printf("%-44s 0x%x\n", "io_uring features", r.features);

	static const struct {
		const char *name;
		unsigned int flags;
	} setups[] = {
		{"IORING_SETUP_CLAMP|CQSIZE (5.5/5.6)",
		 IORING_SETUP_CLAMP | IORING_SETUP_CQSIZE},
		{"IORING_SETUP_SUBMIT_ALL (5.18)", 1U << 7},
		{"IORING_SETUP_COOP_TASKRUN (5.19)", 1U << 8},
		{"IORING_SETUP_TASKRUN_FLAG (5.19)", (1U << 8) | (1U << 9)},
		{"IORING_SETUP_SINGLE_ISSUER (6.0)", 1U << 12},
		{"IORING_SETUP_DEFER_TASKRUN (6.1)", (1U << 12) | (1U << 13)},
		{"IORING_SETUP_NO_SQARRAY (6.6)", 1U << 16},
	};
	for (size_t i = 0; i < sizeof(setups) / sizeof(setups[0]); i++) {
		struct io_uring t;
		struct io_uring_params p = {.flags = setups[i].flags, .cq_entries = 64};
		int e = io_uring_queue_init_params(8, &t, &p);
		line(setups[i].name, e == 0, e ? "%d" : NULL, e);
		if (e == 0)
			io_uring_queue_exit(&t);
	}

	static const struct {
		const char *name;
		int op;
	} ops[] = {
		{"IORING_OP_ACCEPT (5.5)", IORING_OP_ACCEPT},
		{"IORING_OP_ASYNC_CANCEL (5.5)", IORING_OP_ASYNC_CANCEL},
		{"IORING_OP_SEND / RECV (5.6)", IORING_OP_SEND},
		{"IORING_OP_MSG_RING (5.18)", P_OP_MSG_RING},
		{"IORING_OP_SOCKET (5.19)", P_OP_SOCKET},
		{"IORING_OP_SEND_ZC (6.0)", P_OP_SEND_ZC},
		{"IORING_OP_FIXED_FD_INSTALL (6.8)", P_OP_FIXED_FD_INSTALL},
	};
	struct io_uring_probe *pr = io_uring_get_probe_ring(&r);
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		line(ops[i].name, pr && io_uring_opcode_supported(pr, ops[i].op),
		     NULL, 0);
	io_uring_free_probe(pr);

	/* register ops: arguments that are valid but match nothing */
	ret = io_uring_register_files_sparse(&r, 8);
	line("IORING_REGISTER_FILES sparse (5.19)", ret == 0, ret ? "%d" : NULL, ret);
	struct io_uring_sync_cancel_reg sc = {.addr = 0x5eed,
					      .timeout = {.tv_sec = -1, .tv_nsec = -1}};
	ret = io_uring_register_sync_cancel(&r, &sc);
	line("IORING_REGISTER_SYNC_CANCEL (6.0)", ret == -ENOENT || ret == 0,
	     "%d, -ENOENT expected", ret);
	struct io_uring_file_index_range range = {.off = 0, .len = 8};
	ret = io_uring_register(r.ring_fd, P_REGISTER_FILE_ALLOC_RANGE, &range, 0);
	line("IORING_REGISTER_FILE_ALLOC_RANGE (6.0)", ret == 0, ret ? "%d" : NULL, ret);

	/* accept flags, tried on a real socket */
	struct sockaddr_in sa;
	int lfd = listener(&sa);
	unsigned int fl = 0;
	ret = accept_once(&r, lfd, P_ACCEPT_DONTWAIT, &fl);
	line("IORING_ACCEPT_DONTWAIT (6.10)", ret == -EAGAIN,
	     "empty queue: %d, -EAGAIN expected", ret);
	int c1 = connect_to(&sa), c2 = connect_to(&sa), c3 = connect_to(&sa);
	ret = accept_once(&r, lfd, P_ACCEPT_POLL_FIRST, &fl);
	line("IORING_ACCEPT_POLL_FIRST (6.10)", ret >= 0, ret < 0 ? "%d" : NULL, ret);
	ret = accept_once(&r, lfd, 0, &fl);
	if (ret >= 0 && !(fl & P_CQE_F_SOCK_NONEMPTY)) {
		/* 3 queued, two taken: the flag must say one is left */
		line("IORING_CQE_F_SOCK_NONEMPTY on accept (6.10)", false,
		     "cqe flags 0x%x with a connection still queued", fl);
	} else {
		line("IORING_CQE_F_SOCK_NONEMPTY on accept (6.10)", ret >= 0,
		     "cqe flags 0x%x", ret >= 0 ? (int)fl : ret);
	}
	if (c1 >= 0)
		close(c1);
	if (c2 >= 0)
		close(c2);
	if (c3 >= 0)
		close(c3);
	{
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r);
		struct io_uring_cqe *cqe;
		io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
		io_uring_submit(&r);
		int c = connect_to(&sa);
		struct __kernel_timespec ts = {2, 0};
		ret = io_uring_wait_cqe_timeout(&r, &cqe, &ts);
		int res = ret < 0 ? ret : cqe->res;
		bool more = ret == 0 && (cqe->flags & IORING_CQE_F_MORE);
		if (ret == 0) {
			if (cqe->res >= 0)
				close(cqe->res);
			io_uring_cqe_seen(&r, cqe);
		}
		line("IORING_ACCEPT_MULTISHOT (5.19)", res >= 0 && more,
		     "res %d", res);
		if (c >= 0)
			close(c);
	}
	close(lfd);

	/* MSG_RING with IORING_MSG_SEND_FD: a direct descriptor to another ring */
	{
		struct io_uring r2;
		if (io_uring_queue_init(8, &r2, 0) == 0) {
			io_uring_register_files_sparse(&r2, 8);
			int fds[1] = {dup(1)};
			io_uring_register_files_update(&r, 0, fds, 1);
			struct io_uring_sqe *sqe = io_uring_get_sqe(&r);
			struct io_uring_cqe *cqe;
			io_uring_prep_rw(P_OP_MSG_RING, sqe, r2.ring_fd, NULL, 0, 0);
			sqe->addr = 1; /* IORING_MSG_SEND_FD */
			sqe->addr3 = 0; /* source slot */
			sqe->file_index = IORING_FILE_INDEX_ALLOC;
			io_uring_submit(&r);
			ret = io_uring_wait_cqe(&r, &cqe);
			int res = ret ? ret : cqe->res;
			if (!ret)
				io_uring_cqe_seen(&r, cqe);
			line("IORING_MSG_SEND_FD (6.0)", res >= 0, "res %d", res);
			close(fds[0]);
			io_uring_queue_exit(&r2);
		}
	}
	io_uring_queue_exit(&r);
}

static void probe_bpf(void)
{
	int ret = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_REUSEPORT, NULL);
	line("BPF_PROG_TYPE_SK_REUSEPORT", ret == 1, "%d", ret);
	ret = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, NULL);
	line("BPF_MAP_TYPE_REUSEPORT_SOCKARRAY", ret == 1, "%d", ret);
	ret = libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_REUSEPORT, BPF_FUNC_loop, NULL);
	line("bpf_loop in sk_reuseport (5.17)", ret == 1, "%d", ret);
	ret = libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_REUSEPORT,
				      BPF_FUNC_get_smp_processor_id, NULL);
	line("bpf_get_smp_processor_id in sk_reuseport", ret == 1, "%d", ret);

	/* SELECT_OR_MIGRATE (5.14): load "return SK_PASS" with that attach type */
	struct bpf_insn prog[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1},
		{.code = BPF_JMP | BPF_EXIT},
	};
	LIBBPF_OPTS(bpf_prog_load_opts, o,
		    .expected_attach_type = BPF_SK_REUSEPORT_SELECT_OR_MIGRATE);
	int fd = bpf_prog_load(BPF_PROG_TYPE_SK_REUSEPORT, "probe", "GPL", prog, 2, &o);
	line("BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (5.14)", fd >= 0,
	     fd < 0 ? "%d" : NULL, fd < 0 ? -errno : 0);
	if (fd >= 0)
		close(fd);
}

int main(void)
{
	struct utsname u;
	uname(&u);
	printf("%-44s %s %s\n", "kernel", u.release, u.version);
	libbpf_set_print(NULL);
	probe_uring();
	probe_bpf();
	return 0;
}

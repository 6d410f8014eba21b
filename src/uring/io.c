/* SPDX-License-Identifier: MIT */
/*
 * Direct descriptors on a ring: its sparse fixed-file table, the count of
 * slots open, a slot sent into another ring's table (IORING_OP_MSG_RING),
 * and the public evsteer_uring_* slot I/O, one small request object per
 * operation.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "common/process.h"
#include "uring/ring_impl.h"

int evst_ring_direct_table(struct evsteer_uring *r, unsigned int size)
{
	if (r->table_size)
		return 0;
	/* the kernel refuses a table larger than RLIMIT_NOFILE (EMFILE) */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < size) {
		evst_info("direct table: %u slots asked, RLIMIT_NOFILE allows %llu",
			  size, (unsigned long long)rl.rlim_cur);
		size = (unsigned int)rl.rlim_cur;
	}
	int err = io_uring_register_files_sparse(&r->ring, size);
	if (err < 0)
		return err;
	r->table_size = size;
	return 0;
}

void evst_ring_slot_opened(struct evsteer_uring *r)
{
	r->slots++;
}

void evst_ring_close_slot(struct evsteer_uring *r, int slot)
{
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe)
		return;
	io_uring_prep_close_direct(sqe, (unsigned int)slot);
	io_uring_sqe_set_data64(sqe, EVST_UDATA_IGNORE);
	if (evst_ring_submit(r, 0) == 0 && r->slots)
		r->slots--;
}

/* A request whose completion someone waits for; if they stop waiting,
 * the completion frees it. */
struct wait_op {
	struct evst_uop op;
	int res;
	bool done, orphan;
};

static struct evst_uop *wait_complete(struct evst_uop *op,
				      const struct io_uring_cqe *cqe)
{
	struct wait_op *w = (struct wait_op *)op;
	if (w->orphan) {
		free(w);
		return NULL;
	}
	w->res = cqe->res;
	w->done = true;
	return NULL;
}

int evst_ring_send_slot(struct evsteer_uring *from, int slot,
			struct evsteer_uring *to, uint64_t to_op)
{
	struct wait_op *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->op.complete = wait_complete;
	evst_ring_lock(from);
	struct io_uring_sqe *sqe = evst_ring_sqe(from);
	if (!sqe) {
		evst_ring_unlock(from);
		free(w);
		return -EBUSY;
	}
	/* by hand: liburing 2.3 has no helper for IORING_MSG_SEND_FD */
	io_uring_prep_rw(IORING_OP_MSG_RING, sqe, to->ring.ring_fd,
			 (void *)(uintptr_t)IORING_MSG_SEND_FD, 0, to_op);
	sqe->addr3 = (uint64_t)slot;
	sqe->file_index = IORING_FILE_INDEX_ALLOC;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&w->op);
	/* submitted here and waited for: the sender is going away. It
	 * completes inside the submission unless the target ring is busy. */
	int err = evst_ring_submit_all_now(from);
	for (int i = 0; err >= 0 && !w->done && i < 1000; i++)
		evst_ring_reap(from, 1000);
	if (err < 0) {
		free(w);
	} else if (!w->done) {
		/* gone asynchronous and not back in a second: the caller
		 * closes the slot here; if it lands there after all, it is
		 * that ring's (a different table) */
		w->orphan = true;
		err = -ETIMEDOUT;
	} else {
		err = w->res < 0 ? w->res : 0;
		free(w);
	}
	if (!err)
		evst_ring_close_slot(from, slot);
	evst_ring_unlock(from);
	return err;
}

unsigned int evsteer_uring_slots_in_use(const struct evsteer_uring *r)
{
	return r ? __atomic_load_n(&r->slots, __ATOMIC_RELAXED) : 0;
}

/* ---- the direct I/O API: one small request object per operation */

enum io_kind { IO_SEND, IO_RECV, IO_CLOSE, IO_INSTALL, IO_SEND_CLOSE };

struct io_op {
	struct evst_uop op;
	struct evsteer_uring *r;
	evsteer_io_cb cb;
	void *arg;
	int slot, res;
	enum io_kind kind;
};

static struct evst_uop *io_complete(struct evst_uop *op,
				    const struct io_uring_cqe *cqe)
{
	struct io_op *io = (struct io_op *)op;
	io->res = cqe->res;
	evst_ring_done(io->r);
	if (io->kind == IO_CLOSE && cqe->res == 0 && io->r->slots)
		io->r->slots--;
	return op;
}

static void io_ready(struct evst_uop *op)
{
	struct io_op *io = (struct io_op *)op;
	if (io->cb)
		io->cb(io->r, io->slot, io->res, io->arg);
	/* freed by run_loop_work() once this returns */
	evst_ring_lock(io->r);
	io->op.dead = true;
	evst_ring_unlock(io->r);
}

static void io_release(struct evst_uop *op)
{
	free(op);
}

/* A request object for an operation with a completion to route (cb may
 * still be NULL), or NULL with errno. */
static struct io_op *io_new(struct evsteer_uring *r, enum io_kind kind,
			    int slot, evsteer_io_cb cb, void *arg)
{
	struct io_op *io = calloc(1, sizeof(*io));
	if (!io) {
		errno = ENOMEM;
		return NULL;
	}
	*io = (struct io_op){
		.op = {.complete = io_complete, .ready = io_ready,
		       .release = io_release},
		.r = r, .cb = cb, .arg = arg, .slot = slot, .kind = kind};
	return io;
}

/* Ring lock held: a send and a close of slot, linked; sqe is the first of
 * the two reserved (io NULL: nobody waits for the send). */
static void prep_send_close(struct evsteer_uring *r, struct io_uring_sqe *sqe,
			    struct io_op *io, int slot, void *buf, size_t len)
{
	/* HARDLINK: the close runs even when the send fails or is short; the
	 * caller gets the send's result */
	io_uring_prep_send(sqe, slot, buf, len, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK |
		      (io ? 0 : IOSQE_CQE_SKIP_SUCCESS);
	io_uring_sqe_set_data64(sqe, io ? (uint64_t)(uintptr_t)&io->op :
					  EVST_UDATA_IGNORE);
	struct io_uring_sqe *csqe = evst_ring_sqe(r);
	io_uring_prep_close_direct(csqe, (unsigned int)slot);
	csqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(csqe, EVST_UDATA_IGNORE);
	/* the slot is closed by the chain whatever the send did */
	if (r->slots)
		r->slots--;
}

/* One send, recv, close or fd install on a slot, completing for io. */
static void prep_one(struct io_uring_sqe *sqe, struct io_op *io, int slot,
		     void *buf, size_t len, int flags)
{
	switch (io->kind) {
	case IO_SEND:
		io_uring_prep_send(sqe, slot, buf, len, MSG_NOSIGNAL);
		sqe->flags |= IOSQE_FIXED_FILE;
		break;
	case IO_RECV:
		io_uring_prep_recv(sqe, slot, buf, len, 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		break;
	case IO_CLOSE:
		io_uring_prep_close_direct(sqe, (unsigned int)slot);
		break;
	case IO_INSTALL:
		/* by hand: IORING_OP_FIXED_FD_INSTALL on the fixed file */
		io_uring_prep_rw(EVST_OP_FIXED_FD_INSTALL, sqe, slot, NULL, 0, 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		sqe->rw_flags = flags ? 0 : EVST_FIXED_FD_NO_CLOEXEC;
		break;
	case IO_SEND_CLOSE: /* prep_send_close() */
		break;
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&io->op);
}

static int io_submit(struct evsteer_uring *r, enum io_kind kind, int slot,
		     void *buf, size_t len, int flags, evsteer_io_cb cb,
		     void *arg)
{
	if (!r || slot < 0 || (r->table_size && (unsigned int)slot >= r->table_size) ||
	    len > INT32_MAX)
		return -(errno = EINVAL);
	if (evst_inherited(r->gen)) {
		evst_inherited_call("evsteer_uring I/O");
		return -EINVAL;
	}
	if (kind == IO_INSTALL && !r->have_install)
		return -(errno = EOPNOTSUPP);
	/* a send-and-close without a callback has nothing to call back:
	 * no request object, and no completion unless it fails */
	struct io_op *io = NULL;
	if (cb || kind != IO_SEND_CLOSE) {
		io = io_new(r, kind, slot, cb, arg);
		if (!io)
			return -errno;
	}

	evst_ring_lock(r);
	/* a linked pair must not be split by a submission in between */
	if (kind == IO_SEND_CLOSE)
		evst_ring_reserve(r, 2);
	struct io_uring_sqe *sqe = evst_ring_sqe(r);
	if (!sqe) {
		evst_ring_unlock(r);
		free(io);
		return -(errno = EBUSY);
	}
	if (kind == IO_SEND_CLOSE)
		prep_send_close(r, sqe, io, slot, buf, len);
	else
		prep_one(sqe, io, slot, buf, len, flags);
	/* with a request object it counts as in flight: the ring's event
	 * must stay in the base until the completion comes back */
	int err = evst_ring_submit(r, io != NULL);
	evst_ring_unlock(r);
	if (err < 0) {
		free(io);
		return -(errno = -err);
	}
	return 0;
}

int evsteer_uring_send(struct evsteer_uring *r, int slot, const void *buf,
		       size_t len, evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_SEND, slot, (void *)buf, len, 0, cb, arg);
}

int evsteer_uring_send_and_close(struct evsteer_uring *r, int slot,
				 const void *buf, size_t len, evsteer_io_cb cb,
				 void *arg)
{
	return io_submit(r, IO_SEND_CLOSE, slot, (void *)buf, len, 0, cb, arg);
}

int evsteer_uring_recv(struct evsteer_uring *r, int slot, void *buf, size_t len,
		       evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_RECV, slot, buf, len, 0, cb, arg);
}

int evsteer_uring_close(struct evsteer_uring *r, int slot, evsteer_io_cb cb,
			void *arg)
{
	return io_submit(r, IO_CLOSE, slot, NULL, 0, 0, cb, arg);
}

int evsteer_uring_fd_install(struct evsteer_uring *r, int slot, int cloexec,
			     evsteer_io_cb cb, void *arg)
{
	return io_submit(r, IO_INSTALL, slot, NULL, 0, cloexec, cb, arg);
}

/* SPDX-License-Identifier: MIT */
/*
 * Classic BPF steering: the tier between our eBPF program and the kernel's
 * hash (docs/groups.md, "Classic BPF steering"). A classic reuseport program
 * (SO_ATTACH_REUSEPORT_CBPF) needs no capability and no bpf() call, so it
 * works where eBPF is refused (no CAP_BPF, a seccomp profile, a user
 * namespace). It has no maps: it cannot count, read a heartbeat or see a
 * socket. So user space decides who is healthy and writes a new program
 * each time that changes: a hash over the healthy workers, mapped to their
 * sockets' current indexes in the kernel's reuseport array.
 *
 * The index a classic program returns is a position in that array
 * (net/core/sock_reuseport.c): a socket is appended when it listen()s
 * (__reuseport_add_sock: socks[num_socks++]); when one leaves (close,
 * shutdown) the last one is moved into its place
 * (__reuseport_detach_sock: socks[i] = socks[num_socks - 1]); an index
 * >= num_socks makes the kernel fall back to its hash
 * (reuseport_select_sock -> run_bpf_filter -> select_by_hash). Nothing in
 * user space reads that array, so this file keeps a model of it (`fd[]`,
 * in index order) and keeps it exact by two rules:
 *
 *  - Every socket is appended when we claim it, and only when the kernel's
 *    socket diagnostics show that the address's listeners are exactly the
 *    sockets of the model plus this one: then it is the last. Anything
 *    else (another process's listener, a socket that was listening before
 *    we saw it, two sockets racing) and the order is not known: the tier
 *    stands down to the kernel's hash and says why. So classic BPF steers
 *    within one process only; across processes the array's order is
 *    everyone's and nobody's to know.
 *  - Every socket of the model is closed here (evst_shared_close), under
 *    ctl->lock, with the swap applied to the model and the program re-made
 *    before the lock is dropped. A socket that leaves the group without
 *    being closed by us (the user keeps it) makes the tier stand down.
 *
 * Standing down for another process's listener keeps what the model knows
 * (keep_pos): ours were the whole array, the other's came after, so every
 * index the model does not hold is another's. A group that retires then
 * sends everything there (away()), and follows its own closes by counting
 * the listeners first: the one the kernel moves into the hole is the last.
 *
 * Between a close and the re-attach (microseconds, under the lock) the old
 * program runs against the shifted array. So a close that moves a socket
 * is preceded by a program that returns neither the closing index nor the
 * last one (spare_last()): every index it returns names the same socket
 * before the close and after. Without that step the last one's index is
 * past the end for a moment, and the kernel's hash over what is left may
 * pick a socket that is draining to close, resetting the handshake.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "common/env.h"
#include "steering/steering.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif
#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

/* sockets released but not yet closed (draining) stay in the array */
#define CB_MAX_SOCKS (2 * EVST_MAX_WORKERS)
/* 3 instructions per leaf at most, within BPF_MAXINSNS (4096) */
#define CB_MAX_ENTRIES 1024
#define CB_MAX_CPUS 256
#define CB_MAX_INSNS (3 * CB_MAX_ENTRIES + 2 * CB_MAX_CPUS + 16)
/* how often a wake-up looks for a listener that is not ours */
#define CB_LOOK_NS 1000000000ull
/* "no socket": past any array, so the kernel's hash picks */
#define CB_NONE 0xffffffffu

struct evst_cbpf {
	/* the kernel's reuseport array as we know it, in index order */
	int fd[CB_MAX_SOCKS];
	uint64_t cookie[CB_MAX_SOCKS];
	unsigned int n;
	/* slots the program holds out for their health (relaxed: read on
	 * every pass of a worker's loop) */
	uint8_t out[EVST_MAX_WORKERS];
	const char *ebpf_reason; /* why not eBPF (sh->reason before us) */
	char reason_buf[640];    /* sh->reason while classic BPF steers */
	const char *down; /* stood down: why (release; never changes after) */
	char down_buf[1024];
	/* Stood down for another process's listener, with our indexes still
	 * known: fd[i] is at kernel index i, or -1 where another's socket is
	 * (every index >= n is another's). A retiring group uses it to send
	 * every connection to the others (away()). */
	bool keep_pos;
	bool retiring; /* evsteer_group_retire(): leaving, for good */
	/* stood down for another process's listener: looked at once a
	 * second for when they are gone (alone_again()) */
	bool beside;
	uint64_t look_ns;  /* the last look for foreign listeners (relaxed) */
	uint64_t sum;      /* checksum of the program attached; 0: none */
	unsigned int ncpu;
	/* for the path report and tests: programs attached so far */
	uint64_t attaches;
	struct sock_filter insns[CB_MAX_INSNS];
	uint32_t entries[CB_MAX_ENTRIES];
	/* entries()' kernel index per slot (ctl->lock held) */
	int kid[EVST_MAX_WORKERS];
	/* a kernel index the program must not return, or -1 (ctl->lock
	 * held): the last socket's, just before a close moves it */
	int spare;
	/* look()'s listing (ctl->lock held): ~50 KB, too much for a stack */
	struct evst_sock_info listing[CB_MAX_SOCKS + 8];
};

static int index_of(const struct evst_cbpf *cb, int fd)
{
	for (unsigned int i = 0; i < cb->n; i++)
		if (cb->fd[i] == fd)
			return (int)i;
	return -1;
}

bool evst_shared_cbpf(const struct evst_shared *sh)
{
	return sh && sh->cb && !__atomic_load_n(&sh->cb->down, __ATOMIC_ACQUIRE);
}

const char *evst_cbpf_down_reason(const struct evst_shared *sh)
{
	return sh->cb ? __atomic_load_n(&sh->cb->down, __ATOMIC_ACQUIRE) : NULL;
}

/* Is the socket with this cookie among the n listeners of li? */
static bool listed(const struct evst_sock_info *li, int n, uint64_t cookie)
{
	for (int j = 0; j < n; j++)
		if (li[j].cookie == cookie)
			return true;
	return false;
}

/* Take the group's program off through fd, one of its sockets (any of
 * them acts for all): 0, or -1 with errno (ENOENT: there was none). */
static int detach(int fd)
{
	int one = 1;
	return setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &one,
			  sizeof(one));
}

/* Attach the at instructions in cb->insns, whose checksum is sum, to the
 * group through fd, one of its sockets: 0, or -1 with errno. */
static int attach(struct evst_cbpf *cb, int fd, unsigned int at, uint64_t sum)
{
	struct sock_fprog fp = {.len = (unsigned short)at, .filter = cb->insns};
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp,
		       sizeof(fp)) < 0)
		return -1;
	cb->sum = sum;
	__atomic_fetch_add(&cb->attaches, 1, __ATOMIC_RELAXED);
	return 0;
}

/* ctl->lock held: the tier gives up for good (the model cannot be trusted
 * again); the kernel's hash steers from here, and the reason says why. */
static int away(struct evst_shared *sh, bool spare_last);

static void stand_down(struct evst_shared *sh, bool keep, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void stand_down(struct evst_shared *sh, bool keep, const char *fmt, ...)
{
	struct evst_cbpf *cb = sh->cb;
	if (cb->down)
		return;
	char why[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	/* a program of ours left attached would keep steering by stale
	 * indexes: take it off (any socket of the group acts for all) */
	if (cb->n && cb->sum)
		detach(cb->fd[0]);
	cb->sum = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		__atomic_store_n(&cb->out[i], 0, __ATOMIC_RELAXED);
	snprintf(cb->down_buf, sizeof(cb->down_buf),
		 "%s; cbpf: stood down: %s; the kernel's SO_REUSEPORT hash steers",
		 cb->ebpf_reason, why);
	__atomic_store_n(&cb->down, cb->down_buf, __ATOMIC_RELEASE);
	evst_info("group %s: classic BPF steering stood down: %s; the kernel's "
		  "SO_REUSEPORT hash steers", sh->key, why);
	/* the model was the whole array until now, and what appeared since
	 * was appended after it: our indexes hold until we close one */
	cb->keep_pos = keep;
	if (keep && cb->retiring)
		away(sh, false);
}

/*
 * ctl->lock held: are the address's listeners exactly the model's sockets
 * (plus `extra`, being claimed, whose creator holds the listen order)? If
 * not, stand down with what was found. Called without a claim (extra < 0)
 * while another thread of ours is between a listen() and its claim, the
 * listing may show that socket before the model does: the kernel appended
 * it, so the model's indexes hold, and its claim will look again. So then
 * only the model's own sockets are checked.
 */
static bool look(struct evst_shared *sh, int extra, bool order_held)
{
	struct evst_cbpf *cb = sh->cb;
	struct evst_sock_info *li = cb->listing;
	/* ctl->lock is held, so a close of ours is not half done; the
	 * listen order is taken only if free (it nests outside ctl->lock) */
	bool mine = extra < 0 && !order_held && evst_listen_order_trylock();
	bool strict = extra >= 0 || order_held || mine;
	int n = evst_list_listeners((struct sockaddr *)&sh->addr, li,
				    CB_MAX_SOCKS + 8);
	if (mine)
		evst_listen_order_unlock();
	__atomic_store_n(&cb->look_ns, evst_now_ns(), __ATOMIC_RELAXED);
	char a[64];
	evst_addr_str(&sh->addr, a, sizeof(a));
	if (n < 0) {
		stand_down(sh, false, "cannot list the listeners of %s to check the "
			   "kernel's socket order (sock_diag: %s)", a, strerror(-n));
		return false;
	}
	uint64_t xc = extra >= 0 ? evst_sock_cookie(extra) : 0;
	if (!strict) {
		unsigned int found = 0;
		for (unsigned int k = 0; k < cb->n; k++)
			found += listed(li, n, cb->cookie[k]);
		if (found != cb->n) {
			stand_down(sh, false, "%u of the %u sockets known on %s closed "
				   "without evsteer: the kernel's socket order is "
				   "not known any more", cb->n - found, cb->n, a);
			return false;
		}
		return true;
	}
	for (int i = 0; i < n; i++) {
		bool ours = li[i].cookie == xc && xc;
		for (unsigned int k = 0; k < cb->n && !ours; k++)
			ours = cb->cookie[k] == li[i].cookie;
		if (!ours) {
			__atomic_store_n(&cb->beside, true, __ATOMIC_RELAXED);
			/* our indexes are kept, except during a claim: the
			 * claimed socket's comes after the other's, unknown */
			stand_down(sh, extra < 0, "a listener that is not one of this "
				   "process's workers is on %s (socket inode %llu, "
				   "uid %u): a classic program indexes the kernel's "
				   "socket array, whose order is known only for "
				   "sockets this process listened and closed itself",
				   a, (unsigned long long)li[i].inode, li[i].uid);
			return false;
		}
	}
	unsigned int want = cb->n + (extra >= 0);
	if ((unsigned int)n != want) {
		stand_down(sh, false, "%d sockets listen on %s where %u are known: one "
			   "closed without evsteer, so the kernel's socket order "
			   "is not known any more", n, a, want);
		return false;
	}
	return true;
}

/* Healthy as the eBPF program and the stall watch judge it: live, its
 * loop not stuck with connections waiting, not held out after a theft. */
static bool healthy(const struct evst_worker *w, uint64_t now, uint64_t st)
{
	uint64_t pr = evst_ld64(&w->progress_ns);
	int64_t p = (int64_t)(evst_ld64(&w->steered) - evst_ld64(&w->dequeued));
	if (st && p > 0 && (int64_t)(now - pr) > (int64_t)st)
		return false;
	return evst_ld64(&w->stolen_ns) <= pr;
}

/* A binary search over entries [lo, hi) of the A register's value: each
 * leaf returns a socket index. Returns the instructions written. */
static unsigned int tree(struct sock_filter *p, const uint32_t *e,
			 unsigned int lo, unsigned int hi)
{
	bool same = true;
	for (unsigned int i = lo + 1; i < hi && same; i++)
		same = e[i] == e[lo];
	if (same) {
		p[0] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, e[lo]);
		return 1;
	}
	unsigned int mid = lo + (hi - lo) / 2, at = 0;
	/* A >= mid: the next instruction jumps over the left half */
	p[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, mid, 0, 1);
	unsigned int ja = at++;
	unsigned int left = tree(p + at, e, lo, mid);
	at += left;
	p[ja] = (struct sock_filter)BPF_STMT(BPF_JMP | BPF_JA, left);
	return at + tree(p + at, e, mid, hi);
}

/* The hash part: the packet's flow hash (skb->hash; 0 when neither the
 * NIC nor the stack computed one, then a random number), modulo the
 * entries. */
static unsigned int emit_hash(struct sock_filter *p, const uint32_t *e,
			      unsigned int m)
{
	unsigned int at = 0;
	if (m > 1) {
		p[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						       SKF_AD_OFF + SKF_AD_RXHASH);
		p[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
						       0, 0, 1);
		p[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						       SKF_AD_OFF + SKF_AD_RANDOM);
		p[at++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, m);
	}
	return at + tree(p + at, e, 0, m);
}

static uint64_t checksum(const struct sock_filter *p, unsigned int n)
{
	uint64_t h = 1469598103934665603ull;
	const unsigned char *b = (const unsigned char *)p;
	for (size_t i = 0; i < n * sizeof(*p); i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h | 1;
}

/* ctl->lock held: the kernel index of the worker at slot i, or -1. */
static int kidx(struct evst_shared *sh, unsigned int i)
{
	return sh->local_fd[i] >= 0 ? index_of(sh->cb, sh->local_fd[i]) : -1;
}

/* A worker stolen from and not run since: known stuck (held out). */
static bool robbed(const struct evst_worker *w)
{
	return evst_ld64(&w->stolen_ns) > evst_ld64(&w->progress_ns);
}

/* ctl->lock held: the entries of the hash table: the healthy workers, each
 * as often as its weight. When none is healthy (a busy machine leaves
 * every thread waiting for a CPU now and then), those not known stuck;
 * when none is that either, every live one. Sets out[]: a worker left out
 * for its health, whose own next pass re-makes the program. */
static unsigned int entries(struct evst_shared *sh, uint64_t now)
{
	struct evst_cbpf *cb = sh->cb;
	uint64_t st = evst_ld64(sh->v.stall_ns);
	uint8_t ok[EVST_MAX_WORKERS]; /* 0 no, 1 live, 2 not robbed, 3 healthy */
	uint8_t best = 0;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
		struct evst_worker *w = &sh->v.workers[i];
		ok[i] = 0;
		/* each looked up once: a search of the model, up to 2,048 */
		cb->kid[i] = kidx(sh, i);
		if (sh->ctl->slots[i].owner &&
		    __atomic_load_n(&w->live, __ATOMIC_RELAXED) && cb->kid[i] >= 0 &&
		    cb->kid[i] != cb->spare)
			ok[i] = healthy(w, now, st) ? 3 : robbed(w) ? 1 : 2;
		best = ok[i] > best ? ok[i] : best;
	}
	unsigned int m = 0;
	for (unsigned int w = 0; w < 16; w++)
		for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++) {
			if (w == 0)
				__atomic_store_n(&cb->out[i],
						 (uint8_t)(ok[i] && ok[i] < best),
						 __ATOMIC_RELAXED);
			if (!ok[i] || ok[i] < best ||
			    w >= sh->ctl->slots[i].weight || m >= CB_MAX_ENTRIES)
				continue;
			cb->entries[m++] = (uint32_t)cb->kid[i];
		}
	return m;
}

/* ctl->lock held: the CPU part (policy cpu): the mapped worker of the
 * connection's CPU when it is healthy, else on to the hash. */
static unsigned int emit_cpu(struct evst_shared *sh, struct sock_filter *p)
{
	struct evst_cbpf *cb = sh->cb;
	unsigned int at = 0;
	p[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					       SKF_AD_OFF + SKF_AD_CPU);
	for (unsigned int c = 0; c < cb->ncpu; c++) {
		uint32_t s = __atomic_load_n(&sh->v.cpu_map[c], __ATOMIC_RELAXED);
		if (!s || s > EVST_MAX_WORKERS)
			continue;
		s--;
		int k = kidx(sh, s);
		if (k < 0 || k == cb->spare || !sh->ctl->slots[s].owner ||
		    !__atomic_load_n(&sh->v.workers[s].live, __ATOMIC_RELAXED) ||
		    __atomic_load_n(&cb->out[s], __ATOMIC_RELAXED))
			continue;
		p[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
						       c, 0, 1);
		p[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (uint32_t)k);
	}
	return at;
}

/* ctl->lock held: write the program for the group as it is now and attach
 * it if it differs from the one attached (after a look for others'
 * listeners unless the caller has just made one). */
static void program(struct evst_shared *sh, bool looked)
{
	struct evst_cbpf *cb = sh->cb;
	if (cb->down || !cb->n)
		return;
	unsigned int m = entries(sh, evst_now_ns()), at = 0;
	if (m == 0) {
		cb->insns[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
							       CB_NONE);
	} else {
		if (__atomic_load_n(sh->v.policy, __ATOMIC_RELAXED) ==
		    EVST_POLICY_CPU)
			at += emit_cpu(sh, cb->insns);
		at += emit_hash(cb->insns + at, cb->entries, m);
	}
	uint64_t sum = checksum(cb->insns, at);
	if (sum == cb->sum)
		return;
	/* a listener of another process would be steered by indexes we
	 * cannot know, or its own program replaced by ours: look first */
	if (!looked && !look(sh, -1, false))
		return;
	if (attach(cb, cb->fd[0], at, sum) < 0) {
		stand_down(sh, false, "SO_ATTACH_REUSEPORT_CBPF: %s",
			   strerror(errno));
		return;
	}
	unsigned int held = 0;
	int first_held = -1;
	for (unsigned int i = 0; i < EVST_MAX_WORKERS; i++)
		if (__atomic_load_n(&cb->out[i], __ATOMIC_RELAXED) && !held++)
			first_held = (int)i;
	evst_debug("group %s: classic program of %u instructions over %u "
		   "entries attached (slots held out for health: %u, the first "
		   "%d)", sh->key, at, m, held, first_held);
}

/*
 * Stood down for another process's listener (keep_pos): our sockets are
 * still where the model says, and every other index of the array is
 * another's socket. ctl->lock held.
 *
 * count(): the listeners on the address now, after checking that each of
 * ours is among them at an index below their number (else the indexes
 * are lost: keep_pos goes). -1 then.
 */
static int count(struct evst_shared *sh)
{
	struct evst_cbpf *cb = sh->cb;
	struct evst_sock_info *li = cb->listing;
	int n = evst_list_listeners((struct sockaddr *)&sh->addr, li,
				    CB_MAX_SOCKS + 8);
	for (unsigned int k = 0; n >= 0 && k < cb->n; k++)
		if (cb->fd[k] >= 0 && ((int)k >= n || !listed(li, n, cb->cookie[k])))
			n = -1;
	if (n < 0) {
		cb->keep_pos = false;
		evst_debug("group %s: our kernel indexes are not known any more",
			   sh->key);
	}
	return n;
}

/* Our socket at index i closed while total listened: the kernel moved
 * its last socket (ours or another's) into i. */
static void moved(struct evst_cbpf *cb, unsigned int i, unsigned int total)
{
	unsigned int last = total - 1;
	if (last != i && last < cb->n && cb->fd[last] >= 0) {
		cb->fd[i] = cb->fd[last];
		cb->cookie[i] = cb->cookie[last];
	} else {
		cb->fd[i] = -1;
	}
	if (last < cb->n)
		cb->fd[last] = -1; /* that index is past the end now */
	while (cb->n && cb->fd[cb->n - 1] < 0)
		cb->n--;
}

/*
 * A retiring group beside another process's listeners: a program that
 * sends every new connection to the others (a flow hash over their
 * indexes), so that nothing new queues on a socket that is going to
 * close; what is queued already is served (evsteer_group_pending() reads
 * the queues). spare_last leaves out the last index too, when another
 * remains: a close of ours moves that socket into the hole, and an index
 * past the end would fall back to the kernel's hash, which may pick one
 * of ours. With no other listener there is nowhere to send them: the
 * program goes and the kernel's hash picks among ours. Returns the
 * listeners counted, or -1 (indexes lost: nothing attached).
 */
static int away(struct evst_shared *sh, bool spare_last)
{
	struct evst_cbpf *cb = sh->cb;
	int total = count(sh);
	if (total < 0)
		return -1;
	unsigned int m = 0;
	int by = -1; /* a socket of ours to attach through */
	for (int p = 0; p < total && m < CB_MAX_ENTRIES; p++) {
		if ((unsigned int)p < cb->n && cb->fd[p] >= 0)
			by = cb->fd[p];
		else if (!spare_last || p != total - 1)
			cb->entries[m++] = (uint32_t)p;
	}
	if (!m && spare_last && total > 0 &&
	    ((unsigned int)total - 1 >= cb->n || cb->fd[total - 1] < 0))
		cb->entries[m++] = (uint32_t)total - 1; /* the only other one */
	if (by < 0)
		return total;
	if (!m) {
		if (cb->sum)
			detach(by);
		cb->sum = 0;
		return total;
	}
	unsigned int at = emit_hash(cb->insns, cb->entries, m);
	uint64_t sum = checksum(cb->insns, at);
	if (sum == cb->sum)
		return total;
	if (attach(cb, by, at, sum) < 0) {
		evst_warn("group %s: retiring: SO_ATTACH_REUSEPORT_CBPF: %s; the "
			  "kernel's hash keeps picking our sockets until they "
			  "close", sh->key, strerror(errno));
		cb->keep_pos = false;
		return -1;
	}
	evst_debug("group %s: retiring: every new connection goes to the "
		   "other %u listener(s) of the address (%d listen)", sh->key, m,
		   total);
	return total;
}

void evst_shared_retire(struct evst_shared *sh)
{
	if (!sh || !sh->cb)
		return;
	evst_listen_order_lock();
	evst_ctl_lock(sh);
	struct evst_cbpf *cb = sh->cb;
	cb->retiring = true;
	/* another process on the address (a restart's new version): the
	 * look stands down, and with our indexes known sends everything
	 * there; else our workers are all out and the kernel's hash picks
	 * among them, there being nobody else */
	if (!cb->down)
		look(sh, -1, true);
	else if (cb->keep_pos)
		away(sh, false);
	evst_ctl_unlock(sh);
	evst_listen_order_unlock();
}

bool evst_shared_cbpf_any(const struct evst_shared *sh)
{
	return sh && sh->cb;
}

void evst_cbpf_program(struct evst_shared *sh)
{
	if (sh->cb)
		program(sh, false);
}

int evst_cbpf_start(struct evst_shared *sh)
{
	struct evst_cbpf *cb = calloc(1, sizeof(*cb));
	if (!cb)
		return -ENOMEM;
	long n = sysconf(_SC_NPROCESSORS_CONF);
	cb->ncpu = n < 1 ? 1 : n > CB_MAX_CPUS ? CB_MAX_CPUS : (unsigned)n;
	cb->spare = -1;
	cb->ebpf_reason = sh->reason ? sh->reason : "bpf: unavailable";
	snprintf(cb->reason_buf, sizeof(cb->reason_buf),
		 "%s; cbpf: a classic BPF program steers instead (no capability "
		 "needed): a flow hash over the healthy workers (policy cpu: "
		 "the CPU map first), re-programmed as they join, leave, stall "
		 "or recover; least-pending and round-robin need eBPF",
		 cb->ebpf_reason);
	sh->reason = cb->reason_buf;
	sh->cb = cb;
	/* the kernel's window at a close (docs/groups.md): ours to report,
	 * not to change */
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_migrate_req", "re");
	int migrate = -1;
	if (f) {
		if (fscanf(f, "%d", &migrate) != 1)
			migrate = -1;
		fclose(f);
	}
	if (migrate == 0)
		evst_info("group %s: classic BPF steers with "
			  "net.ipv4.tcp_migrate_req=0: a handshake the kernel "
			  "hands to a worker's socket as it closes is reset; "
			  "=1 makes the kernel move it to a sibling", sh->key);
	return 0;
}

void evst_cbpf_free(struct evst_shared *sh)
{
	free(sh->cb);
	sh->cb = NULL;
}

/* ctl->lock held: fd was claimed (a slot of ours); it listens, so the
 * kernel appended it to the array: the model does the same, once the
 * listeners show that it is the only one the model lacks. */
void evst_cbpf_claimed(struct evst_shared *sh, int fd)
{
	struct evst_cbpf *cb = sh->cb;
	if (!cb)
		return;
	if (cb->down) {
		/* appended after the others' sockets: its index is theirs
		 * to know, so a retire cannot send everything away */
		cb->keep_pos = false;
		return;
	}
	if (cb->n == CB_MAX_SOCKS) {
		stand_down(sh, false, "more than %d sockets in the group",
			   CB_MAX_SOCKS);
		return;
	}
	if (!look(sh, fd, true))
		return;
	cb->cookie[cb->n] = evst_sock_cookie(fd);
	cb->fd[cb->n++] = fd;
	/* the first socket makes a new kernel group, without a program;
	 * later ones join the group and its program (not live yet) */
	if (cb->n == 1) {
		cb->sum = 0;
		program(sh, true);
	}
}

/*
 * ctl->lock held, before a close of ours that moves the last socket into
 * the hole. Between the close and the program that follows it, the old
 * program's index of the last socket is past the end: the kernel falls
 * back to its hash over every socket left, draining ones too (a leaving
 * worker's, being emptied into its siblings), and a handshake it starts
 * on one of those as that one closes is reset (read from the kernel's
 * run_bpf_filter(); the resets test_reattach_race showed had another
 * cause, the kernel's own window at a close: docs/groups.md). So first a
 * program that leaves the last index out (the
 * closing one is out already): its indexes hold before the close and
 * after, and nothing falls back. Nothing else healthy: left as it is.
 */
static void spare_last(struct evst_shared *sh)
{
	struct evst_cbpf *cb = sh->cb;
	cb->spare = (int)cb->n - 1;
	if (entries(sh, evst_now_ns()))
		program(sh, true);
	cb->spare = -1;
}

int evst_shared_close(struct evst_shared *sh, int fd, int *late, int max)
{
	int n = 0;
	if (!sh || !sh->cb) {
		close(fd);
		return 0;
	}
	/* no listen() of ours may fall between this close and the claim of
	 * its socket: the kernel's reordering must be the one we apply */
	evst_listen_order_lock();
	evst_ctl_lock(sh);
	struct evst_cbpf *cb = sh->cb;
	int i = index_of(cb, fd);
	/* Another process's socket appended since the last look would be
	 * the one the kernel moves into the hole, not our last: look now,
	 * so that the model is never shifted by a wrong guess (a listen()
	 * of another process in the microseconds between the look and the
	 * close is the one case left). */
	if (i >= 0 && !cb->down)
		look(sh, -1, true);
	/* stood down with our indexes known: how many listen right now (the
	 * last of them takes the hole); a retiring group sends new
	 * connections away from this socket and from the one that moves */
	int total = -1;
	if (i >= 0 && cb->down && cb->keep_pos)
		total = cb->retiring ? away(sh, true) : count(sh);
	if (i >= 0 && !cb->down && (unsigned int)i + 1 < cb->n)
		spare_last(sh);
	/* what completed its handshake here since the caller's last look:
	 * accepted under the lock, so that nothing can be steered here any
	 * more between this and the close (the program leaves it out) */
	while (n < max) {
		int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c < 0)
			break;
		late[n++] = c;
	}
	close(fd);
	if (i >= 0 && !cb->down) {
		/* the kernel moved its last socket into the hole */
		cb->fd[i] = cb->fd[cb->n - 1];
		cb->cookie[i] = cb->cookie[cb->n - 1];
		cb->n--;
		cb->sum = 0; /* same bytes, other sockets: attach again */
		if (cb->n)
			program(sh, true);
	} else if (i >= 0 && cb->keep_pos && total > 0) {
		moved(cb, (unsigned int)i, (unsigned int)total);
		if (cb->retiring)
			away(sh, false);
	} else if (i >= 0) {
		cb->keep_pos = false;
		cb->fd[i] = -1;
	}
	evst_ctl_unlock(sh);
	evst_listen_order_unlock();
	return n;
}

void evst_shared_keep(struct evst_shared *sh, int fd)
{
	if (!sh || !sh->cb)
		return;
	evst_ctl_lock(sh);
	if (index_of(sh->cb, fd) >= 0 && sh->cb->down)
		sh->cb->keep_pos = false; /* it moves unseen when it closes */
	else if (index_of(sh->cb, fd) >= 0)
		stand_down(sh, false, "a worker's socket (fd %d) left the group without "
			   "being closed by evsteer (no CLOSE_ON_FREE): when it "
			   "closes, the kernel's socket order changes unseen", fd);
	evst_ctl_unlock(sh);
}

bool evst_shared_cbpf_out(const struct evst_shared *sh,
			  const struct evst_worker *w)
{
	return sh->cb && __atomic_load_n(&sh->cb->out[w - sh->v.workers],
					 __ATOMIC_RELAXED);
}

void evst_shared_health(struct evst_shared *sh)
{
	if (!evst_shared_cbpf(sh))
		return;
	evst_ctl_lock(sh);
	program(sh, false);
	evst_ctl_unlock(sh);
}

/*
 * ctl->lock held; stood down beside another process's listeners. Once
 * they are all gone, a program one of them left attached (an old version
 * retiring beside us sends everything to the indexes it knew, and cannot
 * take it off with its last socket) would go on steering our sockets by
 * indexes nobody knows: take it off, for the kernel's hash that the path
 * report promises. ENOENT (no program) is the usual answer.
 */
static void alone_again(struct evst_shared *sh)
{
	struct evst_cbpf *cb = sh->cb;
	struct evst_sock_info *li = cb->listing;
	__atomic_store_n(&cb->look_ns, evst_now_ns(), __ATOMIC_RELAXED);
	int n = evst_list_listeners((struct sockaddr *)&sh->addr, li,
				    CB_MAX_SOCKS + 8);
	int ours = 0, by = -1;
	for (unsigned int s = 0; s < EVST_MAX_WORKERS; s++)
		if (sh->local_fd[s] >= 0)
			ours++, by = sh->local_fd[s];
	/* as many listeners as we have sockets (cheap), then the cookies */
	if (n <= 0 || n != ours)
		return;
	for (unsigned int s = 0; s < EVST_MAX_WORKERS; s++)
		if (sh->local_fd[s] >= 0 &&
		    !listed(li, n, evst_sock_cookie(sh->local_fd[s])))
			return;
	if (detach(by) == 0)
		evst_info("group %s: alone on the address again: the reuseport "
			  "program another process left attached is taken off; "
			  "the kernel's hash steers", sh->key);
}

void evst_shared_cbpf_look(struct evst_shared *sh, uint64_t now)
{
	struct evst_cbpf *cb = sh ? sh->cb : NULL;
	if (!cb ||
	    now - __atomic_load_n(&cb->look_ns, __ATOMIC_RELAXED) < CB_LOOK_NS)
		return;
	bool down = __atomic_load_n(&cb->down, __ATOMIC_ACQUIRE) != NULL;
	if (down && !__atomic_load_n(&cb->beside, __ATOMIC_RELAXED))
		return;
	evst_ctl_lock(sh);
	if (now - cb->look_ns >= CB_LOOK_NS) {
		if (!cb->down)
			look(sh, -1, false);
		else if (cb->beside && !cb->retiring)
			alone_again(sh);
	}
	evst_ctl_unlock(sh);
}

/*
 * What the program cannot count, the socket can tell: the connections
 * waiting in its accept queue (TCP_INFO of a listener: tcpi_unacked is
 * sk_ack_backlog). steered is set so that pending reads that number, and
 * the stall machinery (watch.c, steal.c) works unchanged.
 */
void evst_shared_queue_to_pending(struct evst_worker *w, int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    ti.tcpi_state != 10 /* TCP_LISTEN */)
		return;
	uint64_t dq = evst_ld64(&w->dequeued);
	int64_t was = (int64_t)(evst_ld64(&w->steered) - dq);
	/* work arriving on an idle worker starts its clock, as the eBPF
	 * program does when it steers to one: an old heartbeat of a worker
	 * that simply had nothing to do is no stall (seen here at the first
	 * look after the arrival). Not for one held out after a theft: the
	 * program steers nothing to it, so what is there came before (or in
	 * the moment of the re-attach), and a fresh clock would let it back
	 * in while its loop is still stuck. */
	uint64_t pr = evst_ld64(&w->progress_ns);
	if (was <= 0 && ti.tcpi_unacked && evst_ld64(&w->stolen_ns) <= pr) {
		uint64_t now = evst_now_ns();
		if (pr < now)
			__atomic_store_n(&w->progress_ns, now, __ATOMIC_RELAXED);
	}
	__atomic_store_n(&w->steered, dq + (uint64_t)ti.tcpi_unacked,
			 __ATOMIC_RELAXED);
}

uint64_t evst_shared_cbpf_attaches(const struct evst_shared *sh)
{
	return sh && sh->cb ? __atomic_load_n(&sh->cb->attaches, __ATOMIC_RELAXED) :
			      0;
}

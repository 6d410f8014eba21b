/* SPDX-License-Identifier: MIT */
/* evsteer-bench-server: what every implementation shares. */
#ifndef EVSTEER_BENCH_SERVER_H
#define EVSTEER_BENCH_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* threads of one server; the group takes up to EVSTEER_MAX_WORKERS */
#define MAX_WORKERS 256

struct event_base;

struct bench_cfg {
	const char *impl;
	int workers;
	int port;
	const char *policy;   /* evsteer: least-pending|hash|round-robin|cpu */
	int stall_worker;     /* -1: none */
	int stall_ms, stall_every_ms;
	FILE *stall_log;      /* --stall-log: each stall's start, CLOCK_MONOTONIC s */
	int freeze_worker;    /* -1: none; that worker never runs its loop */
	/* drain-running: this worker runs, spends slow_us on each
	 * connection, and on SIGUSR1 frees its own listener from its next
	 * accept callback (what its io_uring had taken must not be lost) */
	int slow_worker, slow_us;
	int cpu_to;           /* evsteer, policy cpu: every CPU -> this worker */
	/* the cost of a connection, the same in every implementation, so
	 * that a figure is not only the accept path's (issue 18): work_us
	 * spent before each reply (spun, or slept with work_sleep), after
	 * reading the client's request first with read_first */
	int work_us;
	bool work_sleep;
	bool read_first;
};

struct bench_worker {
	int id;
	pthread_t thread;
	atomic_long accepted; /* answered */
	atomic_long taken;    /* handed to the worker by its listener */
	/* read_first: connections whose request is awaited (a leaving
	 * server waits for them before it stops its loops) */
	atomic_long reading;
	struct event_base *base; /* the event implementations' loop */
	void *impl; /* the implementation's per-worker state */
	struct bench_cfg *cfg;
};

/* One implementation: start listening (before `ready`), run the workers'
 * loops in their threads, stop them, drop a worker (drain scenario). */
struct bench_impl {
	const char *name;
	int (*setup)(struct bench_worker *w, int *port); /* w->cfg set */
	void *(*run)(void *worker);
	void (*stop)(struct bench_worker *w);
	/* free the worker's listener if it still has one (the drain
	 * scenarios; and every worker on SIGTERM, after leave) */
	void (*drop)(struct bench_worker *w);
	/* Optional. SIGTERM, loops still running, before the drops: what this
	 * implementation can do to leave without loss (evsteer: retire, and
	 * let what was steered here be served) */
	void (*leave)(struct bench_worker *w, int n);
	/* JSON object describing the path (steering, engine, reasons) */
	void (*describe)(struct bench_worker *w, char *buf, size_t len);
};

extern const struct bench_impl bench_libevent;
/* bare io_uring loops, no library (server_floor.c): floor, floor-epoll
 * and floor-direct, told apart by cfg->impl as evsteer's are */
extern const struct bench_impl bench_floor;

/* The server is stopping: loops without a libevent base poll this. */
bool bench_stopping(void);
/* One stall: spin stall_ms, after noting its start (--stall-log) so that
 * the client's samples can be placed against it (stall_phases.py). */
void bench_stall(const struct bench_cfg *cfg);

/* Busy the calling thread for ms (a stalled worker does CPU work). */
void bench_spin_ms(int ms);
/* Whether worker id is the frozen one: it blocks until stopped. */
void bench_freeze_if(struct bench_cfg *cfg, int id);
void bench_unfreeze(void);

/* The stalled worker's periodic busy spell, as an event in its base. */
void bench_add_stall(struct event_base *base, struct bench_cfg *cfg, int id);
/* A worker thread's loop: frozen if asked, the stall if asked, dispatch. */
void bench_run_base(struct bench_cfg *cfg, struct event_base *base, int id);
/* A connection reaches a worker: counted as taken; the slow worker spends
 * slow_us on it here, in its accept callback, so that its queue builds up
 * (drain-running). */
void bench_take(struct bench_worker *w);
/* What an event implementation does with an accepted fd: bench_take(),
 * then the reply at once, or with read_first a read event in w->base
 * first (bounded: a client silent for 10 s is closed unanswered). */
void bench_serve(struct bench_worker *w, int fd);
/* The reply itself: the work, "ok", close, count as answered. */
void bench_reply(struct bench_worker *w, int fd);
/* What a connection costs before its reply: work_us, spun or slept. */
void bench_work(struct bench_worker *w);
/* A request read into one buffer: they are a single small segment. */
#define BENCH_REQ_MAX 512
/* From an accept callback: true once, on the worker that must drop itself
 * (SIGUSR1 with a slow worker); call bench_dropped() after freeing. */
bool bench_drop_now(struct bench_worker *w);
void bench_dropped(void);
#endif

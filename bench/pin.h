/* SPDX-License-Identifier: MIT */
/*
 * --pin in the bench's servers: worker i runs only on the i-th CPU the
 * process may use (modulo their count), as a latency-sensitive deployment
 * places one worker per core; unpinned, the scheduler may queue a woken
 * worker behind a busy sibling on that sibling's CPU (bench/JOURNAL.md,
 * "The stall scenario's client, and pinned workers").
 */
#ifndef EVSTEER_BENCH_PIN_H
#define EVSTEER_BENCH_PIN_H

#include <pthread.h>
#include <sched.h>

/* The CPUs this process may use into *allowed: their count, or 0 (errno). */
static inline int bench_pin_cpus(cpu_set_t *allowed)
{
	if (sched_getaffinity(0, sizeof(*allowed), allowed) != 0)
		return 0;
	return CPU_COUNT(allowed);
}

/* pthread_create() of worker i, on the i-th of the ncpu CPUs in *allowed
 * when ncpu >= 1, unpinned when 0. pthread_create()'s result. */
static inline int bench_start_worker(pthread_t *t, void *(*run)(void *),
				     void *arg, const cpu_set_t *allowed,
				     int ncpu, int i)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	if (ncpu >= 1) {
		cpu_set_t one;
		CPU_ZERO(&one);
		for (int c = 0, k = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, allowed) && k++ == i % ncpu) {
				CPU_SET(c, &one);
				break;
			}
		pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
	}
	int err = pthread_create(t, &attr, run, arg);
	pthread_attr_destroy(&attr);
	return err;
}

#endif

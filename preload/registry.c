/* SPDX-License-Identifier: MIT */
/*
 * The listeners made here. The program gets them as its `struct
 * evconnlistener *`; any pointer not in this registry is a listener
 * libevent made (a call we handed to it) and goes back to libevent.
 */
#include <pthread.h>
#include <unistd.h>

#include "preload.h"

#define NBUCKETS 256
static struct pl_entry *buckets[NBUCKETS];
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned int bucket_of(const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 21;
	x *= 0x9e3779b97f4a7c15ull;
	return (unsigned int)(x >> 56);
}

/*
 * fork: the child keeps the registry (it may free what it inherited, and
 * the core forgets those; common/process.h in src/), with its lock usable;
 * each entry says which process made it, so that only that process
 * reports it (report.c).
 */
static void fork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

static void fork_done(void)
{
	pthread_mutex_unlock(&reg_lock);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_register(void)
{
	pthread_atfork(fork_prepare, fork_done, fork_done);
}

void pl_reg_insert(struct pl_entry *e)
{
	pthread_once(&fork_once, fork_register);
	e->pid = getpid();
	unsigned int b = bucket_of(e->lev);
	pthread_mutex_lock(&reg_lock);
	e->next = buckets[b];
	buckets[b] = e;
	pthread_mutex_unlock(&reg_lock);
}

bool pl_reg_has(const void *lev)
{
	bool found = false;
	pthread_mutex_lock(&reg_lock);
	for (struct pl_entry *e = buckets[bucket_of(lev)]; e && !found; e = e->next)
		found = e->lev == lev;
	pthread_mutex_unlock(&reg_lock);
	return found;
}

struct pl_entry *pl_reg_remove(const void *lev)
{
	pthread_mutex_lock(&reg_lock);
	struct pl_entry **pp = &buckets[bucket_of(lev)];
	while (*pp && (*pp)->lev != lev)
		pp = &(*pp)->next;
	struct pl_entry *e = *pp;
	if (e)
		*pp = e->next;
	pthread_mutex_unlock(&reg_lock);
	return e;
}

/* The lock keeps a concurrent free from taking an entry away meanwhile. */
void pl_reg_each(void (*fn)(struct pl_entry *e))
{
	pthread_mutex_lock(&reg_lock);
	for (unsigned int b = 0; b < NBUCKETS; b++)
		for (struct pl_entry *e = buckets[b]; e; e = e->next)
			fn(e);
	pthread_mutex_unlock(&reg_lock);
}

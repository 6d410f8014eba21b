/* SPDX-License-Identifier: MIT */
/*
 * The process, and fork(): the one owner of the library's process-wide
 * state across fork (docs/ARCHITECTURE.md, "Fork" tells the whole story).
 *
 * Process-wide state lives in six registries, each behind its own lock:
 * the implicit groups (group/registry.c), the addresses' steering
 * (steering/shared.c), the rendezvous names (steering/rendezvous.c), the
 * rings (uring/rings.c), the stall watch (group/watch.c) and the log sink
 * (log.c). process.c registers one set of pthread_atfork handlers, at
 * load, that takes those locks before fork in that order (the order in
 * which any thread may nest them), releases them after it in the parent,
 * and in the child calls each registry's reset in the reverse order.
 *
 * Every object the library makes records the process generation it was
 * made in. The child's generation is a new one: an object of an older one
 * is *inherited*. The child may only free an inherited object; that
 * "forget" path frees memory and closes the child's copies of
 * descriptors, and touches nothing the parent still uses.
 */
#ifndef EVSTEER_COMMON_PROCESS_H
#define EVSTEER_COMMON_PROCESS_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

/* The generation of this process: 0 in the process that loaded the
 * library, one more in each fork child. */
EVST_HIDDEN unsigned int evst_process_gen(void);

/* An object made in generation gen belongs to the parent of this
 * process. */
static inline bool evst_inherited(unsigned int gen)
{
	return gen != evst_process_gen();
}

/*
 * How long thread tid of this process (0: the caller) has waited for a CPU
 * while runnable, and run on one, in all (its schedstat). A wait is counted
 * once it ends, when the thread gets its CPU: a thread that is waiting now
 * shows what it had before this wait. 0 on success, -1 where /proc or the
 * kernel's schedstats are missing.
 */
EVST_HIDDEN int evst_thread_run_delay(unsigned int tid, uint64_t *waited,
				      uint64_t *on_cpu);

/* Log (warn) that fn was called on an object inherited over fork, and set
 * errno to EINVAL: everything but freeing it belongs to the parent. */
EVST_HIDDEN void evst_inherited_call(const char *fn);
/* In a public function: refuse an inherited object (made in generation
 * gen) with ret, after the log line. */
#define EVST_REFUSE_INHERITED(gen, ret)                                        \
	do {                                                                   \
		if (evst_inherited(gen)) {                                     \
			evst_inherited_call(__func__);                         \
			return ret;                                            \
		}                                                              \
	} while (0)

/* Each registry's part of the fork protocol, called by process.c only:
 * prepare takes the registry's lock, parent releases it, child resets the
 * registry to empty (what it listed is the parent's) and releases it. */
#define EVST_FORK_PART(name)                                                   \
	EVST_HIDDEN void name##_fork_prepare(void);                            \
	EVST_HIDDEN void name##_fork_parent(void);                             \
	EVST_HIDDEN void name##_fork_child(void)
EVST_FORK_PART(evst_listen_order_registry);
EVST_FORK_PART(evst_group_registry);
EVST_FORK_PART(evst_shared_registry);
EVST_FORK_PART(evst_rdv_registry);
EVST_FORK_PART(evst_ring_registry);
EVST_FORK_PART(evst_watch_registry);
EVST_FORK_PART(evst_log_registry);

#endif /* EVSTEER_COMMON_PROCESS_H */

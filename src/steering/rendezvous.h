/* SPDX-License-Identifier: MIT */
/*
 * Rendezvous: how processes of one user find the shared steering state of
 * an address. An abstract unix socket named after the address (and its
 * network namespace) is served by one member process; a process that
 * connects gets the group's descriptors with SCM_RIGHTS. Both ends check
 * the other's credentials (SO_PEERCRED): same effective uid only.
 *
 * Serving needs code to run while the host's loops may be busy or not yet
 * started, so a process that holds any steered group runs one small thread
 * (all signals blocked) that accepts on the names it serves and calls each
 * entry's tick every EVST_RDV_TICK_MS. When the serving process goes, its
 * name goes with it and the next tick of another member takes it over.
 *
 * This file knows nothing of groups: entries carry descriptors to hand out
 * and a callback.
 */
#ifndef EVSTEER_RENDEZVOUS_H
#define EVSTEER_RENDEZVOUS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "internal.h"

#define EVST_RDV_NFDS 4
#define EVST_RDV_TICK_MS 250
/* How long a joiner waits for the server's answer. */
#define EVST_RDV_TIMEOUT_MS 2000

struct evst_rdv {
	struct sockaddr_un name; /* abstract: sun_path[0] == '\0' */
	socklen_t namelen;
	int fds[EVST_RDV_NFDS];  /* handed to joiners; owned by the caller */
	uint32_t layout;         /* joiners must present the same */
	/* Called on the thread every tick, without any rendezvous lock. */
	void (*tick)(void *arg);
	void *arg;

	/* rendezvous.c */
	int lfd;                 /* listening while we serve, else -1 */
	struct evst_rdv *next;
};

/* Build the name for a key (printable; the leading NUL is added). */
EVST_HIDDEN void evst_rdv_name(struct evst_rdv *r, const char *key);

/*
 * Ask whoever serves r->name for the descriptors. 0 with fds[] filled;
 * -ENOENT when nobody serves it (or it is going away); -EACCES when it is
 * served by another user (its uid and pid filled in); -EPROTO when the
 * server speaks another version; -ETIMEDOUT when it does not answer.
 */
EVST_HIDDEN int evst_rdv_join(const struct evst_rdv *r, int fds[EVST_RDV_NFDS],
			      uid_t *uid, pid_t *pid);

/*
 * Try to become the server of r->name now: 0 (we serve), -EADDRINUSE
 * (someone does), other -errno.
 */
EVST_HIDDEN int evst_rdv_bind(struct evst_rdv *r);

/* Hand r to the thread (started on first use): it serves r if its lfd is
 * set, takes the name over when it is free, and ticks. 0 or -errno. */
EVST_HIDDEN int evst_rdv_add(struct evst_rdv *r);
/* Take r back; on return the thread no longer touches it (no tick runs)
 * and its listening socket is closed. The thread stops with the last. */
EVST_HIDDEN void evst_rdv_remove(struct evst_rdv *r);

#endif

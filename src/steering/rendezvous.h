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

/*
 * The wire format (SOCK_SEQPACKET, one message each way), shared with
 * evsteer-stat (tools/), which speaks it without linking these files.
 *
 * Joining (proto 1, unchanged since the first version): the joiner sends a
 * struct evst_rdv_msg; the server answers one with status 0 and the
 * EVST_RDV_NFDS descriptors, or with an errno and none.
 *
 * Looking and control (proto 2, evsteer-stat): the client sends a
 * struct evst_rdv_req with op LOOK or SET. A server that predates it
 * answers proto 2 as any other version, with status EPROTO: old members
 * keep working and the client says they cannot be looked at. LOOK is
 * answered with status 0 and EVST_RDV_LOOK_NFDS descriptors: the
 * program's state (the .bss map) and a read-only descriptor of the
 * control page. SET changes the policy or a slot's weight and is answered
 * with a status only. The server allows the same effective uid or root
 * (SO_PEERCRED); joining stays same uid only.
 */
#define EVST_RDV_MAGIC 0x56525645u /* "EVRV" */
#define EVST_RDV_PROTO 1       /* join */
#define EVST_RDV_PROTO_CTL 2   /* look, set */
#define EVST_RDV_LOOK_NFDS 2   /* [0]: .bss map, [1]: control page (ro) */

struct evst_rdv_msg {
	uint32_t magic, proto, layout;
	int32_t status; /* answer: 0, or an errno the server refuses with */
	uint32_t pid;
};

enum evst_rdv_op {
	EVST_RDV_OP_LOOK = 1,
	EVST_RDV_OP_SET_POLICY = 2, /* value: enum evsteer_policy */
	EVST_RDV_OP_SET_WEIGHT = 3, /* slot (global), value: 1..16 */
};

struct evst_rdv_req {
	struct evst_rdv_msg h; /* proto EVST_RDV_PROTO_CTL */
	uint32_t op, slot, value, pad;
};

struct evst_rdv {
	struct sockaddr_un name; /* abstract: sun_path[0] == '\0' */
	socklen_t namelen;
	int fds[EVST_RDV_NFDS];  /* handed to joiners; owned by the caller */
	/* handed to lookers (LOOK); owned by the caller; -1: LOOK refused */
	int look_fds[EVST_RDV_LOOK_NFDS];
	uint32_t layout;         /* joiners must present the same */
	/* Called on the thread every tick, without any rendezvous lock. */
	void (*tick)(void *arg);
	/* A SET request of a peer allowed to make it (same uid or root), on
	 * the thread without any rendezvous lock: 0 or an errno for the
	 * answer. NULL: SET is refused (EOPNOTSUPP). */
	int (*control)(void *arg, const struct evst_rdv_req *req, pid_t pid,
		       uid_t uid);
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

/* SPDX-License-Identifier: MIT */
/*
 * What the LD_PRELOAD interposer (the files preload.h lists; core_load.c
 * loads this) gets from its private copy of evsteer (core.c + libevsteer's
 * objects, libevsteer-preload-core.so): one table of the native calls it
 * needs. The core exports nothing else, so its evsteer is invisible to the
 * program (which may use libevsteer itself) and its log callback is its own.
 */
#ifndef EVSTEER_PRELOAD_CORE_H
#define EVSTEER_PRELOAD_CORE_H

#include <evsteer/evsteer.h>

#define EVST_PRELOAD_CORE_SYMBOL "evst_preload_core_v1"
#define EVST_PRELOAD_CORE_ABI 2

struct evst_preload_core {
	unsigned int abi;  /* EVST_PRELOAD_CORE_ABI */
	size_t size;       /* sizeof(struct evst_preload_core) */
	const char *(*version)(void);
	evsteer_log_fn (*set_log)(evsteer_log_fn fn, void *arg,
				  enum evsteer_log_level max_level);
	struct evsteer_listener *(*listener_new)(
		struct event_base *base, evsteer_accept_cb cb, void *arg,
		unsigned int flags, int backlog, int fd,
		const struct evsteer_listener_opts *opts);
	struct evsteer_listener *(*listener_new_bind)(
		struct event_base *base, evsteer_accept_cb cb, void *arg,
		unsigned int flags, int backlog, const struct sockaddr *addr,
		socklen_t len, const struct evsteer_listener_opts *opts);
	void (*listener_free)(struct evsteer_listener *lev);
	int (*listener_enable)(struct evsteer_listener *lev);
	int (*listener_disable)(struct evsteer_listener *lev);
	void (*listener_set_cb)(struct evsteer_listener *lev,
				evsteer_accept_cb cb, void *arg);
	void (*listener_set_error_cb)(struct evsteer_listener *lev,
				      evsteer_error_cb errcb);
	struct event_base *(*listener_get_base)(const struct evsteer_listener *lev);
	int (*listener_get_fd)(const struct evsteer_listener *lev);
	int (*listener_get_path)(const struct evsteer_listener *lev,
				 struct evsteer_path *out);
	int (*listener_get_stats)(const struct evsteer_listener *lev,
				  struct evsteer_listener_stats *out);
	struct evsteer_group *(*listener_get_group)(
		const struct evsteer_listener *lev);
	unsigned int (*group_size)(const struct evsteer_group *g);
	int (*group_get_fd)(const struct evsteer_group *g, unsigned int slot);
	int (*group_worker_stats)(const struct evsteer_group *g,
				  unsigned int slot,
				  struct evsteer_worker_stats *out);
	/* the library's names (src/common/names.c), for the JSON report */
	const char *(*policy_str)(enum evsteer_policy policy);
	const char *(*steering_str)(enum evsteer_steering steering);
	const char *(*engine_str)(enum evsteer_engine engine);
};

#endif /* EVSTEER_PRELOAD_CORE_H */

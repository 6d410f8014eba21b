/* SPDX-License-Identifier: MIT */
/*
 * The private evsteer of the LD_PRELOAD shim: libevsteer's objects linked
 * into a module that the interposer dlopen()s (RTLD_LOCAL) only once it has
 * checked that the program's libevent is 2.1. The module's libevent calls are
 * left undefined on purpose: they bind to the libevent the program already
 * has, so evsteer's events live in the program's own event_base.
 */
#include "core.h"

__attribute__((visibility("default")))
const struct evst_preload_core evst_preload_core_v1 = {
	.abi = EVST_PRELOAD_CORE_ABI,
	.size = sizeof(struct evst_preload_core),
	.version = evsteer_version,
	.set_log = evsteer_set_log,
	.listener_new = evsteer_listener_new,
	.listener_new_bind = evsteer_listener_new_bind,
	.listener_free = evsteer_listener_free,
	.listener_enable = evsteer_listener_enable,
	.listener_disable = evsteer_listener_disable,
	.listener_set_cb = evsteer_listener_set_cb,
	.listener_set_error_cb = evsteer_listener_set_error_cb,
	.listener_get_base = evsteer_listener_get_base,
	.listener_get_fd = evsteer_listener_get_fd,
	.listener_get_path = evsteer_listener_get_path,
	.listener_get_stats = evsteer_listener_get_stats,
	.listener_get_group = evsteer_listener_get_group,
	.group_size = evsteer_group_size,
	.group_get_fd = evsteer_group_get_fd,
	.group_worker_stats = evsteer_group_worker_stats,
	.policy_str = evsteer_policy_str,
	.steering_str = evsteer_steering_str,
	.engine_str = evsteer_engine_str,
};

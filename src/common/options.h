/* SPDX-License-Identifier: MIT */
/*
 * The caller's options structs, checked in one place (options.c) for every
 * constructor that takes them: the struct is one this library can read
 * (libbpf's rule, internal.h: sz in range, nothing set past the last field
 * it knows) and every enum in it is in range. What is wrong is logged once,
 * starting with the public function's name.
 */
#ifndef EVSTEER_COMMON_OPTIONS_H
#define EVSTEER_COMMON_OPTIONS_H

#include <stdbool.h>

#include <evsteer/evsteer.h>

#include "internal.h"

/* NULL options are fine. false (logged) when they are not usable. */
EVST_HIDDEN bool evst_listener_opts_ok(const char *fn,
				       const struct evsteer_listener_opts *o);
EVST_HIDDEN bool evst_group_opts_ok(const char *fn,
				    const struct evsteer_group_opts *o);

#endif

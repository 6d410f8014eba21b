/* SPDX-License-Identifier: MIT */
/*
 * Enum names (names.c). The evsteer_*_str() functions are public
 * (evsteer.h); the parsers are what the environment reader uses.
 */
#ifndef EVSTEER_COMMON_NAMES_H
#define EVSTEER_COMMON_NAMES_H

#include <evsteer/evsteer.h>

#include "internal.h"

/* The value a name stands for, or -1 (NULL or unknown). */
EVST_HIDDEN int evst_policy_parse(const char *s);
EVST_HIDDEN int evst_bpf_mode_parse(const char *s);
EVST_HIDDEN int evst_accept_mode_parse(const char *s);
EVST_HIDDEN int evst_log_level_parse(const char *s);

#endif

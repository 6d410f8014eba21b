/* SPDX-License-Identifier: MIT */
/* Options checks (options.h). */
#include "common/options.h"

/* The name of the first enum option out of range, or NULL. */
static const char *enum_out_of_range(unsigned int bpf, unsigned int policy,
				     unsigned int accept)
{
	if (bpf > EVSTEER_BPF_REQUIRE)
		return "bpf";
	if (policy > EVSTEER_POLICY_CPU)
		return "policy";
	if (accept > EVSTEER_ACCEPT_URING)
		return "accept";
	return NULL;
}

static bool enums_ok(const char *fn, unsigned int bpf, unsigned int policy,
		     unsigned int accept)
{
	const char *bad = enum_out_of_range(bpf, policy, accept);
	if (bad)
		evst_warn("%s: options: %s out of range", fn, bad);
	return !bad;
}

/*
 * TCP_DEFER_ACCEPT's seconds after a block: 0 (never) or 1-30. Turning the
 * option off again lets a deferred handshake complete at its next SYN-ACK
 * retransmit (the client's ACK then hands it over), unless it has been
 * retransmitted tcp_synack_retries times already (5: 31 s): then the
 * kernel drops it, and its silent client gets a reset when it speaks. A
 * deferral of at most 30 s never gets there.
 */
#define DEFER_AFTER_BLOCK_MAX_S 30

static bool defer_ok(const char *fn, int s)
{
	if (s >= 0 && s <= DEFER_AFTER_BLOCK_MAX_S)
		return true;
	evst_warn("%s: defer_accept_after_block %d: expected 0 (never) or "
		  "1-%d seconds", fn, s, DEFER_AFTER_BLOCK_MAX_S);
	return false;
}

bool evst_listener_opts_ok(const char *fn, const struct evsteer_listener_opts *o)
{
	if (!EVST_LISTENER_OPTS_VALID(o)) {
		evst_warn("%s: bad options struct (sz or unknown non-zero fields)",
			  fn);
		return false;
	}
	return enums_ok(fn, EVST_OPT(o, struct evsteer_listener_opts, bpf, 0),
			EVST_OPT(o, struct evsteer_listener_opts, policy, 0),
			EVST_OPT(o, struct evsteer_listener_opts, accept, 0)) &&
	       defer_ok(fn, EVST_OPT(o, struct evsteer_listener_opts,
				     defer_accept_after_block, 0));
}

bool evst_group_opts_ok(const char *fn, const struct evsteer_group_opts *o)
{
	if (!EVST_GROUP_OPTS_VALID(o)) {
		evst_warn("%s: bad group options (sz or unknown non-zero fields)",
			  fn);
		return false;
	}
	return enums_ok(fn, EVST_OPT(o, struct evsteer_group_opts, bpf, 0),
			EVST_OPT(o, struct evsteer_group_opts, policy, 0),
			EVST_OPT(o, struct evsteer_group_opts, accept, 0)) &&
	       defer_ok(fn, EVST_OPT(o, struct evsteer_group_opts,
				     defer_accept_after_block, 0));
}

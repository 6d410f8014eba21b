/* SPDX-License-Identifier: MIT */
/*
 * What the shim says about a listener it made: one info line when it is
 * made (EVSTEER_LOG=info), and one JSON line of its path and counters
 * appended to EVSTEER_STATS when it is freed or, still open, at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

/* ---- names -------------------------------------------------------------- */

/* One spelling of each name: the library's (src/common/names.c). */
static const char *steering_str(enum evsteer_steering s)
{
	return pl.core->steering_str(s);
}

static const char *engine_str(enum evsteer_engine e)
{
	return pl.core->engine_str(e);
}

static const char *policy_str(enum evsteer_policy p)
{
	return pl.core->policy_str(p);
}

/* ---- the info line ------------------------------------------------------ */

/* The listener's slot in its group (the group API speaks slots), or -1. */
static int group_slot(struct evsteer_listener *lev, struct evsteer_group **gp)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_group *g = c->listener_get_group(lev);
	int fd = c->listener_get_fd(lev);
	*gp = g;
	if (!g)
		return -1;
	for (unsigned int i = 0, n = c->group_size(g); i < n; i++)
		if (c->group_get_fd(g, i) == fd)
			return (int)i;
	return -1;
}

void pl_report_made(const struct pl_entry *e)
{
	if (pl.env.log_level < EVSTEER_LOG_INFO)
		return;
	struct evsteer_listener *lev = e->lev;
	EVSTEER_PATH_OPTS(p);
	if (pl.core->listener_get_path(lev, &p) < 0)
		return;
	char why[400] = "";
	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	if (p.steering == EVSTEER_STEER_BPF)
		snprintf(why, sizeof(why), "bpf steering, policy %s, worker %d",
			 policy_str(p.policy), slot);
	else if (p.steering == EVSTEER_STEER_KERNEL_HASH ||
		 p.steering == EVSTEER_STEER_CBPF)
		snprintf(why, sizeof(why), "%s, worker %d", p.steering_reason,
			 slot);
	else
		snprintf(why, sizeof(why), "%s", p.steering_reason);
	if (*p.engine_reason) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; %s", p.engine_reason);
	}
	int fd = pl.core->listener_get_fd(lev), port;
	if (p.steering == EVSTEER_STEER_NONE && pl_has_reuseport(fd) &&
	    (port = pl_local_port(fd)) > 0) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, "; SO_REUSEPORT is set: "
			 "evsteer-run --group %d makes the port's listeners one "
			 "steering group", port);
	}
	pl_say(EVSTEER_LOG_INFO, "listener %s fd %d: path %s (%s)", e->addr, fd,
	       p.name, why);
}

/* ---- the JSON line ------------------------------------------------------ */

/* A JSON line; truncated rather than overflowing. */
struct jbuf {
	char b[2048];
	size_t n;
};

__attribute__((format(printf, 2, 3)))
static void jraw(struct jbuf *j, const char *fmt, ...)
{
	if (j->n >= sizeof(j->b))
		return;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(j->b + j->n, sizeof(j->b) - j->n, fmt, ap);
	va_end(ap);
	if (m > 0)
		j->n += (size_t)m;
	if (j->n > sizeof(j->b))
		j->n = sizeof(j->b);
}

/* ,"key":"s" with s escaped */
static void jstr(struct jbuf *j, const char *key, const char *s)
{
	jraw(j, ",\"%s\":\"", key);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			jraw(j, "\\%c", c);
		else if (c < 0x20)
			jraw(j, "\\u%04x", c);
		else
			jraw(j, "%c", c);
	}
	jraw(j, "\"");
}

static void jnum(struct jbuf *j, const char *key, uint64_t v)
{
	jraw(j, ",\"%s\":%llu", key, (unsigned long long)v);
}

/* The listener's own fields, or false if the core cannot tell them. */
static bool json_listener(struct jbuf *j, const struct pl_entry *e,
			  const char *when)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_listener *lev = e->lev;
	EVSTEER_PATH_OPTS(p);
	EVSTEER_STATS_OPTS(st);
	if (c->listener_get_path(lev, &p) < 0 ||
	    c->listener_get_stats(lev, &st) < 0)
		return false;

	jraw(j, "{\"evsteer\":\"%s\",\"pid\":%ld", c->version(), (long)getpid());
	jstr(j, "program", program_invocation_short_name);
	jstr(j, "event", when);
	jstr(j, "address", e->addr);
	jnum(j, "fd", (uint64_t)c->listener_get_fd(lev));
	jstr(j, "path", p.name);
	jstr(j, "steering", steering_str(p.steering));
	jstr(j, "engine", engine_str(p.engine));
	if (p.steering == EVSTEER_STEER_BPF)
		jstr(j, "policy", policy_str(p.policy));
	jstr(j, "steering_reason", p.steering_reason);
	jstr(j, "engine_reason", p.engine_reason);
	jnum(j, "accepted", st.accepted);
	jnum(j, "wakeups", st.wakeups);
	jnum(j, "capped_wakeups", st.capped_wakeups);
	jnum(j, "accept_errors", st.accept_errors);
	jnum(j, "exhausted_episodes", st.exhausted_episodes);
	jnum(j, "exhausted_retries", st.exhausted_retries);
	jnum(j, "held", st.held);
	jnum(j, "rearms", st.rearms);
	return true;
}

/* "group":{...} for a member of a worker group. */
static void json_group(struct jbuf *j, struct evsteer_listener *lev)
{
	const struct evst_preload_core *c = pl.core;
	struct evsteer_group *g;
	int slot = group_slot(lev, &g);
	EVSTEER_WORKER_STATS_OPTS(w);
	if (slot < 0 || c->group_worker_stats(g, (unsigned int)slot, &w) != 0)
		return;
	jraw(j, ",\"group\":{\"slot\":%d,\"workers\":%u", slot, c->group_size(g));
	jnum(j, "steered", w.steered);
	jnum(j, "accepted", w.accepted);
	jnum(j, "stolen", w.stolen);
	jnum(j, "stolen_from", w.stolen_from);
	jnum(j, "migrated", w.migrated);
	jraw(j, "}");
}

/* Appended with one write(2), so lines of threads and processes stay whole. */
static void append(struct jbuf *j)
{
	if (j->n >= sizeof(j->b)) { /* truncated: keep it one valid-looking line */
		j->n = sizeof(j->b) - 1;
		j->b[j->n - 1] = '\n';
	}
	const char *path = pl.env.stats_path;
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, j->b, j->n) != (ssize_t)j->n) {
		static bool told;
		if (!__atomic_exchange_n(&told, true, __ATOMIC_RELAXED))
			pl_say(EVSTEER_LOG_WARN, "EVSTEER_STATS=%s: %s", path,
			       strerror(errno));
	}
	if (fd >= 0)
		close(fd);
}

static void report(struct pl_entry *e, const char *when)
{
	if (!pl.env.stats_path || e->reported)
		return;
	struct jbuf j = {.n = 0};
	if (!json_listener(&j, e, when))
		return;
	json_group(&j, e->lev);
	jraw(&j, "}\n");
	append(&j);
}

/* A child of fork() does not speak for its parent's listeners: the parent
 * reports them, with the counters they really have. */
void pl_report_free(struct pl_entry *e)
{
	if (e->pid == getpid())
		report(e, "free");
}

static void report_exit(struct pl_entry *e)
{
	if (e->pid == getpid())
		report(e, "exit");
	e->reported = true;
}

/* Listeners still open at exit get their line now. Runs before the loader
 * unmaps anything, while the program's other threads may still run: the
 * registry lock keeps a concurrent free from taking an entry away. */
void pl_report_at_exit(void)
{
	pl_reg_each(report_exit);
}

/* SPDX-License-Identifier: MIT */
/*
 * stderr: the shim's own lines and the core's, "evsteer: LEVEL: ...", up to
 * EVSTEER_LOG's level.
 */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "preload.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *pl_level_name(enum evsteer_log_level level)
{
	return (unsigned int)level < sizeof(level_names) / sizeof(*level_names) ?
		       level_names[level] : NULL;
}

/* One write(2) per line, so lines from threads do not interleave. */
static void vsay(enum evsteer_log_level level, const char *fmt, va_list ap)
{
	if (level > pl.env.log_level)
		return;
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "evsteer: %s: ", level_names[level]);
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t r = write(STDERR_FILENO, buf, (size_t)n);
	(void)r;
}

void pl_say(enum evsteer_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(level, fmt, ap);
	va_end(ap);
}

/*
 * While this thread creates a listener, the core's info lines (its path
 * line, the reason BPF or io_uring is not used) are dropped: the line we
 * print says the same and names the address too, so the user gets one line
 * per listener.
 */
static _Thread_local bool creating;

void pl_creating(bool on)
{
	creating = on;
}

void pl_core_log(enum evsteer_log_level level, const char *msg, void *arg)
{
	(void)arg;
	if (creating && level == EVSTEER_LOG_INFO)
		return;
	pl_say(level, "%s", msg);
}

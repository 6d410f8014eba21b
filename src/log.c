/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "internal.h"
#include "common/env.h"
#include "common/process.h"

/*
 * One process-wide sink, guarded by a mutex: messages are rare (errors,
 * fallbacks, episodes), so a lock costs nothing that matters and keeps a
 * callback swap from racing with a message on another thread.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static evsteer_log_fn log_fn;
static void *log_arg;
static enum evsteer_log_level log_max = EVSTEER_LOG_WARN;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

/* fork (common/process.h): a message may be on its way on another thread;
 * the child keeps the sink the parent set. */
void evst_log_registry_fork_prepare(void)
{
	pthread_mutex_lock(&log_lock);
}

void evst_log_registry_fork_parent(void)
{
	pthread_mutex_unlock(&log_lock);
}

void evst_log_registry_fork_child(void)
{
	pthread_mutex_unlock(&log_lock);
}

/* EVSTEER_LOG=error|warn|info|debug sets the default sink's level. */
static void read_env(void)
{
	int l = evst_env_log_level();
	if (l >= 0)
		log_max = (enum evsteer_log_level)l;
}


evsteer_log_fn evsteer_set_log(evsteer_log_fn fn, void *arg,
			       enum evsteer_log_level max_level)
{
	pthread_once(&env_once, read_env);
	if ((unsigned int)max_level > EVSTEER_LOG_DEBUG) {
		evst_warn("evsteer_set_log: level %d is not a log level",
			  (int)max_level);
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&log_lock);
	evsteer_log_fn old = log_fn;
	log_fn = fn;
	log_arg = arg;
	log_max = max_level;
	pthread_mutex_unlock(&log_lock);
	return old;
}

void evst_log(enum evsteer_log_level level, const char *fmt, ...)
{
	pthread_once(&env_once, read_env);
	pthread_mutex_lock(&log_lock);
	evsteer_log_fn fn = log_fn;
	void *arg = log_arg;
	enum evsteer_log_level max = log_max;
	pthread_mutex_unlock(&log_lock);

	if (level > max)
		return;

	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	if (fn) {
		fn(level, msg, arg);
		return;
	}
	const char *name = evsteer_log_level_str(level);
	fprintf(stderr, "evsteer: %s: %s\n", name ? name : "?", msg);
}

const char *evsteer_version(void)
{
	return EVSTEER_VERSION;
}

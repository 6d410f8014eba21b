/* SPDX-License-Identifier: MIT */
/*
 * libevsteer-preload.so: put it in LD_PRELOAD of an unmodified libevent 2.1
 * program (evsteer-run does) and the program's evconnlistener_* calls land
 * here, its own and evhttp's inside libevent too (libevent calls them through
 * its PLT, so the loader binds them to the first definition: ours).
 *
 * Nothing of libevent is linked in. The real functions are found with
 * dlsym(RTLD_NEXT), and evsteer itself (libevsteer-preload-core.so, next to
 * this file) is dlopen()ed only at the first evconnlistener call, once the
 * program's libevent is known to be 2.1: a process that never makes a
 * listener (a shell, a child of a wrapper script) loads this small file and
 * nothing else. When anything does not fit, every call passes through to
 * libevent unchanged, and stderr says so once.
 *
 * The program gets evsteer listeners as its `struct evconnlistener *`: it
 * never looks inside one, and neither does evhttp (it only stores the
 * pointer and calls evconnlistener_set_cb/get_fd/free on it). The listeners
 * made here are kept in a registry; any other pointer is a listener libevent
 * made (a call we handed to it) and goes back to libevent.
 *
 * This file holds the shim's state; preload.h declares it and says which
 * file does what.
 */
#include "preload.h"

struct pl_state pl;

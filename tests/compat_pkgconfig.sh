#!/bin/sh
# Compile the libevent-style program the way a user would, through
# `pkg-config evsteer libevent` (the build tree's uninstalled .pc), and run it.
# usage: compat_pkgconfig.sh SOURCE BUILD_ROOT [extra cflags...]
set -eu
src=$1
build=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PKG_CONFIG_PATH="$build/meson-uninstalled${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
flags=$(pkg-config --cflags --libs evsteer libevent)
${CC:-cc} "$@" -DUSE_EVSTEER -o "$tmp/prog" "$src" $flags
LD_LIBRARY_PATH="$build/src${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/prog"

#!/bin/sh
# The same program built against libevent and through evsteer's compat.h
# must print the same lines.
set -eu
ref=$("$1")
ours=$("$2")
printf '%s\n' "$ours"
if [ "$ref" != "$ours" ]; then
	printf 'libevent printed:\n%s\n' "$ref" >&2
	exit 1
fi

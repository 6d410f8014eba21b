#!/bin/sh
# SPDX-License-Identifier: MIT
# The public ABI of libevsteer.so (exported functions and their versions,
# the layout of every public struct, enum values, typedefs: what
# include/evsteer/ declares) against the baseline committed for this
# release, abi/libevsteer-<version>.abi. Any difference fails, harmless
# ones (an enumerator added, a field put in tail padding) included: an ABI
# change is announced by committing a new baseline (abi/README.md), never
# found out afterwards. Every older baseline in abi/ is checked too, for
# incompatible changes only (a removed or re-versioned symbol).
#
# usage: abi_check.sh [--update] LIBEVSTEER_SO BASELINE HEADERS_DIR
#   --update  write BASELINE from LIBEVSTEER_SO instead (ninja abi-update)
#
# Needs abidw/abidiff (Debian's abigail-tools) and a library with DWARF
# (every build type but release/minsize, ASan and TSan builds included; the
# dump does not depend on the build directory, optimisation or
# instrumentation). Without them: exit 77 (skip), or a failure when
# EVSTEER_TEST_REQUIRE is "all" or names "abi".
set -u

update=0
if [ "${1:-}" = --update ]; then
	update=1
	shift
fi
if [ $# -ne 3 ]; then
	sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
lib=$1
base=$2
hdrs=$3

required() {
	case ",${EVSTEER_TEST_REQUIRE:-}," in
	,all, | *,abi,*) return 0 ;;
	esac
	return 1
}
skip() {
	if required; then
		echo "abi: required (EVSTEER_TEST_REQUIRE) but: $1"
		exit 1
	fi
	echo "abi: skipped: $1"
	exit 77
}

for t in abidw abidiff readelf; do
	command -v $t >/dev/null 2>&1 ||
		skip "$t not found (apt-get install abigail-tools binutils; deploy/setup.sh installs them)"
done
readelf -S "$lib" | grep -q '\.debug_info' ||
	skip "$lib has no debug info (buildtype=release or -Ddebug=false?): abidiff needs DWARF to compare types; use the default build"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Only what the public headers declare; no paths, locations or DT_NEEDED
# (they vary with the build directory and the optional dependencies); type
# ids by hash, so a regenerated baseline diffs only where the ABI changed.
abidw --headers-dir "$hdrs" --drop-private-types --exported-interfaces-only \
	--no-corpus-path --no-comp-dir-path --no-show-locs --no-elf-needed \
	--type-id-style hash --out-file "$tmp/current.abi" "$lib" || {
	echo "abi: abidw failed on $lib"
	exit 1
}
nfun=$(grep -c "<function-decl " "$tmp/current.abi")
ntype=$(grep -Eo "<(class|enum|typedef)-decl name='evsteer[a-z_]*'" \
	"$tmp/current.abi" | sort -u | wc -l)
if [ "$nfun" -eq 0 ]; then
	echo "abi: abidw found no exported function in $lib (headers: $hdrs)"
	exit 1
fi

if [ $update = 1 ]; then
	mkdir -p "$(dirname "$base")"
	cp "$tmp/current.abi" "$base"
	echo "abi: wrote $base ($nfun functions, $ntype public types). Commit it"
	echo "with the change; its diff is the announcement reviewers read."
	exit 0
fi

if [ ! -f "$base" ]; then
	echo "abi: no baseline $base for this version."
	echo "If this is a new release, write it: ninja -C <builddir> abi-update,"
	echo "and commit it (abi/README.md)."
	exit 1
fi

arch() {
	sed -n "/<abi-corpus /{s/.*architecture='\([^']*\)'.*/\1/p;q;}" "$1"
}
here=$(arch "$tmp/current.abi")
if [ "$(arch "$base")" != "$here" ]; then
	skip "the baseline is for $(arch "$base"), this build is $here: struct layouts differ by architecture (add a baseline for it: abi/README.md)"
fi

abidiff --harmless "$base" "$tmp/current.abi" >"$tmp/report"
rc=$?
if [ $rc -ne 0 ]; then
	echo "abi: the public ABI differs from $base (abidiff exit $rc):"
	echo
	cat "$tmp/report"
	echo
	cat <<EOF
If this change is intended, announce it (abi/README.md):
  - only additions: new functions, new enumerators, new fields at the end
    of a struct that starts with size_t sz (then move that struct's last
    field in src/internal.h, EVST_*_OPTS_VALID / EVST_*_COPY_OUT, and in
    its EVSTEER_*_OPTS() macro in evsteer.h);
  - list new functions in a new version node of src/libevsteer.map that
    inherits the previous one (EVSTEER_0.2 { global: ...; } EVSTEER_0.1;);
    a released node never changes;
  - for a new release, bump version: in meson.build first, so the previous
    release's baseline stays as it was;
  - regenerate: ninja -C <builddir> abi-update   (writes $(basename "$base"))
  - commit the baseline with the change.
Removing or changing anything a released baseline has is not an option
without a new soname.
EOF
	exit 1
fi

# Older releases: what they export must still be there, unchanged.
dir=$(dirname "$base")
for old in "$dir"/libevsteer-*.abi; do
	[ -f "$old" ] && [ "$old" != "$base" ] || continue
	[ "$(arch "$old")" = "$here" ] || continue
	abidiff "$old" "$tmp/current.abi" >"$tmp/old-report"
	orc=$?
	# bit 8: an incompatible change (ABIDIFF_ABI_INCOMPATIBLE_CHANGE);
	# bits 1 and 2: abidiff itself failed
	if [ $((orc & 11)) -ne 0 ]; then
		echo "abi: incompatible with the release in $old (abidiff exit $orc):"
		cat "$tmp/old-report"
		exit 1
	fi
done

echo "abi: $lib matches $base ($nfun functions, $ntype public types)"
exit 0

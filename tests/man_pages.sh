#!/bin/sh
# The man pages keep up with the API: every public function declared in
# include/evsteer/evsteer.h has a page (its own in man/, or a generated
# ".so" link page in the build's man/ pointing at its group's page), the
# page it lands on names it in its NAME section, no page names a function
# the header no longer declares, and every page renders with groff without
# a single warning.
# usage: man_pages.sh SOURCE_ROOT BUILD_MAN_DIR
set -eu
src=$1
built=$2
header=$src/include/evsteer/evsteer.h
mandir=$src/man

required() {
	case ",${EVSTEER_TEST_REQUIRE:-}," in
	*,all,* | *,man,*) return 0 ;;
	esac
	return 1
}
if ! command -v groff >/dev/null 2>&1; then
	if required; then
		echo "man_pages: required (EVSTEER_TEST_REQUIRE) but groff is not installed"
		exit 1
	fi
	echo "man_pages: skipped: groff is not installed (apt-get install groff-base)"
	exit 77
fi

fail=0
bad() {
	echo "man_pages: $*"
	fail=1
}

# The public functions: what follows EVSTEER_API up to its '(' (a
# declaration may span lines), the #define of EVSTEER_API itself left out.
funcs=$(grep -v '^#define EVSTEER_API' "$header" | tr '\n' ' ' |
	grep -o 'EVSTEER_API[^;(]*(' | sed 's/[[:space:]]*($//; s/.*[[:space:]*]//' | sort -u)
ndecl=$(grep -v '^#define EVSTEER_API' "$header" | grep -o 'EVSTEER_API' | wc -l)
nfunc=$(printf '%s\n' "$funcs" | grep -c . || true)
[ "$nfunc" -gt 0 ] || bad "no function found in $header"
[ "$nfunc" -eq "$ndecl" ] ||
	bad "$ndecl EVSTEER_API declarations but $nfunc function names read: the parser missed some"
for f in $funcs; do
	case $f in
	evsteer_*) ;;
	*) bad "\"$f\" read from $header is not a function name" ;;
	esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$funcs" >"$tmp/funcs"

# "NAME PAGE" for every name a page's NAME section lists.
for p in "$mandir"/*.[13]; do
	sed -n '/^\.SH NAME/,/^\.SH /p' "$p" | sed '1d;$d' | sed 's/ \\- .*//; s/\\-/-/g' |
		tr ',' '\n' | tr -d ' \\' | grep . | sed "s|\$| $(basename "$p")|"
done >"$tmp/names"

# "NAME PAGE" for every name with a page of its own or a link page.
for p in "$mandir"/*.[13]; do
	n=$(basename "$p")
	echo "${n%.*} $n"
done >"$tmp/pages"
for l in "$built"/*.[13]; do
	[ -e "$l" ] || continue
	n=$(basename "$l")
	target=$(sed -n 's/^\.so[[:space:]]\{1,\}man[0-9]\///p' "$l")
	if [ -z "$target" ] || [ ! -f "$mandir/$target" ]; then
		bad "link page $l does not point at a page in man/"
		continue
	fi
	echo "${n%.*} $target"
done >>"$tmp/pages"

# Every function lands on a page that lists it; so does every link page.
for f in $funcs; do
	grep -q "^$f " "$tmp/pages" ||
		bad "$f has no man page (add it to a page's NAME and to man/meson.build)"
done
while read -r n p; do
	grep -qx "$n $p" "$tmp/names" ||
		bad "$n lands on $p, whose NAME section does not list it"
done <"$tmp/pages"

# No page documents a function the header does not declare.
while read -r n p; do
	case $n in
	evsteer_*)
		grep -qx "$n" "$tmp/funcs" ||
			bad "$p documents $n, which evsteer.h does not declare"
		;;
	esac
done <"$tmp/names"

# Every page renders without a warning (groff exits 0 even with some).
npages=0
for p in "$mandir"/*.[13]; do
	npages=$((npages + 1))
	out=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$p" 2>&1) || bad "$(basename "$p"): groff failed"
	[ -z "$out" ] || bad "$(basename "$p") does not render cleanly: $out"
	grep -q '^\.TH ' "$p" || bad "$(basename "$p") has no .TH line"
done

[ "$fail" -eq 0 ] || exit 1
echo "man_pages: $nfunc functions documented, $npages pages render cleanly"

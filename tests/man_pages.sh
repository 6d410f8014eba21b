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

# The names a page's NAME section lists, one a line.
names_of() {
	sed -n '/^\.SH NAME/,/^\.SH /p' "$1" | sed '1d;$d' |
		sed 's/\\-.*//' | tr ',' '\n' | tr -d ' \\' | grep .
}

# The page a name lands on: man/NAME.N, or the target of a link page.
page_for() {
	for s in 3 1; do
		if [ -f "$mandir/$1.$s" ]; then
			echo "$mandir/$1.$s"
			return
		fi
		if [ -f "$built/$1.$s" ]; then
			target=$(sed -n 's/^\.so[[:space:]]\{1,\}man[0-9]\///p' "$built/$1.$s")
			if [ -n "$target" ] && [ -f "$mandir/$target" ]; then
				echo "$mandir/$target"
			else
				echo "broken:$built/$1.$s"
			fi
			return
		fi
	done
}

for f in $funcs; do
	p=$(page_for "$f")
	case $p in
	'') bad "$f has no man page (add it to a page's NAME and to man/meson.build)" ;;
	broken:*) bad "${p#broken:} does not link to a page in man/" ;;
	*)
		names_of "$p" | grep -qx "$f" ||
			bad "$f lands on $(basename "$p"), whose NAME section does not list it"
		;;
	esac
done

# Every link page points at a page that lists it.
for l in "$built"/*.[13]; do
	[ -e "$l" ] || continue
	n=$(basename "$l")
	n=${n%.*}
	p=$(page_for "$n")
	case $p in
	broken:* | '') bad "link page $l is broken" ;;
	*) names_of "$p" | grep -qx "$n" || bad "link page $n.* points at $(basename "$p"), which does not list $n" ;;
	esac
done

# No page documents a function the header does not declare.
for p in "$mandir"/*.[13]; do
	for n in $(names_of "$p"); do
		case $n in
		evsteer_*)
			printf '%s\n' "$funcs" | grep -qx "$n" ||
				bad "$(basename "$p") documents $n, which evsteer.h does not declare"
			;;
		esac
	done
done

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

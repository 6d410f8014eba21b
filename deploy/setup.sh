#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs, then one job:
#   deploy/setup.sh demo      install, build, run the demo
#   deploy/setup.sh test      install, build, run the whole test suite
#   deploy/setup.sh asan      the same suite built with ASan+UBSan
#   deploy/setup.sh tsan      the same suite built with ThreadSanitizer
#   deploy/setup.sh bench     the benchmark report (bench/results/)
#   deploy/setup.sh vmtest [KERNEL]  a subset of the suite on Debian's own
#                             kernel (6.1; or bookworm-backports, trixie)
#                             under qemu: deploy/vmtest.sh
#   deploy/setup.sh summary DIR...  one "N passed, N failed" line over builds
# Extra arguments go to the demo or to `meson test`.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-demo}
shift || true

packages=(
	gcc libc6-dev meson ninja-build pkg-config python3
	libevent-dev libcmocka-dev
	# the fast paths: BPF steering and io_uring accept (probed at run time)
	clang llvm bpftool libbpf-dev liburing-dev
	# forcing fallbacks in tests: seccomp filters, capability sets
	libseccomp-dev util-linux libcap2-bin
	# deployment tests: a real container runtime, the manifests, the units
	runc python3-yaml systemd
	# the abi test: abidw/abidiff against the committed baseline (abi/)
	abigail-tools
	# the benchmark report's plots
	gnuplot-nox
	# the man-pages test renders every page
	groff-base
	# the preload tests: real Debian programs and their clients
	coturn ustreamer curl
	# evsteer-stat --watch is tested as a person sees it, in a tmux pane
	tmux
	# bench-smoke's end-to-end scenarios drive the evhttp server with wrk
	wrk
	# real-http-defer looks at the server's handshakes with ss
	iproute2
	# bench-smoke-icount counts instructions per connection under callgrind
	valgrind
)

# the bench job also counts system calls, draws flame graphs and drives
# the end-to-end scenarios' evhttp server with wrk
if [ "$job" = bench ]; then
	packages+=(linux-perf nodejs npm wrk)
fi
# vmtest boots a packaged kernel under qemu; depmod/modprobe read its modules
if [ "$job" = vmtest ]; then
	packages+=(qemu-system-x86 kmod)
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
		missing+=("$p")
done
if ((${#missing[@]})); then
	sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	echo "setup: installing ${missing[*]}" >&2
	$sudo apt-get update -q
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
		--no-install-recommends "${missing[@]}"
	# coturn's package starts a TURN server on port 3478: the tests run
	# their own, so stop the one we caused
	if [[ " ${missing[*]} " == *" coturn "* ]] && [ -d /run/systemd/system ]; then
		$sudo systemctl disable --now coturn >/dev/null 2>&1 || true
	fi
fi

# build DIR [meson options...]
build() {
	local dir=$1
	shift
	if [ -f "$dir/build.ninja" ]; then
		meson setup --reconfigure "$dir" "$@" >/dev/null
	else
		meson setup "$dir" "$@"
	fi
	ninja -C "$dir"
}

# The closing line CI reads: "N passed, N failed, N skipped", over the
# meson test logs of the build dirs given.
summary() {
	python3 - "$@" <<'PY'
import json, os, sys
n = {"OK": 0, "FAIL": 0, "SKIP": 0}
for d in sys.argv[1:]:
    log = os.path.join(d, "meson-logs", "testlog.json")
    if not os.path.exists(log):
        n["FAIL"] += 1  # the suite never ran
        continue
    for line in open(log):
        r = json.loads(line)["result"]
        key = "OK" if r in ("OK", "EXPECTEDFAIL") else "SKIP" if r == "SKIP" else "FAIL"
        n[key] += 1
print(f"{n['OK']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
PY
}

run_tests() {
	local dir=$1
	shift
	local rc=0
	meson test -C "$dir" --print-errorlogs "$@" || rc=$?
	summary "$dir"
	return $rc
}

# Install into a scratch root and build the demo from the installed headers,
# library and evsteer.pc, as a user of the package would.
install_check() {
	local root
	root=$(mktemp -d)
	DESTDIR=$root meson install -C build --quiet
	local pc
	pc=$(dirname "$(find "$root" -name evsteer.pc | head -n1)")
	PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$pc \
		cc -o "$root/demo" examples/demo.c \
		$(PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$pc \
			pkg-config --cflags --libs evsteer libevent_pthreads)
	LD_LIBRARY_PATH=$(dirname "$(find "$root" -name 'libevsteer.so' | head -n1)") \
		"$root/demo" --connections 200 >/dev/null
	# the installed preload finds its core next to it
	local preload log
	preload=$(find "$root" -name libevsteer-preload.so | head -n1)
	log=$(LD_PRELOAD=$preload EVSTEER_LOG=info ./build/tests/compat_prog_libevent 2>&1 >/dev/null)
	grep -q '^evsteer: info: listener 127.0.0.1:' <<<"$log"
	[ -x "$(find "$root" -path '*/bin/evsteer-run' | head -n1)" ]
	rm -rf "$root"
	echo "install check: headers, library, evsteer.pc and the preload work from an install"
}

case $job in
demo)
	build build
	./build/examples/evsteer-demo "$@"
	# and the side-by-side report, in its quick form (about 30 s)
	./build/bench/evsteer-bench --quick
	;;
test)
	build build
	install_check
	run_tests build "$@"
	;;
asan)
	build build-asan -Db_sanitize=address,undefined -Db_lundef=false \
		-Dbuildtype=debug
	run_tests build-asan "$@"
	;;
tsan)
	# libevent is not instrumented: TSan sees its locks through the
	# pthread interceptors (evthread_use_pthreads), which is what orders
	# our callbacks; no suppression is needed so far (docs/ARCHITECTURE.md,
	# Tests).
	build build-tsan -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug
	run_tests build-tsan "$@"
	;;
bench)
	build build
	# d3-flame-graph's HTML template for --profile (4.x ships it)
	if [ ! -f build/npm/node_modules/d3-flame-graph/dist/templates/d3-flamegraph-base.html ]; then
		mkdir -p build/npm
		npm install --prefix build/npm --no-audit --no-fund \
			d3-flame-graph@4 >/dev/null ||
			echo "setup: npm install d3-flame-graph failed: --profile writes folded stacks only" >&2
	fi
	./build/bench/evsteer-bench "$@"
	;;
vmtest)
	build build
	bash deploy/vmtest.sh "$@"
	;;
summary)
	summary "$@"
	;;
*)
	echo "usage: $0 demo|test|asan|tsan|bench|vmtest|summary [args]" >&2
	exit 2
	;;
esac

#!/bin/bash
# Runs inside the vmtest guest, started by init.c once the host's root is
# mounted read-only over 9p. Everything it learns comes from
# /run/vmtest/out/guest.conf, written by deploy/vmtest.sh; everything it
# finds goes back through the same writable share, plus progress lines on
# the serial console. The host reads out/subset-started and out/done: a run
# that never started the tests is no verdict, one that started and did not
# finish is a failure.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "vmtest-guest: $*"; }
now() { date +%s.%N; }

mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm 2>/dev/null ||
	{ mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm; }
mkdir -p /dev/pts && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
# what udev would have made: bash's process substitution needs /dev/fd
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

r=/run/vmtest
mkdir -p $r/out $r/kmod $r/tree $r/ovl
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts" out $r/out || { say "cannot mount the out share"; exit 1; }
mount -t 9p -o "ro,$opts,cache=loose" kmod $r/kmod
# shellcheck source=/dev/null
. $r/out/guest.conf
out=$r/out
exec 3>&1 > >(tee -a $out/guest.log) 2>&1
tee_pid=$!

# The kernel's own modules, as modprobe finds them on an installed system:
# auto-loading (request_module) goes through a wrapper with the extracted
# tree as its base.
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d %s "$@"\n' $r/kmod >$r/modprobe
chmod 755 $r/modprobe
echo $r/modprobe >/proc/sys/kernel/modprobe
for m in $VMTEST_MODULES; do
	$r/modprobe "$m" || say "modprobe $m failed"
done

ip link set lo up
# the host's descriptor limits (the kernel's default hard limit, 4096, is
# below what a systemd machine gives; the direct table sizes from it)
ulimit -H -n "$VMTEST_NOFILE_HARD" && ulimit -S -n "$VMTEST_NOFILE_SOFT"

# The checkout at its host path (meson's build files hold absolute paths),
# writable through a tmpfs overlay: meson test writes its logs into build/.
mount -t 9p -o "ro,$opts,cache=loose" tree $r/tree
mkdir -p $r/ovl/up $r/ovl/work "$VMTEST_TREE"
while read -r mode dir; do
	[ -n "$dir" ] && chmod "$mode" "$dir" 2>/dev/null
done <<<"$VMTEST_TREE_MODES"
mount -t overlay overlay \
	-o "lowerdir=$r/tree,upperdir=$r/ovl/up,workdir=$r/ovl/work" "$VMTEST_TREE" ||
	{ say "cannot overlay $VMTEST_TREE"; exit 1; }
cd "$VMTEST_TREE" || exit 1

say "up: $(uname -r), $(nproc) cpus, $(($(date +%s) - ${VMTEST_HOST_START%.*})) s since the host started qemu"
{
	echo "uname: $(uname -a)"
	echo "cmdline: $(cat /proc/cmdline)"
	for s in kernel.unprivileged_bpf_disabled kernel.io_uring_disabled \
		net.ipv4.tcp_migrate_req net.core.somaxconn kernel.unprivileged_userns_clone; do
		echo "$s = $(sysctl -n $s 2>&1)"
	done
	echo "modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
} >$out/guest-info.txt

if [ -x "$VMTEST_PROBE" ]; then
	say "kernel feature probe"
	timeout 60 "$VMTEST_PROBE" >$out/probe.txt 2>&1
	cat $out/probe.txt
fi

# a command of the caller's first (EVSTEER_VMTEST_RUN), for investigations
if [ -n "$VMTEST_RUN" ]; then
	say "run: $VMTEST_RUN"
	(eval "$VMTEST_RUN") >$out/run.txt 2>&1
	echo "run_rc=$?" >>$out/run.txt
	cat $out/run.txt
fi

# the named subset, with meson's per-test timeouts stretched for TCG
run_subset() {
	local t0 failed t
	t0=$(now)
	say "meson test: $VMTEST_TESTS"
	# from here on a machine that does not finish is a test's doing
	echo "$VMTEST_TESTS" >$out/subset-started
	# shellcheck disable=SC2086
	env $VMTEST_ENV meson test -C build --no-rebuild --print-errorlogs \
		--timeout-multiplier "$VMTEST_TIMEOUT_MULT" $VMTEST_TESTS
	echo "meson_rc=$?" >$out/meson.rc
	cp build/meson-logs/testlog.json build/meson-logs/testlog.txt $out/
	say "subset took $(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.0f", a - b }') s"

	# each failure once more with the library's debug log, for the evidence
	failed=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["result"] not in ("OK", "SKIP", "EXPECTEDFAIL"):
        # meson 1.0 writes "evsteer / direct": the test is "direct"
        print(r["name"].rsplit(" / ", 1)[-1])
' $out/testlog.json)
	for t in $failed; do
		say "again with EVSTEER_LOG=debug: $t"
		# shellcheck disable=SC2086
		env $VMTEST_ENV EVSTEER_LOG=debug meson test -C build --no-rebuild \
			--timeout-multiplier "$VMTEST_TIMEOUT_MULT" --logbase "debug-$t" \
			"$t" >/dev/null
		cp "build/meson-logs/debug-$t.txt" "build/meson-logs/debug-$t.json" $out/
	done
}
[ -z "$VMTEST_TESTS" ] || run_subset

if [ -n "$VMTEST_DEMO" ]; then
	say "demo: $VMTEST_DEMO"
	# shellcheck disable=SC2086
	env $VMTEST_ENV EVSTEER_LOG=info timeout 300 $VMTEST_DEMO >$out/demo.txt 2>&1
	echo "demo_rc=$?" >>$out/demo.txt
	cat $out/demo.txt
fi

dmesg >$out/dmesg.txt 2>&1
echo "done $(now)" >$out/done
# let tee write the last lines before PID 1 powers off
exec >&3 2>&1
wait $tee_pid
sync

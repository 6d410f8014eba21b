#!/usr/bin/env bash
# Boot one of Debian's packaged kernels under qemu (TCG: these machines have
# no KVM) with this machine's root filesystem and the checkout shared in
# read-only over 9p, run a named subset of the meson suite in it, and report
# per test. `bash deploy/setup.sh vmtest [KERNEL]` installs what this needs
# and builds first; run alone it expects build/ to be built.
#
#   KERNEL   bookworm | 6.1 (default)     Debian 12's linux-image-amd64
#            bookworm-backports | 6.12    the backported one
#            trixie                       Debian 13's
#
# The kernel .deb is extracted into a cache (EVSTEER_VMTEST_CACHE, default
# /var/cache/evsteer-vmtest), never installed: the host's /boot and
# /lib/modules stay as they are. Results: build/vmtest/<kernel release>/
# (testlog.json, per-failure debug logs, probe.txt, demo.txt, console.log).
#
# Environment: EVSTEER_VMTEST_TESTS (the subset), EVSTEER_VMTEST_ENV (extra
# VAR=value for the guest's tests), EVSTEER_VMTEST_TIMEOUT (seconds for the
# whole boot, default 900), EVSTEER_VMTEST_DEMO (0: skip the demo).
#
# Exit: 0 every test in the subset passed (known failures aside: see
# deploy/vmtest/known-failures), 1 a test failed or the subset started and
# did not finish, 3 the machine did not come up to the subset (no verdict
# on the code; see console.log).
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(pwd -P)
here=$tree/deploy/vmtest

kernel=${1:-bookworm}
tests=${EVSTEER_VMTEST_TESTS-accept bind lifecycle errors misuse threads group fallback direct masks pitfalls drain xproc cbpf}
cache=${EVSTEER_VMTEST_CACHE:-/var/cache/evsteer-vmtest}
limit=${EVSTEER_VMTEST_TIMEOUT:-900}

case $kernel in
6.1 | bookworm) suite=bookworm ;;
6.12 | bookworm-backports | backports) suite=bookworm-backports ;;
trixie) suite=trixie ;;
*)
	echo "vmtest: unknown kernel '$kernel' (bookworm|6.1, bookworm-backports|6.12, trixie)" >&2
	exit 2
	;;
esac

[ -f build/build.ninja ] || {
	echo "vmtest: build/ is not built (bash deploy/setup.sh vmtest builds it)" >&2
	exit 2
}

t_start=$(date +%s.%N)
mkdir -p "$cache"
apt_opts=()
# The host's own release comes from the host's apt sources; any other suite
# from a private list in the cache, on the mirror the host already uses.
if [ "$suite" != bookworm ]; then
	mirror=$(apt-cache policy | awk '$3 ~ /^bookworm\/main$/ && $1 ~ /^[0-9]+$/ { print $2; exit }')
	[ -n "$mirror" ] || {
		echo "vmtest: no bookworm mirror in the host's apt sources" >&2
		exit 3
	}
	a=$cache/apt/$suite
	mkdir -p "$a/lists/partial" "$a/archives/partial" "$a/parts"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$a/sources.list"
	apt_opts=(-o "Dir::Etc::SourceList=$a/sources.list" -o "Dir::Etc::SourceParts=$a/parts"
		-o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a" -o "Dir::State::status=/dev/null")
	# a day-old index is fresh enough; apt-get update is cheap for one suite
	if [ -z "$(find "$a/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null)" ]; then
		apt-get "${apt_opts[@]}" update -q >/dev/null
	fi
fi
pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
if [ -z "$pkg" ]; then
	echo "vmtest: apt knows no linux-image-amd64 for $suite" >&2
	exit 3
fi
ver=$(apt-cache "${apt_opts[@]}" policy "$pkg" | awk '/Candidate:/ { print $2 }')
kdir=$cache/$pkg-$ver
if [ ! -f "$kdir/.ok" ]; then
	echo "vmtest: fetching $pkg $ver ($suite)"
	rm -rf "$kdir" "$cache/deb"
	mkdir -p "$cache/deb" "$kdir"
	# apt's sandbox user must be able to write where it downloads
	chown _apt "$cache/deb" 2>/dev/null || true
	(cd "$cache/deb" && apt-get "${apt_opts[@]}" download -q "$pkg=$ver" >/dev/null) || {
		apt-get "${apt_opts[@]}" update -q >/dev/null
		(cd "$cache/deb" && apt-get "${apt_opts[@]}" download -q "$pkg=$ver" >/dev/null)
	}
	dpkg-deb -x "$cache"/deb/*.deb "$kdir"
	rm -rf "$cache/deb"
	# merged /usr (trixie) or not (bookworm): one place for modules
	if [ -d "$kdir/usr/lib/modules" ] && [ ! -e "$kdir/lib/modules" ]; then
		mkdir -p "$kdir/lib" && ln -s ../usr/lib/modules "$kdir/lib/modules"
	fi
	touch "$kdir/.ok"
fi
krel=$(basename "$(find "$kdir/lib/modules/" -mindepth 1 -maxdepth 1 -type d | head -n1)")
vmlinuz=$kdir/boot/vmlinuz-$krel
[ -f "$vmlinuz" ] || {
	echo "vmtest: no $vmlinuz in $pkg" >&2
	exit 3
}
[ -f "$kdir/lib/modules/$krel/modules.dep" ] || depmod -b "$kdir" "$krel"

out=$tree/build/vmtest/$krel
rm -rf "$out"
mkdir -p "$out"

# PID 1, the probe and the initramfs with the modules needed to reach the
# root: virtio-pci and 9p are modules in Debian's kernels, and so is
# overlayfs, which gives the guest a writable checkout.
cc -static -O2 -Wall -o "$out/init" "$here/init.c"
cc -O2 -Wall -o "$out/evsteer-vmprobe" "$here/probe.c" -luring -lbpf
mods=()
for m in virtio_pci 9pnet_virtio 9p overlay; do
	while read -r cmd path _; do
		[ "$cmd" = insmod ] || continue
		[[ " ${mods[*]-} " == *" $path "* ]] || mods+=("$path")
	done < <(modprobe -d "$kdir" -S "$krel" --show-depends "$m")
done
python3 "$here/initramfs.py" "$out/initramfs" "$out/init" "$here/guest.sh" "${mods[@]}"

demo=
if [ "${EVSTEER_VMTEST_DEMO:-1}" = 1 ] && [ -x build/examples/evsteer-demo ]; then
	demo="build/examples/evsteer-demo --connections 2000"
fi
{
	printf 'VMTEST_TREE=%q\n' "$tree"
	printf 'VMTEST_TESTS=%q\n' "$tests"
	printf 'VMTEST_ENV=%q\n' "${EVSTEER_VMTEST_ENV:-}"
	printf 'VMTEST_TIMEOUT_MULT=%q\n' "${EVSTEER_VMTEST_TIMEOUT_MULT:-2}"
	printf 'VMTEST_PROBE=%q\n' /run/vmtest/out/evsteer-vmprobe
	printf 'VMTEST_DEMO=%q\n' "$demo"
	printf 'VMTEST_MODULES=%q\n' "inet_diag tcp_diag udp_diag unix_diag"
	printf 'VMTEST_HOST_START=%q\n' "$(date +%s)"
	printf 'VMTEST_NOFILE_SOFT=%q\n' "$(ulimit -S -n)"
	printf 'VMTEST_NOFILE_HARD=%q\n' "$(ulimit -H -n)"
	printf 'VMTEST_RUN=%q\n' "${EVSTEER_VMTEST_RUN:-}"
	# the modes of the checkout's directories: a tree under /tmp is made
	# anew on the guest's tmpfs, and CI's lives in a mode-0700 directory
	d=$tree modes=
	while [ "$d" != / ]; do
		modes+="$(stat -c %a "$d") $d"$'\n'
		d=$(dirname "$d")
	done
	printf 'VMTEST_TREE_MODES=%q\n' "$modes"
} >"$out/guest.conf"

t_boot=$(date +%s.%N)
echo "vmtest: booting $krel ($pkg $ver) under qemu TCG, 2 vCPUs; subset: $tests"
share=security_model=none,multidevs=remap
rc=0
timeout -k 10 "$limit" qemu-system-x86_64 \
	-M pc -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
	-nodefaults -no-user-config -display none -no-reboot \
	-kernel "$vmlinuz" -initrd "$out/initramfs" \
	-append "console=ttyS0 quiet panic=-1 mitigations=off rdinit=/init" \
	-chardev "stdio,id=con,signal=off,logfile=$out/console.log" -serial chardev:con \
	-virtfs "local,path=/,mount_tag=root,readonly=on,$share" \
	-virtfs "local,path=$tree,mount_tag=tree,readonly=on,$share" \
	-virtfs "local,path=$kdir,mount_tag=kmod,readonly=on,$share" \
	-virtfs "local,path=$out,mount_tag=out,$share" \
	</dev/null | sed -u 's/\r$//; s/^/  vm| /' || rc=${PIPESTATUS[0]}
t_end=$(date +%s.%N)

python3 "$here/report.py" "$out" "$krel" "$pkg $ver" \
	"$t_start" "$t_boot" "$t_end" "$rc" "$limit"

#!/usr/bin/env python3
"""Write the vmtest guest's initramfs: a newc cpio archive (what the kernel
unpacks) holding init, the guest script and the boot modules, in the order
`modprobe --show-depends` printed them.

usage: initramfs.py OUT INIT GUEST_SH MODULE.ko...
"""
import lzma
import os
import stat
import sys


def entry(out, name, mode, data=b"", rdev=(0, 0)):
    name = name.encode() + b"\0"
    hdr = "070701" + "".join(
        f"{v:08x}"
        for v in (
            entry.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name), 0,
        )
    )
    entry.ino += 1
    out.write(hdr.encode() + name)
    out.write(b"\0" * (-(110 + len(name)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


entry.ino = 1


def module_bytes(path):
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        import subprocess
        return subprocess.run(["zstd", "-dc", path], check=True,
                              stdout=subprocess.PIPE).stdout
    return data


def main():
    out_path, init, guest, *mods = sys.argv[1:]
    with open(out_path, "wb") as out:
        for d in ("dev", "proc", "sys", "newroot", "m"):
            entry(out, d, stat.S_IFDIR | 0o755)
        entry(out, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        entry(out, "init", stat.S_IFREG | 0o755, open(init, "rb").read())
        entry(out, "guest.sh", stat.S_IFREG | 0o755, open(guest, "rb").read())
        names = []
        for i, m in enumerate(mods):
            base = os.path.basename(m).split(".ko")[0]
            name = f"m/{i:02d}-{base}.ko"
            entry(out, name, stat.S_IFREG | 0o644, module_bytes(m))
            names.append("/" + name)
        entry(out, "modules", stat.S_IFREG | 0o644,
              "".join(n + "\n" for n in names).encode())
        entry(out, "TRAILER!!!", 0)
        out.write(b"\0" * (-out.tell() % 512))


main()

#!/usr/bin/env python3
"""Boot a Debian kernel under qemu (TCG), insmod modules, record what the loader wrote.

Development tool (like ``tools/ld_oracle.py``); the tests never run it.  See README.md.

    python3 tools/kernel_oracle/run.py ARCH --module a.ko [--module b.ko] --out DIR

ARCH is x86_64, arm64, ppc64le or s390x.  The kernel comes from ``--target``
(a Debian target as shipped, extracted by /work/shared/tools/debian-target.sh:
``/work/targets/<release>-<arch>``; 6.1/6.12 keep the image in ``boot/``, 7.x
everything in ``usr/lib/modules/<release>/``) or ``--deb`` (a linux-image
package; default: the linux-image-6.1.0-50-* package in /work/pkgs).  Every
``depends=`` and ``softdep=pre:`` module of a given module is taken from the
same package and loaded first.  DIR receives:

  boot.json              arch, qemu command, kernel command line, seconds, insmod results
  kallsyms.gz, modules, dmesg, config.gz (the package's /boot/config)
  <module>/sections      "name address" per /sys/module/<module>/sections entry
  <module>/coresize, initsize, refcnt-free copy of its /proc/modules line
  <module>/core.bin      the module's core allocation [base, base+coresize) read via /proc/kcore
                         (one allocation up to 6.3; from 6.4 each memory type is its own)
  <module>/mem/<section> each SHF_ALLOC section's bytes [address, address+size) (size from the .ko)
  ftrace_addrs.gz        /sys/kernel/tracing/available_filter_functions_addrs (6.5+), else
                         available_filter_functions (names only), of the booted kernel
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKGS = Path("/work/pkgs")
TARGETS = Path("/work/targets")
SCRATCH = Path(os.environ.get("KERNEL_ORACLE_SCRATCH", "/work/scratch/oracle"))
BEGIN = "@@KORACLE-BEGIN@@"
END = "@@KORACLE-END@@"


@dataclass(frozen=True)
class Arch:
    name: str
    deb_glob: str  # linux-image package in /work/pkgs
    busybox_glob: str | None  # None: the host's /bin/busybox (amd64)
    cc: str
    kernel_glob: str  # path inside the package
    qemu: list[str]
    append: str
    kaslr_off: str  # what --kaslr removes from the command line


ARCHES = {
    "x86_64": Arch(
        "x86_64",
        "linux-image-6.1.0-50-amd64-unsigned_*.deb",
        None,
        "gcc",
        "boot/vmlinuz-*",
        ["qemu-system-x86_64", "-M", "pc", "-smp", "2", "-accel", "tcg"],
        # lock prefixes stay with -smp 2; retpoline call sites stay with
        # retpoline,generic; addresses equal System.map with nokaslr
        "console=ttyS0 panic=-1 nokaslr spectre_v2=retpoline,generic",
        "nokaslr",
    ),
    "arm64": Arch(
        "arm64",
        "linux-image-6.1.0-50-arm64-unsigned_*.deb",
        "busybox-static_*_arm64.deb",
        "aarch64-linux-gnu-gcc",
        "boot/vmlinuz-*",
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-accel", "tcg"],
        "console=ttyAMA0 panic=-1 nokaslr",
        "nokaslr",
    ),
    "ppc64le": Arch(
        "ppc64le",
        "linux-image-6.1.0-50-powerpc64le_*.deb",
        "busybox-static_*_ppc64el.deb",
        "powerpc64le-linux-gnu-gcc",
        "boot/vmlinux-*",
        ["qemu-system-ppc64", "-M", "pseries,x-vof=on", "-cpu", "power9", "-accel", "tcg"],
        "console=hvc0 panic=-1",  # ppc64 has no KASLR
        "",
    ),
    "s390x": Arch(
        "s390x",
        "linux-image-6.1.0-50-s390x_*.deb",
        "busybox-static_*_s390x.deb",
        "s390x-linux-gnu-gcc",
        "boot/vmlinuz-*",
        ["qemu-system-s390x", "-M", "s390-ccw-virtio", "-accel", "tcg"],
        "console=ttysclp0 panic=-1 nokaslr",
        "nokaslr",
    ),
}

INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
mkdir -p /out
read up _ < /proc/uptime
echo "uptime_before_insmod $up" >> /out/log
while read f targ; do
  echo "koracle: insmod $f" > /dev/kmsg
  if [ -x /kinsmod ]; then /kinsmod /mods/$f 2>> /out/insmod.err; else insmod /mods/$f 2>> /out/insmod.err; fi
  rc=$?
  echo "insmod $f $rc" >> /out/log
  echo "koracle: insmod $f exit $rc" > /dev/kmsg
done < /mods/order
read up _ < /proc/uptime
echo "uptime_after_insmod $up" >> /out/log
cat /proc/modules > /out/modules
[ -n "$quick" ] || {
  mkdir -p /sys/kernel/tracing
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
  if [ -f /sys/kernel/tracing/available_filter_functions_addrs ]; then
    gzip -c < /sys/kernel/tracing/available_filter_functions_addrs > /out/ftrace_addrs.gz
  elif [ -f /sys/kernel/tracing/available_filter_functions ]; then
    gzip -c < /sys/kernel/tracing/available_filter_functions > /out/ftrace_names.gz
  fi
}
for f in /sys/kernel/livepatch/*/enabled /sys/kernel/livepatch/*/*/patched; do
  [ -f "$f" ] && echo "${f#/sys/kernel/livepatch/} $(cat $f)" >> /out/livepatch
done
dmesg > /out/dmesg
[ -f /mods/quick ] && quick=1
[ -n "$quick" ] || cat /proc/kallsyms | gzip -c > /out/kallsyms.gz
[ -n "$quick" ] || while read f targ; do
  [ "$targ" = 1 ] || continue
  m=${f%.ko}
  m=$(echo $m | tr - _)
  d=/out/$m
  mkdir -p $d
  for s in /sys/module/$m/sections/.* /sys/module/$m/sections/*; do
    [ -f "$s" ] && echo "${s##*/} $(cat $s)" >> $d/sections
  done
  cat /sys/module/$m/coresize > $d/coresize 2>/dev/null
  cat /sys/module/$m/initsize > $d/initsize 2>/dev/null
  line=$(grep "^$m " /proc/modules)
  echo "$line" > $d/procmodules
  set -- $line
  base=$6
  size=$(cat $d/coresize)
  /kcore_read $base $size $d/core.bin 2>> $d/kcore.err
  mkdir -p $d/mem
  [ -f /mods/$f.sizes ] && while read sec ssize; do
    [ -f /sys/module/$m/sections/$sec ] || continue
    /kcore_read $(cat /sys/module/$m/sections/$sec) $ssize "$d/mem/$sec" 2>> $d/kcore.err
  done < /mods/$f.sizes
  echo "kcore $m $base $size $?" >> /out/log
done < /mods/order
read up _ < /proc/uptime
echo "uptime_end $up" >> /out/log
echo
echo @@KORACLE-BEGIN@@
tar -C /out -cf - . | gzip -c | base64
echo @@KORACLE-END@@
poweroff -f
"""


def find_one(pattern: str, where: Path = PKGS) -> Path:
    hits = sorted(where.glob(pattern))
    if not hits:
        sys.exit(f"kernel_oracle: nothing matches {where}/{pattern}")
    return hits[-1]


def find_busybox(pattern: str) -> Path:
    """The foreign busybox-static .deb: /work/pkgs, or the scratch cache (apt-get download with the
    target's private apt configuration, see README)."""
    for where in (PKGS, SCRATCH / "debs", TARGETS / "debs"):
        if where.is_dir() and sorted(where.glob(pattern)):
            return sorted(where.glob(pattern))[-1]
    sys.exit(f"kernel_oracle: no {pattern} in {PKGS}, {SCRATCH / 'debs'} or {TARGETS / 'debs'}")


def extract(deb: Path) -> Path:
    """dpkg-deb -x into the scratch cache (once per package)."""
    dest = SCRATCH / "pkg" / deb.stem
    stamp = dest / ".extracted"
    if not stamp.exists():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        stamp.touch()
    return dest


def modinfo(ko: Path) -> dict[str, list[str]]:
    """The .modinfo strings of a module (key -> values), read with pyelftools."""
    from elftools.elf.elffile import ELFFile

    data = read_ko(ko)
    elf = ELFFile(io.BytesIO(data))
    sec = elf.get_section_by_name(".modinfo")
    out: dict[str, list[str]] = {}
    if sec is None:
        return out
    for item in sec.data().split(b"\0"):
        if b"=" in item:
            k, v = item.decode(errors="replace").split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def read_ko(ko: Path) -> bytes:
    raw = ko.read_bytes()
    if ko.suffix == ".xz":
        import lzma

        return lzma.decompress(raw)
    if ko.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(ko)], capture_output=True, check=True).stdout
    return raw


def modname(ko: Path) -> str:
    name = ko.name
    for suf in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suf)
    return name.removesuffix(".ko").replace("-", "_")


def modules_dir(root: Path) -> Path:
    """lib/modules/<release> (6.1) or usr/lib/modules/<release> (6.12, 7.x) of an extracted package."""
    for pattern in ("lib/modules/*/kernel", "usr/lib/modules/*/kernel"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[-1].parent
    sys.exit(f"kernel_oracle: no lib/modules/*/kernel under {root}")


def find_kernel(root: Path, arch: Arch) -> Path:
    """The bootable image: boot/vmlinu[xz]-* (6.1, 6.12) or usr/lib/modules/<release>/vmlinu[xz] (7.x)."""
    for pattern in (arch.kernel_glob, "boot/vmlinu[xz]-*", "usr/lib/modules/*/vmlinu[xz]"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[-1]
    sys.exit(f"kernel_oracle: no kernel image under {root}")


def find_config(root: Path) -> Path | None:
    mdir = modules_dir(root)
    for p in (root / "boot" / f"config-{mdir.name}", mdir / "config"):
        if p.exists():
            return p
    return None


def package_index(root: Path) -> dict[str, Path]:
    idx: dict[str, Path] = {}
    for p in modules_dir(root).glob("kernel/**/*.ko*"):
        idx[modname(p)] = p
    return idx


def alias_index(root: Path, index: dict[str, Path]) -> dict[str, Path | None]:
    """alias= names (softdeps often name an alias, e.g. crc32c -> crc32c_generic) of the
    package's modules, and of built-in code (None: nothing to load); cached per package."""
    cache = SCRATCH / "aliases" / (re.sub(r"[^\w.+-]", "_", str(root)).strip("_") + ".json")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():
        raw = json.loads(cache.read_text())
    else:
        raw = {}
        pattern = re.compile(rb"(?:^|(?<=\0))alias=([^\0*?\[]+)(?=\0)")
        for name, ko in sorted(index.items()):
            for alias in pattern.findall(read_ko(ko)):
                raw.setdefault(alias.decode(errors="replace"), name)
        for builtin in modules_dir(root).glob("modules.builtin.modinfo"):
            for item in builtin.read_bytes().split(b"\0"):
                if b".alias=" in item:
                    raw.setdefault(item.split(b".alias=", 1)[1].decode(errors="replace"), None)
        cache.write_text(json.dumps(raw))
    return {k: (index.get(v) if v else None) for k, v in raw.items()}


def load_order(targets: list[Path], index: dict[str, Path], root: Path | None = None) -> list[tuple[Path, bool]]:
    """Dependencies (depends= and softdep pre:) first, each module once."""
    order: list[tuple[Path, bool]] = []
    seen: set[str] = set()
    target_names = {modname(t) for t in targets}

    def visit(ko: Path, stack: tuple[str, ...]) -> None:
        name = modname(ko)
        if name in seen:
            return
        if name in stack:
            sys.exit(f"kernel_oracle: dependency cycle at {name}")
        info = modinfo(ko)
        deps = [d for v in info.get("depends", []) for d in v.split(",") if d]
        for soft in info.get("softdep", []):
            m = re.search(r"pre:\s*(.*?)(?:\s+post:|$)", soft)
            if m:
                deps += m.group(1).split()
        for dep in deps:
            dep = dep.replace("-", "_")
            if dep in seen:
                continue
            ko_dep = index.get(dep)
            if ko_dep is None and root is not None:
                aliases = alias_index(root, index)
                if dep in aliases and aliases[dep] is None:
                    continue  # built into the kernel
                ko_dep = aliases.get(dep) or aliases.get(dep.replace("_", "-"))
            if ko_dep is None:
                print(f"kernel_oracle: {name}: dependency {dep} not in the package (built in?)", file=sys.stderr)
                continue
            visit(ko_dep, (*stack, name))
        seen.add(name)
        order.append((ko, name in target_names))

    for t in targets:
        visit(t, ())
    return order


def build_helper(arch: Arch, work: Path, name: str = "kcore_read") -> Path:
    out = work / f"{name}.{arch.name}"
    src = HERE / f"{name}.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([arch.cc, "-static", "-Os", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def alloc_sizes(data: bytes) -> str:
    """ "name size" for each SHF_ALLOC section of a module with a size (what the init script reads back)."""
    from elftools.elf.elffile import ELFFile

    lines = []
    for sec in ELFFile(io.BytesIO(data)).iter_sections():
        if sec["sh_flags"] & 2 and sec["sh_size"] and sec.name and " " not in sec.name and "/" not in sec.name:
            lines.append(f"{sec.name} {sec['sh_size']}\n")
    return "".join(lines)


def make_initramfs(arch: Arch, order: list[tuple[Path, bool]], helper: Path, dest: Path, quick: bool = False) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "mods", "out", "tmp"):
            (root / d).mkdir()
        if arch.busybox_glob is None:
            shutil.copy("/bin/busybox", root / "bin/busybox")
        else:
            shutil.copy(extract(find_busybox(arch.busybox_glob)) / "bin/busybox", root / "bin/busybox")
        applets = [
            "sh",
            "mount",
            "ls",
            "cat",
            "echo",
            "mkdir",
            "insmod",
            "grep",
            "tr",
            "gzip",
            "tar",
            "base64",
            "dmesg",
            "poweroff",
            "read",
        ]
        for a in applets:
            os.symlink("busybox", root / "bin" / a)
        shutil.copy(helper, root / "kcore_read")
        if quick:  # one finit_module per module (busybox insmod retries with init_module)
            shutil.copy(build_helper(arch, helper.parent, "kinsmod"), root / "kinsmod")
        lines = []
        for ko, is_target in order:
            name = ko.name
            for suf in (".xz", ".zst"):
                name = name.removesuffix(suf)
            data = read_ko(ko)
            (root / "mods" / name).write_bytes(data)
            if is_target:
                (root / "mods" / f"{name}.sizes").write_text(alloc_sizes(data))
            lines.append(f"{name} {int(is_target)}\n")
        (root / "mods/order").write_text("".join(lines))
        if quick:
            (root / "mods/quick").write_text("1\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--owner", "0:0", "--quiet"],
            cwd=root,
            input=files.encode(),
            capture_output=True,
            check=True,
        ).stdout
        dest.write_bytes(gzip.compress(cpio, 1))


def boot(arch: Arch, kernel: Path, initrd: Path, append: str, timeout: int) -> tuple[str, float, list[str]]:
    cmd = [
        *arch.qemu,
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # qemu is killed by subprocess.run
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return partial + f"\nkernel_oracle: qemu timed out after {timeout} s\n", time.monotonic() - t0, cmd
    except FileNotFoundError:
        sys.exit(f"kernel_oracle: {cmd[0]} not found (install qemu-system-*)")
    return proc.stdout.decode(errors="replace"), time.monotonic() - t0, cmd


def per_module_dmesg(dmesg: str) -> dict[str, list[str]]:
    """The kernel lines between the markers the init script writes around each insmod
    (timestamp and the marker lines themselves dropped)."""
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for ln in dmesg.splitlines():
        text = re.sub(r"^\[\s*[0-9.]+\]\s?", "", ln)
        m = re.match(r"koracle: insmod (\S+)( exit -?\d+)?$", text)
        if m:
            cur = None if m.group(2) else out.setdefault(m.group(1), [])
            continue
        if cur is not None:
            cur.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", choices=sorted(ARCHES))
    ap.add_argument("--deb", type=Path, help="linux-image .deb (default: the one in /work/pkgs)")
    ap.add_argument(
        "--target",
        type=Path,
        help="an extracted Debian target (debian-target.sh), e.g. /work/targets/7.2.13+deb14-amd64",
    )
    ap.add_argument("--module", type=Path, action="append", default=[], help="a .ko to load (repeatable)")
    ap.add_argument(
        "--package-module",
        action="append",
        default=[],
        help="a module of the package itself, by name (repeatable)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kaslr", action="store_true", help="boot without nokaslr (arm64: module PLTs in use)")
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument(
        "--insmod-only",
        action="store_true",
        help="record only insmod's exit codes, dmesg and /sys/kernel/livepatch (no kallsyms, no module memory)",
    )
    args = ap.parse_args(argv)

    arch = ARCHES[args.arch]
    if args.target:
        root = args.target.resolve()
        deb = root
    else:
        deb = args.deb or find_one(arch.deb_glob)
        root = extract(deb)
    kernel = find_kernel(root, arch)
    index = package_index(root)
    targets = [m.resolve() for m in args.module]
    for name in args.package_module:
        if name.replace("-", "_") not in index:
            sys.exit(f"kernel_oracle: no module {name} in {deb}")
        targets.append(index[name.replace("-", "_")])
    if not targets:
        sys.exit("kernel_oracle: nothing to load (--module / --package-module)")
    order = load_order(targets, index, root)

    work = SCRATCH / "work"
    work.mkdir(parents=True, exist_ok=True)
    helper = build_helper(arch, work)
    initrd = work / f"initrd.{arch.name}.{os.getpid()}.gz"
    make_initramfs(arch, order, helper, initrd, args.insmod_only)
    append = arch.append
    if args.kaslr and arch.kaslr_off:
        append = " ".join(w for w in append.split() if w != arch.kaslr_off)
    if args.append:
        append += " " + args.append
    try:
        console, seconds, cmd = boot(arch, kernel, initrd, append, args.timeout)
    finally:
        initrd.unlink(missing_ok=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "console.log").write_text(console)
    text = console.replace("\r", "")
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        print(f"kernel_oracle: no dump on the console; see {out / 'console.log'}", file=sys.stderr)
        return 1
    payload = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blob = base64.b64decode("".join(payload.split()))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        tar.extractall(out, filter="data")
    log = (out / "log").read_text().splitlines()
    insmod = {w[1]: int(w[2]) for w in (ln.split() for ln in log) if w[0] == "insmod"}
    # a livepatch may change what /proc/uptime prints: keep its first word as text when it is not a number
    uptimes = {
        w[0]: float(w[1]) if re.fullmatch(r"\d+(\.\d+)?", w[1]) else w[1]
        for w in ([*ln.split(), ""] for ln in log)
        if w[0].startswith("uptime")
    }
    config = find_config(root)
    if config is not None:
        shutil.copy(config, out / "config")
    info = {
        "arch": arch.name,
        "package": deb.name,
        "release": modules_dir(root).name,
        "kernel": kernel.name,
        "append": append,
        "qemu": cmd,
        "seconds_boot_to_poweroff": round(seconds, 2),
        "guest_uptime": uptimes,
        "load_order": [ko.name for ko, _ in order],
        "targets": [modname(ko) for ko, t in order if t],
        "insmod": insmod,
        "per_module_dmesg": per_module_dmesg((out / "dmesg").read_text()),
    }
    (out / "boot.json").write_text(json.dumps(info, indent=1) + "\n")
    failed = [k for k, v in insmod.items() if v != 0]
    print(f"kernel_oracle: {arch.name}: {seconds:.1f} s, insmod failures: {failed or 'none'} -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

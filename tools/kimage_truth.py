#!/usr/bin/env python3
"""Dev-only: check klpcore.kimage against the truth on real Debian kernels, and record the result.

    python tools/kimage_truth.py [--targets /work/targets] [--oracle /work/coord/kallsyms]
                                 [--maps /work/shared/corpus] [--out tools/kimage_truth.json]

For each <release>-<arch> target with a kernel image:

* symbols: every (name, address, type) read from the image against the real
  System.map (<arch>/System.map-<release>.gz in --maps, or the -dbg package's
  boot/System.map-<release> in <target>-dbg) and against the booted kernel's
  /proc/kallsyms (nokaslr; --oracle/<target>/kallsyms, vmlinux lines), allowing
  the one constant offset a kernel adds at boot without KASLR (s390x 7.x);
* exports: names, GPL-only flag, namespace and CRC against Module.symvers, addresses against
  the System.map (or kallsyms) compared above;
* ftrace: the records against available_filter_functions_addrs.

Needs the real files (not in the repository); tests do not run it.  The JSON it
writes is what the closing note of issue 15 quotes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np


def read_text_symbols(path: Path) -> list[tuple[str, int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as fh:  # type: ignore[operator]
        for line in fh:
            p = line.split()
            if len(p) == 3:
                out.append((p[2], int(p[0], 16), p[1]))
    return out


def compare_symbols(names: list[str], addrs: list[int], types: list[str], ref: list[tuple[str, int, str]]) -> dict:
    first = {}
    for n, a, _ in ref:
        first.setdefault(n, a)
    mine = dict(zip(names, addrs, strict=True))
    offset = first.get("_text", 0) - mine.get("_text", 0) if "_text" in first and "_text" in mine else 0
    img = Counter((n, a + offset) for n, a in zip(names, addrs, strict=True))
    rc = Counter((n, a) for n, a, _ in ref)
    both = img & rc
    rt = {(n, a): t for n, a, t in ref}
    it = {(n, a + offset): t for n, a, t in zip(names, addrs, types, strict=True)}
    tm = Counter(f"{rt[k]}->{it[k]}" for k in both if rt[k] != it[k])
    only_ref = rc - img
    return {
        "image": sum(img.values()),
        "reference": sum(rc.values()),
        "equal": sum(both.values()),
        "only_image": sum((img - rc).values()),
        "only_reference": sum(only_ref.values()),
        "only_reference_data_or_absolute": sum(c for (n, a), c in only_ref.items() if rt[(n, a)] not in "tTwW"),
        "boot_offset": hex(offset),
        "type_differences": dict(tm),
    }


def compare_exports(exports: list, symvers: Path) -> dict:
    ref = {}
    for line in symvers.read_text().splitlines():
        p = line.split("\t")
        if len(p) >= 4 and p[2] == "vmlinux":
            ref[p[1]] = (int(p[0], 16), p[3].endswith("_GPL"), p[4] if len(p) > 4 else "")
    got = {x.name: x for x in exports}
    both = set(got) & set(ref)
    return {
        "image": len(got),
        "module_symvers": len(ref),
        "equal_names": len(both),
        "gpl_equal": sum(got[n].gpl_only == ref[n][1] for n in both),
        "namespace_equal": sum(got[n].namespace == ref[n][2] for n in both),
        "crc_equal": sum(got[n].crc == ref[n][0] for n in both if got[n].crc is not None),
        "crc_absent": sum(got[n].crc is None for n in both),
    }


def compare_ftrace(records: np.ndarray, addrs: Path, offset: int) -> dict:
    rs = np.unique(
        np.array([int(ln.split()[0], 16) for ln in addrs.read_text().splitlines() if len(ln.split()) == 2], np.uint64)
    )
    mine = np.unique(records) + np.uint64(offset)
    return {
        "image": len(mine),
        "kernel": len(rs),
        "equal": int(np.isin(rs, mine).sum()),
        "image_not_listed": int((~np.isin(mine, rs)).sum()),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="/work/targets")
    p.add_argument("--oracle", default="/work/coord/kallsyms")
    p.add_argument("--maps", default="/work/shared/corpus")
    p.add_argument("--out", default="tools/kimage_truth.json")
    args = p.parse_args(argv)
    os.environ["KLPCORE_NO_CACHE"] = "1"
    from klpcore.compress import SYMBOL_ELF_LIMIT, read_input
    from klpcore.kimage.source import IMAGE_PATHS, decode_image

    results = {}
    for tdir in sorted(Path(args.targets).iterdir()):
        if not tdir.is_dir() or tdir.name.endswith("-dbg") or "-" not in tdir.name or tdir.name.startswith("apt"):
            continue
        release, arch = tdir.name.rsplit("-", 1)
        image = None
        for cand in (*IMAGE_PATHS, "boot/vmlinux-{rel}"):
            hits = sorted(tdir.glob(cand.replace("{rel}", "*")))
            if hits:
                image = hits[0]
                break
        if image is None:
            continue
        t = time.perf_counter()
        d = decode_image(read_input(image, limit=SYMBOL_ELF_LIMIT, what="image"), str(image), cache=False)
        row: dict = {
            "image": str(image),
            "container": d.info["container"],
            "seconds": round(time.perf_counter() - t, 2),
        }
        addrs = [int(a) for a in d.addresses]
        refs = {}
        corpus = Path(args.maps) / arch
        for m in sorted(corpus.glob(f"System.map-{release}*")) + sorted(
            Path(str(tdir) + "-dbg").glob("usr/lib/debug/boot/System.map-*")
        ):
            refs["System.map"] = m
        kall = Path(args.oracle) / tdir.name / "kallsyms"
        if kall.exists():
            refs["kallsyms"] = kall
        offset = 0
        for kind, path in refs.items():
            row[f"symbols_vs_{kind}"] = c = compare_symbols(d.names, addrs, d.types, read_text_symbols(path))
            if kind == "kallsyms":
                offset = int(c["boot_offset"], 16)
        symvers = sorted(tdir.glob("usr/src/linux-headers-*/Module.symvers"))
        row["exports"] = (
            compare_exports(d.exports, symvers[0])
            if d.exports is not None and symvers
            else "not read: " + ("no export table located" if d.exports is None else "no Module.symvers")
        )
        if d.exports is not None and refs:
            kind, path = next(iter(refs.items()))
            every: dict[str, set[int]] = {}
            for n, a, _ in read_text_symbols(path):
                every.setdefault(n, set()).add(a)
            shift = offset if kind == "kallsyms" else 0
            # a name the reference lists twice (a static symbol of the same name): either address
            row["export_addresses_vs_" + kind] = {
                "exports": len(d.exports),
                "equal": sum(x.address + shift in every.get(x.name, ()) for x in d.exports),
                "name_listed_twice": sum(len(every.get(x.name, ())) > 1 for x in d.exports),
            }
        fa = Path(args.oracle) / tdir.name / "ftrace_addrs"
        if d.ftrace is None:
            row["ftrace"] = f"not read: {d.info.get('ftrace')}"
        elif fa.exists():
            row["ftrace"] = compare_ftrace(d.ftrace, fa, offset)
        else:
            row["ftrace"] = {"image": len(d.ftrace), "kernel": "no available_filter_functions_addrs dump"}
        results[tdir.name] = row
        print(tdir.name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

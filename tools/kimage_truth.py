#!/usr/bin/env python3
"""Dev-only: check klpcore.kimage against the truth on real Debian kernels, and record the result.

    python tools/kimage_truth.py [--targets /work/targets] [--oracle /work/coord/kallsyms]
                                 [--maps /work/shared/corpus] [--out tools/kimage_truth.json]
                                 [--dbg DIR ...]

For each <release>-<arch> target with a kernel image:

* symbols: every (name, address, type) read from the image against the real
  System.map (<arch>/System.map-<release>.gz in --maps, or the -dbg package's
  boot/System.map-<release> in <target>-dbg) and against the booted kernel's
  /proc/kallsyms (nokaslr; --oracle/<target>/kallsyms, vmlinux lines), allowing
  the one constant offset a kernel adds at boot without KASLR (s390x 7.x);
* exports: names, GPL-only flag, namespace and CRC against Module.symvers, addresses against
  the System.map (or kallsyms) compared above;
* ftrace: the records against available_filter_functions_addrs (6.5+); for a
  kernel before 6.5 (no such file) against the -dbg vmlinux's own ``__mcount_loc``
  table (<target>-dbg/usr/lib/debug/boot/vmlinux-<release>, or in a --dbg DIR), which the kernel
  sorts into its records at boot; init-text sites are counted apart (freed after boot).

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

FLAVOUR = {"ppc64el": "powerpc64le"}  # Debian architecture -> the flavour in the kernel's release name


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


def vmlinux_mcount(path: Path) -> dict:
    """The __mcount_loc table of a vmlinux ELF (with .symtab), and the init-text bounds.

    A relocatable vmlinux (arm64) holds zeros in the table: each value is then the addend of the
    R_*_RELATIVE entry of .rela.dyn at that slot (what the boot code writes there)."""
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as fh:
        elf = ELFFile(fh)
        e = "<" if elf.little_endian else ">"
        want = {"__start_mcount_loc", "__stop_mcount_loc", "_sinittext", "_einittext"}
        b = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name in want}
        start, stop = b["__start_mcount_loc"], b["__stop_mcount_loc"]
        for sec in elf.iter_sections():
            a = sec["sh_addr"]
            if sec["sh_type"] == "SHT_PROGBITS" and a <= start and stop <= a + sec["sh_size"]:
                fh.seek(sec["sh_offset"] + start - a)
                vals = np.frombuffer(fh.read(stop - start), dtype=f"{e}u8").copy()
                break
        else:
            raise ValueError(f"{path}: __mcount_loc {start:#x}..{stop:#x} in no PROGBITS section")
        source = "section contents"
        rela = elf.get_section_by_name(".rela.dyn")
        if len(vals) and not vals.any() and rela is not None:
            fh.seek(rela["sh_offset"])
            rtype = [("off", f"{e}u8"), ("info", f"{e}u8"), ("add", f"{e}u8")]
            r = np.frombuffer(fh.read(rela["sh_size"]), dtype=rtype)
            r = r[(r["off"] >= start) & (r["off"] < stop)]
            vals[(r["off"] - np.uint64(start)) // np.uint64(8)] = r["add"]
            types = sorted({int(t) for t in r["info"] & 0xFFFFFFFF})
            source = f".rela.dyn addends ({len(r)} relocations, types {types})"
    return {"sites": vals, "source": source, "sinittext": b["_sinittext"], "einittext": b["_einittext"]}


def compare_ftrace_vmlinux(records: np.ndarray | None, vmlinux: Path) -> dict:
    """Image records (None: not read) against the vmlinux's table, init-text sites counted apart.
    No ftrace_call_adjust is applied to the table: where an architecture adjusts, the sets differ by it."""
    m = vmlinux_mcount(vmlinux)
    vals = m["sites"]
    sites = np.unique(vals[vals != 0])
    init = (sites >= np.uint64(m["sinittext"])) & (sites < np.uint64(m["einittext"]))
    kept = sites[~init]
    row: dict = {
        "vmlinux": str(vmlinux),
        "table_values_from": m["source"],
        "table_entries": len(vals),
        "table_zeros": int((vals == 0).sum()),
        "sites_unique": len(sites),
        "sites_in_init_text": int(init.sum()),
        "sites_after_boot": len(kept),
    }
    if records is None:
        return row
    mine = np.unique(records)
    row.update(
        {
            "image": len(mine),
            "equal_to_sites_after_boot": bool(len(mine) == len(kept) and np.array_equal(mine, kept)),
            "image_not_in_table": int((~np.isin(mine, sites)).sum()),
            "sites_after_boot_not_in_image": int((~np.isin(kept, mine)).sum()),
        }
    )
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="/work/targets")
    p.add_argument("--oracle", default="/work/coord/kallsyms")
    p.add_argument("--maps", default="/work/shared/corpus")
    p.add_argument("--out", default="tools/kimage_truth.json")
    p.add_argument(
        "--dbg",
        action="append",
        default=[],
        help="more directories holding usr/lib/debug/boot/vmlinux-<release> (a -dbg package's vmlinux alone)",
    )
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
        vml = [
            v
            for dbg in (str(tdir) + "-dbg", *args.dbg)
            for v in sorted(Path(dbg).glob(f"usr/lib/debug/boot/vmlinux-{release}-{FLAVOUR.get(arch, arch)}"))
        ]
        if fa.exists() and d.ftrace is not None:
            row["ftrace"] = compare_ftrace(d.ftrace, fa, offset)
        elif vml:
            # before 6.5 there is no available_filter_functions_addrs: the -dbg vmlinux's table is the truth
            row["ftrace"] = {"image": f"not read: {d.info.get('ftrace')}"} if d.ftrace is None else {}
            row["ftrace"].update(compare_ftrace_vmlinux(d.ftrace, vml[0]))
        elif d.ftrace is None:
            row["ftrace"] = f"not read: {d.info.get('ftrace')}"
        else:
            row["ftrace"] = {"image": len(d.ftrace), "kernel": "no available_filter_functions_addrs dump"}
        results[tdir.name] = row
        print(tdir.name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Site counts by class for the kernel-oracle recordings (the table in tests/kernel_oracle/README.md).

    python3 tools/kernel_oracle/report.py [FOLDER ...]      (default: every recording whose plugin is installed)

FOLDER is a folder of tests/kernel_oracle/fixtures or a path to one elsewhere
(e.g. /work/scratch/oracle/rec/7.2.13+deb14-amd64: ext4 and sctp, too big to commit).

Runs ``klpcore apply`` at the kernel's addresses for each recorded module and
prints one Markdown row per recording folder; ``-v`` also prints each module's
summary with every unexplained site.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections import Counter
from pathlib import Path

from klpcore.cli import main as klpcore_main
from klpcore.testing import kernel_oracle as ko

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "kernel_oracle" / "fixtures"
PLUGIN = {"x86_64": "klpcore_x86_64", "ppc64le": "klpcore_ppc64le", "arm64": "klpcore_arm64", "s390x": "klpcore_s390x"}


DEBIAN_ARCH = {"amd64": "x86_64", "arm64": "arm64", "ppc64el": "ppc64le", "s390x": "s390x"}


def plugin_of(folder: str) -> str:
    """The plugin a recording folder needs: x86_64-..., arm64-..., or debian-<release>-<debian arch>."""
    name = Path(folder).name
    arch = name.split("-")[0]
    if arch not in PLUGIN:
        arch = DEBIAN_ARCH.get(name.rsplit("-", 1)[-1], arch)
    return PLUGIN.get(arch, arch)


def row(folder: str, verbose: bool) -> tuple[str, int]:
    total: Counter[str] = Counter()
    compared = identical = misplaced = unexplained = 0
    mods = []
    root = Path(folder).parent if "/" in folder else FIXTURES
    for d, m in ko.recordings(root):
        if d != Path(folder).name:
            continue
        rec = ko.read_recording(root / d, m)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.ko"
            if klpcore_main(ko.klpcore_apply_args(rec, out)) != 0:
                return f"| {folder} | klpcore apply failed for {m} |", 1
            res = ko.compare(rec, ko.Placed.from_elf(out.read_bytes()))
        if verbose:
            print(res.summary(), file=sys.stderr)
        total += res.counts
        compared += res.bytes_compared
        identical += res.bytes_identical
        misplaced += len(res.misplaced)
        unexplained += len(res.unexplained)
        mods.append(m)
    sites = {k: v for k, v in total.items() if not k.startswith(("bytes:", "section:"))}
    runs = {k.removeprefix("bytes:"): v for k, v in total.items() if k.startswith("bytes:")}

    def fmt(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    line = (
        f"| {folder} ({', '.join(mods)}) | {sum(sites.values())} | {fmt(sites)} | {fmt(runs)} | "
        f"{identical}/{compared} | {misplaced} | {unexplained} |"
    )
    return line, int(misplaced + unexplained > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    folders = args.folders or sorted({d for d, _ in ko.recordings(FIXTURES)})
    print(
        "| recording | sites | relocation sites by class | differing byte runs by class | bytes "
        "| misplaced | unexplained |"
    )
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for folder in folders:
        if importlib.util.find_spec(plugin_of(folder)) is None:
            print(f"| {folder} | plugin {plugin_of(folder)} not installed |")
            continue
        line, failed = row(folder, args.verbose)
        print(line)
        bad |= failed
    return bad


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where ``klpcore apply`` spends its time on a benchmark module.

    python bench/profile_apply.py [--arch amd64] [--top 30] [--sort tottime] [--out FILE.prof]

Runs the CLI's ``apply`` in this process twice: once with wall-clock timers
around its main steps (symbol loading, open, layout, image, symbol
resolution, the relocation phase and its commit, output writing, the
report), once under cProfile, and prints both.  The interpreter start-up
and imports, which a subprocess also pays, are timed separately.
Inputs come from ``bash bench/fetch.sh``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: (module, attribute path) of the steps timed; missing ones are skipped
STEPS = [
    ("klpcore.cli.args", "load_many"),
    ("klpcore.symbols", "load_many"),
    ("klpcore.loader", "Loader.open"),
    ("klpcore.loader", "Loader.prepare"),
    ("klpcore.loader", "Loader._image"),
    ("klpcore.loader", "LoadedModule._simplify_symbols"),
    ("klpcore.loader", "LoadedModule._run_phase"),
    ("klpcore.engine", "StagedMemory.changes"),
    ("klpcore.memory", "ModuleImage.commit"),
    ("klpcore.output", "write_elf"),
    ("klpcore.cli.commands.apply", "apply_report"),
    ("klpcore.cli.commands.apply", "table"),
]


def instrument(totals: dict[str, float]) -> list:
    undo = []
    for modname, path in STEPS:
        try:
            mod = importlib.import_module(modname)
            *owners, attr = path.split(".")
            owner = mod
            for o in owners:
                owner = getattr(owner, o)
            fn = getattr(owner, attr)
        except (ImportError, AttributeError):
            continue
        key = f"{modname.removeprefix('klpcore.')}.{path}"

        def wrapper(*a, __fn=fn, __key=key, **kw):
            t0 = time.perf_counter()
            try:
                return __fn(*a, **kw)
            finally:
                totals[__key] = totals.get(__key, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, wrapper)
        undo.append((owner, attr, fn))
    return undo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="amd64", help="data directory under bench/data (default amd64)")
    ap.add_argument("--data", type=Path, default=BENCH / "data")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative, ...)")
    ap.add_argument("--out", help="also save the cProfile data here")
    args = ap.parse_args(argv)

    d = args.data / args.arch
    m = json.loads((d / "manifest.json").read_text())
    out = Path(tempfile.mkdtemp(prefix="klpprof.")) / "out.ko"
    argv_cli = ["apply", str(d / m["module"])]
    for s in m["klpcore_symbols"]:
        argv_cli += ["--symbols", str(d / s)]
    argv_cli += ["--base", m["base"], "--kernel", m["kernel"], "-o", str(out)]

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import klpcore.cli"], check=True)
    startup = time.perf_counter() - t0

    from klpcore import cli

    if m.get("kernel_options"):
        # the CLI cannot pass plugin options (KernelTarget.options): do what cmd_apply does, in process
        sys.path.insert(0, str(BENCH))
        from run import kernel_target

        from klpcore.loader import Loader
        from klpcore.output import write_elf
        from klpcore.symbols import load_many

        def entry(_argv):
            symbols = load_many([str(d / s) for s in m["klpcore_symbols"]])
            loaded = Loader(kernel=kernel_target(m)).load(d / m["module"], symbols, int(m["base"], 0))
            out.write_bytes(write_elf(loaded))
            return 0

        how = f"in process with options {m['kernel_options']} (load_many, Loader.load, write_elf)"
    else:
        entry = cli.main
        how = "cli.main in process"

    totals: dict[str, float] = {}
    undo = instrument(totals)
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()
    t0 = time.perf_counter()
    try:
        rc = entry(argv_cli)
    finally:
        sys.stdout = real_stdout
    total = time.perf_counter() - t0
    for owner, attr, fn in undo:
        setattr(owner, attr, fn)
    print(f"{m['arch']}/{m['module']}: {m['relocations']:,} relocations; exit {rc}")
    print(f"  python start-up + import klpcore.cli (subprocess): {startup:.3f} s")
    print(f"  {how}: {total:.3f} s")
    for modname, path in STEPS:
        key = f"{modname.removeprefix('klpcore.')}.{path}"
        if key in totals:
            print(f"    {key:<40} {totals[key]:.3f} s")
    print("  (nested: _run_phase contains changes and commit; commit consumes changes)")

    prof = cProfile.Profile()
    sys.stdout = io.StringIO()
    try:
        prof.runcall(entry, argv_cli)
    finally:
        sys.stdout = real_stdout
    if args.out:
        prof.dump_stats(args.out)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(args.sort).print_stats(args.top)
    print("\ncProfile (in process, imports excluded; profiling overhead inflates small calls):")
    print(s.getvalue())
    return rc


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""klpcore vs GNU ld on a large real module (amdgpu.ko), in the same run.

Inputs come from ``bash bench/fetch.sh`` (bench/data/<arch>/manifest.json).
For each module found:

a. whole process: ``klpcore apply MODULE --symbols ... --base B --kernel 6.1
   -o OUT`` as a subprocess, best of N (wall clock);
b. the baseline, GNU ld linking the same module at the addresses klpcore
   chose: tools/ld_oracle.py prepares the link once (patched object, linker
   script, symbol assignments; --keep), then the ``ld`` command line it used
   (without ``-Map``) is timed on its own, best of N;
c. in process: symbols loaded once, then ``Loader(kernel=...).load(...)``,
   best of N; and the relocation phase alone (module opened, laid out, image
   filled and symbols simplified beforehand): ``_run_phase("load", ...)``
   (engine + commit to the image), and the engine alone (the arch plugin's
   ``klp_arch_apply_section`` over every section into staged buffers);
d. correctness: tools/ld_oracle.py compares klpcore's OUT with ld's output,
   section by section.

No time is asserted: the script prints the ratios (and --json writes them).
Targets (from the issue): whole-process klpcore within 2x of ld; the
in-process apply step at 5 M relocations/s or more.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ORACLE = REPO / "tools" / "ld_oracle.py"
TARGET_RATIO = 2.0
TARGET_RATE = 5e6
#: an in-process load slower than this is measured once, not --runs times
SLOW_SECONDS = 3.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times), "runs": times}


def klpcore_command() -> list[str]:
    exe = shutil.which("klpcore")
    return [exe] if exe else [sys.executable, "-m", "klpcore"]


def ld_version(ld: str) -> str:
    try:
        first = subprocess.run([ld, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"
    return first.split()[-1] if first else "?"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "?"


# ---------------------------------------------------------------------------
def kernel_target(m: dict):
    """The manifest's kernel version and plugin options (hex strings become ints)."""
    from klpcore.kernel import KernelTarget

    opts = {
        k: int(v, 0) if isinstance(v, str) and v.startswith("0x") else v for k, v in m.get("kernel_options", {}).items()
    }
    return KernelTarget.from_string(m["kernel"], options=opts)


def plugin_problem(module: Path, m: dict) -> str | None:
    """None when an installed plugin handles the module, else the reason."""
    from klpcore.errors import KlpError
    from klpcore.loader import Loader

    try:
        Loader(kernel=kernel_target(m)).open(module)
    except KlpError as exc:
        return "; ".join(d.message for d in exc.diagnostics)
    return None


def run_oracle(m: dict, d: Path, placed: Path | None, keep: Path) -> dict:
    cmd = [
        sys.executable,
        str(ORACLE),
        "--object",
        str(d / m["module"]),
        "--symbols",
        str(d / m["ld_symbols"]),
        "--arch",
        m["oracle_arch"],
        "--keep",
        str(keep),
        "--json",
    ]
    if placed is not None:
        cmd += ["--placed", str(placed)]
    else:
        cmd += ["--fake-place", m["base"], "--no-compare", "--allow-ld-errors"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    try:
        rep = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"ld_oracle failed (exit {p.returncode}):\n{p.stderr}{p.stdout[-2000:]}") from None
    statuses: dict[str, int] = {}
    for s in rep.get("sections", []):
        statuses[s["status"]] = statuses.get(s["status"], 0) + 1
    rep["_exit"] = p.returncode
    rep["_elapsed"] = elapsed
    rep["_statuses"] = statuses
    return rep


def in_process(m: dict, d: Path, n: int, write_to: Path | None = None) -> dict:
    """Loader.load() and its relocation phase, in this process."""
    import numpy as np

    from klpcore.engine import ApplyContext, SectionContext, StagedMemory
    from klpcore.loader import LoadedModule, Loader
    from klpcore.output import write_elf
    from klpcore.symbols import load_many

    base = int(m["base"], 0)
    kernel = kernel_target(m)
    module = d / m["module"]
    specs = [str(d / s) for s in m["klpcore_symbols"]]
    out: dict = {}

    t0 = time.perf_counter()
    symbols = load_many(specs)
    out["symbols_load"] = time.perf_counter() - t0

    loads = timed(lambda: Loader(kernel=kernel).load(module, symbols, base), 1)
    if loads[0] > SLOW_SECONDS and n > 1:
        log(f"  one Loader.load() takes {loads[0]:.1f} s: in-process measurements run once each")
        n = 1
    loads += timed(lambda: Loader(kernel=kernel).load(module, symbols, base), n - 1)
    out["load"] = summary(loads)
    if write_to is not None:
        write_to.write_bytes(write_elf(Loader(kernel=kernel).load(module, symbols, base)))

    data = module.read_bytes()

    def prepared() -> LoadedModule:
        loader = Loader(kernel=kernel)
        mod = loader.open(data, name=module.stem)
        loader.prepare(mod, base)
        loaded = LoadedModule(loader, mod, loader._image(mod), symbols)
        errors = loaded._simplify_symbols()
        if errors:
            raise SystemExit(f"symbol resolution failed: {errors[0]}")
        return loaded

    # steps of load() separately (one fresh module each time)
    steps: dict[str, list[float]] = {k: [] for k in ("open", "prepare", "image", "simplify_symbols", "apply_phase")}
    engine: list[float] = []
    nrel = 0
    for _ in range(n):
        gc.collect()
        loader = Loader(kernel=kernel)
        t = [time.perf_counter()]
        mod = loader.open(data, name=module.stem)
        t.append(time.perf_counter())
        loader.prepare(mod, base)
        t.append(time.perf_counter())
        image = loader._image(mod)
        t.append(time.perf_counter())
        loaded = LoadedModule(loader, mod, image, symbols)
        loaded._simplify_symbols()
        t.append(time.perf_counter())
        loaded._run_phase("load", loaded._load_sections(), finalize=True)
        t.append(time.perf_counter())
        for k, a, b in zip(steps, t, t[1:], strict=False):
            steps[k].append(b - a)

        # the engine alone: every section applied into staged buffers (no commit)
        loaded = prepared()
        mod = loaded.module
        work = [(s, mod.elf.relas(s.index)) for s, rs in loaded._load_sections() if rs is None]
        nrel = sum(len(r) for _, r in work)
        gc.collect()
        t0 = time.perf_counter()
        staged = StagedMemory(loaded.image, loaded._placed())
        # the arch's per-module state from module setup (s390 GOT/PLT slots, ppc64 stubs), as a phase gets it
        state = copy.deepcopy(mod.arch_state)
        ctx = ApplyContext(mod, mod.arch, kernel, staged, loaded.symvals.copy(), state, "load")
        for s, relas in work:
            mod.hooks.klp_arch_apply_section(ctx=SectionContext.for_section(ctx, s, relas))
        engine.append(time.perf_counter() - t0)
        errs = [x for x in ctx.diagnostics if x.severity == "error"]
        if errs:
            raise SystemExit(f"engine errors: {errs[0]}")
    out["steps"] = {k: summary(v) for k, v in steps.items()}
    out["engine"] = summary(engine)
    out["engine_relocations"] = nrel
    out["numpy"] = np.__version__
    return out


# ---------------------------------------------------------------------------
def bench_module(m: dict, d: Path, args: argparse.Namespace, work: Path) -> dict:
    from klpcore.errors import KlpError

    module = d / m["module"]
    res: dict = {
        "module": f"{m['arch']}/{m['module']}",
        "package": f"{m['package']} {m.get('version', '')}".strip(),
        "relocations": m["relocations"],
        "base": m["base"],
        "kernel": m["kernel"],
        "kernel_options": m.get("kernel_options", {}),
    }
    name = res["module"]
    out = work / f"{m['arch']}-{m['module']}.relocated"
    keep = work / f"{m['arch']}-ld"
    placed: Path | None = None
    problem = plugin_problem(module, m)
    if problem:
        log(f"{name}: klpcore skipped: {problem}")
        res["klpcore_skipped"] = problem
    else:
        cmd = [*klpcore_command(), "apply", str(module)]
        for s in m["klpcore_symbols"]:
            cmd += ["--symbols", str(d / s)]
        cmd += ["--base", m["base"], "--kernel", m["kernel"], "-o", str(out)]
        for key, value in m.get("kernel_options", {}).items():
            cmd += ["-O", f"{key}={value}"]
        res["klpcore_command"] = " ".join(cmd)
        log(f"{name}: (a) klpcore apply, whole process, {args.runs} runs ...")
        failure: list[str] = []

        def run_klpcore() -> None:
            if failure:
                return
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode:
                lines = [x for x in p.stderr.splitlines() if x.strip()]
                failure.append(f"exit {p.returncode}, {len(lines)} error line(s); first: {lines[0] if lines else ''}")

        times = timed(run_klpcore, args.runs)
        if failure:
            res["klpcore_failed"] = failure[0]
            log(f"{name}: klpcore apply failed: {failure[0]}")
        else:
            res["klpcore"] = summary(times)
            placed = out
        # the interpreter and imports alone: a floor for any Python CLI
        floor = [sys.executable, "-c", "import klpcore.cli"]
        res["import_floor"] = summary(timed(lambda: subprocess.run(floor, check=True), args.runs))

        log(f"{name}: (c) in process, {args.runs} runs ...")
        try:
            ip = in_process(m, d, args.runs, write_to=None if placed else out)
        except (KlpError, SystemExit) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            res["in_process_failed"] = msg
            log(f"{name}: in process failed: {msg}")
        else:
            if placed is None:
                placed = out
                res["placed_from"] = "in process (the CLI run failed): write_elf(Loader.load(...))"
            res["in_process"] = ip
            res["apply_rate"] = m["relocations"] / ip["steps"]["apply_phase"]["best"]
            res["engine_rate"] = ip["engine_relocations"] / ip["engine"]["best"]
            res["load_rate"] = m["relocations"] / ip["load"]["best"]

    log(f"{name}: (d) tools/ld_oracle.py (prepares ld's inputs, compares the sections) ...")
    rep = run_oracle(m, d, placed, keep)
    res["oracle"] = {
        "ok": bool(rep.get("ok")) and placed is not None,
        "compared": placed is not None,
        "exit": rep["_exit"],
        "sections": rep["_statuses"],
        "ld_errors": rep.get("ld_errors", []),
        "notes": rep.get("notes", []),
        "seconds": rep["_elapsed"],
    }
    if placed is None:
        res["oracle"]["note"] = "no klpcore output: ld linked at sequential addresses from the base (--fake-place)"
    if not rep.get("ok") and placed is not None:
        res["oracle"]["differences"] = [
            {k: e[k] for k in ("index", "name", "status", "relocations")} | {"ranges": len(e.get("differences", []))}
            for e in rep.get("sections", [])
            if e["status"] not in ("identical", "nobits", "not-compared")
        ]
    ld = rep["ld"]
    ld_args = list(rep["ld_args"])
    if "-Map" in ld_args:  # the oracle's map file is for its own use; not part of the baseline
        i = ld_args.index("-Map")
        del ld_args[i : i + 2]
    ld_args[ld_args.index("-o") + 1] = "bench-linked.elf"
    res["ld_command"] = " ".join([ld, *ld_args])
    res["ld_version"] = ld_version(ld)
    res["ld_binary"] = ld
    log(f"{name}: (b) baseline {ld}, {args.runs} runs ...")

    def run_ld() -> None:
        p = subprocess.run([ld, *ld_args], cwd=keep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if p.returncode:
            raise SystemExit(f"{ld} failed (exit {p.returncode}) in {keep}")

    res["ld"] = summary(timed(run_ld, args.runs))
    if "klpcore" in res:
        res["ratio"] = res["klpcore"]["best"] / res["ld"]["best"]
    if not args.keep:
        shutil.rmtree(keep, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------
def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f} M/s"


def table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header, *rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def report(results: list[dict], meta: dict) -> str:
    out = []
    baselines = sorted({f"GNU ld {r['ld_version']} ({r['ld_binary']})" for r in results})
    out.append(f"baseline: {', '.join(baselines)}")
    out.append(
        f"machine: {meta['cpus']} cores, {meta['platform']}; Python {meta['python']}, numpy "
        f"{meta.get('numpy', '?')}; klpcore {meta['klpcore']}; best of {meta['runs']} runs"
    )
    out.append("")
    rows = []
    for r in results:
        ip = r.get("in_process", {})
        oracle = r["oracle"]
        if not oracle["compared"]:
            verdict = "not compared"
        elif oracle["ok"]:
            verdict = f"identical ({oracle['sections'].get('identical', 0)} sections)"
        else:
            verdict = "MISMATCH " + ", ".join(f"{k} {v}" for k, v in sorted(oracle["sections"].items()))
        rows.append(
            [
                r["module"],
                f"{r['relocations']:,}",
                fmt_s(r.get("klpcore", {}).get("best")),
                fmt_s(r["ld"]["best"]),
                f"{r['ratio']:.1f}x" if "ratio" in r else "-",
                fmt_s(ip.get("steps", {}).get("apply_phase", {}).get("best")),
                fmt_rate(r.get("apply_rate")),
                verdict,
            ]
        )
    out.append(
        table(
            rows, ["module", "relocations", "klpcore (s)", "ld (s)", "klpcore/ld", "apply (s)", "apply rate", "oracle"]
        )
    )
    out.append("")
    out.append(
        f"targets: klpcore/ld <= {TARGET_RATIO:.0f}x (whole process); apply rate >= {TARGET_RATE / 1e6:.0f} M "
        "relocations/s (in process)"
    )
    for r in results:
        out.append("")
        opts = ", ".join(f"{k}={v}" for k, v in r.get("kernel_options", {}).items())
        out.append(
            f"{r['module']} ({r['package']}, base {r['base']}, --kernel {r['kernel']}"
            f"{'; options ' + opts if opts else ''})"
        )
        if "klpcore_skipped" in r:
            out.append(f"  klpcore: skipped: {r['klpcore_skipped']}")
        if "klpcore_failed" in r:
            out.append(f"  klpcore apply (CLI) failed: {r['klpcore_failed']}")
        if "klpcore" in r:
            ratio_ok = "meets" if r["ratio"] <= TARGET_RATIO else "misses"
            out.append(
                f"  whole process: klpcore {fmt_s(r['klpcore']['best'])} s (median "
                f"{fmt_s(r['klpcore']['median'])}), ld {fmt_s(r['ld']['best'])} s (median "
                f"{fmt_s(r['ld']['median'])}): {r['ratio']:.1f}x ({ratio_ok} the {TARGET_RATIO:.0f}x target)"
            )
        else:
            out.append(f"  ld: {fmt_s(r['ld']['best'])} s (median {fmt_s(r['ld']['median'])})")
        if "import_floor" in r:
            out.append(f"    python start-up + 'import klpcore.cli' alone: {fmt_s(r['import_floor']['best'])} s")
        if "in_process_failed" in r:
            out.append(f"  in process: failed: {r['in_process_failed']}")
        if "in_process" in r:
            ip = r["in_process"]
            rate_ok = "meets" if r["apply_rate"] >= TARGET_RATE else "misses"
            out.append(
                f"  in process: symbols loaded once in {fmt_s(ip['symbols_load'])} s; "
                f"Loader.load() {fmt_s(ip['load']['best'])} s ({fmt_rate(r['load_rate'])})"
            )
            out.append("    steps: " + ", ".join(f"{k} {fmt_s(v['best'])}" for k, v in ip["steps"].items()) + " s")
            out.append(
                f"    apply phase {fmt_rate(r['apply_rate'])} ({rate_ok} the {TARGET_RATE / 1e6:.0f} M/s "
                f"target); engine alone (no commit) {fmt_s(ip['engine']['best'])} s = "
                f"{fmt_rate(r['engine_rate'])}"
            )
        o = r["oracle"]
        if not o["compared"]:
            out.append(f"  oracle: not compared ({o.get('note', '')}; ld exit {o['exit']})")
        else:
            src = f" (placed file {r['placed_from']})" if "placed_from" in r else ""
            out.append(
                f"  oracle{src}: {'all compared sections identical' if o['ok'] else 'MISMATCH or ld error'} "
                f"({', '.join(f'{k} {v}' for k, v in sorted(o['sections'].items()))}; exit {o['exit']}, "
                f"{o['seconds']:.1f} s)"
            )
            for e in o.get("differences", [])[:10]:
                out.append(
                    f"    [{e['index']}] {e['name']}: {e['status']}, {e['ranges']} range(s), "
                    f"{e['relocations']} relocations in the section"
                )
        for e in o["ld_errors"][:5]:
            out.append(f"    ld: {e}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", "-n", type=int, default=5, help="runs per measurement; the best is reported (default 5)")
    ap.add_argument("--data", type=Path, default=BENCH / "data", help="fetched inputs (default bench/data)")
    ap.add_argument("--arch", action="append", help="only these data directories (amd64, ppc64el)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' = stdout, table to stderr)")
    ap.add_argument("--keep", metavar="DIR", help="keep klpcore's output and ld's work files in DIR")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    manifests = sorted(args.data.glob("*/manifest.json"))
    if args.arch:
        manifests = [p for p in manifests if p.parent.name in args.arch]
    if not manifests:
        log(f"no inputs under {args.data}: run 'bash bench/fetch.sh' first")
        return 2

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="klpbench."))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for p in manifests:
            m = json.loads(p.read_text())
            results.append(bench_module(m, p.parent, args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    meta = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "klpcore": git_revision(),
        "runs": args.runs,
    }
    for r in results:
        if "in_process" in r:
            meta["numpy"] = r["in_process"]["numpy"]
    meta["baseline"] = sorted({f"GNU ld {r['ld_version']} ({r['ld_binary']})" for r in results})
    text = report(results, meta)
    if args.json == "-":
        print(text, file=sys.stderr)
        json.dump({"meta": meta, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print(text)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "results": results}, fh, indent=1)
                fh.write("\n")
    return 0 if all(r["oracle"]["ok"] or not r["oracle"]["compared"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

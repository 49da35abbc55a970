"""Verdicts, the text table and the JSON report (schema 2).

JSON schema 2 (inside the command line's envelope: ``schema``, ``command``,
``ok``, ``exit_code``, ``errors``, ``warnings``; see docs/json-schema.md), one
module::

    {"schema": 2, ..., "module": NAME, "path": PATH,
     "targets": [{"target": PATH, "release": STR|null, "verdict": "loads"|"refused"|"patch-fails",
                  "files": {...}, "missing": {WHAT: WHY}, "notes": [STR],
                  "findings": [{"check": STR, "severity": "error"|"warning"|"info"|"not-checked",
                                "message": STR, "kernel_message": STR|null, "outcome"?: STR, ...}],
                  "patched_functions": [{"object", "old_name", "sympos", "replacement", "status", ...}]}]}

Several modules: ``{"schema": 2, ..., "modules": [<one-module object>, ...]}``.
A finding may carry ``then``: the further kernel lines that follow its message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .pair import PATCH_FAILS, REFUSED, Finding

LOADS = "loads"
#: no step refused the module, but a step that could refuse it was not checked (a missing input)
UNKNOWN = "unknown"
#: verdict -> exit code of a run; a run of many pairs exits with the worst (refused/patch-fails 1,
#: else unknown 4, else 0)
VERDICT_EXIT = {LOADS: 0, UNKNOWN: 4, PATCH_FAILS: 1, REFUSED: 1}
_EXIT_RANK = {0: 0, 4: 1, 1: 2}


def exit_code(verdicts: list[str]) -> int:
    """The exit code of a run whose pairs got ``verdicts``: the worst of theirs."""
    codes = [VERDICT_EXIT[v] for v in verdicts]
    return max(codes, key=_EXIT_RANK.__getitem__, default=0)


@dataclass
class PairResult:
    module: str
    name: str
    target: str
    release: str | None
    findings: list[Finding]
    patched: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        outcomes = {f.outcome for f in self.findings if f.severity == "error"}
        if REFUSED in outcomes:
            return REFUSED
        if PATCH_FAILS in outcomes:
            return PATCH_FAILS
        if self.unchecked:
            return UNKNOWN
        return LOADS

    @property
    def unchecked(self) -> list[Finding]:
        """The steps that could have refused the module but were not checked (why, and what supplies it)."""
        return [f for f in self.findings if f.severity == "not-checked"]

    @property
    def first_error(self) -> Finding | None:
        return next((f for f in self.findings if f.severity == "error"), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "release": self.release,
            "verdict": self.verdict,
            "unchecked": [
                {"check": f.check, "why": f.message.removeprefix("not checked: "), **f.extra} for f in self.unchecked
            ],
            "files": self.files,
            "missing": self.missing,
            "notes": self.notes,
            "findings": [f.as_dict() for f in self.findings],
            "patched_functions": self.patched,
        }


def json_report(results: list[list[PairResult]]) -> dict[str, Any]:
    """``results[i]`` are the pairs of module ``i`` (one per target)."""
    mods = [
        {"module": pairs[0].name, "path": pairs[0].module, "targets": [p.as_dict() for p in pairs]}
        for pairs in results
        if pairs
    ]
    if len(mods) == 1:
        return dict(mods[0])
    return {"modules": mods}


#: errors shown per pair in a several-pair run without --verbose
MAX_ERRORS = 5


def _summary(r: PairResult) -> str:
    """The table's last column: the first failure (and how many more), else the warnings by check."""
    errors = [x for x in r.findings if x.severity == "error"]
    if not errors and r.unchecked:
        checks = ", ".join(dict.fromkeys(x.check for x in r.unchecked))
        return f"not checked: {checks}" + (f" (missing: {', '.join(r.missing)})" if r.missing else "")
    if not errors:
        warn = sorted({x.check for x in r.findings if x.severity == "warning"})
        nc = sum(1 for x in r.findings if x.severity == "not-checked")
        bits = [f"warnings: {', '.join(warn)}"] if warn else []
        if nc:
            bits.append(f"{nc} not checked")
        return "; ".join(bits) or "no warnings"
    first = errors[0]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first.check}: {first.kernel_message or first.message}{more}"


def write_text(results: list[list[PairResult]], out: TextIO | None = None, verbose: bool = False) -> None:
    out = out or sys.stdout
    pairs = [p for group in results for p in group]
    several = len(pairs) > 1
    files_of: dict[str, set[str]] = {}
    for p in pairs:
        files_of.setdefault(p.name, set()).add(p.module)

    def shown(p: PairResult) -> str:
        """The module's name; its path where two files of the run have that name (6.1's and 6.12's ext4)."""
        return p.module if len(files_of[p.name]) > 1 else p.name

    if several:
        rows = [(shown(p), p.target, p.release or "?", p.verdict, _summary(p)) for p in pairs]
        header = ("module", "target", "release", "verdict", "first failure / warnings")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
        for n, r in enumerate([header, *rows]):
            out.write("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] + "\n")
            if n == 0:
                out.write("  ".join("-" * w for w in widths) + "  " + "-" * len(header[4]) + "\n")
        counts = {v: sum(1 for p in pairs if p.verdict == v) for v in (LOADS, REFUSED, PATCH_FAILS, UNKNOWN)}
        out.write(f"{len(pairs)} pairs: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "\n")
    for p in pairs:
        if several and not verbose and p.verdict == LOADS:
            continue
        out.write(
            ("\n" if several else "") + f"{shown(p)} on {p.target} ({p.release or 'release unknown'}): {p.verdict}\n"
        )
        shown_errors = 0
        hidden = 0
        for f in p.findings:
            if f.severity == "info" and not verbose:
                continue
            if several and not verbose and f.severity not in ("error", "not-checked"):
                continue  # the table names the warnings; -v shows them
            if f.severity == "error":
                shown_errors += 1
                if several and not verbose and shown_errors > MAX_ERRORS:
                    hidden += 1
                    continue
            label = f.severity if not f.outcome else f"{f.severity} ({f.outcome})"
            out.write(f"  {label:<22} {f.check:<18} {f.message}\n")
            if f.kernel_message:
                out.write(f"  {'':<22} {'':<18} kernel: {f.kernel_message}\n")
                then = f.extra.get("then")
                for line in [then] if isinstance(then, str) else (then or []):
                    out.write(f"  {'':<22} {'':<18}         {line}\n")
        if hidden:
            out.write(f"  ... {hidden} more error(s) (-v shows them)\n")
        if p.patched and (verbose or not several):
            out.write("  patched functions:\n")
            for row in p.patched:
                where = row.get("address") or ""
                ft = row.get("ftrace")
                ftxt = "" if "ftrace" not in row else (" ftrace ok" if ft else " NO ftrace location")
                out.write(
                    f"    {row['object']}:{row['old_name']},{row['sympos']} -> {row['replacement']}  "
                    f"{row['status']} {where}{ftxt}\n"
                )
        for w, why in p.missing.items():
            out.write(f"  missing: {w}: {why}\n")
        for note in p.notes:
            out.write(f"  note: {note}\n")

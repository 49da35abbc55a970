"""Verdicts, the text table and the JSON report (schema 1).

JSON schema 1 (inside the command line's envelope: ``schema``, ``command``,
``ok``, ``exit_code``, ``errors``, ``warnings``; see docs/json-schema.md), one
module::

    {"schema": 1, ..., "module": PATH, "name": NAME,
     "targets": [{"target": PATH, "release": STR|null, "verdict": "loads"|"refused"|"patch-fails",
                  "files": {...}, "missing": {WHAT: WHY}, "notes": [STR],
                  "findings": [{"check": STR, "severity": "error"|"warning"|"info"|"not-checked",
                                "message": STR, "kernel_message": STR|null, "outcome"?: STR, ...}],
                  "patched_functions": [{"object", "old_name", "sympos", "replacement", "status", ...}]}]}

Several modules: ``{"schema": 1, ..., "modules": [<one-module object>, ...]}``.
A finding may carry ``then``: the further kernel lines that follow its message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .steps import PATCH_FAILS, REFUSED, Finding

LOADS = "loads"


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
        return LOADS

    @property
    def first_error(self) -> Finding | None:
        return next((f for f in self.findings if f.severity == "error"), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "release": self.release,
            "verdict": self.verdict,
            "files": self.files,
            "missing": self.missing,
            "notes": self.notes,
            "findings": [f.as_dict() for f in self.findings],
            "patched_functions": self.patched,
        }


def json_report(results: list[list[PairResult]]) -> dict[str, Any]:
    """``results[i]`` are the pairs of module ``i`` (one per target)."""
    mods = [
        {"module": pairs[0].module, "name": pairs[0].name, "targets": [p.as_dict() for p in pairs]}
        for pairs in results
        if pairs
    ]
    if len(mods) == 1:
        return dict(mods[0])
    return {"modules": mods}


def _summary(r: PairResult) -> str:
    f = r.first_error
    if f is None:
        warn = sum(1 for x in r.findings if x.severity == "warning")
        nc = sum(1 for x in r.findings if x.severity == "not-checked")
        bits = [f"{warn} warning(s)"] if warn else []
        if nc:
            bits.append(f"{nc} not checked")
        return ", ".join(bits)
    return f.kernel_message or f.message


def write_text(results: list[list[PairResult]], out: TextIO | None = None, verbose: bool = False) -> None:
    out = out or sys.stdout
    pairs = [p for group in results for p in group]
    if len(pairs) > 1:
        rows = [(p.name, p.target, p.release or "?", p.verdict, _summary(p)) for p in pairs]
        header = ("module", "target", "release", "verdict", "first failure / notes")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
        for n, r in enumerate([header, *rows]):
            out.write("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] + "\n")
            if n == 0:
                out.write("  ".join("-" * w for w in widths) + "  " + "-" * 21 + "\n")
        out.write("\n")
    for p in pairs:
        out.write(f"{p.name} on {p.target} ({p.release or 'release unknown'}): {p.verdict}\n")
        if len(pairs) > 1 and not verbose and p.verdict == LOADS:
            continue
        for f in p.findings:
            if f.severity == "info" and not verbose:
                continue
            label = f.severity if not f.outcome else f"{f.severity} ({f.outcome})"
            out.write(f"  {label:<22} {f.check:<18} {f.message}\n")
            if f.kernel_message:
                out.write(f"  {'':<22} {'':<18} kernel: {f.kernel_message}\n")
                then = f.extra.get("then")
                for line in [then] if isinstance(then, str) else (then or []):
                    out.write(f"  {'':<22} {'':<18}         {line}\n")
        if p.patched and (verbose or len(pairs) == 1):
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

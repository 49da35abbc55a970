"""What a check run over many pairs prints: ``--format table|json|jsonl|csv``.

* ``table``: a few pairs as the per-pair table (:func:`.report.write_text`);
  many pairs as a summary per target, the failures grouped by cause ("38
  modules refused on 6.1.0-57: ...") and a module x target matrix of the
  modules that do not load everywhere (``-v``: every module).
* ``json``: the schema-1 report (:func:`json_document`), written at the end.
* ``jsonl``: one line per pair, written as soon as the pair and all pairs
  before it are judged (an interrupted run keeps what it did), then one
  ``summary`` line.
* ``csv``: one row per pair, streamed the same way.
* ``--compare`` (two targets): the modules whose verdict changes from the
  first target to the second, and why.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from typing import Any, TextIO

from ..cli.codes import SCHEMA_VERSION
from .batch import Cell, exit_code
from .inputs import NotApplicable
from .report import PairResult, write_text

#: more pairs than this: the summary, causes and matrix instead of a row per pair
FEW_PAIRS = 24
#: modules named per cause before "+N more"
NAMES_PER_CAUSE = 6
VERDICTS = ("loads", "refused", "patch-fails", "unknown", "not-applicable")
SHORT = {"loads": "ok", "refused": "REF", "patch-fails": "PF", "unknown": "?", "not-applicable": "n/a"}
CSV_FIELDS = (
    "module",
    "path",
    "target",
    "release",
    "verdict",
    "first_check",
    "first_failure",
    "errors",
    "warnings",
    "not_checked",
)


def _name(group: Sequence[Cell]) -> str:
    return next((c.name for c in group if isinstance(c, PairResult)), group[0].name if group else "?")


def module_object(group: Sequence[Cell]) -> dict[str, Any]:
    return {"module": _name(group), "path": group[0].module, "targets": [c.as_dict() for c in group]}


def json_document(groups: Sequence[Sequence[Cell]], comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema-1 body: one module's object, or ``{"modules": [...]}`` for several."""
    mods = [module_object(g) for g in groups if g]
    doc: dict[str, Any] = dict(mods[0]) if len(mods) == 1 else {"modules": mods}
    if comparison is not None:
        doc["comparison"] = comparison
    return doc


def first_failure(c: Cell) -> tuple[str, str]:
    """The first error (check, kernel line or message); for an ``unknown`` pair the first step
    that was not checked and why."""
    f = c.first_error
    if f is None:
        if c.verdict == "unknown":
            nc = next((x for x in c.findings if x.severity == "not-checked"), None)
            if nc is not None:
                return nc.check, "not checked: " + nc.message.removeprefix("not checked: ")
        return "", ""
    return f.check, f.kernel_message or f.message


def pair_line(c: Cell) -> dict[str, Any]:
    """One JSON line: the pair's object with its module."""
    return {"kind": "pair", "module": c.name, "path": c.module, **c.as_dict()}


def csv_row(c: Cell) -> list[str]:
    check, text = first_failure(c)
    sev = [f.severity for f in c.findings]
    return [
        c.name,
        c.module,
        c.target,
        c.release or "",
        c.verdict,
        check,
        text,
        str(sev.count("error")),
        str(sev.count("warning")),
        str(sev.count("not-checked")),
    ]


class Stream:
    """Writes pairs as they come (``jsonl``, ``csv``); nothing for other formats."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.csv: Any = None
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(CSV_FIELDS)

    def pair(self, index: int, c: Cell) -> None:
        if self.fmt == "jsonl":
            self.out.write(json.dumps(pair_line(c), sort_keys=False, default=str) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow(csv_row(c))
        else:
            return
        self.out.flush()

    def summary(self, cells: Sequence[Cell], code: int, comparison: dict[str, Any] | None) -> None:
        if self.fmt == "jsonl":
            line: dict[str, Any] = {"kind": "summary", "schema": SCHEMA_VERSION, "pairs": len(cells), "exit_code": code}
            line["verdicts"] = counts(cells)
            if comparison is not None:
                line["comparison"] = comparison
            self.out.write(json.dumps(line, default=str) + "\n")
            self.out.flush()


def counts(cells: Sequence[Cell]) -> dict[str, int]:
    out = dict.fromkeys(VERDICTS, 0)
    for c in cells:
        out[c.verdict] = out.get(c.verdict, 0) + 1
    return {k: v for k, v in out.items() if v}


def cause(c: Cell) -> str:
    """A failure's cause without the module's own name in it."""
    check, text = first_failure(c)
    if c.name:
        text = re.sub(rf"(?<![\w-]){re.escape(c.name)}(?![\w-])", "<module>", text)
    return f"{check}: {text}"


def write_table(
    groups: Sequence[Sequence[Cell]],
    labels: Sequence[str],
    releases: Sequence[str | None],
    out: TextIO,
    verbose: bool = False,
    comparison: dict[str, Any] | None = None,
) -> None:
    cells = [c for g in groups for c in g]
    judged = [[c for c in g if isinstance(c, PairResult)] for g in groups]
    skipped = [c for c in cells if isinstance(c, NotApplicable)]
    if len(cells) <= FEW_PAIRS:
        write_text([g for g in judged if g], out, verbose=verbose)
        for na in skipped:
            out.write(f"{na.name} on {na.target} ({na.release or 'release unknown'}): not applicable ({na.reason})\n")
    else:
        write_summary(groups, labels, releases, out, verbose)
    if comparison is not None:
        write_comparison(comparison, out)


def _target_name(label: str, release: str | None) -> str:
    return release or label


def write_summary(
    groups: Sequence[Sequence[Cell]],
    labels: Sequence[str],
    releases: Sequence[str | None],
    out: TextIO,
    verbose: bool = False,
) -> None:
    nt = len(labels)
    cells = [c for g in groups for c in g]
    out.write(f"{len(groups)} module(s) x {nt} target(s): {len(cells)} pairs\n\n")
    # per target
    header = ["", "target", "release", *VERDICTS]
    rows = []
    for t in range(nt):
        col = [g[t] for g in groups]
        n = counts(col)
        rows.append([f"T{t + 1}", labels[t], releases[t] or "?", *(str(n.get(v, 0)) for v in VERDICTS)])
    _grid(out, header, rows)
    # what each target lacks (the steps needing it were not checked)
    for t in range(nt):
        missing = next((c.missing for g in groups if isinstance(c := g[t], PairResult)), {})
        for what, why in missing.items():
            out.write(f"T{t + 1} missing {what}: {why}\n")
    # causes
    by_cause: dict[tuple[int, str, str], list[str]] = {}
    for g in groups:
        for t, c in enumerate(g):
            if c.verdict in ("loads", "not-applicable"):
                continue
            by_cause.setdefault((t, c.verdict, cause(c)), []).append(c.name)
    if by_cause:
        out.write("\nfailures by cause:\n")
        ordered = sorted(by_cause.items(), key=lambda kv: (-len(kv[1]), kv[0][0], kv[0][1], kv[0][2]))
        for (t, verdict, why), names in ordered:
            shown = ", ".join(names[:NAMES_PER_CAUSE]) + (
                f" (+{len(names) - NAMES_PER_CAUSE} more)" if len(names) > NAMES_PER_CAUSE else ""
            )
            what = "module" if len(names) == 1 else "modules"
            out.write(f"  {len(names)} {what} {verdict} on {_target_name(labels[t], releases[t])} (T{t + 1}): {why}\n")
            out.write(f"      {shown}\n")
    # the matrix
    if nt > 1 or verbose:
        shown_groups = [g for g in groups if verbose or any(c.verdict not in ("loads", "not-applicable") for c in g)]
        if shown_groups:
            everywhere = len(groups) - len(shown_groups)
            title = "module x target" + (
                "" if verbose else f" (the {len(shown_groups)} modules that do not load on every target; -v: all)"
            )
            out.write(f"\n{title}:\n")
            names = [_name(g) for g in shown_groups]
            if len(set(names)) < len(names):  # the same module name twice: show the files
                names = [g[0].module for g in shown_groups]
            mrows = [
                [n, *(SHORT.get(c.verdict, c.verdict) for c in g)] for n, g in zip(names, shown_groups, strict=True)
            ]
            _grid(out, ["module", *(f"T{t + 1}" for t in range(nt))], mrows)
            if not verbose and everywhere:
                out.write(f"({everywhere} module(s) load on every target of their architecture)\n")
    out.write("\n" + _totals(cells) + "\n")


def _totals(cells: Sequence[Cell]) -> str:
    n = counts(cells)
    return f"{len(cells)} pairs: " + ", ".join(f"{v} {k}" for k, v in n.items())


def _grid(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for k, r in enumerate([header, *rows]):
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        if k == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


# ------------------------------------------------------------------ comparison
def compare(groups: Sequence[Sequence[Cell]], labels: Sequence[str], releases: Sequence[str | None]) -> dict[str, Any]:
    """The modules whose verdict differs between the first and the second target."""
    changes = []
    same: dict[str, int] = {}
    for g in groups:
        a, b = g[0], g[1]
        if a.verdict == b.verdict:
            same[a.verdict] = same.get(a.verdict, 0) + 1
            continue
        why_a, why_b = first_failure(a), first_failure(b)
        changes.append(
            {
                "module": _name(g),
                "path": a.module,
                "from": a.verdict,
                "to": b.verdict,
                "from_failure": ": ".join(why_a) if why_a[0] else None,
                "to_failure": ": ".join(why_b) if why_b[0] else None,
            }
        )
    return {
        "from": {"target": labels[0], "release": releases[0]},
        "to": {"target": labels[1], "release": releases[1]},
        "unchanged": same,
        "changes": changes,
    }


def write_comparison(comp: dict[str, Any], out: TextIO) -> None:
    a = _target_name(comp["from"]["target"], comp["from"]["release"])
    b = _target_name(comp["to"]["target"], comp["to"]["release"])
    changes = comp["changes"]
    out.write(f"\nfrom {a} to {b}: {len(changes)} module(s) change")
    if comp["unchanged"]:
        out.write(" (unchanged: " + ", ".join(f"{n} {v}" for v, n in sorted(comp["unchanged"].items())) + ")")
    out.write("\n")
    for ch in changes:
        out.write(f"  {ch['module']}: {ch['from']} -> {ch['to']}\n")
        if ch["from_failure"]:
            out.write(f"      on {a}: {ch['from_failure']}\n")
        if ch["to_failure"]:
            out.write(f"      on {b}: {ch['to_failure']}\n")


def code_of(cells: Sequence[Cell]) -> int:
    return exit_code(list(cells))

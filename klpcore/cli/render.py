"""What the command line writes: the JSON envelope (schema 2), text tables, progress on a terminal,
diagnostics, and the summary of the kernel rules every report carries."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..errors import Diagnostic
from ..kernel import KernelTarget, Setting
from ..plugins import installed_version
from ..versions import NEWEST
from .codes import EXIT_OK, SCHEMA_VERSION


def envelope(
    command: str | None, code: int, errors: Sequence[Diagnostic], warnings: Sequence[Diagnostic]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "command": command,
        "klpcore_version": installed_version(),
        "ok": code == EXIT_OK,
        "exit_code": code,
        "errors": [d.as_dict() for d in errors],
        "warnings": [d.as_dict() for d in warnings],
    }


def emit_json(
    args: argparse.Namespace,
    data: dict[str, Any],
    code: int = EXIT_OK,
    *,
    errors: Sequence[Diagnostic] = (),
    warnings: Sequence[Diagnostic] = (),
) -> None:
    """Write ``data`` inside the schema-2 envelope to the command's JSON destination."""
    doc = envelope(getattr(args, "command", None), code, errors, warnings)
    doc.update(data)
    write_json(doc, json_destination(args) or "-", inputs=input_paths(args))


def write_json(doc: dict[str, Any], dest: str, inputs: Sequence[str] = ()) -> None:
    from ..output import write_file

    write_file(dest, json.dumps(doc, indent=2, default=str) + "\n", what="JSON report", inputs=inputs)


def json_destination(args: argparse.Namespace) -> str | None:
    """Where JSON goes: ``-`` (stdout), a file, or ``None`` (text output)."""
    report = getattr(args, "report", None)
    if isinstance(report, str):
        return report
    return "-" if getattr(args, "json", False) else None


def input_paths(args: argparse.Namespace) -> list[str]:
    out = [getattr(args, "module", None) or ""]
    out += [s.rpartition("@")[0] or s if not os.path.exists(s) else s for s in getattr(args, "symbols", []) or []]
    return [p for p in out if p]


def progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{message}")
        sys.stderr.flush()


def progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def print_diags(diags: Sequence[Diagnostic], out: TextIO | None = None) -> None:
    out = out or sys.stderr
    for d in diags:
        out.write(f"{d.severity}: {d}\n")


def kernel_summary(kernel: KernelTarget, settings: dict[str, Setting] | None = None) -> dict[str, Any]:
    """What every report says about the rules it used (JSON key ``kernel_rules``)."""
    source = {"newest": "newest checked release", "option": "--kernel"}.get(
        kernel.version_source, kernel.version_source
    )
    if kernel.beyond_newest:
        source += f"; newer than the newest checked release {NEWEST[0]}.{NEWEST[1]}, whose rules are used"
    out: dict[str, Any] = {
        "version": kernel.label,
        "version_source": source,
        "config": kernel.config.source if kernel.config is not None else None,
    }
    if settings is not None:
        out["settings"] = {name: {"value": st.value, "source": st.source} for name, st in settings.items()}
    return out


def kernel_line(kernel: KernelTarget, settings: dict[str, Setting] | None = None) -> str:
    summary = kernel_summary(kernel, settings)
    text = f"kernel rules: Linux {summary['version']} ({summary['version_source']})"
    if settings:
        facts = ", ".join(f"{n}={st.value} ({st.source})" for n, st in settings.items())
        text += f"; {facts}"
    if kernel.config is None:
        text += "; no --config: each fact is the architecture's common distribution setting"
    return text


def symbol_rows(resolutions: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"index": r.index, "name": r.name, "value": hex(r.value), "how": r.how, "object": r.object} for r in resolutions
    ]

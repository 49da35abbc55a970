"""``klpcore check``: will this (livepatch) module load on these kernels, and will the patch apply?

Parts: :mod:`.target` (find a kernel's files in a directory, read lazily),
:mod:`.modinfo` (what a module declares), :mod:`.steps` (the kernel's load
sequence for one pair, in its order), with :mod:`.pair` (findings and the helpers
every step shares), :mod:`.modversions` (CRC checks), :mod:`.dependencies` (modules
loaded first, the exports the module sees), :mod:`.livepatch` (``klp_enable_patch``
and ``klp_module_coming``) and :mod:`.distribution` (load rules a distribution's
patches change); :mod:`.patches` (the patched functions of a livepatch module),
:mod:`.kmsg` (kernel messages by version), :mod:`.report` (verdicts, text and JSON).
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pair import PATCH_FAILS, REFUSED, Finding
    from .patches import PatchInfo, read_patch
    from .report import LOADS, UNKNOWN, PairResult, exit_code, json_report, write_text
    from .target import Target

#: the package's names, imported on first use: ``klpcore check``'s argument parser (built for
#: every command) imports :mod:`.command` and must not pay for the load steps
_LAZY = {
    "PATCH_FAILS": "pair",
    "REFUSED": "pair",
    "Finding": "pair",
    "PatchInfo": "patches",
    "read_patch": "patches",
    "LOADS": "report",
    "UNKNOWN": "report",
    "PairResult": "report",
    "exit_code": "report",
    "json_report": "report",
    "write_text": "report",
    "Target": "target",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def check_pair(module: str, target: Target, kernel_options: dict[str, Any] | None = None) -> PairResult:
    """Judge one module file on one target."""
    from .report import PairResult
    from .steps import PairCheck

    start = time.perf_counter()
    pc = PairCheck(target, module, kernel_options=kernel_options)
    findings = pc.run()
    return PairResult(
        module=module,
        name=pc.name,
        target=target.label,
        release=target.release,
        findings=findings,
        patched=pc.patched,
        files=target.describe(),
        missing=dict(target.missing),
        notes=list(target.notes),
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "LOADS",
    "PATCH_FAILS",
    "REFUSED",
    "UNKNOWN",
    "Finding",
    "PairResult",
    "PatchInfo",
    "Target",
    "check_pair",
    "exit_code",
    "json_report",
    "read_patch",
    "write_text",
]

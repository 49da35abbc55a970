"""Exceptions and diagnostics.

Every problem klpcore reports is a :class:`Diagnostic`: a message plus the
context a user needs to find it (module, section, relocation index, type and
symbol).  Exceptions carry one or more diagnostics.  The CLI maps exception
classes to exit codes: :class:`InputError` and its subclasses to 2 (bad usage
or unreadable input), everything else derived from :class:`KlpError` to 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Diagnostic:
    """One problem or warning, with where it happened."""

    message: str
    severity: str = "error"  # "error" or "warning"
    module: str | None = None
    section: str | None = None
    index: int | None = None  # relocation index inside ``section``
    rtype: str | None = None  # relocation type name
    symbol: str | None = None
    kernel_message: str | None = None  # what the kernel would print, if known
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def type(self) -> str | None:
        """The relocation type name (``rtype``; JSON key ``type``)."""
        return self.rtype

    def location(self) -> str:
        parts = []
        if self.module:
            parts.append(f"module {self.module}")
        if self.section:
            parts.append(f"section {self.section}")
        if self.index is not None:
            parts.append(f"relocation #{self.index}")
        if self.rtype:
            parts.append(f"type {self.rtype}")
        if self.symbol:
            parts.append(f"symbol {self.symbol}")
        return ", ".join(parts)

    def __str__(self) -> str:
        loc = self.location()
        text = f"{loc}: {self.message}" if loc else self.message
        if self.kernel_message:
            text += f" [kernel: {self.kernel_message}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "message": self.message}
        for key in ("module", "section", "index", "rtype", "symbol", "kernel_message"):
            value = getattr(self, key)
            if value is not None:
                out["type" if key == "rtype" else key] = value
        if self.extra:
            out.update(self.extra)
        return out


class KlpError(Exception):
    """Base class of every klpcore error; carries diagnostics."""

    def __init__(self, message: str | Diagnostic | Sequence[Diagnostic]) -> None:
        if isinstance(message, str):
            diags: list[Diagnostic] = [Diagnostic(message)]
        elif isinstance(message, Diagnostic):
            diags = [message]
        else:
            diags = list(message)
        self.diagnostics: list[Diagnostic] = diags
        super().__init__("\n".join(str(d) for d in diags))


class InputError(KlpError):
    """Unreadable or malformed input, or bad usage (CLI exit code 2)."""


class InputFileError(InputError):
    """An input file cannot be read: missing, a device, over klpcore's size
    limit, or corrupt compressed data (see :mod:`klpcore.compress`)."""


class OutputError(InputError):
    """An output file cannot be written (missing folder, a directory, a full
    device, no permission, or it names an input file)."""


class ElfFormatError(InputError):
    """The ELF file is truncated, hostile or not a kernel module."""


class PlacementError(InputError):
    """Module memory cannot be placed where asked: it would overlap other
    memory (the per-CPU area, another region) or run past the address space."""


class NoPluginError(InputError):
    """No installed architecture plugin handles this ELF machine."""


class SymbolFileError(InputError):
    """A symbol source (System.map, kallsyms, ELF) cannot be read."""


class LivepatchFormatError(KlpError):
    """A livepatch section or symbol name breaks the kernel's rules."""


class ResolutionError(KlpError):
    """One or more symbols cannot be resolved."""


class RelocationError(KlpError):
    """One or more relocations cannot be applied; nothing was written."""


class MemoryAccessError(KlpError):
    """A write falls outside the module image or would fault."""


def collect(diags: Iterable[Diagnostic], exc: type[KlpError]) -> None:
    """Raise ``exc`` with every error-severity diagnostic, if there is any."""
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise exc(errors)

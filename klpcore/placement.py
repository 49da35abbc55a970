"""The kernel's own section addresses: ``apply --sections`` and ``--region-base``.

A live system shows where its loader put each section of a loaded module in
``/sys/module/NAME/sections/`` (one file per section holding its address).
:func:`read_sections` reads that directory, or a ``name address`` listing of
it.  :func:`fit_sections` turns the addresses into the base of each memory
type (``MOD_TEXT``, ``MOD_DATA``, ...; before 6.4 the core and the init
allocation) and refuses a placement the kernel could not have made:

* every listed section is one klpcore places in memory (``.symtab`` and
  ``.strtab`` are the exception: the kernel copies them to the end of
  ``MOD_INIT_DATA`` for kallsyms during init, klpcore does not load them);
* inside a memory type the kernel's layout is fixed by the module's ELF
  (``layout_sections``), so every section of one type must sit at the same
  distance from the type's start as in klpcore's layout; the start itself is
  page aligned (each allocation is pages of vmalloc or of the x86 text cache);
* no two memory types overlap.

:func:`parse_region_base` reads ``--region-base TYPE=ADDR`` (the kernel's type
names, ``MOD_TEXT`` or ``TEXT``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .constants import MemType
from .errors import Diagnostic, InputError
from .layout import Layout, align

__all__ = [
    "KALLSYMS_COPIES",
    "Fit",
    "fit_sections",
    "parse_region_base",
    "read_sections",
]

#: sections the kernel lists in sysfs that are not the module's loaded sections:
#: ``layout_symtab`` copies the symbol and string tables to the end of init data
KALLSYMS_COPIES = (".symtab", ".strtab")


def _address(text: str, where: str) -> int:
    try:
        value = int(text.strip(), 16)
    except ValueError:
        raise InputError(f"{where}: {text.strip()!r} is not a hexadecimal address") from None
    if not 0 <= value < 1 << 64:
        raise InputError(f"{where}: {text.strip()!r} is not a 64-bit address")
    return value


def read_sections(path: str | os.PathLike[str]) -> dict[str, int]:
    """Section name -> address, from a ``/sys/module/NAME/sections`` directory
    (one file per section) or a text file of ``name address`` lines (what
    ``grep . /sys/module/NAME/sections/.* /sys/module/NAME/sections/*`` or the
    kernel oracle's ``sections`` file show; ``path/name:address`` is accepted too)."""
    p = Path(path)
    out: dict[str, int] = {}
    try:
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file():
                    out[f.name] = _address(f.read_text(), str(f))
            if not out:
                raise InputError(f"--sections {p}: the directory lists no sections (run as root?)")
            return out
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"--sections {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"--sections {p}: not a text listing of 'name address' lines") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " " not in line and ":" in line:  # grep . dir/* output: path/name:address
            name, addr = line.rsplit(":", 1)
            name = name.rsplit("/", 1)[-1]
        else:
            words = line.split()
            if len(words) != 2:
                raise InputError(f"--sections {p}:{n}: expected 'name address', got {line!r}")
            name, addr = words
        if name in out:
            raise InputError(f"--sections {p}:{n}: section {name} listed twice")
        out[name] = _address(addr, f"--sections {p}:{n}")
    if not out:
        raise InputError(f"--sections {p}: no 'name address' lines")
    return out


def parse_region_base(text: str) -> tuple[MemType, int]:
    """``MOD_TEXT=0xffffffffc0400000`` (or ``TEXT=...``) -> (MemType.TEXT, address)."""
    if "=" not in text:
        raise InputError(f"--region-base {text!r}: expected TYPE=ADDRESS, e.g. MOD_TEXT=0xffffffffc0400000")
    name, addr = text.split("=", 1)
    key = name.strip().upper().removeprefix("MOD_")
    if key not in MemType.__members__:
        names = ", ".join(m.kernel_name for m in MemType)
        raise InputError(f"--region-base {text!r}: unknown memory type {name.strip()!r} (one of {names})")
    return MemType[key], _address(addr, f"--region-base {text!r}")


@dataclass
class Fit:
    """Where the kernel's addresses put each memory type."""

    #: memory style: each memory type's start; legacy: MemType.TEXT (core) and MemType.INIT_TEXT (init)
    bases: dict[MemType, int] = field(default_factory=dict)
    #: sections klpcore places that the listing lacks (an empty section, or freed and not listed)
    unlisted: list[str] = field(default_factory=list)
    #: listed sections klpcore does not load, with why (``.symtab``/``.strtab``)
    ignored: list[str] = field(default_factory=list)


def _group(layout: Layout, mt: MemType) -> MemType:
    """The allocation a memory type belongs to: itself (6.4+), core or init before."""
    if layout.style == "memory":
        return mt
    return MemType.INIT_TEXT if mt.is_init else MemType.TEXT


def fit_sections(
    layout: Layout, kernel: Mapping[str, int], page_size: int, *, module: str | None = None, source: str = ""
) -> Fit:
    """The allocation bases that put every section of ``layout`` where ``kernel`` says,
    or an :class:`InputError` naming the first section a kernel could not have put there."""
    where = f"--sections {source}: " if source else "--sections: "
    fit = Fit()
    by_name = {p.name: p for p in layout.placements.values()}
    for name in kernel:
        if name not in by_name:
            if name in KALLSYMS_COPIES:
                fit.ignored.append(name)
                continue
            raise InputError(
                Diagnostic(
                    f"{where}the kernel lists section {name} at {kernel[name]:#x}, but klpcore does not lay it out "
                    "in module memory (not SHF_ALLOC, empty, or not this module's section)",
                    module=module,
                    section=name,
                )
            )
    anchor: dict[MemType, tuple[str, int]] = {}
    for p in sorted(layout.placements.values(), key=lambda p: (p.memtype, p.offset, p.index)):
        if p.name not in kernel:
            fit.unlisted.append(p.name)
            continue
        g = _group(layout, p.memtype)
        addr = kernel[p.name]
        if g not in anchor:
            start = addr - p.offset
            if start % page_size or start < 0:
                raise InputError(
                    Diagnostic(
                        f"{where}section {p.name} at {addr:#x} would start {_kind(layout, g)} at {start:#x} "
                        f"(its offset there is {p.offset:#x}), which is not {page_size:#x}-aligned: the kernel "
                        "allocates whole pages",
                        module=module,
                        section=p.name,
                    )
                )
            anchor[g] = (p.name, start)
            fit.bases[g] = start
            continue
        first, start = anchor[g]
        if addr != start + p.offset:
            raise InputError(
                Diagnostic(
                    f"{where}section {p.name} at {addr:#x} is not where the kernel lays it out: {first} puts "
                    f"{_kind(layout, g)} at {start:#x} and {p.name} belongs at {start + p.offset:#x} "
                    f"(offset {p.offset:#x}, alignment {_alignment(p.offset)}); a kernel could not have "
                    "placed it there (a listing of another build of the module?)",
                    module=module,
                    section=p.name,
                )
            )
    missing = {_group(layout, p.memtype) for p in layout.placements.values()} - set(anchor)
    if missing:
        kinds = ", ".join(sorted(_kind(layout, m) for m in missing))
        raise InputError(
            Diagnostic(
                f"{where}no listed section locates {kinds}; give its start with --region-base TYPE=ADDRESS",
                module=module,
            )
        )
    _check_overlap(layout, fit.bases, page_size, where, module)
    return fit


def _alignment(offset: int) -> str:
    return f"{offset & -offset:#x}" if offset else "any"


def _kind(layout: Layout, g: MemType) -> str:
    if layout.style == "memory":
        return g.kernel_name
    return "init memory" if g.is_init else "core memory"


def _check_overlap(layout: Layout, bases: dict[MemType, int], page_size: int, where: str, module: str | None) -> None:
    sizes: dict[MemType, int] = {}
    for r in layout.regions.values():  # legacy: an allocation's rows add up
        g = _group(layout, r.memtype)
        sizes[g] = sizes.get(g, 0) + r.alloc_size
    spans = sorted((b, b + align(max(sizes.get(g, 0), 1), page_size), g) for g, b in bases.items())
    for (a0, a1, g0), (b0, _b1, g1) in itertools.pairwise(spans):
        if b0 < a1:
            raise InputError(
                Diagnostic(
                    f"{where}{_kind(layout, g1)} at {b0:#x} overlaps {_kind(layout, g0)} [{a0:#x}, {a1:#x}): "
                    "the kernel gives each its own allocation",
                    module=module,
                )
            )

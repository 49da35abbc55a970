"""A tree of kernel modules: which file is which module, and what each exports.

Used by ``klpcore check`` (a target's ``lib/modules/<release>/``) and by
``resolve``/``apply``/``disasm --module-tree DIR`` (which module provides a
symbol that no symbol source has).  Nothing is read up front: the file index
is one directory walk on first use, and a module's exports are read when they
are asked for, one file at a time through the core's bounded reader, keeping
only the exported names.

A module's exports are read as the kernel reads them: each ``struct
kernel_symbol`` of its ``__ksymtab`` (and ``__ksymtab_gpl``), the name being
the string its ``name_offset`` field points at (through the relocation the
loader applies there: ``S + A``, for the PREL32 layout and for absolute
pointers alike), not the ``__ksymtab_<name>`` symbol beside it; a module whose
entry points at a string naming another symbol exports that string's name.
A module whose export sections carry no relocations (hand-made objects) is
read by its ``__ksymtab_foo`` symbols in an export section
(``___ksymtab+foo``/``___ksymtab_gpl+foo`` in an object).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from . import compress
from .errors import InputError, KlpError

if TYPE_CHECKING:
    from .elf import ElfModule

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
EXPORT_PREFIX = "__ksymtab_"
#: ``enum ksym_flags`` (include/linux/module_symbol.h): the ``__kflagstab`` bit of a GPL-only export
KSYM_FLAG_GPL_ONLY = 1 << 0
#: largest module file read (after decompression)
MAX_MODULE = 1 << 30
#: directories of a lib/modules/<release> tree that hold no modules of that release
SKIP_DIRS = ("build", "source")


def module_kernel_name(filename: str) -> str:
    """The name the kernel gives a module file: directory and suffix dropped, ``-`` -> ``_``."""
    base = os.path.basename(filename)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_exports(elf: ElfModule) -> list[tuple[str, bool]]:
    """``(name, gpl_only)`` for every symbol ``elf`` exports: its ``struct kernel_symbol``
    entries in table order (``__ksymtab``, then ``__ksymtab_gpl``), or, without relocated
    entries, its ``__ksymtab_<name>`` symbols in symbol-table order."""
    entries = _kernel_symbols(elf)
    if entries is not None:
        return entries
    return _export_symbols(elf)


def _kernel_symbols(elf: ElfModule) -> list[tuple[str, bool]] | None:
    flags, _ = _kflagstab(elf)
    out: list[tuple[str, bool]] = []
    found = False
    for sec_name, gpl in (("__ksymtab", False), ("__ksymtab_gpl", True)):
        sec = elf.section_by_name(sec_name)
        if sec is None or not sec.size:
            continue
        names = _entry_names(elf, sec.index, int(sec.size))
        if names is None:
            return None
        found = True
        for k, name in enumerate(names):
            flagged = flags is not None and sec_name == "__ksymtab" and k < len(flags)
            out.append((name, gpl or (flagged and bool(flags[k] & KSYM_FLAG_GPL_ONLY))))  # type: ignore[index]
    return out if found else None


def _entry_names(elf: ElfModule, shndx: int, size: int) -> list[str] | None:
    """The name of each ``struct kernel_symbol`` in section ``shndx``: 12-byte PREL32 entries
    (``name_offset`` at +4) or pointer entries (``name`` at +8, 24 or 16 bytes)."""
    rel = next((s.index for s in elf.rela_sections() if s.info == shndx), None)
    if rel is None:
        return None
    relas = elf.relas(rel)
    syms = elf.symbols
    at: dict[int, tuple[int, int]] = {}
    for off, info, addend in zip(
        relas["r_offset"].tolist(), relas["r_info"].tolist(), relas["r_addend"].tolist(), strict=True
    ):
        si = info >> 32
        # S + A: what a PC-relative field resolves to once the kernel adds its place back
        at[off] = (int(syms["st_shndx"][si]), int(syms["st_value"][si]) + addend)
    for width, name_at in ((12, 4), (24, 8), (16, 8)):
        if size % width or not all(k * width + name_at in at for k in range(size // width)):
            continue
        names: list[str] = []
        for k in range(size // width):
            nd, off = at[k * width + name_at]
            if not 0 < nd < len(elf.sections):
                return None
            data = elf.section_data(nd)
            end = data.find(b"\0", off)
            if off >= len(data) or end < 0:
                return None
            names.append(data[off:end].decode("utf-8", "replace"))
        return names
    return None


def _export_symbols(elf: ElfModule) -> list[tuple[str, bool]]:
    sec_names = [s.name for s in elf.sections]
    shndx = elf.symbols["st_shndx"].tolist()
    values = elf.symbols["st_value"].tolist()
    flags, entsize = _kflagstab(elf)
    out: list[tuple[str, bool]] = []
    for i, sym in enumerate(elf.symbol_names):
        if not sym.startswith(EXPORT_PREFIX):
            continue
        nd = shndx[i]
        if not 0 < nd < len(sec_names):
            continue
        sec = sec_names[nd]
        if sec == "__ksymtab" and flags is not None:
            k = values[i] // entsize
            out.append((sym[len(EXPORT_PREFIX) :], k < len(flags) and bool(flags[k] & KSYM_FLAG_GPL_ONLY)))
        elif sec in ("__ksymtab", "__ksymtab_gpl") or sec.startswith(("___ksymtab+", "___ksymtab_gpl+")):
            out.append((sym[len(EXPORT_PREFIX) :], "gpl" in sec))
    return out


def _kflagstab(elf: ElfModule) -> tuple[bytes | None, int]:
    """Modules of the 7.x tree ("module: use kflagstab instead of *_gpl sections"; present in Debian
    7.2.13's modules, absent from 6.12.117's: the first release is UNCONFIRMED, 7.0 or 7.1): every export
    in ``__ksymtab``, one flag byte per entry in ``__kflagstab`` (``KSYM_FLAG_GPL_ONLY``, bit 0, for
    EXPORT_SYMBOL_GPL); ``(flags, entry size)`` or ``(None, 0)``.  Detected from the module's own
    sections, so no row of the version table: the reader needs no target release."""
    fl = elf.section_by_name("__kflagstab")
    tab = elf.section_by_name("__ksymtab")
    if fl is None or tab is None:
        return None, 0
    flags = bytes(elf.section_data(fl.index))
    if not flags:
        return None, 0
    return flags, max(int(tab.size) // len(flags), 1)


class ModuleTree:
    """The modules under ``root`` (``lib/modules/<release>`` or any directory of ``.ko`` files)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        #: module files that could not be read, with the reason (reported, not fatal)
        self.unreadable: dict[str, str] = {}
        self._exports: dict[str, frozenset[str]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], release: str | None = None) -> ModuleTree:
        """A tree given on the command line: a directory of modules, or a root
        holding ``lib/modules/<release>/`` (the release ``release`` when given
        and present, else the only one)."""
        p = Path(path)
        if not p.is_dir():
            raise InputError(f"--module-tree {path}: not a directory")
        mods = p / "lib" / "modules"
        if mods.is_dir():
            releases = sorted(d.name for d in mods.iterdir() if d.is_dir())
            if release in releases:
                return cls(mods / str(release))
            if len(releases) == 1:
                return cls(mods / releases[0])
            if releases:
                raise InputError(
                    f"--module-tree {path}: several releases under lib/modules ({', '.join(releases)}); "
                    "name one: --module-tree " + str(mods / releases[0])
                )
        return cls(p)

    @cached_property
    def index(self) -> dict[str, Path]:
        """Kernel module name -> file, for every module in the tree (first found wins)."""
        found: dict[str, str] = {}  # strings first: a Path per file joined part by part costs 3x more
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for f in sorted(filenames):
                if f.endswith(MODULE_SUFFIXES):
                    found.setdefault(module_kernel_name(f), os.path.join(dirpath, f))
        return {name: Path(p) for name, p in found.items()}

    def _raw(self, path: Path) -> bytes:
        """A module file's bytes, decompressed (a tree read from elsewhere than the file system overrides it)."""
        return compress.read_input(path, limit=MAX_MODULE, what="module")

    def find(self, name: str) -> Path | None:
        return self.index.get(name.replace("-", "_"))

    def read(self, name: str) -> ElfModule:
        """The module ``name`` parsed (:class:`KlpError` when it cannot be)."""
        from .elf import ElfModule

        path = self.find(name)
        if path is None:
            raise InputError(f"no module {name} in {self.root}")
        return ElfModule(self._raw(path), path=str(path))

    def exports(self, name: str) -> frozenset[str]:
        """Names the module ``name`` exports (empty when it is unreadable or absent)."""
        found = self._exports.get(name)
        if found is None:
            try:
                found = frozenset(n for n, _gpl in module_exports(self.read(name)))
            except KlpError as exc:
                self.unreadable[name] = str(exc)
                found = frozenset()
            self._exports[name] = found
        return found

    def _may_export(self, name: str, wanted: set[str]) -> bool:
        """A cheap look at the raw file: does its string table hold ``__ksymtab_N`` for a wanted N?
        (Parsing the module, done only then, decides.)"""
        path = self.find(name)
        if path is None:
            return False
        try:
            raw = self._raw(path)
        except KlpError as exc:
            self.unreadable[name] = str(exc)
            return False
        if b"\0__ksymtab_" not in raw:
            return False
        return any(b"\0__ksymtab_" + n.encode("utf-8", "surrogateescape") + b"\0" in raw for n in wanted)

    def providers(self, names: Iterable[str], prefer: Sequence[str] = ()) -> dict[str, str]:
        """``symbol -> module`` for each of ``names`` some module of the tree
        exports.  The modules in ``prefer`` (e.g. ``depends=``) are read first;
        the rest, in path order, only while a name is still unattributed."""
        wanted = set(names)
        out: dict[str, str] = {}
        order = [m for m in dict.fromkeys(n.replace("-", "_") for n in prefer) if m in self.index]
        order += [m for m in self.index if m not in set(order)]
        for m in order:
            if not wanted:
                break
            if m not in self._exports and not self._may_export(m, wanted):
                continue
            hit = wanted & self.exports(m)
            for n in hit:
                out[n] = m
            wanted -= hit
        return out

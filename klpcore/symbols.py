"""Kernel symbol tables and the kernel's symbol resolution rules.

Sources: ``System.map``, ``/proc/kallsyms`` text (``[module]`` annotations make
each module its own object), the ``.symtab`` of a vmlinux ELF, a kernel image
as shipped (``vmlinuz``: its kallsyms tables, see :mod:`klpcore.kimage`), the
``.symtab`` of a module ``.ko`` loaded at a given base, and the build's
``Module.symvers`` (no addresses: each export's CRC, GPL-only flag and
namespace, for ``resolve_symbol``'s checks).  Several sources merge into one
:class:`KernelSymbols`.

Resolution follows the kernel:

* livepatch symbols: ``klp_find_object_symbol`` (kernel/livepatch/core.c):
  sympos 0 means the name must be unique in the object, n > 0 means the n-th
  occurrence in the object's kallsyms order;
* ordinary undefined symbols: ``simplify_symbols`` / ``resolve_symbol``
  (kernel/module/main.c): exported symbols only; an unresolved weak symbol
  becomes 0.

Occurrence order: vmlinux symbols are counted in address order (kallsyms
sorts by address; since 6.2 same-named symbols are sorted by address, then by
original order), module symbols in their symtab order.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import constants as C
from .elfheader import (
    ElfHeaderError,
    FileHeader,
    Ident,
    SectionHeader,
    read_header,
    read_ident,
    section_headers,
    string_table_index,
)
from .errors import Diagnostic, ResolutionError, SymbolFileError

EXPORT_PREFIX = "__ksymtab_"


@dataclass(frozen=True)
class ExportInfo:
    """One line of ``Module.symvers``: how a symbol is exported."""

    name: str
    crc: int
    owner: str  # "vmlinux" or the module's build path
    gpl_only: bool
    namespace: str = ""


@dataclass
class ObjectSymbols:
    """The symbols of one kernel object (``vmlinux`` or a module), in order."""

    name: str
    names: list[str] = field(default_factory=list)
    addrs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    _first: dict[str, int] | None = field(default=None, repr=False)  # name -> first position
    _dups: dict[str, list[int]] = field(default_factory=dict, repr=False)  # names that repeat
    _seen: set[tuple[str, int]] | None = field(default=None, repr=False)  # built on the first add()
    _sorted: bool = field(default=False, repr=False)

    def add(self, name: str, addr: int, typ: str, source: str) -> None:
        if self._seen is None:
            self._seen = set(zip(self.names, self.addrs, strict=True))
        key = (name, addr)
        if key in self._seen:  # the same symbol from a second source
            return
        self._seen.add(key)
        self.names.append(name)
        self.addrs.append(addr)
        self.types.append(typ)
        self.sources.append(source)
        self._invalidate()

    def extend(self, names: list[str], addrs: list[int], types: list[str], source: str) -> None:
        """Add the symbols of one source at once.  Within one source every line
        counts (kallsyms would list a repeated line twice too); across sources
        :meth:`add` drops a (name, address) pair already present."""
        if not self.names:
            self.names, self.addrs, self.types = list(names), list(addrs), list(types)
            self.sources = [source] * len(self.names)
            self._seen = None
            self._invalidate()
            return
        for n, a, t in zip(names, addrs, types, strict=True):
            self.add(n, a, t, source)

    def _invalidate(self) -> None:
        self._first = None
        self._dups = {}
        self._sorted = False

    def sort_by_address(self) -> None:
        addrs = self.addrs
        if self._sorted or all(addrs[i] <= addrs[i + 1] for i in range(len(addrs) - 1)):
            self._sorted = True
            return
        order = sorted(range(len(self.names)), key=lambda i: addrs[i])  # stable
        self.names = [self.names[i] for i in order]
        self.addrs = [self.addrs[i] for i in order]
        self.types = [self.types[i] for i in order]
        self.sources = [self.sources[i] for i in order]
        self._invalidate()
        self._sorted = True

    def _build(self) -> dict[str, int]:
        names = self.names
        n = len(names)
        first = dict(zip(reversed(names), range(n - 1, -1, -1), strict=True))
        dups: dict[str, list[int]] = {}
        if len(first) != n:
            repeated = {k for k, c in Counter(names).items() if c > 1}
            for i, name in enumerate(names):
                if name in repeated:
                    dups.setdefault(name, []).append(i)
        self._first, self._dups = first, dups
        return first

    def positions(self, name: str) -> list[int]:
        """Positions of every symbol called ``name``, in occurrence order."""
        first = self._first if self._first is not None else self._build()
        d = self._dups.get(name)
        if d is not None:
            return d
        i = first.get(name)
        return [] if i is None else [i]

    def has_name(self, name: str) -> bool:
        first = self._first if self._first is not None else self._build()
        return name in first

    def matches(self, name: str) -> list[int]:
        """Addresses of every symbol called ``name``, in occurrence order."""
        return [self.addrs[i] for i in self.positions(name)]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Match:
    """Result of a successful lookup."""

    address: int
    objname: str
    source: str


class KernelSymbols:
    """Symbols of vmlinux and of loaded modules, merged from several sources."""

    def __init__(self) -> None:
        self.objects: dict[str, ObjectSymbols] = {}
        self.source_names: list[str] = []
        #: e_machine of each ELF source (vmlinux or mod.ko@ADDR), by source name
        self.machines: dict[str, int] = {}
        #: text sources whose vmlinux part lists only code symbols: kallsyms of
        #: a kernel built without CONFIG_KALLSYMS_ALL
        self.text_only: list[str] = []
        self._export_info: bool | None = None
        #: export metadata from Module.symvers (symbol name -> how it is exported)
        self.export_meta: dict[str, ExportInfo] = {}
        #: export tables read as the kernel reads them (``struct kernel_symbol``:
        #: a kernel image's, a module's ``__ksymtab``): object -> exported name -> address.
        #: Where an object has one, it decides; elsewhere ``__ksymtab_<name>`` symbols do.
        self.exported: dict[str, dict[str, int]] = {}
        #: the CRCs those tables carry (``__kcrctab``), by object, where they do
        self.export_crcs: dict[str, dict[str, int]] = {}
        #: ftrace record addresses (``rec->ip``), sorted, by object, where a source gives them
        #: (a kernel image's ``__mcount_loc``)
        self.ftrace: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------- building
    def obj(self, name: str) -> ObjectSymbols:
        self._export_info = None
        o = self.objects.get(name)
        if o is None:
            o = self.objects[name] = ObjectSymbols(name)
        return o

    def add(self, objname: str, name: str, addr: int, typ: str = "T", source: str = "") -> None:
        self.obj(objname).add(name, addr, typ, source)

    def merge(self, other: KernelSymbols) -> None:
        self._export_info = None
        self.export_meta.update(other.export_meta)
        for oname, table in other.exported.items():
            self.exported.setdefault(oname, {}).update(table)
        for oname, crcs in other.export_crcs.items():
            self.export_crcs.setdefault(oname, {}).update(crcs)
        self.ftrace.update(other.ftrace)
        for oname, o in other.objects.items():
            dst = self.objects.get(oname)
            if dst is None or not dst.names:
                self.objects[oname] = o
                continue
            for n, a, t, s in zip(o.names, o.addrs, o.types, o.sources, strict=True):
                dst.add(n, a, t, s)
        self.source_names.extend(other.source_names)
        self.machines.update(other.machines)
        self.text_only.extend(other.text_only)
        if C.VMLINUX in self.objects:
            self.objects[C.VMLINUX].sort_by_address()

    def missing_hint(self) -> str:
        """Why a symbol may be missing from these sources, or ``""``."""
        if not self.text_only:
            return ""
        return (
            f" ({', '.join(self.text_only)} lists only code symbols: a kallsyms of a kernel built without "
            "CONFIG_KALLSYMS_ALL has no data symbols; give the kernel's System.map, or a kallsyms from a kernel "
            "with CONFIG_KALLSYMS_ALL=y)"
        )

    @property
    def loaded_modules(self) -> list[str]:
        return [n for n in self.objects if n != C.VMLINUX]

    def has(self, objname: str) -> bool:
        return objname in self.objects and len(self.objects[objname]) > 0

    # ---------------------------------------------------------- livepatch
    def find_object_symbol_rfc(self, objname: str | None, name: str, extra: Sequence[int] = ()) -> int:
        """The 4.3/4.4-era ``klp_find_object_symbol(objname, name, &addr)`` of
        the 2015 RFC: every match counts (no sympos), exactly one resolves
        (even at address 0).  ``extra`` adds matches from a module that is not
        in these sources (the patch module itself)."""
        obj = self.objects.get(objname or C.VMLINUX)
        addrs = [*(obj.matches(name) if obj is not None else []), *extra]
        where = objname or C.VMLINUX
        if not addrs:
            raise ResolutionError(
                Diagnostic(
                    f"symbol '{name}' not found in {where}'s symbol table",
                    symbol=name,
                    kernel_message=f"symbol '{name}' not found in symbol table",
                    extra={"object": where, "kind": "not-found"},
                )
            )
        if len(addrs) > 1:
            printed = objname if objname is not None else "(null)"
            raise ResolutionError(
                Diagnostic(
                    f"unresolvable ambiguity for symbol '{name}' in object '{where}': {len(addrs)} matches "
                    "(the RFC era had no sympos)",
                    symbol=name,
                    kernel_message=(
                        f"unresolvable ambiguity ({len(addrs)} matches) on symbol '{name}' in object '{printed}'"
                    ),
                    extra={"object": where, "kind": "ambiguous"},
                )
            )
        return addrs[0]

    def find_object_symbol(self, objname: str | None, name: str, sympos: int) -> int:
        """``klp_find_object_symbol``: the address of the ``sympos``-th ``name``
        in ``objname`` (``None`` = vmlinux).  Raises :class:`ResolutionError`
        with the kernel's message for each failure case."""
        obj = self.objects.get(objname or C.VMLINUX)
        addrs = obj.matches(name) if obj is not None else []
        printed = objname if objname is not None else "(null)"
        # The kernel counts matches and remembers the last one seen; it stops
        # at position ``sympos`` or, for sympos 0, at the second match.
        count = 0
        addr = 0
        for a in addrs:
            addr = a
            count += 1
            if (sympos and count == sympos) or (not sympos and count > 1):
                break
        positions = ", ".join(f"{i + 1}: {a:#x}" for i, a in enumerate(addrs))
        where = objname or C.VMLINUX
        if addr == 0:
            zero = " (a symbol at address 0 counts as not found)" if addrs else self.missing_hint()
            raise ResolutionError(
                Diagnostic(
                    f"symbol '{name}' not found in {where}'s symbol table{zero}",
                    symbol=name,
                    kernel_message=f"symbol '{name}' not found in symbol table",
                    extra={"object": where, "kind": "not-found"},
                )
            )
        if count > 1 and sympos == 0:
            raise ResolutionError(
                Diagnostic(
                    f"unresolvable ambiguity for symbol '{name}' in object '{where}': {len(addrs)} matches; "
                    f"valid positions are {positions}",
                    symbol=name,
                    kernel_message=f"unresolvable ambiguity for symbol '{name}' in object '{printed}'",
                    extra={
                        "object": where,
                        "kind": "ambiguous",
                        "positions": [{"sympos": i + 1, "address": hex(a)} for i, a in enumerate(addrs)],
                    },
                )
            )
        if sympos and count != sympos:
            raise ResolutionError(
                Diagnostic(
                    f"symbol position {sympos} for symbol '{name}' in object '{where}' not found "
                    f"({len(addrs)} occurrence{'s' if len(addrs) != 1 else ''}: {positions})",
                    symbol=name,
                    kernel_message=f"symbol position {sympos} for symbol '{name}' in object '{where}' not found",
                    extra={"object": where, "kind": "position-not-found"},
                )
            )
        return addr

    # ------------------------------------------------------------- exports
    @property
    def has_export_info(self) -> bool:
        if self._export_info is None:
            self._export_info = bool(self.exported) or any(
                any(n.startswith(EXPORT_PREFIX) for n in o.names) for o in self.objects.values()
            )
        return self._export_info

    def find_exported(self, name: str) -> Match | None:
        """``find_symbol``: an exported symbol of vmlinux or a loaded module."""
        for oname in [C.VMLINUX, *self.loaded_modules]:
            table = self.exported.get(oname)
            if table is not None:
                if name in table:
                    return Match(table[name], oname, self._export_source(oname))
                continue
            obj = self.objects.get(oname)
            if obj is None or not obj.has_name(EXPORT_PREFIX + name):
                continue
            idx = [i for i in obj.positions(name) if obj.types[i] not in ("U", "u")]
            if not idx:
                continue
            best = [i for i in idx if obj.types[i].isupper()] or idx
            i = best[0]
            return Match(obj.addrs[i], oname, obj.sources[i])
        return None

    def _export_source(self, oname: str) -> str:
        obj = self.objects.get(oname)
        return obj.sources[0] if obj is not None and obj.sources else ""

    def find_global(self, name: str) -> list[Match]:
        out = []
        for oname, obj in self.objects.items():
            for i in obj.positions(name):
                if obj.types[i].isupper() and obj.types[i] != "U":
                    out.append(Match(obj.addrs[i], oname, obj.sources[i]))
        return out


# ---------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------
_LINE = re.compile(r"^([0-9a-fA-F]+)\s+(\S)\s+(\S+)(?:\s+\[(\S+)\])?\s*$")


def _read_bytes(path: str | os.PathLike[str], *, module: bool = False) -> bytes:
    """A symbol source's bytes, decompressed (gzip, xz, zstd: by content) and
    bounded: text sources and ELF files have separate size limits."""
    from .compress import MODULE_LIMIT, SYMBOL_ELF_LIMIT, SYMBOL_TEXT_LIMIT, read_input

    def limit(head: bytes) -> int:
        if module:
            return MODULE_LIMIT
        return SYMBOL_ELF_LIMIT if head[:4] == C.ELFMAG else SYMBOL_TEXT_LIMIT

    return read_input(path, limit=limit, what="symbol file", error=SymbolFileError)


#: nm type letters of data symbols (present in System.map and in kallsyms with CONFIG_KALLSYMS_ALL)
_DATA_TYPES = frozenset("dDbBrRgGsSvV")
_HEX_FIELD = re.compile(r"[0-9a-fA-F]{1,16}")
_HEX_FIELDS = re.compile(r"(?:[0-9a-fA-F]{1,16} )*")


def _hex_ok(token: str) -> bool:
    """A symbol file's address field: 1..16 hex digits (``int(x, 16)`` alone
    would also take signs, underscores, other scripts' digits and values of
    2^64 or more)."""
    return _HEX_FIELD.fullmatch(token) is not None


def _iter_lines(text: str, source: str) -> Iterator[tuple[int, str, str, str | None]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise SymbolFileError(f"{source}:{lineno}: not a symbol line: {line[:80]!r}")
        if not _hex_ok(m.group(1)):
            raise SymbolFileError(f"{source}:{lineno}: address {m.group(1)[:40]!r} is not a 64-bit hex address")
        yield int(m.group(1), 16), m.group(2), m.group(3), m.group(4)


#: characters of symbol text split at a time by the fast path (bounds the token lists' memory)
SPLIT_CHUNK = 1 << 20


def _fast_rows(text: str) -> tuple[list[str], list[int], list[str]] | None:
    """(names, addresses, types) of symbol text made only of ``ADDR T NAME``
    lines (System.map), split a bounded chunk of whole lines at a time; None
    when any chunk is not of that shape (the line parser then decides)."""
    if "[" in text:
        return None
    names: list[str] = []
    addrs: list[int] = []
    types: list[str] = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos + SPLIT_CHUNK)
        end = len(text) if end < 0 else end + 1
        tokens = text[pos:end].split()
        pos = end
        if len(tokens) % 3 or not all(len(t) == 1 for t in tokens[1::3]):
            return None
        fields = tokens[0::3]
        if not _HEX_FIELDS.fullmatch(" ".join(fields) + " "):
            return None
        addrs += [int(a, 16) for a in fields]
        names += tokens[2::3]
        types += tokens[1::3]
    return names, addrs, types


#: what Debian's one-line placeholder System.map says (6.12+: the real one is in the -dbg package)
PLACEHOLDER_MARK = "System.map is in the linux-image"


def placeholder_error(text: str, source: str) -> None:
    """Raise :class:`SymbolFileError` with the fix when ``text`` is Debian's placeholder System.map."""
    if len(text) < 4096 and PLACEHOLDER_MARK in text:
        m = re.search(r"linux-image-(\S*?)-dbg", text)
        pkg = f"linux-image-{m.group(1)}-dbg" if m and "<" not in m.group(1) else "linux-image-<release>-dbg"
        raise SymbolFileError(
            f"{source}: Debian's placeholder System.map, not a symbol table (one line: "
            f"{text.strip()[:100]!r}); the real one is usr/lib/debug/boot/System.map-<release> in the {pkg} "
            "package (about 1 GB to download), or read /proc/kallsyms as root on the running kernel"
        )


def parse_symbol_text(text: str, source: str = "<text>") -> KernelSymbols:
    """Parse ``System.map`` or ``/proc/kallsyms`` text.

    Lines with a ``[module]`` suffix belong to that module; others to vmlinux.
    """
    placeholder_error(text, source)
    ks = KernelSymbols()
    ks.source_names.append(source)
    vmlinux = ks.obj(C.VMLINUX)
    nonzero = False
    # fast path: split fields; the regex parser reports malformed lines
    rows: dict[str | None, tuple[list[str], list[int], list[str]]] = {}
    fast = _fast_rows(text)
    if fast is not None:
        rows[None] = fast
        nonzero = any(fast[1])
        text = ""
    try:
        for line in text.splitlines():
            parts = line.split()
            if not parts:
                continue
            n = len(parts)
            if n == 3:
                mod = None
            elif n == 4 and parts[3][0] == "[" and parts[3][-1] == "]":
                mod = parts[3][1:-1]
            else:
                raise ValueError(line)
            if len(parts[1]) != 1:
                raise ValueError(line)
            if not _hex_ok(parts[0]):
                raise ValueError(line)
            addr = int(parts[0], 16)
            nonzero = nonzero or addr != 0
            r = rows.get(mod)
            if r is None:
                r = rows[mod] = ([], [], [])
            r[0].append(parts[2])
            r[1].append(addr)
            r[2].append(parts[1])
    except ValueError:
        for _ in _iter_lines(text, source):  # raises with the line number
            pass
        raise SymbolFileError(f"{source}: unreadable symbol text") from None
    for mod, (names, addrs, types) in rows.items():
        if addrs and max(addrs) >> 64:
            i = addrs.index(max(addrs))
            raise SymbolFileError(f"{source}: address {addrs[i]:#x} of {names[i]} does not fit in 64 bits")
        obj = vmlinux if mod is None else ks.obj(mod)
        obj.extend(names, addrs, types, source)
    if not nonzero and any(len(o) for o in ks.objects.values()):
        raise SymbolFileError(
            f"{source}: every address is zero (kallsyms read without privilege? read it as root, "
            "or set kernel.kptr_restrict=0)"
        )
    vmlinux.sort_by_address()
    if not len(vmlinux):
        del ks.objects[C.VMLINUX]
    elif not _DATA_TYPES.intersection(vmlinux.types):
        ks.text_only.append(source)
    return ks


def symbols_from_elf(
    data: bytes, source: str, *, base: int | None = None, objname: str | None = None, coming: bool = False
) -> KernelSymbols:
    """Symbols of a vmlinux ELF (``ET_EXEC``/``ET_DYN``) or of a module ``.ko``
    loaded at ``base`` (addresses from klpcore's own layout of that module).

    A module's symbols are those its kallsyms shows once LIVE; ``coming=True``
    gives the table it shows while COMING (what ``klp_module_coming`` resolves
    against when that module loads after the patch): the full symbol table."""
    from .elf import ElfModule

    try:
        ident: Ident | None = read_ident(data)
    except ElfHeaderError:
        ident = None
    ks = KernelSymbols()
    ks.source_names.append(source)
    if ident is not None:
        ks.machines[source] = ident.machine
    if ident is not None and ident.type == C.ET_REL:
        if base is None:
            raise SymbolFileError(f"{source} is a module; give its load address as {source}@0xADDRESS")
        from .loader import layout_module_for_symbols

        mod = ElfModule(data, path=source)
        name = objname or mod.name
        for sym_name, addr, typ in layout_module_for_symbols(mod, base, coming=coming):
            ks.add(name, sym_name, addr, typ, source)
        return ks
    vmlinux = ks.obj(objname or C.VMLINUX)
    for sym_name, addr, typ in _elf_symtab_entries(data, source):
        vmlinux.add(sym_name, addr, typ, source)
    vmlinux.sort_by_address()
    return ks


def _elf_symtab_entries(data: bytes, source: str) -> Iterable[tuple[str, int, str]]:
    from .elf import sym_dtype

    try:
        hdr = read_header(data)
        sections = section_headers(data, hdr)
        names = _section_names(data, hdr, sections)
        symtab = next((sh for sh, name in zip(sections, names, strict=True) if name == ".symtab"), None)
        if symtab is None:
            raise SymbolFileError(f"{source}: no .symtab (stripped vmlinux?)")
        _check_plain_section(data, symtab)
        arr = np.frombuffer(data, dtype=sym_dtype(hdr.endian), count=symtab.size // C.SYM_SIZE, offset=symtab.offset)
        strtab = _section_bytes(data, sections[symtab.link])
    except SymbolFileError:
        raise
    except ElfHeaderError as exc:
        raise SymbolFileError(f"{source}: unreadable ELF: {exc}") from None
    except Exception as exc:  # hostile offsets and sizes (ValueError, IndexError, ...)
        raise SymbolFileError(f"{source}: unreadable ELF: {type(exc).__name__}: {exc}") from exc
    for sym in arr:
        shndx = int(sym["st_shndx"])
        stype = int(sym["st_info"]) & 0xF
        if shndx == C.SHN_UNDEF or stype in (C.STT_SECTION, C.STT_FILE):
            continue
        off = int(sym["st_name"])
        end = strtab.find(b"\0", off)
        name = strtab[off:end].decode("utf-8", "surrogateescape")
        if not name:
            continue
        yield name, int(sym["st_value"]), _type_char(int(sym["st_info"]), shndx, sections)


def _type_char(st_info: int, shndx: int, sections: Sequence[SectionHeader]) -> str:
    bind = st_info >> 4
    if shndx == C.SHN_ABS:
        ch = "a"
    elif shndx >= C.SHN_LORESERVE or shndx >= len(sections):
        ch = "?"
    else:
        sh = sections[shndx]
        if sh.flags & C.SHF_EXECINSTR:
            ch = "t"
        elif sh.type == C.SHT_NOBITS:
            ch = "b"
        elif sh.flags & C.SHF_WRITE:
            ch = "d"
        else:
            ch = "r"
    if bind == C.STB_WEAK:
        return "W" if ch == "t" else "V"
    return ch.upper() if bind == C.STB_GLOBAL else ch


def _section_bytes(data: bytes, sh: SectionHeader) -> bytes:
    _check_plain_section(data, sh)
    return data[sh.offset : sh.offset + sh.size]


def _check_plain_section(data: bytes, sh: SectionHeader) -> None:
    if sh.flags & SHF_COMPRESSED:
        raise ElfHeaderError("a symbol or string table is compressed (SHF_COMPRESSED); klpcore reads them plain")
    if sh.offset + sh.size > len(data):
        raise ElfHeaderError(
            f"section contents (offset {sh.offset:#x}, size {sh.size:#x}) run past the end of the file"
        )


def _section_names(data: bytes, hdr: FileHeader, sections: Sequence[SectionHeader]) -> list[str]:
    """Each section's name (``""`` where the name table does not have it)."""
    index = string_table_index(data, hdr)
    if not 0 < index < len(sections):
        raise ElfHeaderError(f"section name string table index {index} out of range (0..{len(sections) - 1})")
    table = _section_bytes(data, sections[index])
    out = []
    for sh in sections:
        end = table.find(b"\0", sh.name)
        out.append(table[sh.name : end].decode("utf-8", "surrogateescape") if sh.name < len(table) and end >= 0 else "")
    return out


#: sh_flags bit of a section whose contents are compressed (ELF gABI)
SHF_COMPRESSED = 0x800

_SYMVERS = re.compile(r"^0x([0-9a-fA-F]+)\t(\S+)\t(\S+)\t(EXPORT_\w+)(?:\t(\S*))?$")


def parse_symvers(text: str, source: str = "<Module.symvers>") -> KernelSymbols | None:
    """``Module.symvers`` (``0xCRC<TAB>symbol<TAB>module<TAB>EXPORT_SYMBOL[_GPL][<TAB>namespace]``),
    or None when ``text`` does not look like one."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not _SYMVERS.match(lines[0]):
        return None
    ks = KernelSymbols()
    ks.source_names.append(source)
    for lineno, line in enumerate(lines, 1):
        m = _SYMVERS.match(line)
        if m is None:
            raise SymbolFileError(f"{source}:{lineno}: not a Module.symvers line: {line[:80]!r}")
        ks.export_meta[m.group(2)] = ExportInfo(
            m.group(2), int(m.group(1), 16), m.group(3), m.group(4).endswith("_GPL"), m.group(5) or ""
        )
    return ks


def load_symbols(spec: str) -> KernelSymbols:
    """Load one symbol source; the format is detected from the content.

    ``spec`` is a path, optionally ``PATH@ADDRESS`` for a module ``.ko`` loaded
    at ``ADDRESS`` (hex), optionally ``PATH@ADDRESS:NAME`` to name the module.
    """
    from .addresses import parse_address

    path, base, name = spec, None, None
    m = re.match(r"^(.+)@([^@:]*)(?::(.*))?$", spec)
    if m and not os.path.exists(spec):
        path, name = m.group(1), m.group(3)
        base = parse_address(m.group(2), what=f"load address of {path} in --symbols {spec}", page_aligned=True)
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SymbolFileError(f"--symbols {spec}: {name!r} is not a module name")
    data = _read_bytes(path, module=base is not None)
    if base is None:
        from .kimage import is_kernel_image

        if is_kernel_image(data):
            from .kimage.source import symbols_from_image

            return symbols_from_image(data, path)
    if data[:4] == C.ELFMAG:
        return symbols_from_elf(data, path, base=base, objname=name)
    if base is not None:
        raise SymbolFileError(f"{path}: a load address is only meaningful for a module ELF file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # last resort: an image whose format says nothing at its start (s390x)
        from .kimage.source import symbols_from_image

        try:
            return symbols_from_image(data, path)
        except SymbolFileError as why:
            raise SymbolFileError(
                f"{path}: neither an ELF file nor System.map/kallsyms text, nor a kernel image klpcore reads ({why})"
            ) from exc
    symvers = parse_symvers(text, path)
    if symvers is not None:
        return symvers
    return parse_symbol_text(text, path)


def load_many(specs: Iterable[str]) -> KernelSymbols:
    ks = KernelSymbols()
    for spec in specs:
        ks.merge(load_symbols(spec))
    return ks

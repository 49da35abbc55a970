#!/usr/bin/env python3
"""GNU ld as an oracle for klpcore's relocated output (development tool).

klpcore writes OUT: a copy of a kernel-module object in which every
SHF_ALLOC section has its load address in ``sh_addr`` and its relocated bytes
as contents.  This tool links the *original* object with GNU ld at exactly
those addresses, resolving undefined symbols from a System.map-style file,
and compares ld's bytes with OUT's bytes section by section.

Steps:
  1. copy ORIG and patch the copy's section headers (nothing else is
     rewritten, so symbol and relocation tables stay byte-identical):
     - clear SHF_MERGE/SHF_STRINGS (ld would merge strings, the kernel never
       does) and SHF_EXCLUDE on allocated sections;
     - rename every allocated section to ``klpo_<index>`` so that each input
       section is unique and neutral: ld treats some input names specially
       (``.eh_frame`` is parsed and rewritten, ``.note.gnu.property`` merged,
       ``.gnu.linkonce.*`` / ``.gnu.warning*`` / ``.stab*`` have their own
       rules), duplicate names would be pulled into one output section, and
       odd characters would need quoting in input section patterns.
  2. write a linker script: one output section per allocated input section,
     named like the original (double-quoted), at the address OUT gives it;
     undefined symbols become absolute assignments from the symbol file.
  3. link with ``-static -N --no-relax --noinhibit-exec`` (plus the
     per-architecture extras in ARCHES); --noinhibit-exec keeps the output
     when ld reports errors such as "relocation truncated to fit", whose
     bytes are still written (truncated), and the messages are reported.
  4. compare every allocated, non-NOBITS section and explain differences by
     the relocations of ORIG that cover them.  A section the placed file
     leaves at address 0 or without SHF_ALLOC (the kernel does not load
     .modinfo/__versions) is linked at a scratch address and not compared.

Exit status: 0 all compared sections identical and ld reported no error;
1 a section differs, or ld failed / reported errors (unless
--allow-ld-errors); 2 bad usage or bad input (unreadable file, symbol missing
from the symbol file, ambiguous symbol, unsupported object).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from elftools.elf.descriptions import describe_reloc_type
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection


# --------------------------------------------------------------------------
# Per-architecture settings.  Keep everything arch-specific in this table.
#   ld         default linker binary (<binutils prefix>-ld)
#   emulation  -m argument
#   machine    expected e_machine (pyelftools name)
#   extra      extra ld arguments
#   toc        True: pin the ppc64 TOC base (.TOC. = ADDR(.toc) + 0x8000)
#   widths     relocation type -> bytes written (for locating differences);
#              types not listed are assumed to touch `default_width` bytes
#   generated  sections ld itself creates (GOT, PLT, stubs...), placed in a
#              scratch area above the module so they cannot overlap it
#   not_oracle  optional function(elf) -> (rela patches, excluded ranges):
#              relocations ld handles unlike the kernel (ppc64 calls to
#              undefined symbols: the kernel's stub + ld r2 restore) are made
#              R_*_NONE in the linked copy, and the bytes they write are
#              excluded from the comparison (counted as "excluded")
#   kernel_sections  NOBITS sections the kernel's arch code fills (ppc64
#              .stubs); the placed file may have them as PROGBITS; not compared
#   linker_symbols  undefined names left for ld to define (not looked up in
#              the symbol file; the kernel treats them specially too, see the
#              arch specs: s390 makes _GLOBAL_OFFSET_TABLE_ absolute 0, ppc64
#              sets .TOC. to the module's r2; on x86_64 the kernel would look
#              _GLOBAL_OFFSET_TABLE_ up and fail)
# --------------------------------------------------------------------------
def _arch(binutils: str, emulation: str, machine: str, **facts) -> dict:
    """One ARCHES row: what is not given is no extra ld argument, no TOC, a
    4-byte default width and _GLOBAL_OFFSET_TABLE_ left to ld."""
    row = dict(extra=[], toc=False, default_width=4, linker_symbols={"_GLOBAL_OFFSET_TABLE_"})
    return {"ld": f"{binutils}-ld", "emulation": emulation, "machine": machine, **row, **facts}


ARCHES = {
    "x86_64": _arch(
        "x86_64-linux-gnu",
        "elf_x86_64",
        "EM_X86_64",
        default_width=8,
        generated=[".got", ".got.plt", ".igot.plt", ".plt", ".iplt", ".plt.got", ".plt.sec"],
        # NONE 0, 64 1, PC32 2, GOT32 3, PLT32 4, GOTPCREL 9, 32 10, 32S 11,
        # 16 12, PC16 13, 8 14, PC8 15, PC64 24, GOTPCRELX 41, REX_GOTPCRELX 42
        widths={0: 0, 1: 8, 2: 4, 3: 4, 4: 4, 9: 4, 10: 4, 11: 4, 12: 2, 13: 2, 14: 1, 15: 1, 24: 8, 41: 4, 42: 4},
    ),
    "aarch64": _arch(
        "aarch64-linux-gnu",
        "aarch64linux",
        "EM_AARCH64",
        generated=[".got", ".got.plt", ".igot.plt", ".iplt"],
        widths={0: 0, 256: 0, 257: 8, 258: 4, 259: 2, 260: 8, 261: 4, 262: 2},
        # module.lds.h placeholders the kernel resizes (NOBITS) and fills with
        # PLT entries, veneers and the ftrace trampoline
        kernel_sections={".plt", ".init.plt", ".text.ftrace_trampoline", ".init.text.ftrace_trampoline"},
    ),
    "ppc64le": _arch(
        "powerpc64le-linux-gnu",
        "elf64lppc",
        "EM_PPC64",
        extra=["--no-toc-optimize"],
        toc=True,
        linker_symbols={".TOC."},
        generated=[".got", ".plt", ".iplt", ".branch_lt", ".iglink", ".glink"],
        widths={0: 0, 38: 8, 44: 8, 1: 4, 26: 4, 47: 2, 48: 2, 50: 2, 63: 2, 64: 2, 250: 2, 252: 2, 51: 8, 118: 8},
        not_oracle="ppc64_external_calls",
        kernel_sections={".stubs"},
    ),
    "s390x": _arch(
        "s390x-linux-gnu",
        "elf64_s390",
        "EM_S390",
        generated=[".got", ".got.plt", ".igot.plt", ".plt", ".iplt"],
        # every type arch/s390/kernel/module.c handles: bytes written at r_offset
        widths={
            **{t: 1 for t in (1,)},
            **{t: 2 for t in (2, 3, 6, 15, 16, 17, 18, 27, 29, 30, 34)},
            **{t: 4 for t in (4, 5, 7, 8, 13, 14, 19, 20, 21, 26, 31, 33, 35, 57, 58, 59)},
            **{t: 8 for t in (22, 23, 24, 25, 28, 32, 36)},
            0: 0,
        },
        not_oracle="s390_got_plt",
    ),
}

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_EXCLUDE = 0x80000000
SHT_NOBITS = 8
SHN_UNDEF = 0
SHN_LOOS = 0xFF20
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
#: Section name prefix of the renamed input sections in the patched copy.
RENAME_PREFIX = "klpo_"


class UsageError(Exception):
    """Bad arguments or unusable input: exit status 2."""


# --------------------------------------------------------------------------
# Raw ELF section-header patching (ELF32/ELF64, either byte order)
# --------------------------------------------------------------------------
@dataclass
class _ShdrLayout:
    endian: str
    is64: bool
    shoff: int
    shentsize: int

    def field(self, name):
        """(offset within a header entry, struct format) of a field."""
        if self.is64:
            table = {
                "sh_name": (0, "I"),
                "sh_flags": (8, "Q"),
                "sh_addr": (16, "Q"),
                "sh_offset": (24, "Q"),
                "sh_size": (32, "Q"),
            }
        else:
            table = {
                "sh_name": (0, "I"),
                "sh_flags": (8, "I"),
                "sh_addr": (12, "I"),
                "sh_offset": (16, "I"),
                "sh_size": (20, "I"),
            }
        off, fmt = table[name]
        return off, self.endian + fmt


def _layout(elf: ELFFile) -> _ShdrLayout:
    return _ShdrLayout(
        endian="<" if elf.little_endian else ">",
        is64=elf.elfclass == 64,
        shoff=elf.header.e_shoff,
        shentsize=elf.header.e_shentsize,
    )


def _put(buf: bytearray, lay: _ShdrLayout, index: int, name: str, value: int) -> None:
    off, fmt = lay.field(name)
    struct.pack_into(fmt, buf, lay.shoff + index * lay.shentsize + off, value)


def _shstrndx(elf: ELFFile) -> int:
    idx = elf.header.e_shstrndx
    if idx == SHN_XINDEX:
        idx = elf.get_section(0).header.sh_link
    return idx


def patch_object(
    data: bytes, elf: ELFFile, addresses: dict[int, int] | None = None, rename: bool = True, clear_merge: bool = True
) -> bytes:
    """Return a copy of ``data`` with section headers patched.

    ``addresses``: section index -> new sh_addr.  ``rename``: allocated
    sections get the names RENAME_PREFIX<index> (a new .shstrtab is appended
    at the end of the file).  ``clear_merge``: SHF_MERGE, SHF_STRINGS and
    SHF_EXCLUDE are cleared on allocated sections.
    """
    buf = bytearray(data)
    lay = _layout(elf)
    for idx, addr in (addresses or {}).items():
        _put(buf, lay, idx, "sh_addr", addr)
    alloc = [i for i, s in enumerate(elf.iter_sections()) if s.header.sh_flags & SHF_ALLOC]
    if clear_merge:
        for i in alloc:
            flags = elf.get_section(i).header.sh_flags
            _put(buf, lay, i, "sh_flags", flags & ~(SHF_MERGE | SHF_STRINGS | SHF_EXCLUDE))
    if rename and alloc:
        strndx = _shstrndx(elf)
        old = elf.get_section(strndx).data()
        table = bytearray(old)
        if not table.endswith(b"\0"):
            table += b"\0"
        for i in alloc:
            _put(buf, lay, i, "sh_name", len(table))
            table += f"{RENAME_PREFIX}{i}".encode() + b"\0"
        while len(buf) % 8:
            buf.append(0)
        _put(buf, lay, strndx, "sh_offset", len(buf))
        _put(buf, lay, strndx, "sh_size", len(table))
        buf += table
    return bytes(buf)


def fake_place(elf: ELFFile, base: int) -> dict[int, int]:
    """Sequential addresses for every SHF_ALLOC section, in index order,
    each aligned to its sh_addralign (a stand-in for klpcore's layout)."""
    addr = base
    out = {}
    for i, sec in enumerate(elf.iter_sections()):
        h = sec.header
        if not h.sh_flags & SHF_ALLOC:
            continue
        align = max(1, h.sh_addralign)
        addr = (addr + align - 1) // align * align
        out[i] = addr
        addr += h.sh_size
    return out


def ppc64_external_calls(data: bytes, elf: ELFFile) -> tuple[list[tuple[int, int]], dict[int, list[tuple[int, int]]]]:
    """ppc64: R_PPC64_REL24 (10) against undefined symbols.  The kernel sends
    them through its own stub and rewrites the nop after a ``bl``; ld branches
    directly or through its own stubs.  Returns (file offsets of the r_info
    fields to turn into R_PPC64_NONE, target section -> excluded byte ranges:
    the branch, and the next word when the branch sets LK)."""
    patches: list[tuple[int, int]] = []
    excluded: dict[int, list[tuple[int, int]]] = {}
    endian = "<" if elf.little_endian else ">"
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or not sec.is_RELA():
            continue
        target = sec.header.sh_info
        symtab = elf.get_section(sec.header.sh_link)
        tdata = elf.get_section(target).data() if elf.get_section(target).header.sh_type != "SHT_NOBITS" else b""
        for k, r in enumerate(sec.iter_relocations()):
            if r["r_info_type"] != 10:
                continue
            sym = symtab.get_symbol(r["r_info_sym"])
            if sym["st_shndx"] != "SHN_UNDEF":
                continue
            off = r["r_offset"]
            info_at = sec.header.sh_offset + k * sec.header.sh_entsize + 8
            patches.append((info_at, r["r_info"] & ~0xFFFFFFFF))
            end = off + 4
            if off + 4 <= len(tdata):
                insn = struct.unpack_from(endian + "I", tdata, off)[0]
                if insn & 3 == 1:  # bl: the kernel rewrites the following nop
                    end = off + 8
            excluded.setdefault(target, []).append((off, end))
    return patches, excluded


#: s390 types whose value depends on the module GOT/PLT the kernel builds at the
#: start of the module text (ld builds its own .got/.plt elsewhere): GOT12/16/20/
#: 32/64, GOTENT, GOTPLT*, PLT32/64, PLTOFF*, GOTOFF*, GOTPC, GOTPCDBL
S390_GOT_PLT_TYPES = {6, 7, 8, 13, 14, 15, 21, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 58, 59}
S390_PLT_DBL = {18, 20}  # PLT16DBL, PLT32DBL: direct in range, else the kernel's PLT


def s390_got_plt(data: bytes, elf: ELFFile) -> tuple[list[tuple[int, int]], dict[int, list[tuple[int, int]]]]:
    """s390: relocations through the kernel's module GOT/PLT (the types in
    S390_GOT_PLT_TYPES, and PLT16DBL/PLT32DBL against undefined symbols, which
    the kernel sends through its PLT when out of range) are made R_390_NONE for
    ld and their bytes excluded; the s390x tests check them against the
    kernel's formulas, real-kernel recordings and execution instead."""
    widths = ARCHES["s390x"]["widths"]
    patches: list[tuple[int, int]] = []
    excluded: dict[int, list[tuple[int, int]]] = {}
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or not sec.is_RELA():
            continue
        target = sec.header.sh_info
        symtab = elf.get_section(sec.header.sh_link)
        for k, r in enumerate(sec.iter_relocations()):
            t = r["r_info_type"]
            if t in S390_PLT_DBL:
                if symtab.get_symbol(r["r_info_sym"])["st_shndx"] != "SHN_UNDEF":
                    continue
            elif t not in S390_GOT_PLT_TYPES:
                continue
            info_at = sec.header.sh_offset + k * sec.header.sh_entsize + 8
            patches.append((info_at, r["r_info"] & ~0xFFFFFFFF))
            off = r["r_offset"]
            excluded.setdefault(target, []).append((off, off + widths.get(t, 4)))
    return patches, excluded


NOT_ORACLE = {"ppc64_external_calls": ppc64_external_calls, "s390_got_plt": s390_got_plt}


def apply_rela_patches(data: bytes, patches: list[tuple[int, int]], little: bool) -> bytes:
    buf = bytearray(data)
    for at, value in patches:
        struct.pack_into("<Q" if little else ">Q", buf, at, value)
    return bytes(buf)


# --------------------------------------------------------------------------
# Symbols
# --------------------------------------------------------------------------
def read_symbol_file(path: str) -> dict[str, set[int]]:
    """System.map / kallsyms style: '<hex addr> <type> <name> [module]'."""
    opener = gzip.open if path.endswith(".gz") else open
    syms: dict[str, set[int]] = {}
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) < 3:
                    raise UsageError(f"{path}:{lineno}: expected '<address> <type> <name>'")
                try:
                    value = int(parts[0], 16)
                except ValueError:
                    raise UsageError(f"{path}:{lineno}: bad address {parts[0]!r}") from None
                syms.setdefault(parts[2], set()).add(value)
    except OSError as e:
        raise UsageError(f"cannot read symbol file: {e}") from None
    return syms


def undefined_symbols(elf: ELFFile) -> list[tuple[str, bool]]:
    """(name, is_weak) for every named undefined symbol of the object."""
    out = {}
    for sec in elf.iter_sections():
        if sec.header.sh_type != "SHT_SYMTAB":
            continue
        for i, sym in enumerate(sec.iter_symbols()):
            shndx = sym["st_shndx"]
            if i == 0 or not sym.name:
                continue
            if isinstance(shndx, int) and SHN_LOOS <= shndx < SHN_ABS:
                raise UsageError(
                    f"symbol {sym.name!r} has OS-specific section index {shndx:#x} "
                    "(livepatch symbol?); not supported by this oracle"
                )
            if shndx == "SHN_COMMON":
                raise UsageError(f"symbol {sym.name!r} is COMMON (the kernel refuses these; compile with -fno-common)")
            if shndx == "SHN_UNDEF":
                weak = sym["st_info"]["bind"] == "STB_WEAK"
                out[sym.name] = out.get(sym.name, True) and weak
    return sorted(out.items())


def resolve_symbols(
    undefs, symfile: dict[str, set[int]], linker_symbols=frozenset()
) -> tuple[dict[str, int], list[str]]:
    values, notes, errors = {}, [], []
    for name, weak in undefs:
        if name in linker_symbols:
            notes.append(
                f"undefined symbol {name!r} left for ld to define (the kernel "
                "handles it differently: ld is no oracle for what uses it)"
            )
            continue
        cands = symfile.get(name)
        if not cands:
            if weak:
                values[name] = 0
                notes.append(f"weak undefined symbol {name!r} not in symbol file: 0")
            else:
                errors.append(f"undefined symbol {name!r} is not in the symbol file")
        elif len(cands) > 1:
            addrs = ", ".join(f"{a:#x}" for a in sorted(cands))
            errors.append(f"symbol {name!r} appears in the symbol file with different addresses: {addrs}")
        else:
            values[name] = next(iter(cands))
    if errors:
        raise UsageError("; ".join(errors))
    return values, notes


# --------------------------------------------------------------------------
# Linker script
# --------------------------------------------------------------------------
def _quote(name: str, what: str) -> str:
    if '"' in name or "\n" in name or "\\" in name:
        raise UsageError(f"{what} name {name!r} cannot be written in an ld script")
    return f'"{name}"'


def build_script(
    elf: ELFFile, arch: dict, placement: dict[int, int], compare: dict[int, bool], symbols: dict[str, int]
) -> tuple[str, dict[int, str], list[str]]:
    """Return (script text, section index -> output section name, notes)."""
    notes = []
    secs = {i: s for i, s in enumerate(elf.iter_sections()) if s.header.sh_flags & SHF_ALLOC}
    # Output names: the original name when it is unique, else name#index.
    counts: dict[str, int] = {}
    for s in secs.values():
        counts[s.name] = counts.get(s.name, 0) + 1
    outname = {}
    for i, s in secs.items():
        name = s.name if counts[s.name] == 1 and s.name else f"{s.name}#{i}"
        outname[i] = name

    top = max((placement[i] + secs[i].header.sh_size for i in secs), default=0)
    scratch = (top + 0x1FFF) & ~0xFFF
    if scratch >= 1 << (64 if elf.elfclass == 64 else 32):
        raise UsageError("no room above the placed sections for scratch sections")

    lines = ["/* generated by tools/ld_oracle.py */", "SECTIONS", "{"]
    order = sorted(secs, key=lambda i: (placement.get(i, scratch), i))
    for i in order:
        h = secs[i].header
        addr = placement[i]
        align = max(1, h.sh_addralign)
        subalign = ""
        if addr % align:
            notes.append(
                f"section [{i}] {secs[i].name} placed at {addr:#x}, not a multiple "
                f"of its alignment {align:#x} (SUBALIGN(1) used)"
            )
            subalign = " SUBALIGN(1)"
        lines.append(f"  {_quote(outname[i], 'section')} {addr:#x} :{subalign} {{ KEEP(*({RENAME_PREFIX}{i})) }}")
    # Sections ld itself may create; keep them away from the placed ones.
    gen = " ".join(f"*({n})" for n in arch.get("generated", []))
    lines.append(f"  .klpo.linker_generated {scratch:#x} : {{ {gen} }}")
    if arch.get("toc"):
        toc = [i for i, s in secs.items() if s.name == ".toc"]
        if toc:
            lines.append(f"  .TOC. = ADDR({_quote(outname[toc[0]], 'section')}) + 0x8000;")
    lines.append("}")
    for name, value in sorted(symbols.items()):
        lines.append(f"{_quote(name, 'symbol')} = {value:#x};")
    return "\n".join(lines) + "\n", outname, notes


# --------------------------------------------------------------------------
# Relocations of the original object
# --------------------------------------------------------------------------
@dataclass
class Reloc:
    offset: int
    type: int
    type_name: str
    symbol: str
    addend: int
    width: int


def relocations_by_section(elf: ELFFile, arch: dict) -> dict[int, list[Reloc]]:
    out: dict[int, list[Reloc]] = {}
    symtabs = {}
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection):
            continue
        target = sec.header.sh_info
        link = sec.header.sh_link
        if link not in symtabs:
            symtabs[link] = elf.get_section(link)
        symtab = symtabs[link]
        for r in sec.iter_relocations():
            sym = symtab.get_symbol(r["r_info_sym"])
            name = sym.name
            if not name and sym["st_info"]["type"] == "STT_SECTION":
                shndx = sym["st_shndx"]
                if isinstance(shndx, int):
                    name = elf.get_section(shndx).name
            t = r["r_info_type"]
            try:
                tname = describe_reloc_type(t, elf)
                if tname.startswith("<unknown"):
                    tname = f"<unknown type {t}>"
            except Exception:  # pragma: no cover - unknown machine
                tname = str(t)
            out.setdefault(target, []).append(
                Reloc(
                    offset=r["r_offset"],
                    type=t,
                    type_name=tname,
                    symbol=name,
                    addend=r["r_addend"] if r.is_RELA() else 0,
                    width=arch["widths"].get(t, arch["default_width"]),
                )
            )
    for lst in out.values():
        lst.sort(key=lambda r: r.offset)
    return out


def diff_ranges(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """Half-open [start, end) ranges where a and b differ (equal lengths)."""
    ranges = []
    i, n = 0, min(len(a), len(b))
    while i < n:
        if a[i] != b[i]:
            j = i
            while j < n and a[j] != b[j]:
                j += 1
            ranges.append((i, j))
            i = j
        else:
            i += 1
    return ranges


def _merge_by_relocs(ranges, relocs):
    """Widen each range to the relocation fields overlapping it and merge
    ranges that fall in the same field (a 4-byte field may differ in two
    separate bytes)."""
    out = []
    for start, end in ranges:
        for r in relocs:
            if r.width and r.offset < end and start < r.offset + r.width:
                start, end = min(start, r.offset), max(end, r.offset + r.width)
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# --------------------------------------------------------------------------
# Running ld
# --------------------------------------------------------------------------
def input_addresses(mapfile: str) -> dict[int, int]:
    """Section index -> address where ld put that (renamed) input section,
    from the -Map file (only after "Linker script and memory map"; the
    discarded-sections list before it shows sections at 0)."""
    out = {}
    try:
        with open(mapfile, errors="replace") as f:
            text = f.read()
    except OSError:
        return out
    text = text.split("Linker script and memory map", 1)[-1]
    pat = re.compile(rf"^ {RENAME_PREFIX}(\d+)\s+0x([0-9a-fA-F]+)\s+0x[0-9a-fA-F]+\s+object\.o$", re.M)
    for m in pat.finditer(text):
        out[int(m.group(1))] = int(m.group(2), 16)
    return out


def ld_version(ld: str) -> str:
    try:
        p = subprocess.run([ld, "--version"], capture_output=True, text=True, check=False)
    except OSError as e:
        raise UsageError(f"cannot run {ld}: {e}") from None
    return (p.stdout.splitlines() or ["?"])[0]


def classify_messages(text: str) -> tuple[list[str], list[str]]:
    """(all message lines, error lines).  A line is an error unless it is a
    warning or a context line ("...: in function `f':")."""
    msgs = [l for l in text.splitlines() if l.strip()]
    errors = [
        l
        for l in msgs
        if "warning:" not in l and not re.search(r"in function `.*':$", l) and not l.rstrip().endswith(":")
    ]
    return msgs, errors


# --------------------------------------------------------------------------
# Main work
# --------------------------------------------------------------------------
@dataclass
class Result:
    ok: bool = True
    ld_failed: bool = False
    report: dict = field(default_factory=dict)


def _open_elf(path: str, what: str) -> tuple[bytes, ELFFile]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data, ELFFile(io.BytesIO(data))
    except (OSError, Exception) as e:  # ELFError and friends
        raise UsageError(f"cannot read {what} {path}: {e}") from None


def run(args) -> Result:
    arch = ARCHES[args.arch]
    ld = args.ld or arch["ld"]
    emulation = args.emulation or arch["emulation"]
    orig_data, orig = _open_elf(args.object, "object")
    if orig.header.e_type != "ET_REL":
        raise UsageError(f"{args.object} is not a relocatable object")
    if orig.header.e_machine != arch["machine"]:
        raise UsageError(f"{args.object} is {orig.header.e_machine}, expected {arch['machine']} for --arch {args.arch}")

    sections = list(orig.iter_sections())
    alloc = [i for i, s in enumerate(sections) if s.header.sh_flags & SHF_ALLOC]
    notes: list[str] = []
    structural: list[str] = []  # contract violations of the placed file

    # --- placement ---------------------------------------------------------
    placement: dict[int, int] = {}
    compare: dict[int, bool] = {}
    placed_bytes: dict[int, bytes] = {}
    if args.fake_place is not None:
        placement = fake_place(orig, args.fake_place)
        compare = {i: True for i in alloc}
        fake_data = patch_object(orig_data, orig, placement, rename=False, clear_merge=False)
        if args.write_placed:
            with open(args.write_placed, "wb") as f:
                f.write(fake_data)
        for i in alloc:
            placed_bytes[i] = b"" if sections[i].header.sh_type == "SHT_NOBITS" else sections[i].data()
        placed_name = f"<fake placement at {args.fake_place:#x}>"
    else:
        _, placed = _open_elf(args.placed, "placed file")
        placed_name = args.placed
        psecs = list(placed.iter_sections())
        if [s.name for s in psecs[: len(sections)]] != [s.name for s in sections]:
            structural.append("placed file does not have the same sections (names/order) as the object")
        for extra in psecs[len(sections) :]:  # memory the kernel's arch code owns (s390 GOT/PLT)
            notes.append(f"placed file section {extra.name} (not in the object) is kernel memory; not compared")
        for i in alloc:
            if i >= len(psecs):
                continue
            ph = psecs[i].header
            loaded = bool(ph.sh_flags & SHF_ALLOC)
            if loaded and ph.sh_addr == 0:
                # No module is loaded at 0: a section left at 0 is one the
                # loader drops (the kernel does not load .modinfo/__versions).
                loaded = False
                notes.append(
                    f"section [{i}] {sections[i].name} is at address 0 in the placed "
                    "file: taken as not loaded; not compared"
                )
            elif not loaded:
                notes.append(
                    f"section [{i}] {sections[i].name} is not SHF_ALLOC in the placed file (not loaded); not compared"
                )
            if loaded or ph.sh_addr:
                placement[i] = ph.sh_addr
            compare[i] = loaded
            if loaded and ph.sh_type != "SHT_NOBITS":
                placed_bytes[i] = psecs[i].data()
            if sections[i].name in arch.get("kernel_sections", ()):
                compare[i] = False
                placed_bytes.pop(i, None)
                notes.append(f"section [{i}] {sections[i].name} is filled by the kernel's arch code; not compared")
                continue
            if sections[i].header.sh_type == "SHT_NOBITS" and ph.sh_type != "SHT_NOBITS":
                structural.append(
                    f"section [{i}] {sections[i].name} is NOBITS in the object but {ph.sh_type} in the placed file"
                )
        # Unloaded sections without an address get scratch addresses below.
    symfile: dict[str, set[int]] = {}
    for path in args.symbols:
        for name, values in read_symbol_file(path).items():
            symfile.setdefault(name, set()).update(values)
    symbols, sym_notes = resolve_symbols(undefined_symbols(orig), symfile, arch.get("linker_symbols", frozenset()))
    notes += sym_notes

    # Sections not placed anywhere: put them after everything, page by page.
    top = max((placement[i] + sections[i].header.sh_size for i in placement), default=0)
    spare = ((top + 0xFFFF) & ~0xFFF) + 0x10000
    for i in alloc:
        if i not in placement:
            align = max(1, sections[i].header.sh_addralign)
            spare = (spare + align - 1) // align * align
            placement[i] = spare
            spare += sections[i].header.sh_size + 0x1000
            compare[i] = False

    rela_patches: list[tuple[int, int]] = []
    excluded_ranges: dict[int, list[tuple[int, int]]] = {}
    if arch.get("not_oracle"):
        rela_patches, excluded_ranges = NOT_ORACLE[arch["not_oracle"]](orig_data, orig)
        if rela_patches:
            notes.append(
                f"{len(rela_patches)} relocations ld handles unlike the kernel were made R_*_NONE for ld; "
                "the bytes they write are excluded from the comparison"
            )
    script, outname, script_notes = build_script(orig, arch, placement, compare, symbols)
    notes += script_notes

    # --- link --------------------------------------------------------------
    work = args.keep or tempfile.mkdtemp(prefix="ld_oracle.")
    os.makedirs(work, exist_ok=True)
    try:
        with open(os.path.join(work, "object.o"), "wb") as f:
            linked_data = orig_data
            if excluded_ranges or rela_patches:
                linked_data = apply_rela_patches(orig_data, rela_patches, orig.little_endian)
            f.write(patch_object(linked_data, orig, rename=True, clear_merge=True))
        with open(os.path.join(work, "link.ld"), "w") as f:
            f.write(script)
        linked = os.path.join(work, "linked.elf")
        if os.path.exists(linked):
            os.unlink(linked)
        ld_args = [
            "-m",
            emulation,
            "-static",
            "-N",
            "--no-relax",
            "--noinhibit-exec",
            "--entry=0",
            "--no-warn-rwx-segments",
            "--no-warn-execstack",
            *arch["extra"],
            *args.extra_ld_arg,
            "-Map",
            "link.map",
            "-T",
            "link.ld",
            "-o",
            "linked.elf",
            "object.o",
        ]
        version = ld_version(ld)
        try:
            p = subprocess.run([ld, *ld_args], cwd=work, capture_output=True, text=True)
        except OSError as e:
            raise UsageError(f"cannot run {ld}: {e}") from None
        # Give ld's messages the original section names back.
        text = re.sub(
            rf"\b{RENAME_PREFIX}(\d+)\b",
            lambda m: sections[int(m.group(1))].name if int(m.group(1)) < len(sections) else m.group(0),
            p.stdout + p.stderr,
        )
        messages, ld_errors = classify_messages(text)
        ld_failed = p.returncode != 0 or not os.path.exists(linked)

        report = {
            "object": args.object,
            "placed": placed_name,
            "symbols": list(args.symbols),
            "arch": args.arch,
            "ld": ld,
            "ld_version": version,
            "ld_args": ld_args,
            "ld_returncode": p.returncode,
            "ld_messages": messages,
            "ld_errors": ld_errors,
            "notes": notes,
            "structural": structural,
            "undefined_symbols": {k: f"{v:#x}" for k, v in symbols.items()},
            "sections": [],
        }
        res = Result(ld_failed=ld_failed or bool(ld_errors), report=report)
        if ld_failed:
            res.ok = False
            report["ok"] = False
            return res

        inputs = input_addresses(os.path.join(work, "link.map"))
        with open(linked, "rb") as f:
            ld_elf = ELFFile(io.BytesIO(f.read()))
            by_name = {s.name: s for s in ld_elf.iter_sections()}
            relocs = relocations_by_section(orig, arch)
            record = {}
            for i in alloc:
                sec = sections[i]
                h = sec.header
                entry = {
                    "index": i,
                    "name": sec.name,
                    "address": f"{placement[i]:#x}",
                    "size": h.sh_size,
                    "relocations": len(relocs.get(i, [])),
                }
                report["sections"].append(entry)
                if h.sh_type == "SHT_NOBITS":
                    entry["status"] = "nobits"
                    continue
                lds = by_name.get(outname[i])
                if lds is None:
                    entry["status"] = "missing-in-ld-output"
                    if h.sh_size or compare.get(i):
                        res.ok = False
                    continue
                ld_bytes = lds.data() if lds.header.sh_type != "SHT_NOBITS" else bytes(lds.header.sh_size)
                in_addr = inputs.get(i, lds.header.sh_addr)
                extra = len(ld_bytes) - h.sh_size
                if in_addr == placement[i] and extra > 0:
                    # ld added code of its own to the output section (ppc64
                    # stubs, arm64 veneers) after the input section: compare
                    # the input part.  Branches through that code differ from
                    # the kernel's; ld is no oracle for them.
                    off = in_addr - lds.header.sh_addr
                    entry["ld_added"] = extra
                    notes.append(
                        f"section [{i}] {sec.name}: ld added {extra:#x} bytes of "
                        "its own (stubs/veneers); comparing the input part only"
                    )
                    ld_bytes = ld_bytes[off : off + h.sh_size]
                if in_addr != placement[i] or len(ld_bytes) != h.sh_size:
                    if in_addr != placement[i] and extra > 0:
                        notes.append(
                            f"section [{i}] {sec.name}: ld put {extra:#x} bytes of its "
                            "own (stubs/veneers) before the input section, which "
                            "therefore is not at its address"
                        )
                    entry["ld_input_address"] = f"{in_addr:#x}"
                    entry["status"] = "ld-misplaced"
                    entry["ld_address"] = f"{lds.header.sh_addr:#x}"
                    entry["ld_size"] = len(ld_bytes)
                    res.ok = False
                    continue
                record[outname[i]] = {"address": f"{placement[i]:#x}", "bytes": ld_bytes.hex()}
                if not compare.get(i):
                    record[outname[i]]["not_loaded"] = True
                if not compare.get(i):
                    entry["status"] = "not-compared"
                    continue
                mine = placed_bytes.get(i, b"")
                if len(mine) != len(ld_bytes):
                    entry["status"] = "size-differs"
                    entry["placed_size"] = len(mine)
                    res.ok = False
                    continue
                ranges = diff_ranges(ld_bytes, mine)
                excl = excluded_ranges.get(i, [])
                if excl:
                    entry["excluded"] = len(excl)
                    ranges = [
                        (a, b) for a, b in ranges if not all(any(x <= k < y for x, y in excl) for k in range(a, b))
                    ]
                if not ranges:
                    entry["status"] = "identical"
                    continue
                res.ok = False
                entry["status"] = "different"
                rl = relocs.get(i, [])
                entry["differences"] = []
                for start, end in _merge_by_relocs(ranges, rl):
                    cover = [r for r in rl if r.offset < end and start < r.offset + max(r.width, 1)]
                    entry["differences"].append(
                        {
                            "offset": start,
                            "end": end,
                            "address": f"{placement[i] + start:#x}",
                            "ld": ld_bytes[start:end].hex(),
                            "placed": mine[start:end].hex(),
                            "relocations": [
                                {
                                    "offset": r.offset,
                                    "type": r.type,
                                    "type_name": r.type_name,
                                    "symbol": r.symbol,
                                    "addend": r.addend,
                                    "width": r.width,
                                }
                                for r in cover
                            ],
                        }
                    )
            report["record"] = record
        if structural:
            res.ok = False
        report["ok"] = res.ok and not res.ld_failed
        return res
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _addend(a: int) -> str:
    return f"+ {a:#x}" if a >= 0 else f"- {-a:#x}"


def print_text(report: dict, out=sys.stdout, max_diffs: int = 50) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"ld: {report['ld']} ({report['ld_version']})")
    p(f"object: {report['object']}  placed: {report['placed']}  symbols: {', '.join(report['symbols'])}")
    for n in report["notes"]:
        p(f"note: {n}")
    for s in report["structural"]:
        p(f"ERROR: {s}")
    if report["ld_messages"]:
        p("ld messages:")
        for m in report["ld_messages"]:
            p(f"  {m}")
    if report["ld_returncode"] != 0:
        p(f"ld exited with status {report['ld_returncode']}")
    for e in report["sections"]:
        head = (
            f"[{e['index']:>2}] {e['name']:<28} {e['address']:>18} size {e['size']:#7x} "
            f"relocs {e['relocations']:>4}: {e['status']}"
        )
        p(head)
        if e["status"] == "ld-misplaced":
            p(
                f"      ld's output section is at {e['ld_address']} with size {e['ld_size']:#x}, "
                f"the input section at {e['ld_input_address']}"
            )
        if e["status"] == "size-differs":
            p(f"      placed size {e['placed_size']:#x}")
        for d in e.get("differences", [])[:max_diffs]:
            p(f"      +{d['offset']:#x}..+{d['end']:#x} ({d['address']}): ld {d['ld']}  placed {d['placed']}")
            for r in d["relocations"]:
                p(f"          {r['type_name']} at +{r['offset']:#x} {r['symbol'] or '?'} {_addend(r['addend'])}")
            if not d["relocations"]:
                p("          (no relocation covers this range)")
        more = len(e.get("differences", [])) - max_diffs
        if more > 0:
            p(f"      ... {more} more ranges (use --json)")
    ok = report.get("ok")
    if report.get("no_compare"):
        p("RESULT: " + ("linked (not compared)" if ok else "ld error"))
    else:
        p("RESULT: " + ("all compared sections identical" if ok else "MISMATCH or ld error"))


def write_record(path: str, report: dict) -> None:
    rec = {
        "ld_version": report["ld_version"],
        "ld_args": report["ld_args"],
        "arch": report["arch"],
        "object": os.path.basename(report["object"]),
        "symbols": [os.path.basename(s) for s in report["symbols"]],
        "placement": "fake" if report["placed"].startswith("<fake") else "placed",
        "undefined_symbols": report["undefined_symbols"],
        "sections": report.get("record", {}),
        "ld_messages": report["ld_messages"],
    }
    with open(path, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=False)
        f.write("\n")


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Compare klpcore's placed/relocated ELF with GNU ld linking the same object at the same addresses.",
        epilog="exit status: 0 all compared sections identical (and no ld error); 1 a "
        "section differs or ld failed/reported an error; 2 bad usage or input "
        "(unreadable file, symbol missing from or ambiguous in the symbol file)",
    )
    ap.add_argument("--object", required=True, help="original relocatable object (.o/.ko)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--placed", help="klpcore's output (sh_addr = load address)")
    src.add_argument(
        "--fake-place",
        type=lambda s: int(s, 0),
        metavar="BASE",
        help="no klpcore output: assign addresses sequentially from BASE "
        "(contents unrelocated, so relocation sites will differ)",
    )
    ap.add_argument("--write-placed", metavar="FILE", help="with --fake-place: also write the fake placed copy")
    ap.add_argument(
        "--symbols", required=True, action="append", help="System.map-style file (.gz ok); repeatable, files are merged"
    )
    ap.add_argument("--arch", default="x86_64", choices=sorted(ARCHES))
    ap.add_argument("--ld", help="linker binary (default from --arch)")
    ap.add_argument("--emulation", help="ld -m value (default from --arch)")
    ap.add_argument(
        "--extra-ld-arg", action="append", default=[], metavar="ARG", help="extra argument for ld (repeatable)"
    )
    ap.add_argument(
        "--keep", metavar="DIR", help="keep the work files (patched object, link.ld, link.map, linked.elf) in DIR"
    )
    ap.add_argument("--json", action="store_true", help="print a JSON report")
    ap.add_argument("--record", metavar="FILE.json", help="write ld's bytes for every SHF_ALLOC non-NOBITS section")
    ap.add_argument("--no-compare", action="store_true", help="only link (and record); exit 0 when ld produced output")
    ap.add_argument(
        "--allow-ld-errors",
        action="store_true",
        help="ld errors (e.g. 'relocation truncated to fit') do not by themselves make the exit status 1",
    )
    args = ap.parse_args(argv)
    if args.write_placed and args.fake_place is None:
        ap.error("--write-placed needs --fake-place")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        res = run(args)
    except UsageError as e:
        print(f"ld_oracle: error: {e}", file=sys.stderr)
        return 2
    rep = res.report
    if args.record and "record" in rep:
        write_record(args.record, rep)
    if args.no_compare:
        for e in rep["sections"]:
            e.pop("differences", None)
            if e["status"] in ("identical", "different", "size-differs"):
                e["status"] = "linked"
        rep["ok"] = "record" in rep and (args.allow_ld_errors or not rep["ld_errors"])
        rep["no_compare"] = True
    elif args.allow_ld_errors and "record" in rep:
        rep["ok"] = res.ok
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        print()
    else:
        print_text(rep)
    if args.record and "record" not in rep:
        print("ld_oracle: ld produced no output; nothing recorded", file=sys.stderr)
    return 0 if rep.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

"""Build small ELF64 ET_REL objects in Python for tests (no compiler needed), written by
:mod:`klpcore.elfwriter`."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from klpcore import constants as C
from klpcore.elfheader import SectionHeader
from klpcore.elfwriter import ElfWriter, pack_file_header


@dataclass
class Sec:
    name: str
    type: int = C.SHT_PROGBITS
    flags: int = 0
    data: bytes = b""
    align: int = 1
    size: int | None = None  # for NOBITS
    info: int | str = 0  # index or section name
    link: int | str = 0
    entsize: int = 0


@dataclass
class Sym:
    name: str
    shndx: int | str = C.SHN_UNDEF  # index or section name
    value: int = 0
    bind: int = C.STB_GLOBAL
    type: int = C.STT_NOTYPE
    size: int = 0
    other: int = 0


@dataclass
class Rela:
    section: str  # target section name
    offset: int
    type: int
    sym: str | int  # symbol name or index
    addend: int = 0


@dataclass
class Obj:
    machine: int = 0xBEEF
    endian: str = "<"
    sections: list[Sec] = field(default_factory=list)
    symbols: list[Sym] = field(default_factory=list)
    relas: list[Rela] = field(default_factory=list)
    rela_flags: dict[str, int] = field(default_factory=dict)  # extra flags per rela section name
    rela_names: dict[str, str] = field(default_factory=dict)  # custom rela section names per target
    modinfo: dict[str, str] = field(default_factory=dict)
    e_flags: int = 0

    def build(self) -> bytes:
        e = self.endian
        secs = list(self.sections)
        if self.modinfo:
            secs.append(
                Sec(
                    ".modinfo", flags=C.SHF_ALLOC, data=b"".join(f"{k}={v}\0".encode() for k, v in self.modinfo.items())
                )
            )
        names = [s.name for s in secs]
        # group relas by (rela section name)
        groups: dict[str, list[Rela]] = {}
        for r in self.relas:
            rname = self.rela_names.get(r.section, ".rela" + r.section)
            groups.setdefault(rname, []).append(r)
        rela_targets = {}
        for rname, rs in groups.items():
            rela_targets[rname] = rs[0].section
            secs.append(
                Sec(
                    rname,
                    C.SHT_RELA,
                    C.SHF_INFO_LINK | self.rela_flags.get(rname, 0),
                    align=8,
                    info=rs[0].section,
                    link=".symtab",
                    entsize=24,
                )
            )
        secs += [
            Sec(".symtab", C.SHT_SYMTAB, align=8, link=".strtab", entsize=24),
            Sec(".strtab", C.SHT_STRTAB),
            Sec(".shstrtab", C.SHT_STRTAB),
        ]
        names = [s.name for s in secs]

        def idx(x: int | str) -> int:
            return x if isinstance(x, int) else names.index(x) + 1

        # symbols: null first, locals before globals
        syms = [Sym("", 0, bind=C.STB_LOCAL)] + sorted(self.symbols, key=lambda s: s.bind != C.STB_LOCAL)
        strtab = bytearray(b"\0")
        symdata = bytearray()
        for s in syms:
            off = 0
            if s.name:
                off = len(strtab)
                strtab += s.name.encode() + b"\0"
            shndx = s.shndx if isinstance(s.shndx, int) else idx(s.shndx)
            symdata += struct.pack(e + "IBBHQQ", off, (s.bind << 4) | s.type, s.other, shndx, s.value, s.size)
        first_global = next((i for i, s in enumerate(syms) if s.bind != C.STB_LOCAL), len(syms))
        symnames = [s.name for s in syms]
        for rname, rs in groups.items():
            data = bytearray()
            for r in rs:
                si = r.sym if isinstance(r.sym, int) else symnames.index(r.sym)
                data += struct.pack(e + "QQq", r.offset, (si << 32) | r.type, r.addend)
            secs[names.index(rname)].data = bytes(data)
        secs[names.index(".symtab")].data = bytes(symdata)
        secs[names.index(".symtab")].info = first_global
        secs[names.index(".strtab")].data = bytes(strtab)
        shstr = bytearray(b"\0")
        name_off = []
        for s in secs:
            name_off.append(len(shstr))
            shstr += s.name.encode() + b"\0"
        secs[names.index(".shstrtab")].data = bytes(shstr)
        out = ElfWriter(
            e,
            pack_file_header(
                e,
                type=C.ET_REL,
                machine=self.machine,
                flags=self.e_flags,
                shnum=len(secs) + 1,
                shstrndx=names.index(".shstrtab") + 1,
            ),
        )
        offsets = [out.end if s.type == C.SHT_NOBITS else out.add(s.data, s.align) for s in secs]
        rows = [SectionHeader(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
        for s, off, no in zip(secs, offsets, name_off):
            size = s.size if s.size is not None else len(s.data)
            link = idx(s.link) if s.link else 0
            info = idx(s.info) if s.info else 0
            rows.append(SectionHeader(no, s.type, s.flags, 0, off, size, link, info, s.align, s.entsize))
        out.add_section_headers(rows)
        return out.getvalue()


def intree_module(name: str, this_module_size: int) -> bytes:
    """A minimal in-tree module (``intree=Y``) whose ``.gnu.linkonce.this_module`` is ``this_module_size``
    bytes: a synthetic target's statement of its ``sizeof(struct module)`` (what ``check`` reads from an
    in-tree module of the target's tree)."""
    return Obj(
        sections=[Sec(".gnu.linkonce.this_module", flags=C.SHF_ALLOC | C.SHF_WRITE, data=bytes(this_module_size))],
        symbols=[],
        relas=[],
        modinfo={"name": name, "intree": "Y", "license": "GPL"},
    ).build()

"""Decoding relocation sites before and after, with capstone.

Memory stays within a few times the module's size: a section's instruction
boundaries are found by a light linear sweep, a bounded slice at a time
(offsets only, kept in a uint32 numpy array) and only the instruction at each relocation site is decoded in detail.
Sites are listed by address.  A branch into a stub or PLT section the arch
wrote (``ArchSpec.stub_sections``) is shown as going through it, and every
target address is named by the nearest symbol at or below it (module symbols
and kernel symbols).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import constants as C
from .errors import InputError
from .loader import LoadedModule

#: bytes decoded per capstone call in the instruction sweep (bounds capstone's allocation)
SWEEP_CHUNK = 16 << 10
#: longest instruction of any architecture (x86: 15 bytes)
MAX_INSN = 16


@dataclass
class Site:
    section: str
    offset: int
    address: int
    type: str  # relocation type name
    symbol: str
    before: str
    after: str
    target: int | None
    target_symbol: str | None = None  # "name+0xoff" of ``target``
    via: str | None = None  # the stub/PLT section a call goes through

    @property
    def rtype(self) -> str:
        """Alias of :attr:`type` (the name before the JSON schema 2)."""
        return self.type

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "offset": self.offset,
            "address": hex(self.address),
            "type": self.type,
            "symbol": self.symbol,
            "before": self.before,
            "after": self.after,
            "target": hex(self.target) if self.target is not None else None,
            "target_symbol": self.target_symbol,
            "via": self.via,
        }

    def line(self) -> str:
        """One line of ``klpcore disasm`` text output."""
        target = ""
        if self.target is not None:
            target = f" -> {self.target:#x}"
            if self.target_symbol:
                target += f" <{self.target_symbol}>"
            if self.via:
                target += f" (call through {self.via} to {self.symbol})"
        return f"{self.section}+{self.offset:#x} {self.address:#x} {self.type} {self.symbol}{target}"


def _decoder(loaded: LoadedModule, detail: bool) -> Any:
    import capstone

    spec = loaded.module.arch.capstone
    if spec is None:
        raise InputError(f"the {loaded.module.arch.name} plugin names no capstone architecture: cannot disassemble")
    md = capstone.Cs(getattr(capstone, spec[0]), getattr(capstone, spec[1]))
    md.detail = detail
    md.skipdata = True
    return md


def _starts(md: Any, code: bytes, address: int) -> np.ndarray:
    """Instruction start offsets (uint32) of a linear sweep (no instruction objects kept).

    Capstone's ``cs_disasm`` allocates every instruction of its input at once
    (about 240 bytes each even without detail: 500 MB for 2 MB of one-byte
    instructions), so the sweep goes :data:`SWEEP_CHUNK` bytes at a time; each
    slice runs :data:`MAX_INSN` bytes past its end so that an instruction
    starting before the cut decodes whole, and the next slice starts where the
    last kept instruction ends.
    """
    parts: list[np.ndarray] = []
    pos = 0
    n = len(code)
    while pos < n:
        cut = min(pos + SWEEP_CHUNK, n)
        chunk = code[pos : cut + MAX_INSN]
        addrs: list[int] = []
        end = pos
        for a, size, _m, _o in md.disasm_lite(chunk, address + pos):
            if a >= address + cut:
                break
            end = a - address + size
            addrs.append(end - size)
        parts.append(np.asarray(addrs, dtype=np.uint32))
        pos = end if end > pos else pos + 1  # no progress: step over one byte
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def _insn_at(md: Any, starts: np.ndarray, code: bytes, base: int, addr: int) -> Any | None:
    rel = addr - base
    if not 0 <= rel < len(code):
        return None
    k = int(np.searchsorted(starts, np.uint32(rel), side="right")) - 1
    if k < 0:
        return None
    off = int(starts[k])
    for insn in md.disasm(code[off : off + MAX_INSN], base + off, 1):
        if addr < insn.address + insn.size:
            return insn
    return None


def _target(insn_target: Any, insn: Any | None) -> int | None:
    """The plugin's branch/RIP-relative target of a decoded instruction; none
    for bytes capstone could not decode (SKIPDATA) or details it lacks."""
    import capstone

    if insn is None or insn_target is None or insn.id == 0:
        return None
    try:
        target = insn_target(insn)
    except capstone.CsError:
        return None
    return None if target is None else int(target) & 0xFFFFFFFFFFFFFFFF


def _text(insn: Any | None) -> str:
    if insn is None:
        return "?"
    return f"{insn.bytes.hex()}  {insn.mnemonic} {insn.op_str}".rstrip()


class _Names:
    """Address -> ``symbol+0xoff`` over the module's and the kernel's symbols."""

    def __init__(self, loaded: LoadedModule) -> None:
        elf = loaded.module.elf
        shndx = elf.symbols["st_shndx"].astype(np.int64)
        stype = elf.symbols["st_info"].astype(np.int64) & 0xF
        keep = (shndx > 0) & (shndx < C.SHN_LORESERVE) & (stype != C.STT_SECTION) & (stype != C.STT_FILE)
        keep[0] = False
        idx = np.flatnonzero(keep)
        addrs: list[int] = []
        names: list[str] = []
        for i in idx.tolist():
            name = elf.symbol_names[i]
            if name and not name.startswith(".klp.sym."):
                addrs.append(int(loaded.symvals[i]))
                names.append(name)
        for obj in loaded.symbols.objects.values():
            addrs.extend(obj.addrs)
            names.extend(obj.names)
        order = np.argsort(np.asarray(addrs, dtype=np.uint64), kind="stable")
        self.addrs = np.asarray(addrs, dtype=np.uint64)[order]
        self.names = [names[i] for i in order.tolist()]

    def __call__(self, address: int) -> str | None:
        k = int(np.searchsorted(self.addrs, np.uint64(address), side="right")) - 1
        if k < 0:
            return None
        off = address - int(self.addrs[k])
        if off > 1 << 24:  # too far to be inside that symbol
            return None
        return self.names[k] + (f"+{off:#x}" if off else "")


def executable_sections(loaded: LoadedModule) -> list[str]:
    """Names of the placed executable sections (what ``--section`` accepts)."""
    mod = loaded.module
    return [s.name for s in mod.sections if s.is_exec and loaded.section_address(s.index) is not None and s.size]


def relocation_sites(loaded: LoadedModule, only: str | None = None) -> list[Site]:
    """Every applied relocation site in an executable section, by address.

    ``only`` limits the sites to one section; a name that is not a placed
    executable section raises :class:`~klpcore.errors.InputError`.
    """
    mod = loaded.module
    if only is not None and only not in executable_sections(loaded):
        known = ", ".join(executable_sections(loaded)) or "none"
        raise InputError(f"--section {only}: no executable section of that name was loaded; sections: {known}")
    lite = _decoder(loaded, detail=False)
    md = _decoder(loaded, detail=True)
    applied = {name for ph in loaded.phases for name in ph.sections}
    spans = sorted(
        (a, a + mod.sections[i].size, mod.sections[i].name)
        for i in range(len(mod.sections))
        if (a := loaded.section_address(i)) is not None and mod.sections[i].name in mod.arch.stub_sections
    )
    names = _Names(loaded)
    sites: list[Site] = []
    for relsec in mod.elf.rela_sections():
        if relsec.name not in applied or not 0 < relsec.info < len(mod.sections):
            continue
        target = mod.sections[relsec.info]
        if not target.is_exec or (only and target.name != only):
            continue
        base = loaded.section_address(target.index)
        if base is None:
            continue
        before_code = mod.elf.section_data(target.index)
        after_code = loaded.section_bytes(target.index)
        before_starts = _starts(lite, before_code, base)
        after_starts = _starts(lite, after_code, base)
        relas = mod.elf.relas(relsec.index)
        infos = relas["r_info"].tolist()
        offsets = relas["r_offset"].tolist()
        for info, off in zip(infos, offsets, strict=True):
            addr = base + off
            after = _insn_at(md, after_starts, after_code, base, addr)
            tgt = _target(mod.arch.insn_target, after)
            via = None
            if tgt is not None:
                k = bisect.bisect_right(spans, (tgt, 1 << 65)) - 1
                if k >= 0 and spans[k][0] <= tgt < spans[k][1]:
                    via = spans[k][2]
            sites.append(
                Site(
                    section=target.name,
                    offset=off,
                    address=addr,
                    type=mod.arch.type_name(info & 0xFFFFFFFF),
                    symbol=mod.elf.symbol_label(info >> 32),
                    before=_text(_insn_at(md, before_starts, before_code, base, addr)),
                    after=_text(after),
                    target=tgt,
                    target_symbol=names(tgt) if tgt is not None and via is None else None,
                    via=via,
                )
            )
    sites.sort(key=lambda s: (s.address, s.section))
    return sites

"""Decoding relocation sites before and after, with capstone."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .loader import LoadedModule


@dataclass
class Site:
    section: str
    offset: int
    address: int
    rtype: str
    symbol: str
    before: str
    after: str
    target: int | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["address"] = hex(self.address)
        d["target"] = hex(self.target) if self.target is not None else None
        return d


def _decoder(loaded: LoadedModule) -> Any:
    import capstone

    spec = loaded.module.arch.capstone
    if spec is None:
        raise ValueError(f"the {loaded.module.arch.name} plugin names no capstone architecture")
    md = capstone.Cs(getattr(capstone, spec[0]), getattr(capstone, spec[1]))
    md.detail = True
    md.skipdata = True
    return md


def _decode(md: Any, code: bytes, address: int) -> tuple[list[int], list[Any]]:
    insns = list(md.disasm(code, address))
    return [i.address for i in insns], insns


def _at(starts: list[int], insns: list[Any], addr: int) -> Any | None:
    k = bisect.bisect_right(starts, addr) - 1
    if k >= 0 and addr < insns[k].address + insns[k].size:
        return insns[k]
    return None


def _text(insn: Any | None) -> str:
    if insn is None:
        return "?"
    return f"{insn.bytes.hex()}  {insn.mnemonic} {insn.op_str}".rstrip()


def _symbol_label(loaded: LoadedModule, index: int) -> str:
    elf = loaded.module.elf
    name = elf.symbol_names[index]
    shndx = int(elf.symbols["st_shndx"][index])
    if not name and 0 < shndx < len(elf.sections):
        return elf.sections[shndx].name  # a section symbol
    return name


def relocation_sites(loaded: LoadedModule, only: str | None = None) -> list[Site]:
    """Every relocation site in an executable section that was applied."""
    mod = loaded.module
    md = _decoder(loaded)
    applied = {name for ph in loaded.phases for name in ph.sections}
    sites: list[Site] = []
    decoded: dict[int, tuple[list[int], list[Any], list[int], list[Any]]] = {}
    for relsec in mod.elf.rela_sections():
        if relsec.name not in applied:
            continue
        target = mod.sections[relsec.info]
        if not target.is_exec or (only and target.name != only):
            continue
        base = loaded.section_address(target.index)
        if base is None:
            continue
        if target.index not in decoded:
            decoded[target.index] = (
                *_decode(md, mod.elf.section_data(target.index), base),
                *_decode(md, loaded.section_bytes(target.index), base),
            )
        bs, bi, as_, ai = decoded[target.index]
        relas = mod.elf.relas(relsec.index)
        for r in relas:
            info = int(r["r_info"])
            off = int(r["r_offset"])
            addr = base + off
            after = _at(as_, ai, addr)
            tgt = mod.arch.insn_target(after) if (after is not None and mod.arch.insn_target) else None
            sites.append(
                Site(
                    target.name,
                    off,
                    addr,
                    mod.arch.type_name(info & 0xFFFFFFFF),
                    _symbol_label(loaded, info >> 32),
                    _text(_at(bs, bi, addr)),
                    _text(after),
                    tgt,
                )
            )
    _ = np
    return sites

"""What a module loaded at an address shows in ``/proc/kallsyms``, for ``mod.ko@ADDR`` symbol sources."""

from __future__ import annotations

from collections.abc import Sequence

from .. import constants as C
from ..elf import ElfModule
from ..plugins import default_plugin_manager
from .steps import Loader


def layout_module_for_symbols(elf: ElfModule, base: int, *, coming: bool = False) -> Sequence[tuple[str, int, str]]:
    """Symbols a module loaded at ``base`` shows in kallsyms once it is LIVE
    (``is_core_symbol`` with ``CONFIG_KALLSYMS_ALL``, which livepatch needs):
    named symbols of loaded, non-init sections and of the per-CPU section (at
    the loader's default per-CPU base); no undefined, absolute or FILE symbols.

    ``coming=True``: while the module is COMING its kallsyms is the whole
    symbol table (only undefined symbols are skipped when searching): init
    and absolute (FILE) symbols count too; a symbol of a section that is not
    loaded keeps its section offset (its load-copy address is unknown)."""
    loader = Loader(default_plugin_manager())
    mod = loader.open(elf)
    loader.prepare(mod, base)
    syms = elf.symbols
    out = []
    for i in range(1, elf.nsyms):
        shndx = int(syms["st_shndx"][i])
        name = elf.symbol_names[i]
        bind = int(syms["st_info"][i]) >> 4
        if coming and name and shndx != C.SHN_UNDEF:
            value = int(syms["st_value"][i])
            if shndx >= C.SHN_LORESERVE:
                out.append((name, value, "a" if bind == C.STB_LOCAL else "A"))
                continue
            if shndx not in mod.extra_addresses and mod.layout.placements.get(shndx) is None:
                out.append((name, value, "n"))
                continue
        if not name or shndx == C.SHN_UNDEF or shndx >= min(len(mod.sections), C.SHN_LORESERVE):
            continue
        if shndx in mod.extra_addresses:  # the per-CPU section
            out.append(
                (
                    name,
                    (mod.extra_addresses[shndx] + int(syms["st_value"][i])) & 0xFFFFFFFFFFFFFFFF,
                    "D" if bind else "d",
                )
            )
            continue
        p = mod.layout.placements.get(shndx)
        if p is None or (p.memtype.is_init and not coming):
            continue
        sec = mod.sections[shndx]
        ch = "t" if sec.is_exec else ("b" if sec.is_nobits else ("d" if sec.is_write else "r"))
        value = (p.address + int(syms["st_value"][i])) & 0xFFFFFFFFFFFFFFFF  # unsigned long, as the kernel adds
        out.append((name, value, ch.upper() if bind != C.STB_LOCAL else ch))
    return out

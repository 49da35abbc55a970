"""The room ``layout_symtab`` adds to module memory for kallsyms (6.4+).

After ``layout_sections`` the kernel grows two memory types for the module's
own symbol table, so the allocations that follow them start later:

* ``MOD_DATA`` gets the core copy: at ``ALIGN(size, .symtab's alignment)``
  one ``Elf64_Sym`` (24 bytes) per core symbol, then their names (each with
  its NUL), then one type byte per core symbol.  A core symbol is symbol 0,
  or a named defined symbol of a section laid out in core memory that is
  executable (any allocated section with ``CONFIG_KALLSYMS_ALL``, which also
  counts per-CPU symbols); every symbol of a livepatch module.
* ``MOD_INIT_DATA`` gets the whole ``.symtab`` and ``.strtab`` (each at its
  alignment, listed in sysfs), then ``struct mod_kallsyms`` (32 bytes,
  8-aligned) and one type byte per symbol.
"""

from __future__ import annotations

from .constants import SHF_ALLOC, SHF_EXECINSTR, MemType
from .layout import Layout, align

__all__ = ["kallsyms_tails"]

ELF64_SYM_SIZE = 24
MOD_KALLSYMS_SIZE = 32  # symtab, num_symtab (+4 padding), strtab, typetab


def kallsyms_tails(
    layout: Layout,
    *,
    nsyms: int,
    names: list[str],
    shndx: list[int],
    section_flags: list[int],
    symtab_size: int,
    symtab_align: int,
    strtab_size: int,
    strtab_align: int,
    percpu_index: int | None,
    kallsyms_all: bool,
    livepatch: bool,
) -> dict[MemType, int]:
    """Bytes to add at the end of MOD_DATA and MOD_INIT_DATA (given ``layout``'s sizes)."""
    nsec = len(section_flags)
    core_placed = {p.index for p in layout.placements.values() if not p.memtype.is_init}
    count = strings = 0
    for i in range(nsyms):
        core = i == 0 or livepatch
        if not core:
            sh = shndx[i]
            if sh == 0 or sh >= nsec or not names[i]:
                core = False
            elif kallsyms_all and percpu_index is not None and sh == percpu_index:
                core = True
            else:
                flags = section_flags[sh]
                core = bool(flags & SHF_ALLOC) and (kallsyms_all or bool(flags & SHF_EXECINSTR)) and sh in core_placed
        if core:
            count += 1
            strings += len(names[i].encode("utf-8", "surrogateescape")) + 1
    data = layout.regions[MemType.DATA].size if MemType.DATA in layout.regions else 0
    core_end = align(data, symtab_align or 1) + count * ELF64_SYM_SIZE + strings + count
    init_data = layout.regions[MemType.INIT_DATA].size if MemType.INIT_DATA in layout.regions else 0
    end = align(init_data, symtab_align or 1) + symtab_size
    end = align(end, strtab_align or 1) + strtab_size
    end = align(end, 8) + MOD_KALLSYMS_SIZE + nsyms
    return {MemType.DATA: core_end - data, MemType.INIT_DATA: end - init_data}

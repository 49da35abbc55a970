"""Module layout as the kernel's ``layout_sections`` computes it.

Each ``SHF_ALLOC`` section goes to one memory type, chosen by five flag rows
walked in order (sections in index order inside each row), once for core
sections and once for init sections:

====  ==========================  ==========================  ==================  ===============
row   required flags              excluded flags              core                init
====  ==========================  ==========================  ==================  ===============
0     EXECINSTR | ALLOC           (ARCH_SHF_SMALL)            MOD_TEXT            MOD_INIT_TEXT
1     ALLOC                       WRITE                       MOD_RODATA          MOD_INIT_RODATA
2     RO_AFTER_INIT | ALLOC       -                           MOD_RO_AFTER_INIT   (none)
3     WRITE | ALLOC               -                           MOD_DATA            MOD_INIT_DATA
4     ALLOC                       -                           MOD_DATA            MOD_INIT_DATA
====  ==========================  ==========================  ==================  ===============

Inside a memory type a section's offset is ``ALIGN(size, sh_addralign or 1)``.

Two styles:

* ``memory`` (Linux 6.4+, ``struct module_memory``): every memory type is its
  own allocation, page aligned.  klpcore places them one after another from
  the base address: text, rodata, ro_after_init, data, then the init types.
* ``legacy`` (before 6.4, ``core_layout``/``init_layout``): one core and one
  init allocation; inside each, the size is page aligned after the text, the
  rodata and the ro_after_init rows (``strict_align``), and at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import constants as C
from .constants import MemType
from .elf import Section

_ROWS: list[tuple[int, int, MemType, MemType | None]] = [
    (C.SHF_EXECINSTR | C.SHF_ALLOC, 0, MemType.TEXT, MemType.INIT_TEXT),
    (C.SHF_ALLOC, C.SHF_WRITE, MemType.RODATA, MemType.INIT_RODATA),
    (C.SHF_RO_AFTER_INIT | C.SHF_ALLOC, 0, MemType.RO_AFTER_INIT, None),
    (C.SHF_WRITE | C.SHF_ALLOC, 0, MemType.DATA, MemType.INIT_DATA),
    (C.SHF_ALLOC, 0, MemType.DATA, MemType.INIT_DATA),
]


#: klpcore places the separate allocations of the ``memory`` style in this order
_MEMORY_ORDER = (
    MemType.TEXT,
    MemType.RODATA,
    MemType.RO_AFTER_INIT,
    MemType.DATA,
    MemType.INIT_TEXT,
    MemType.INIT_RODATA,
    MemType.INIT_DATA,
)


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


@dataclass(frozen=True)
class Placement:
    index: int
    name: str
    memtype: MemType
    offset: int  # inside the memory type (legacy: inside core/init allocation)
    address: int
    size: int


@dataclass
class Region:
    memtype: MemType
    address: int
    size: int  # bytes used
    alloc_size: int  # page aligned

    @property
    def end(self) -> int:
        return self.address + self.alloc_size


@dataclass
class Layout:
    style: str
    base: int
    regions: dict[MemType, Region] = field(default_factory=dict)
    placements: dict[int, Placement] = field(default_factory=dict)

    def address_of(self, index: int) -> int | None:
        p = self.placements.get(index)
        return p.address if p else None

    @property
    def end(self) -> int:
        return max((r.end for r in self.regions.values()), default=self.base)


def default_is_init(name: str) -> bool:
    """``module_init_layout_section``: ``.init*`` sections (with module unloading enabled)."""
    return name.startswith(".init")


def _assign(
    sections: Sequence[Section], is_init: Callable[[str], bool]
) -> tuple[dict[MemType, list[tuple[Section, int]]], dict[MemType, int], dict[MemType, int]]:
    """Walk the rows; return per-memtype (section, offset) lists and sizes."""
    placed: set[int] = set()
    out: dict[MemType, list[tuple[Section, int]]] = {}
    sizes: dict[MemType, int] = {}
    row_ends: dict[MemType, int] = {}
    for init in (False, True):
        for req, excl, core_t, init_t in _ROWS:
            mt = init_t if init else core_t
            for s in sections:
                if s.index == 0 or s.index in placed:
                    continue
                if (s.flags & req) != req or (s.flags & excl) or is_init(s.name) != init:
                    continue
                if mt is None:  # ro_after_init has no init memory: the kernel warns and skips
                    continue
                placed.add(s.index)
                off = align(sizes.get(mt, 0), s.addralign or 1)
                sizes[mt] = off + s.size
                out.setdefault(mt, []).append((s, off))
            if mt is not None:
                row_ends[mt] = sizes.get(mt, 0)
    return out, sizes, row_ends


def layout_sections(
    sections: Sequence[Section],
    base: int,
    *,
    style: str = "memory",
    is_init: Callable[[str], bool] = default_is_init,
    page_size: int = C.PAGE_SIZE,
    region_bases: dict[MemType, int] | None = None,
) -> Layout:
    """Lay out the ``SHF_ALLOC`` sections of ``sections`` at ``base``.

    ``region_bases`` pins memory types to chosen addresses (``memory`` style).
    """
    from .addresses import check_address

    check_address(base, what="module base address", page_aligned=True, page_size=page_size)
    groups, sizes, _ = _assign(sections, is_init)
    lay = Layout(style=style, base=base)
    if style == "memory":
        addr = base
        for mt in _MEMORY_ORDER:
            if sizes.get(mt, 0) == 0 and not groups.get(mt):
                continue
            size = sizes.get(mt, 0)
            start = (region_bases or {}).get(mt, addr)
            lay.regions[mt] = Region(mt, start, size, align(max(size, 1), page_size))
            for s, off in groups.get(mt, []):
                lay.placements[s.index] = Placement(s.index, s.name, mt, off, start + off, s.size)
            addr = max(addr, start + align(max(size, 1), page_size))
        return lay
    if style != "legacy":
        raise ValueError(f"unknown layout style {style!r}")  # a programming error, not an input
    # legacy: core = TEXT | RODATA | RO_AFTER_INIT | DATA, init = INIT_TEXT | INIT_RODATA | INIT_DATA
    addr = base
    for kinds in (
        (MemType.TEXT, MemType.RODATA, MemType.RO_AFTER_INIT, MemType.DATA),
        (MemType.INIT_TEXT, MemType.INIT_RODATA, MemType.INIT_DATA),
    ):
        if not any(groups.get(k) for k in kinds):
            continue
        start = addr
        offset = 0
        for k in kinds:
            region_start = offset
            for s, off in groups.get(k, []):
                real = region_start + off  # region_start is page aligned
                lay.placements[s.index] = Placement(s.index, s.name, k, real, start + real, s.size)
            # strict_align after the text, rodata and ro_after_init rows; debug_align at the end
            offset = align(region_start + sizes.get(k, 0), page_size)
            lay.regions[k] = Region(k, start + region_start, offset - region_start, offset - region_start)
        addr = start + offset
    return lay

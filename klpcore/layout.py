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
  own allocation, page aligned.  By default klpcore models a fresh boot: the
  kernel allocates the types in enum order (``move_module``: TEXT, DATA,
  RODATA, RO_AFTER_INIT, INIT_TEXT, INIT_DATA, INIT_RODATA; empty ones
  skipped) from the lowest free address of the module area, each a vmalloc
  area of whole pages followed by one guard page.  x86 with
  ``CONFIG_ARCH_HAS_EXECMEM_ROX`` takes TEXT and INIT_TEXT from a shared
  read-only-executable cache instead: packed page after page, no guard pages,
  at ``text_base`` (the data types then start at ``base``).  Measured on
  Debian 6.12.117 and 7.2.13 (amd64, arm64) for a module loaded first after
  boot; a module loaded later reuses holes (freed init memory) the model does
  not know: use the kernel's own addresses (``apply --sections``) for those.
* ``legacy`` (before 6.4, ``core_layout``/``init_layout``): one core and one
  init allocation; inside each, the size is page aligned after the text, the
  rodata and the ro_after_init rows (``strict_align``), and at the end.

Arch setup (``module_frob_arch_sections``) runs before layout and may grow a
memory type for memory of its own, e.g. s390's module GOT and PLT: a
:class:`Reservation` takes ``ALIGN(size, align)`` at the start of its memory
type, in the order reserved, before any section is placed there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


#: the kernel allocates the memory types of the ``memory`` style in enum order
_MEMORY_ORDER = tuple(MemType)


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


@dataclass(frozen=True)
class Reservation:
    """Arch-owned memory at the start of a memory type, before any section
    (what ``module_frob_arch_sections`` adds to a memory type's size)."""

    name: str  # e.g. ".klpcore.s390.got"; the output ELF shows it as a section of this name
    memtype: MemType
    size: int
    align: int = 1


#: ``Placement.index`` of the k-th reservation (0-based) is ``RESERVED_INDEX - k``
RESERVED_INDEX = -1


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
    #: reservations by name (``Placement.index`` negative, see :data:`RESERVED_INDEX`)
    reserved: dict[str, Placement] = field(default_factory=dict)

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
    sections: Sequence[Section], is_init: Callable[[str], bool], sizes: dict[MemType, int]
) -> tuple[dict[MemType, list[tuple[Section, int]]], dict[MemType, int], dict[MemType, int]]:
    """Walk the rows; return per-memtype (section, offset) lists and sizes
    (``sizes``: what arch setup reserved before, updated in place)."""
    placed: set[int] = set()
    out: dict[MemType, list[tuple[Section, int]]] = {}
    row_ends: dict[MemType, int] = {}
    for init in (False, True):
        for req, excl, core_t, init_t in _ROWS:
            mt = init_t if init else core_t
            if mt is None:
                continue
            for s in _row_sections(sections, is_init, init, req, excl, placed):
                off = align(sizes.get(mt, 0), s.addralign or 1)
                sizes[mt] = off + s.size
                out.setdefault(mt, []).append((s, off))
            row_ends[mt] = sizes.get(mt, 0)
    return out, sizes, row_ends


def _row_sections(
    sections: Sequence[Section], is_init: Callable[[str], bool], init: bool, req: int, excl: int, placed: set[int]
) -> Iterator[Section]:
    """The not yet placed sections of one row of ``layout_sections`` (flags
    ``req`` set, ``excl`` clear, init or not), in section order; each is
    marked placed.  A row with no memory type (ro_after_init in init memory:
    the kernel warns and skips those sections) is not asked for."""
    for s in sections:
        if s.index == 0 or s.index in placed:
            continue
        if (s.flags & req) != req or (s.flags & excl) or is_init(s.name) != init:
            continue
        placed.add(s.index)
        yield s


def layout_sections(
    sections: Sequence[Section],
    base: int,
    *,
    style: str = "memory",
    is_init: Callable[[str], bool] = default_is_init,
    page_size: int = C.PAGE_SIZE,
    region_bases: dict[MemType, int] | None = None,
    init_base: int | None = None,
    page_align_rows: bool = True,
    reserved: Sequence[Reservation] = (),
    guard_pages: bool = True,
    text_base: int | None = None,
    tails: dict[MemType, int] | None = None,
) -> Layout:
    """Lay out the ``SHF_ALLOC`` sections of ``sections`` at ``base``.

    ``page_size`` is the target kernel's ``PAGE_SIZE``.  ``init_base`` places
    the init memory (the kernel's separate init allocation) there; by default
    it follows the core memory.  ``region_bases`` pins memory types to chosen
    addresses (``memory`` style).  ``page_align_rows`` (``legacy`` style) is the
    kernel's ``strict_align``/``debug_align``: False packs the rows with no page
    alignment at all (a kernel without ``STRICT_MODULE_RWX`` support, e.g. ppc64
    before 5.14).  ``reserved`` come first in their memory types (see
    :class:`Reservation`).  ``guard_pages`` (``memory`` style): each allocation
    is followed by vmalloc's guard page.  ``text_base``: TEXT and INIT_TEXT come
    from x86's shared read-only-executable cache there, packed (no guard pages).
    ``tails``: bytes the kernel adds at the end of a memory type after its
    sections (``memory`` style; the kallsyms copy, :mod:`klpcore.kallsyms_copy`).
    """
    from .addresses import check_address

    check_address(base, what="module base address", page_aligned=True, page_size=page_size)
    if init_base is not None:
        check_address(init_base, what="init base address", page_aligned=True, page_size=page_size)
    lay = Layout(style=style, base=base)
    # reservations are counted per memory type (legacy: per core/init allocation)
    used: dict[MemType | bool, int] = {}
    res_offsets: list[tuple[Reservation, int]] = []
    for r in reserved:
        key: MemType | bool = r.memtype if style == "memory" else r.memtype.is_init
        off = align(used.get(key, 0), r.align or 1)
        used[key] = off + r.size
        res_offsets.append((r, off))

    def place_reserved(mt: MemType, start: int) -> None:
        for k, (r, off) in enumerate(res_offsets):
            if r.memtype == mt:
                lay.reserved[r.name] = Placement(RESERVED_INDEX - k, r.name, mt, off, start + off, r.size)

    if style == "memory":
        has_res = {r.memtype for r in reserved if r.size}
        sizes = {k: v for k, v in used.items() if isinstance(k, MemType)}
        groups, sizes, _ = _assign(sections, is_init, sizes)
        for mt, extra in (tails or {}).items():
            sizes[mt] = sizes.get(mt, 0) + extra
        addr = base
        text_addr = text_base
        guard = page_size if guard_pages else 0
        pinned = dict(region_bases or {})
        for mt in _MEMORY_ORDER:
            if sizes.get(mt, 0) == 0 and not groups.get(mt) and mt not in has_res:
                continue
            if mt.is_init and init_base is not None:
                addr, init_base = init_base, None  # the first init type starts the init allocation
            size = sizes.get(mt, 0)
            alloc = align(max(size, 1), page_size)
            cached = text_addr is not None and mt.is_text
            start = pinned.get(mt, text_addr if cached and text_addr is not None else addr)
            lay.regions[mt] = Region(mt, start, size, alloc)
            for s, off in groups.get(mt, []):
                lay.placements[s.index] = Placement(s.index, s.name, mt, off, start + off, s.size)
            place_reserved(mt, start)
            if cached:
                text_addr = start + alloc
            else:
                addr = max(addr, start + alloc + guard)
        return lay
    if style != "legacy":
        raise ValueError(f"unknown layout style {style!r}")  # a programming error, not an input
    legacy = _legacy(sections, base, is_init, page_size if page_align_rows else 1, init_base, used)
    for mt in (MemType.TEXT, MemType.INIT_TEXT):  # an allocation starts with its text row
        if mt in legacy.regions:
            for k, (r, off) in enumerate(res_offsets):
                if r.memtype.is_init == mt.is_init:
                    addr = legacy.regions[mt].address + off
                    lay.reserved[r.name] = Placement(RESERVED_INDEX - k, r.name, r.memtype, off, addr, r.size)
    legacy.reserved = lay.reserved
    return legacy


def _legacy(
    sections: Sequence[Section],
    base: int,
    is_init: Callable[[str], bool],
    row_align: int,
    init_base: int | None,
    reserved: dict[MemType | bool, int],
) -> Layout:
    """Before 6.4: one core and one init allocation (``core_layout``/``init_layout``);
    each section at ``ALIGN(size, sh_addralign)`` of its allocation, the size
    aligned to ``row_align`` after the text, rodata and ro_after_init rows and at
    the end.  The init allocation follows the core one unless ``init_base`` is given.
    ``reserved``: bytes arch setup reserved at the start of the core (key
    False) and init (True) allocations, before their sections."""
    lay = Layout(style="legacy", base=base)
    placed: set[int] = set()
    addr = base
    for init in (False, True):
        size = 0
        size = reserved.get(init, 0)  # the kernel's frob grew core/init size before layout
        members: list[tuple[Section, MemType, int]] = []
        row_ends: list[tuple[MemType, int]] = []
        for row, (req, excl, core_t, init_t) in enumerate(_ROWS):
            mt = init_t if init else core_t
            if mt is not None:
                for s in _row_sections(sections, is_init, init, req, excl, placed):
                    off = align(size, s.addralign or 1)
                    size = off + s.size
                    members.append((s, mt, off))
            if row != 3:  # text_size, ro_size, ro_after_init_size, and the whole size at the end
                size = align(size, row_align)
                if mt is not None:
                    row_ends.append((mt, size))
        if not members and not size:
            continue
        start = init_base if init and init_base is not None else addr
        for s, mt, off in members:
            lay.placements[s.index] = Placement(s.index, s.name, mt, off, start + off, s.size)
        begin = 0
        for mt, end in row_ends:
            lay.regions[mt] = Region(mt, start + begin, end - begin, end - begin)
            begin = end
        addr = start + size
    return lay

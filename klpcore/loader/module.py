"""What the loader's steps hand each other: the module being loaded (what hooks see), its symbol
resolutions and phase results, the sections the kernel treats specially, and plugins' example modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from .. import constants as C
from ..arch import ArchSpec
from ..constants import MemType
from ..elf import ElfModule, Section
from ..errors import Diagnostic
from ..kernel import KernelTarget, Setting
from ..layout import Layout, Reservation
from ..livepatch import LivepatchInfo
from ..plugins import ArchHooks, default_plugin_manager

PERCPU_SECTION = ".data..percpu"
#: Refuse images larger than this (the kernel's module area is 1 GiB on x86_64).
MAX_IMAGE = 1 << 30
#: Sections ``rewrite_section_headers`` keeps out of module memory.
UNLOADED_SECTIONS = ("__versions", ".modinfo", "__version_ext_crcs", "__version_ext_names")
#: Sections ``module_mark_ro_after_init`` marks.
RO_AFTER_INIT_SECTIONS = (".data..ro_after_init", "__jump_table")
#: Marked too since 6.16 with ``CONFIG_HAVE_STATIC_CALL_INLINE``.
STATIC_CALL_SITES = ".static_call_sites"
#: Loaded outside module memory since 6.13 with ``CONFIG_MEM_ALLOC_PROFILING``.
CODETAG_SECTION = ".codetag.alloc_tags"


@dataclass(frozen=True)
class Example:
    """An example module shipped by a plugin."""

    name: str
    module: Path
    symbols: tuple[Path, ...]
    #: where the example is laid out (the architecture's module area)
    base: int
    description: str = ""
    #: ``os.uname().machine`` of the hosts that show this example first
    #: (``klpcore apply --example`` without a name)
    hosts: tuple[str, ...] = ()


@dataclass
class SymbolResolution:
    index: int
    name: str
    value: int
    how: str  # "exported", "weak-undefined", "ignored", "livepatch", "global"
    object: str | None = None
    phase: str = "load"


@dataclass
class PhaseResult:
    name: str
    sections: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)
    writes: int = 0


@dataclass
class LoadingModule:
    """A module between parsing and the end of loading; what hooks see."""

    elf: ElfModule
    arch: ArchSpec
    hooks: ArchHooks
    kernel: KernelTarget
    klp: LivepatchInfo
    sections: list[Section]
    arch_state: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default=None)  # type: ignore[assignment]
    extra_addresses: dict[int, int] = field(default_factory=dict)  # percpu
    #: build facts used for this module (page size, STRICT_MODULE_RWX, ...) and
    #: where they came from (config, arch default, core default)
    settings: dict[str, Setting] = field(default_factory=dict)
    #: warnings from preparing the module (layout facts the user should know)
    notes: list[Diagnostic] = field(default_factory=list)
    #: where the layout's addresses come from: "model" (klpcore's model of the allocation),
    #: "region-base" (--region-base pins some memory types), "kernel-sections" (--sections)
    layout_source: str = "model"
    #: the facts the layout model used (what it assumes about the kernel's allocator)
    layout_facts: list[str] = field(default_factory=list)

    #: arch-owned memory placed before the sections of a memory type (see :meth:`reserve`)
    reservations: list[Reservation] = field(default_factory=list)

    def reserve(self, memtype: MemType, name: str, size: int, align: int = 1) -> Reservation:
        """Arch setup: reserve ``size`` bytes at the start of ``memtype``,
        before layout places any section there (after earlier reservations,
        at ``ALIGN(size so far, align)``), as s390's ``module_frob_arch_sections``
        grows ``MOD_TEXT`` for the module GOT and PLT.  After layout the address
        is ``layout.reserved[name].address``; relocation code writes there through
        ``ctx.write_uint`` like into any section, and ``klpcore apply`` shows the
        reservation as an extra section called ``name``."""
        if any(r.name == name for r in self.reservations):
            raise ValueError(f"reservation {name!r} exists already")
        r = Reservation(name, memtype, size, align)
        self.reservations.append(r)
        return r

    @property
    def page_size(self) -> int:
        setting = self.settings.get("PAGE_SIZE")
        return int(setting.value) if setting else C.PAGE_SIZE

    @property
    def name(self) -> str:
        return self.elf.name

    def section_by_name(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None


def examples(pm: pluggy.PluginManager | None = None) -> dict[str, Example]:
    """The example modules the installed plugins ship, by name (``klpcore
    apply --example NAME`` uses them too)."""
    pm = pm or default_plugin_manager()
    return {e.name: e for group in pm.hook.klp_arch_examples() for e in (group or [])}

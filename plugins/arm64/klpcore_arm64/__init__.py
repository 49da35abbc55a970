"""klpcore plugin for arm64: arch/arm64/kernel/module.c and module-plts.c in user space.

Parts:

* :mod:`.identify` -- ``EM_AARCH64`` modules (either byte order; instructions
  are always little-endian), capstone decoding of branch targets.
* :mod:`.types` -- every type of ``apply_relocate_add`` (6.1 and newest) as a
  table: operation, field, overflow rule, kernel message.
* :mod:`.plt` -- ``module_frob_arch_sections``, module PLT entries, erratum
  843419 veneers and the ftrace trampoline.
* :mod:`.protection` -- versions: livepatch only since 6.17, late writes through
  ``aarch64_insn_copy`` since 6.17.
* :mod:`.options` -- kernel-build and CPU facts (``-O erratum_843419=false``...).
* :mod:`.versions` -- the rows of the version table (``klp_arch_behaviours``).
* :mod:`.kernel_oracle` -- the rules for comparing with a real kernel's bytes.

Kernel messages are rendered without the printk prefix (6.1 has none; newer
kernels prefix ``"Modules: "``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from klpcore import hookimpl
from klpcore.arch import ArchSpec, RelocType
from klpcore.convert.rules import ConvertRules
from klpcore.engine import ApplyContext
from klpcore.kernel import KernelTarget
from klpcore.loader import Example, LoadingModule
from klpcore.memory import ModuleImage, Region
from klpcore.versions import Behaviour

if TYPE_CHECKING:
    from klpcore.kimage.rules import ImageRules
    from klpcore.testing.kernel_oracle import OracleRules

from . import convert, options, plt, protection, versions
from .identify import ARCHES, DEFAULT_BASE, EM_AARCH64, identify, insn_target
from .plt import emit_plt_entry, emit_veneer, gen_branch, plt_entry
from .types import BY_NAME, BY_NUMBER, OTHER_TYPES, TABLE, Row, encode_imm, insn_imm, plain_type

#: the direct-branch module region below the kernel image (``SZ_128M``)
MODULES_VSIZE = 128 << 20

__all__ = [
    "ARCHES",
    "BY_NAME",
    "BY_NUMBER",
    "DEFAULT_BASE",
    "EM_AARCH64",
    "OTHER_TYPES",
    "TABLE",
    "emit_plt_entry",
    "emit_veneer",
    "encode_imm",
    "gen_branch",
    "insn_imm",
    "insn_target",
    "plt_entry",
    "reloc_types",
]


def _reloc_type(row: Row, kernel: KernelTarget) -> RelocType:
    hint = protection.insn_hint(kernel)
    if row.helper == "none":
        return RelocType(row.number, row.name, 0, "none", range_doc="none")
    if row.helper == "branch":
        rt = plain_type(row, hint, handler=plt.apply_one, batch=plt.sequential_batch, split=plt.branch_split)
        return replace(rt, range_doc=rt.range_doc + "; beyond: through a module PLT entry")
    if row.helper == "adrp":
        rt = plain_type(row, hint, handler=plt.apply_one, batch=plt.sequential_batch, split=plt.adrp_split)
        return replace(rt, range_doc=rt.range_doc + "; at page offset >= 0xff8 with erratum 843419: ADR or veneer")
    return plain_type(row, hint)


def reloc_types(kernel: KernelTarget) -> list[RelocType]:
    """The arm64 type table for ``kernel``."""
    return [_reloc_type(row, kernel) for row in TABLE]


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    """``EM_AARCH64``, ELFCLASS64, either byte order (``elf_check_arch``)."""
    return identify(machine, elfclass, byteorder)


@hookimpl
def klp_arch_module_base(arch: ArchSpec, kernel: KernelTarget, symbol: Callable[[str], int | None]) -> int | None:
    """Without KASLR the module region ends at the kernel image: since the 6.5 rework of the module VA
    range (``module_init_limits``) ``module_direct_base = _end - SZ_128M``; before it
    ``module_alloc_base = _etext - MODULES_VSIZE`` (128 MiB).  (Debian's 6.12 and 7.2 arm64 kernels
    booted with nokaslr put their first module exactly at ``_end - 128 MiB``.)"""
    if arch.machine != EM_AARCH64:
        return None
    end = symbol("_end") if kernel.has(versions.MODULE_PLTS_ALWAYS) else symbol("_etext")
    if end is None:
        return None
    return (end - MODULES_VSIZE) & ~0xFFF


@hookimpl
def klp_arch_behaviours() -> Sequence[Behaviour]:
    return versions.BEHAVIOURS


@hookimpl
def klp_arch_kernel_oracle() -> OracleRules:
    """The rules for comparing with a real kernel's bytes (imported only when asked)."""
    from .kernel_oracle import RULES

    return RULES


@hookimpl
def klp_arch_reloc_types(arch: ArchSpec, kernel: KernelTarget) -> Sequence[RelocType]:
    """The ``apply_relocate_add`` table (write hints by version)."""
    return reloc_types(kernel)


@hookimpl
def klp_arch_page_size(kernel: KernelTarget) -> int:
    """``CONFIG_ARM64_64K_PAGES`` / ``CONFIG_ARM64_16K_PAGES``, else 4 KiB (Debian, most distributions)."""
    return options.page_size(kernel)


@hookimpl
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:
    """Distribution arm64 settings (Debian's arm64 config); ``LIVEPATCH`` only from 6.17."""
    return options.config_default(name, kernel)


@hookimpl
def klp_arch_frob_sections(module: LoadingModule, kernel: KernelTarget) -> None:
    """Refuse livepatch modules before 6.17, then ``module_frob_arch_sections``."""
    protection.check_livepatch(module.name, module.klp.is_livepatch, kernel)
    plt.frob(module, kernel)


@hookimpl
def klp_arch_finalize(ctx: ApplyContext) -> None:
    """``module_finalize``: the ftrace trampoline."""
    plt.ftrace_trampoline(ctx)


@hookimpl
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget, hint: str | None
) -> str | None:
    """memcpy while unformed; since 6.17 relocation writes go through
    ``aarch64_insn_copy``; otherwise plain stores, which fault on read-only memory."""
    return protection.write_method(image, region, kernel, hint)


@hookimpl
def klp_arch_examples() -> Sequence[Example]:
    here = Path(__file__).parent / "examples"
    if not (here / "klpdemo.ko").exists():
        return []
    return [
        Example(
            name="arm64",
            module=here / "klpdemo.ko",
            symbols=(here / "System.map",),
            description="an arm64 livepatch module with .klp.rela sections (arm64 livepatch exists from 6.17 on: "
            "an older --kernel refuses it)",
            base=DEFAULT_BASE,
            hosts=("aarch64",),
        )
    ]


@hookimpl
def klp_arch_convert_rules(arch: ArchSpec, kernel: KernelTarget) -> ConvertRules:
    return convert.rules(kernel)


@hookimpl
def klp_arch_kernel_image() -> ImageRules:
    """How this architecture ships its kernel image (imported only when an image is read)."""
    from .image import RULES

    return RULES

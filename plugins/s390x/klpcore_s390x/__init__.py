"""klpcore plugin for s390x: ``arch/s390/kernel/module.c`` in user space.

* ``identify``: ``EM_S390`` / ``EM_S390_OLD``, ELFCLASS64, big-endian.
* ``types``: every type ``apply_rela`` handles, with ``apply_rela_bits``'s
  range rule and field encoders (12-bit keeps the top nibble, 20-bit is split
  DL/DH) and the kernel's messages.
* ``gotplt``: ``module_frob_arch_sections`` counts one GOT slot and one PLT
  entry per symbol and reserves them at the start of ``MOD_TEXT``; GOT slots
  hold S; PLT entries are 22 bytes (expoline variant with ``-O expoline=y``);
  calls go through the PLT when the target is out of ``brasl`` range.
* ``protection``: ``memcpy`` while unformed, then ``s390_kernel_write`` (5.8+).
* ``options``: configuration (``CONFIG_EXPOLINE``) and page size.
* ``versions``: the rows of the version table (``s390_kernel_write``,
  ``s390_gotent_got_offset``), returned by ``klp_arch_behaviours``.
* ``kernel_oracle``: the rules for comparing with a real kernel's bytes.

The kernel's other ``module_finalize`` work (alternatives, expoline reverts,
ftrace hotpatch trampolines) rewrites code after relocation and is not
reproduced; the kernel-oracle comparison classifies those sites.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from klpcore import hookimpl
from klpcore.arch import ArchSpec, RelocType
from klpcore.convert.rules import ConvertRules
from klpcore.engine import ApplyContext, SectionContext, apply_section
from klpcore.kernel import KernelTarget
from klpcore.loader import Example, LoadingModule
from klpcore.memory import ModuleImage, Region
from klpcore.versions import Behaviour

if TYPE_CHECKING:
    from klpcore.kimage.rules import ImageRules
    from klpcore.testing.kernel_oracle import OracleRules

from . import convert, gotplt, identify, options, protection, types, versions
from .identify import ARCHES, DEFAULT_BASE, EM_S390, EM_S390_OLD

__all__ = ["ARCHES", "EM_S390", "EM_S390_OLD", "gotplt", "identify", "options", "protection", "types", "versions"]


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    return identify.identify(machine, elfclass, byteorder)


@hookimpl
def klp_arch_percpu_base(arch: ArchSpec, kernel: KernelTarget, symbol: Callable[[str], int | None]) -> int | None:
    """s390 per-CPU addresses are real addresses next to the kernel image: a module's per-CPU section
    lands in the first chunk's reserved area, after the static per-CPU data (``__per_cpu_end``), within
    reach of the module's PC-relative ``larl`` (R_390_PC32DBL)."""
    if arch.machine not in (EM_S390, EM_S390_OLD):
        return None
    end = symbol("__per_cpu_end")
    return None if end is None else (end + 0x3F) & ~0x3F


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
    return types.reloc_types(kernel)


@hookimpl
def klp_arch_frob_sections(module: LoadingModule, kernel: KernelTarget) -> None:
    """``module_frob_arch_sections``: GOT/PLT slots, reserved before layout."""
    gotplt.frob(module, kernel)


@hookimpl
def klp_arch_apply_section(ctx: SectionContext) -> bool:
    """``apply_relocate_add``: GOT slots and PLT entries on first use, then the table."""
    gotplt.fill(ctx)
    apply_section(ctx)
    return True


@hookimpl
def klp_arch_finalize(ctx: ApplyContext) -> None:
    """``module_finalize``: the expoline thunk."""
    gotplt.finalize(ctx)


@hookimpl
def klp_arch_page_size(kernel: KernelTarget) -> int:
    """4 KiB: s390 has no other page size."""
    return options.PAGE_SIZE


@hookimpl
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:
    """Debian 6.1's s390x configuration (``options.CONFIG_DEFAULTS``)."""
    return options.CONFIG_DEFAULTS.get(name)


@hookimpl
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget, hint: str | None
) -> str | None:
    """``memcpy`` while unformed, then ``s390_kernel_write`` (5.8+)."""
    return protection.write_method(image, kernel)


@hookimpl
def klp_arch_examples() -> Sequence[Example]:
    here = Path(__file__).parent / "examples"
    return [
        Example(
            name="s390x",
            module=here / "klpdemo.ko",
            symbols=(here / "System.map",),
            description="an s390x livepatch module whose vmlinux calls go through the module PLT (GOT and PLT "
            "at the start of the text)",
            base=DEFAULT_BASE,
            hosts=("s390x",),
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

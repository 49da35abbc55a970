"""klpcore plugin for x86_64: arch/x86/kernel/module.c in user space.

The smallest plugin, and the shape every plugin has.  Parts:

* :mod:`.identify` -- ``EM_X86_64``, ELFCLASS64, little-endian; branch and
  RIP-relative targets of decoded instructions.
* :mod:`.types` -- the seven types of ``apply_relocate_add`` (plus the 6.15+
  clang stack-cookie GOTPCRELX) as a table, with the kernel's messages per era.
* :mod:`.protection` -- memcpy, then ``text_poke`` (5.8+), ``module_disable_ro``
  or ``set_memory_rw`` before.
* :mod:`.versions` -- the rows of the version table (``klp_arch_behaviours``).
* :mod:`.kernel_oracle` -- the rules for comparing with a real kernel's bytes.

This file holds the hooks.  Since Linux 6.3 ``clear_relocate_add`` zeroes the
places of a livepatch object's relocations when it unloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from klpcore import hookimpl
from klpcore.arch import ArchSpec, RelocType
from klpcore.convert.rules import ConvertRules
from klpcore.engine import SectionContext, clear_section
from klpcore.kernel import KernelTarget
from klpcore.loader import Example
from klpcore.memory import ModuleImage, Region
from klpcore.versions import Behaviour

if TYPE_CHECKING:
    from klpcore.kimage.rules import ImageRules
    from klpcore.testing.kernel_oracle import OracleRules

from . import convert, protection, versions
from .identify import ARCHES, DEFAULT_BASE, EM_X86_64, identify, insn_target
from .types import (
    OTHER_TYPES,
    R_X86_64_REX_GOTPCRELX,
    clang_stack_cookie,
    messages,
    reloc_types,
    stack_cookie_gotpcrel,
)

__all__ = [
    "ARCHES",
    "CONFIG_DEFAULTS",
    "EM_X86_64",
    "OTHER_TYPES",
    "R_X86_64_REX_GOTPCRELX",
    "clang_stack_cookie",
    "insn_target",
    "messages",
    "reloc_types",
    "stack_cookie_gotpcrel",
]


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    return identify(machine, elfclass, byteorder)


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
    return reloc_types(kernel)


#: x86_64 distribution kernels (Debian, Fedora, RHEL, SUSE, Ubuntu) all set these.
CONFIG_DEFAULTS = {
    "STRICT_MODULE_RWX": "y",
    "ARCH_HAS_STRICT_MODULE_RWX": "y",
    "LIVEPATCH": "y",
    "HAVE_STATIC_CALL_INLINE": "y",  # selected with objtool on x86_64
}


@hookimpl
def klp_arch_page_size(kernel: KernelTarget) -> int:
    """x86_64 has 4 KiB pages only."""
    return 4096


@hookimpl
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:
    return CONFIG_DEFAULTS.get(name)


@hookimpl
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget
) -> str | None:
    """``write_relocate_add``: memcpy, then text_poke (5.8+); before, the module made writable."""
    return protection.write_method(image, region, kernel)


@hookimpl
def klp_arch_clear_section(ctx: SectionContext) -> bool:
    """``clear_relocate_add`` (Linux 6.3+); earlier kernels leave the values."""
    if ctx.kernel.has(versions.WRITE_RELOCATE_ADD):
        ctx.state["clear_mismatch_message"] = messages(ctx.kernel)["mismatch"]
        clear_section(ctx)
    return True


@hookimpl
def klp_arch_examples() -> Sequence[Example]:
    here = Path(__file__).parent / "examples"
    return [
        Example(
            name="x86_64",
            module=here / "klpdemo.ko",
            symbols=(here / "System.map",),
            base=DEFAULT_BASE,
            description="a livepatch module patching vmlinux (final .klp.rela format)",
            hosts=("x86_64",),
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

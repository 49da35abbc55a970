"""klpcore plugin for ppc64le (ELFv2): arch/powerpc/kernel/module_64.c in user space.

Parts:

* :mod:`.identify` -- ``EM_PPC64``, ELFCLASS64, little-endian, ELFv2 only
  (``(e_flags & 3) == 2``); branch targets of decoded instructions.
* :mod:`.types` -- the ``apply_relocate_add`` table (ELFv2, non-PCREL):
  computes, field encoders, overflow rules, kernel messages.
* :mod:`.stubs` -- ``module_frob_arch_sections`` (sort, ``.stubs`` sizing),
  call stubs and R_PPC64_REL24, the ftrace stubs and the out-of-line ftrace block.
* :mod:`.toc` -- the module TOC pointer ``my_r2``, the ``TOC.`` symbol,
  ``dedotify`` and R_PPC64_ENTRY.
* :mod:`.protection` -- ``patch_instruction`` writes (5.16+) and how each write
  reaches module memory.
* :mod:`.options` -- kernel-build facts (``-O kernel_toc=ADDR``...), config
  defaults, the 64 KiB page size.
* :mod:`.abi` -- relocation numbers and ELFv2 encodings the parts share.
* :mod:`.versions` -- the rows of the version table (``klp_arch_behaviours``).
* :mod:`.kernel_oracle` -- the rules for comparing with a real kernel's bytes.

* **Layout.**  ``module_init_section`` always returns false on ppc64 (5.18+);
  before 5.18 the arch renamed ``.init`` in section names to ``_init``, with
  the same effect on layout: init sections live in core memory.
* ppc64 has no ``clear_relocate_add``.

Kernel messages are rendered with the module name as the kernel's ``%s``;
the printk prefix (``pr_fmt`` = ``KBUILD_MODNAME ": "``) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
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

from . import convert, options, protection, stubs, toc, versions
from .abi import ha16, lo16, local_entry_offset, s64
from .identify import ARCHES, DEFAULT_BASE, EM_PPC64, identify, insn_target
from .options import DEFAULT_OPTIONS, OPTION_KINDS, PAGE_64K, option
from .stubs import STUB_SIZE, branch_insn, count_relocs, describe_address, sort_relas, stub_for_addr, stub_words
from .toc import entry_words, my_r2
from .types import OTHER_TYPES, reloc_types

__all__ = [
    "ARCHES",
    "DEFAULT_OPTIONS",
    "EM_PPC64",
    "OPTION_KINDS",
    "OTHER_TYPES",
    "PAGE_64K",
    "STUB_SIZE",
    "branch_insn",
    "count_relocs",
    "describe_address",
    "entry_words",
    "ha16",
    "insn_target",
    "lo16",
    "local_entry_offset",
    "my_r2",
    "option",
    "reloc_types",
    "s64",
    "sort_relas",
    "stub_for_addr",
    "stub_words",
]


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    return identify(machine, elfclass, byteorder, e_flags)


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


@hookimpl
def klp_arch_page_size(kernel: KernelTarget) -> int:
    """64 KiB unless the config says ``CONFIG_PPC_4K_PAGES``."""
    return options.page_size(kernel)


@hookimpl
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:
    """Distribution ppc64el settings (``STRICT_MODULE_RWX`` by version)."""
    return options.config_default(name, kernel)


@hookimpl
def klp_arch_examples() -> Sequence[Example]:
    here = Path(__file__).parent / "examples"
    return [
        Example(
            name="ppc64le",
            module=here / "klpdemo.ko",
            symbols=(here / "System.map",),
            base=DEFAULT_BASE,
            description="a livepatch module patching vmlinux: REL24 calls through .stubs with the r2 restore",
            hosts=("ppc64le",),
        )
    ]


@hookimpl
def klp_arch_frob_sections(module: LoadingModule, kernel: KernelTarget) -> None:
    """``module_frob_arch_sections`` for ELFv2 non-PCREL kernels."""
    stubs.frob(module, kernel)


@hookimpl
def klp_arch_is_init_section(name: str, kernel: KernelTarget) -> bool | None:
    """ppc64 keeps every section in core memory (one TOC, one stub area)."""
    return False


@hookimpl
def klp_arch_apply_section(ctx: SectionContext) -> bool | None:
    """``apply_relocate_add``: fix ``TOC.`` on the first call, then the table."""
    toc.fix_toc(ctx)
    apply_section(ctx)
    return True


@hookimpl
def klp_arch_finalize(ctx: ApplyContext) -> None:
    """``module_finalize_ftrace``: stubs for ftrace_caller (and ftrace_regs_caller)."""
    stubs.finalize_ftrace(ctx)


@hookimpl
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget, hint: str | None
) -> str | None:
    """memcpy while unformed; then ``patch_instruction`` (5.16+), plain stores
    into writable memory, ``module_disable_ro`` before 5.8, else a fault (None)."""
    return protection.write_method(image, region, kernel, hint)


@hookimpl
def klp_arch_convert_rules(arch: ArchSpec, kernel: KernelTarget) -> ConvertRules:
    return convert.rules(kernel)


@hookimpl
def klp_arch_kernel_image() -> ImageRules:
    """How this architecture ships its kernel image (imported only when an image is read)."""
    from .image import RULES

    return RULES

"""Kernel-build facts in ``KernelTarget.options`` (``-O``), the config
defaults of distribution ppc64el kernels, and the page size."""

from __future__ import annotations

from typing import Any

from klpcore.engine import ApplyContext
from klpcore.kernel import KernelTarget

from . import versions

#: Options in ``KernelTarget.options`` this plugin reads, with defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "dynamic_ftrace": True,  # CONFIG_DYNAMIC_FTRACE (Debian: y)
    "dynamic_ftrace_with_regs": True,  # CONFIG_DYNAMIC_FTRACE_WITH_REGS (Debian: y)
    "mprofile_kernel": True,  # CONFIG_MPROFILE_KERNEL (Debian: y)
    # CONFIG_PPC_FTRACE_OUT_OF_LINE (6.13+, needs a compiler that passes the patchable-function-entry
    # check; Debian's GCC 12 builds stay on -mprofile-kernel)
    "ftrace_out_of_line": False,
    # sizeof(struct ftrace_ool_stub): u32 insn[4] plus the ftrace_ops pointer (DYNAMIC_FTRACE_WITH_CALL_OPS,
    # selected with PPC_FTRACE_OUT_OF_LINE)
    "ftrace_ool_stub_size": 24,
    # offsetof(struct paca_struct, kernel_toc) (pseries build; believed 16, not verified against a Debian build)
    "paca_kernel_toc_offset": 16,
    "kernel_toc": None,  # kernel_toc_addr() (vmlinux's .TOC.), needed for ftrace stubs
    "ftrace_caller": None,  # addresses module_finalize makes stubs for (None: not reproduced)
    "ftrace_regs_caller": None,
}


#: what each option's value is (the CLI checks ``-O`` values by it)
OPTION_KINDS: dict[str, str] = {
    "dynamic_ftrace": "bool",
    "dynamic_ftrace_with_regs": "bool",
    "mprofile_kernel": "bool",
    "paca_kernel_toc_offset": "int",
    "ftrace_out_of_line": "bool",
    "ftrace_ool_stub_size": "int",
    "kernel_toc": "address",
    "ftrace_caller": "address",
    "ftrace_regs_caller": "address",
}


#: options that are kernel .config facts: option name -> CONFIG_ name
_CONFIG_OPTIONS = {
    "ftrace_out_of_line": "PPC_FTRACE_OUT_OF_LINE",
    "dynamic_ftrace": "DYNAMIC_FTRACE",
    "dynamic_ftrace_with_regs": "DYNAMIC_FTRACE_WITH_REGS",
    "mprofile_kernel": "MPROFILE_KERNEL",
}


def option(kernel: KernelTarget, name: str) -> Any:
    """``kernel.options[name]``, else the kernel's ``.config`` (``--config``)
    for build facts, else this plugin's default."""
    if name in kernel.options:
        return kernel.options[name]
    if kernel.config is not None and name in _CONFIG_OPTIONS:
        return kernel.config.enabled(_CONFIG_OPTIONS[name])
    return DEFAULT_OPTIONS[name]


#: kernel-build addresses the plugin can read from vmlinux's symbols when no
#: option gives them: option name -> vmlinux symbol
_FROM_SYMBOLS = {"kernel_toc": ".TOC.", "ftrace_caller": "ftrace_caller", "ftrace_regs_caller": "ftrace_regs_caller"}


def kernel_address(ctx: ApplyContext, name: str) -> int | None:
    """An address option, else the unique vmlinux symbol that holds it."""
    value = option(ctx.kernel, name)
    if value is not None:
        return int(value)
    syms = ctx.kernel_symbols
    if syms is None or "vmlinux" not in syms.objects:
        return None
    found = syms.objects["vmlinux"].matches(_FROM_SYMBOLS[name])
    return found[0] if len(found) == 1 else None


#: ``PAGE_SIZE`` with ``CONFIG_PPC_64K_PAGES``: the Book3S-64 Kconfig default
#: and what Debian, Fedora, RHEL, SUSE and Ubuntu ppc64el kernels use.
PAGE_64K = 1 << 16


def page_size(kernel: KernelTarget) -> int:
    """64 KiB unless the config says ``CONFIG_PPC_4K_PAGES`` (or 16K/256K on
    other PowerPC platforms, which this ELFv2 plugin does not model)."""
    cfg = kernel.config
    if cfg is not None and cfg.enabled("PPC_4K_PAGES"):
        return 4096
    return PAGE_64K


def config_default(name: str, kernel: KernelTarget) -> str | None:
    """Distribution ppc64el settings; Book3S-64 selects
    ``ARCH_HAS_STRICT_MODULE_RWX`` only from 5.14 (before it, module memory is
    never made read-only and the legacy layout does not page-align)."""
    if name in ("STRICT_MODULE_RWX", "ARCH_HAS_STRICT_MODULE_RWX"):
        return "y" if kernel.has(versions.STRICT_MODULE_RWX) else "n"
    if name in _CONFIG_OPTIONS.values():
        return "y"
    if name == "LIVEPATCH":
        return "y"  # Fedora/RHEL/SUSE/Ubuntu; Debian's ppc64el kernel has it off
    if name in ("HAVE_STATIC_CALL_INLINE", "PPC_FTRACE_OUT_OF_LINE", "PPC_KERNEL_PCREL"):
        return "n"
    return None

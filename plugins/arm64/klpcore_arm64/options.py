"""Kernel-build and CPU facts the arm64 plugin reads, with Debian 6.1's values
as defaults.

Each fact is read from ``KernelTarget.options`` (``-O KEY=VALUE``) first,
then from the target's kernel configuration when the user gave one
(``--config``: ``KernelTarget.config``), then the default below.  Page size:
``CONFIG_ARM64_16K_PAGES`` / ``CONFIG_ARM64_64K_PAGES``, else 4 KiB (Debian).
"""

from __future__ import annotations

from typing import Any

from klpcore.kernel import KernelTarget

from . import versions

#: option name -> (CONFIG_ symbol or None, default)
FACTS: dict[str, tuple[str | None, Any]] = {
    # the CPU needs the Cortex-A53 erratum 843419 workaround
    # (ARM64_WORKAROUND_843419); only the user knows the CPU
    "erratum_843419": (None, True),
    "config_erratum_843419": ("CONFIG_ARM64_ERRATUM_843419", True),
    # 6.1 gates the branch partition and PLT counting on CONFIG_RANDOMIZE_BASE
    "randomize_base": ("CONFIG_RANDOMIZE_BASE", True),
    # 6.1: CONFIG_ARM64_MODULE_PLTS (always on in newer kernels)
    "module_plts": ("CONFIG_ARM64_MODULE_PLTS", True),
    "dynamic_ftrace": ("CONFIG_DYNAMIC_FTRACE", True),
    "dynamic_ftrace_with_regs": ("CONFIG_DYNAMIC_FTRACE_WITH_REGS", True),
    # addresses for the ftrace trampoline (None: vmlinux's symbol of that name)
    "ftrace_caller": (None, None),
    "ftrace_regs_caller": (None, None),
}


#: ``-O`` keys and their kinds, for the command line's checks (``ArchSpec.options``)
OPTION_KINDS: dict[str, str] = {
    name: "bool" if isinstance(default, bool) else "address" for name, (_, default) in FACTS.items()
}


def _config_value(kernel: KernelTarget, symbol: str) -> Any:
    """``symbol`` from the user's ``--config`` (absent from a .config = not set)."""
    config = kernel.config
    if config is None:
        return None
    value = config.get(symbol)
    if value is None or value in ("y", "m", "n"):
        return value in ("y", "m")
    return value


_WORDS = {"true": True, "yes": True, "y": True, "1": True, "false": False, "no": False, "n": False, "0": False}


def fact(kernel: KernelTarget, name: str) -> Any:
    """The value of ``name`` for ``kernel``: option, configuration, default.
    An option for a yes/no fact may be given as text (``"false"``, ``"n"``...)."""
    if name in kernel.options:
        value = kernel.options[name]
        if isinstance(FACTS[name][1], bool) and isinstance(value, str) and value.lower() in _WORDS:
            return _WORDS[value.lower()]
        return value
    symbol, default = FACTS[name]
    if symbol is not None:
        found = _config_value(kernel, symbol)
        if found is not None:
            return found
    return default


def erratum_843419(kernel: KernelTarget) -> bool:
    """``cpus_have_const_cap(ARM64_WORKAROUND_843419)``: the kernel was built
    with CONFIG_ARM64_ERRATUM_843419 and the CPU is affected."""
    return bool(fact(kernel, "config_erratum_843419")) and bool(fact(kernel, "erratum_843419"))


def plts_enabled(kernel: KernelTarget) -> bool:
    """Module PLTs exist (always since the 6.5 module VA rework; before,
    only with CONFIG_ARM64_MODULE_PLTS)."""
    return kernel.has(versions.MODULE_PLTS_ALWAYS) or bool(fact(kernel, "module_plts"))


def branch_plts_counted(kernel: KernelTarget) -> bool:
    """6.1-6.4 partition and count branch PLTs only with CONFIG_RANDOMIZE_BASE."""
    return kernel.has(versions.MODULE_PLTS_ALWAYS) or bool(fact(kernel, "randomize_base"))


#: distribution arm64 settings for options the core asks about (``klp_arch_config_default``)
CONFIG_DEFAULTS = {
    "STRICT_MODULE_RWX": "y",
    "ARCH_HAS_STRICT_MODULE_RWX": "y",
    "HAVE_STATIC_CALL_INLINE": "n",
    "ARM64_4K_PAGES": "y",
    "ARM64_16K_PAGES": "n",
    "ARM64_64K_PAGES": "n",
}


def page_size(kernel: KernelTarget) -> int:
    """``PAGE_SIZE`` from ``CONFIG_ARM64_{4K,16K,64K}_PAGES`` (default 4 KiB)."""
    config = kernel.config
    if config is not None:
        if config.enabled("ARM64_64K_PAGES"):
            return 65536
        if config.enabled("ARM64_16K_PAGES"):
            return 16384
    return 4096


def config_default(name: str, kernel: KernelTarget) -> str | None:
    """The distribution value of ``CONFIG_<name>`` when no --config is given."""
    if name == "LIVEPATCH":
        return "y" if kernel.has(versions.LIVEPATCH) else "n"
    if name in CONFIG_DEFAULTS:
        return CONFIG_DEFAULTS[name]
    for symbol, default in FACTS.values():
        if symbol == "CONFIG_" + name and isinstance(default, bool):
            return "y" if default else "n"
    return None

"""Turning arguments into what a command works on: the kernel target (``--kernel``, ``--config``,
``-O``), the symbol sources, the module tree, the load addresses and the opened or loaded module."""

from __future__ import annotations

import argparse
from typing import Any

from ..addresses import parse_address
from ..config import KernelConfig
from ..constants import MemType
from ..elf import ElfModule
from ..errors import InputError, KlpError
from ..kernel import KernelTarget, parse_stable, parse_version
from ..loader import LoadedModule, Loader, LoadingModule
from ..modtree import ModuleTree
from ..plugins import get_plugin_manager
from ..symbols import KernelSymbols, load_many
from .parser import UsageError
from .render import progress, progress_done


def accepted_options() -> dict[str, str]:
    """``-O`` keys the core and the installed plugins read: key -> kind."""
    from ..options import accepted_options as accepted

    return accepted(get_plugin_manager())


def _option_value(key: str, kind: str, text: str) -> Any:
    """One ``-O`` value, checked as the Python API checks it (:mod:`klpcore.options`)."""
    from ..options import option_value

    return option_value(key, kind, text)


def _vermagic(elf: ElfModule | None) -> str | None:
    if elf is None:
        return None
    values = elf.modinfo.get("vermagic")
    return values[-1] if values else None


def kernel_target(args: argparse.Namespace, elf: ElfModule | None = None) -> KernelTarget:
    """The target kernel: ``--kernel``, else the module's vermagic, else the
    ``--config`` header, else newest; ``--config`` and ``-O`` facts attached."""
    accepted: dict[str, str] | None = None
    options: dict[str, Any] = {}
    for item in getattr(args, "kernel_option", []):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--kernel-option expects KEY=VALUE, got {item!r}")
        if accepted is None:
            accepted = accepted_options()
        if key not in accepted:
            raise UsageError(
                f"-O {key}: unknown option; the core and the installed plugins accept: "
                + (", ".join(sorted(accepted)) or "none")
            )
        options[key] = _option_value(key, accepted[key], value.strip())
    config = KernelConfig.from_file(args.config) if getattr(args, "config", None) else None
    kw: dict[str, Any] = {"options": options, "config": config}
    text = getattr(args, "kernel", None)
    if text is None:
        magic = _vermagic(elf)
        candidates = [(magic, f"vermagic {magic.split()[0]}" if magic else "")]
        if config is not None and config.release:
            candidates.append((config.release, f"--config header {config.release}"))
        for found, source in candidates:
            if not found:
                continue
            try:
                return KernelTarget(
                    version=parse_version(found), version_source=source, stable=parse_stable(found), **kw
                )
            except ValueError:
                continue
        text = "newest"
    try:
        return KernelTarget.from_string(text, **kw)
    except (ValueError, InputError) as exc:
        raise UsageError(f"--kernel {text}: {exc}") from None


def base_address(args: argparse.Namespace, mod: LoadingModule) -> int:
    """``--base`` (validated), else the architecture's module area."""
    if args.base is None:
        return mod.arch.default_base
    base = parse_address(str(args.base), what="--base", page_aligned=True)
    if base == 0:
        raise UsageError(
            f"--base 0: module memory at address 0 is not modelled (a symbol at 0 counts as not found); "
            f"the {mod.arch.name} module area starts at {mod.arch.default_base:#x}"
        )
    return base


def module_tree(args: argparse.Namespace, mod: LoadingModule) -> ModuleTree | None:
    """``--module-tree`` (a directory, or a root whose lib/modules has the module's release)."""
    if not getattr(args, "module_tree", None):
        return None
    vermagic = (mod.elf.modinfo.get("vermagic") or [""])[-1]
    tree = ModuleTree.open(args.module_tree, release=vermagic.split(" ", 1)[0] or None)
    if not tree.index:
        raise UsageError(f"--module-tree {args.module_tree}: no .ko, .ko.xz, .ko.zst or .ko.gz files under {tree.root}")
    return tree


def kernel_symbols(args: argparse.Namespace) -> KernelSymbols:
    if not args.symbols:
        raise UsageError("no symbol source given: use --symbols System.map (or kallsyms, vmlinux, mod.ko@ADDR)")
    progress("reading symbols ...")
    return load_many(args.symbols)


def address_option(args: argparse.Namespace, name: str, flag: str, *, page_aligned: bool) -> int | None:
    text = getattr(args, name, None)
    return None if text is None else parse_address(str(text), what=flag, page_aligned=page_aligned)


def open_module(args: argparse.Namespace) -> tuple[Loader, LoadingModule]:
    """Read the module, choose the kernel (its vermagic by default), open it."""
    progress(f"reading {args.module} ...")
    elf = ElfModule.from_file(args.module)
    loader = Loader(
        kernel=kernel_target(args, elf),
        percpu_base=address_option(args, "percpu_base", "--percpu-base", page_aligned=False),
    )
    return loader, loader.open(elf)


def placement_options(args: argparse.Namespace) -> tuple[dict[MemType, int], dict[str, int] | None, str]:
    """``--region-base TYPE=ADDR`` (repeatable) and ``--sections PATH`` of ``apply``."""
    from ..placement import parse_region_base, read_sections

    bases: dict[MemType, int] = {}
    for text in getattr(args, "region_base", None) or []:
        mt, addr = parse_region_base(text)
        if mt in bases and bases[mt] != addr:
            raise UsageError(f"--region-base {mt.kernel_name} given twice ({bases[mt]:#x} and {addr:#x})")
        bases[mt] = addr
    path = getattr(args, "sections", None)
    if path is not None and bases:
        raise UsageError("--sections places every memory type where the kernel did; --region-base is not needed")
    return bases, (read_sections(path) if path is not None else None), str(path or "")


def load_module(args: argparse.Namespace) -> tuple[Loader, LoadedModule]:
    symbols = kernel_symbols(args)
    loader, mod = open_module(args)
    tree = module_tree(args, mod)
    init_base = address_option(args, "init_base", "--init-base", page_aligned=True)
    region_bases, kernel_sections, source = placement_options(args)
    progress(f"applying {mod.name} ...")
    try:
        loaded = loader.load(
            mod,
            symbols,
            base_address(args, mod),
            init_base=init_base,
            region_bases=region_bases,
            kernel_sections=kernel_sections,
            sections_source=source,
        )
    except KlpError as exc:
        from ..explain import explain_errors

        exc.diagnostics = explain_errors(mod, exc.diagnostics, symbols, tree)
        raise
    progress_done()
    return loader, loaded

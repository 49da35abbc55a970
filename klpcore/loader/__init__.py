"""Loading a module the way the kernel does, and applying its relocations.

Parts: :mod:`.steps` (:class:`Loader`, the kernel's load steps in its order, and
:func:`resolve_module`), :mod:`.phases` (:class:`LoadedModule` and its phases:
``load``, ``enable``, then ``coming`` / ``going``), :mod:`.resolve` (symbol
resolution: ``simplify_symbols``, ``klp_resolve_symbols``), :mod:`.module` (the
module being loaded, results, special sections), :mod:`.kallsyms` (what a loaded
module shows in kallsyms).
"""

from __future__ import annotations

from ..plugins import default_plugin_manager
from .kallsyms import layout_module_for_symbols
from .module import (
    CODETAG_SECTION,
    MAX_IMAGE,
    PERCPU_SECTION,
    RO_AFTER_INIT_SECTIONS,
    STATIC_CALL_SITES,
    UNLOADED_SECTIONS,
    Example,
    LoadingModule,
    PhaseResult,
    SymbolResolution,
    examples,
)
from .phases import LoadedModule
from .steps import Loader, ResolveReport, check_symbol_sources, resolve_module

__all__ = [
    "CODETAG_SECTION",
    "MAX_IMAGE",
    "PERCPU_SECTION",
    "RO_AFTER_INIT_SECTIONS",
    "STATIC_CALL_SITES",
    "UNLOADED_SECTIONS",
    "Example",
    "LoadedModule",
    "Loader",
    "LoadingModule",
    "PhaseResult",
    "ResolveReport",
    "SymbolResolution",
    "check_symbol_sources",
    "default_plugin_manager",
    "examples",
    "layout_module_for_symbols",
    "resolve_module",
]

"""Finding architecture plugins (entry points) and calling their hooks.

Plugins are discovered in the entry-point group ``klpcore.arch``.  Environment
switches:

* ``KLPCORE_LOAD_PLUGINS=a,b``: load only these entry points (empty = none);
* ``KLPCORE_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point at all;
* ``KLPCORE_PLUGINS=pkg.mod,...``: also register these importable modules as
  plugins (an embedder's tracing or memory-protection plugin, a plugin under
  development that is not installed);
* ``KLPCORE_TRACE_PLUGINS=1``: print every hook call and result to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import pluggy

from . import defaults, hookspecs
from .arch import ArchSpec, RelocType
from .errors import KlpError, NoPluginError
from .kernel import KernelTarget

ENTRY_POINT_GROUP = "klpcore.arch"

_HOOKS = (
    "klp_arch_reloc_types",
    "klp_arch_frob_sections",
    "klp_arch_is_init_section",
    "klp_arch_apply_section",
    "klp_arch_clear_section",
    "klp_arch_finalize",
    "klp_arch_write_method",
    "klp_arch_page_size",
    "klp_arch_config_default",
    "klp_arch_kernel_oracle",
    "klp_arch_convert_rules",
)


def get_plugin_manager(*, autoload: bool = True, plugins: Sequence[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager with the hook specs, the core defaults, the installed
    ``klpcore.arch`` entry points (unless disabled) and ``plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name="klpcore.defaults")
    if autoload and not os.environ.get("KLPCORE_DISABLE_PLUGIN_AUTOLOAD"):
        only = os.environ.get("KLPCORE_LOAD_PLUGINS")
        if only is None:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        else:
            wanted = {n.strip() for n in only.split(",") if n.strip()}
            for name in sorted(wanted):
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    for modname in filter(None, (m.strip() for m in os.environ.get("KLPCORE_PLUGINS", "").split(","))):
        if pm.get_plugin(modname) is None:
            pm.register(importlib.import_module(modname), name=modname)
    for p in plugins:
        pm.register(p)
    if os.environ.get("KLPCORE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    pm.check_pending()
    return pm


#: the environment variables that choose the plugins (see above)
_PLUGIN_ENV = ("KLPCORE_LOAD_PLUGINS", "KLPCORE_DISABLE_PLUGIN_AUTOLOAD", "KLPCORE_PLUGINS", "KLPCORE_TRACE_PLUGINS")
_PM_CACHE: dict[tuple[str | None, ...], pluggy.PluginManager] = {}


def default_plugin_manager() -> pluggy.PluginManager:
    """The installed plugins, built once per plugin-choosing environment."""
    key = tuple(os.environ.get(k) for k in _PLUGIN_ENV)
    pm = _PM_CACHE.get(key)
    if pm is None:
        pm = _PM_CACHE[key] = get_plugin_manager()
    return pm


class ArchHooks:
    """The hooks of one architecture: calls go to the plugin that identified
    the module and to non-architecture plugins, never to other arches."""

    def __init__(self, pm: pluggy.PluginManager, plugin: object, spec: ArchSpec) -> None:
        self.pm = pm
        self.plugin = plugin
        self.spec = spec
        others = [p for p in _arch_plugins(pm) if p is not plugin]
        # the callers are views of the manager's registrations: made once per plugin and set of
        # other arches, not per module (a check of a module tree identifies thousands of modules)
        cache: dict[tuple[int, ...], tuple[list[object], dict[str, Any]]] = pm.__dict__.setdefault(
            "_klpcore_arch_callers", {}
        )
        key = (id(plugin), *(id(p) for p in others))  # the entry keeps the plugins alive: no id is reused
        entry = cache.get(key)
        if entry is None:
            entry = cache[key] = (
                [plugin, *others],
                {name: pm.subset_hook_caller(name, remove_plugins=others) for name in _HOOKS},
            )
        for name, caller in entry[1].items():
            setattr(self, name, caller)

    # typed accessors -------------------------------------------------------
    def call(self, name: str, **kwargs: Any) -> Any:
        return getattr(self, name)(**kwargs)


def _arch_plugins(pm: pluggy.PluginManager) -> list[object]:
    return [impl.plugin for impl in pm.hook.klp_arch_identify.get_hookimpls()]


def _plugin_dist(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    # read once per manager and plugin (distribution metadata is parsed from disk on each access)
    cache: dict[int, tuple[object, tuple[str, str]]] = pm.__dict__.setdefault("_klpcore_plugin_dists", {})
    hit = cache.get(id(plugin))
    if hit is not None and hit[0] is plugin:
        return hit[1]
    found = ("", "")
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            found = (dist.metadata["Name"] or "", dist.version or "")
            break
    cache[id(plugin)] = (plugin, found)
    return found


def identify(
    pm: pluggy.PluginManager, machine: int, elfclass: int, byteorder: str, e_flags: int, kernel: KernelTarget
) -> ArchHooks:
    """Find the plugin that claims this ELF identification.

    Raises :class:`NoPluginError` ("no installed plugin for machine N").
    """
    kwargs: dict[str, Any] = {"machine": machine, "elfclass": elfclass, "byteorder": byteorder, "e_flags": e_flags}
    # pluggy calls the most recently registered implementation first
    for impl in reversed(pm.hook.klp_arch_identify.get_hookimpls()):
        spec = cast("ArchSpec | None", impl.function(*(kwargs[a] for a in impl.argnames)))
        if spec is None:
            continue
        spec.plugin_name = pm.get_name(impl.plugin) or ""
        spec.distribution, spec.version = _plugin_dist(pm, impl.plugin)
        hooks = ArchHooks(pm, impl.plugin, spec)
        types: Sequence[RelocType] | None = hooks.klp_arch_reloc_types(arch=spec, kernel=kernel)  # type: ignore[attr-defined]
        spec.set_types(types or ())
        return hooks
    name = machine_name(machine)
    raise NoPluginError(
        f"no installed plugin for machine {machine}{f' ({name})' if name else ''}, "
        f"{'little' if byteorder == 'little' else 'big'}-endian; installed: "
        + (", ".join(sorted(pm.get_name(p) or "?" for p in _arch_plugins(pm))) or "none")
        + " (install the plugin distribution, e.g. klpcore-<arch>)"
    )


def machine_name(machine: int) -> str:
    """``EM_*`` name of an ``e_machine`` value (pyelftools' table), or ""."""
    from elftools.elf.enums import ENUM_E_MACHINE

    return next((k for k, v in ENUM_E_MACHINE.items() if v == machine and k.startswith("EM_")), "")


#: plugin manager -> ELF identification -> the claiming plugin's ArchSpec (see :func:`arch_spec`)
_SPEC_CACHE: weakref.WeakKeyDictionary[pluggy.PluginManager, dict[tuple[int, int, str, int], ArchSpec | None]] = (
    weakref.WeakKeyDictionary()
)


def arch_spec(pm: pluggy.PluginManager, machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    """The :class:`ArchSpec` of the plugin that claims this ELF identification
    (its description: no relocation types, which :func:`identify` adds for a
    kernel); None when no installed plugin claims it or the plugin refuses the
    module.  Cached per plugin manager: do not modify the result."""
    cache = _SPEC_CACHE.setdefault(pm, {})
    key = (machine, elfclass, byteorder, e_flags)
    if key not in cache:
        kwargs: dict[str, Any] = {"machine": machine, "elfclass": elfclass, "byteorder": byteorder, "e_flags": e_flags}
        cache[key] = None
        for impl in reversed(pm.hook.klp_arch_identify.get_hookimpls()):
            try:
                spec = cast("ArchSpec | None", impl.function(*(kwargs[a] for a in impl.argnames)))
            except KlpError:
                break
            if spec is not None:
                spec.plugin_name = pm.get_name(impl.plugin) or ""
                cache[key] = spec
                break
    return cache[key]


def arch_config_symbols(pm: pluggy.PluginManager) -> list[tuple[str, int]]:
    """``(CONFIG_ symbol, e_machine)`` of every installed architecture
    (``ArchSpec.config_symbol``): a kernel ``.config`` that sets the symbol is
    that architecture's."""
    out: list[tuple[str, int]] = []
    for plugin in _arch_plugins(pm):
        for ident in getattr(plugin, "ARCHES", ()):
            spec = plugin.klp_arch_identify(*ident)  # type: ignore[attr-defined]
            if spec is not None and spec.config_symbol and (spec.config_symbol, spec.machine) not in out:
                out.append((spec.config_symbol, spec.machine))
    return out


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    archs: list[ArchSpec]


def list_arch_plugins(pm: pluggy.PluginManager, kernel: KernelTarget | None = None) -> list[PluginInfo]:
    """Every installed architecture plugin with the arches it claims.

    Plugins describe themselves through the module attribute ``ARCHES`` (a list
    of ``(machine, elfclass, byteorder, e_flags)`` tuples they answer to).  The
    options listed for an arch include its version-table rows (``-O NAME=true|false``).
    """
    kernel = kernel or KernelTarget()
    out = []
    for plugin in _arch_plugins(pm):
        name = pm.get_name(plugin) or "?"
        dist, version = _plugin_dist(pm, plugin)
        rows = plugin.klp_arch_behaviours() if hasattr(plugin, "klp_arch_behaviours") else None
        behaviours = {b.name: "bool" for b in rows or ()}
        specs = []
        for ident in getattr(plugin, "ARCHES", ()):
            spec = plugin.klp_arch_identify(*ident)  # type: ignore[attr-defined]
            if spec is None:
                continue
            hooks = ArchHooks(pm, plugin, spec)
            spec.set_types(hooks.klp_arch_reloc_types(arch=spec, kernel=kernel) or ())  # type: ignore[attr-defined]
            spec.plugin_name, spec.distribution, spec.version = name, dist, version
            spec.options = {**spec.options, **behaviours}
            specs.append(spec)
        out.append(PluginInfo(name, dist, version, specs))
    return sorted(out, key=lambda p: p.name)


def plugin_options(pm: pluggy.PluginManager) -> dict[str, str]:
    """The ``-O`` keys the installed plugins read (``ArchSpec.options`` and
    their behaviours, ``klp_arch_behaviours``): key -> kind."""
    out: dict[str, str] = {}
    for rows in pm.hook.klp_arch_behaviours():
        out.update({b.name: "bool" for b in rows or ()})
    for plugin in _arch_plugins(pm):
        for ident in getattr(plugin, "ARCHES", ()):
            spec = plugin.klp_arch_identify(*ident)  # type: ignore[attr-defined]
            if spec is not None:
                out.update(spec.options)
    return out


def installed_version() -> str:
    try:
        return metadata.version("klpcore")
    except metadata.PackageNotFoundError:
        return "0+unknown"
    except MemoryError:
        # reading the package metadata imports and allocates: when an internal error is a
        # MemoryError, its report must still be written (the version the package declares)
        from . import __version__

        return __version__

"""``resolve_symbol``'s checks on an exported symbol (kernel/module/main.c).

With export metadata from ``Module.symvers`` (see
:class:`klpcore.symbols.ExportInfo`), an export found by name can still be
refused, in the kernel's order:

1. ``find_symbol``: a GPL-only export is invisible to a module whose license
   is not GPL-compatible (it is then "not found": ``-ENOENT``, and a weak
   reference simply stays 0);
2. ``check_version`` (``CONFIG_MODVERSIONS``): the CRC in the module's
   ``__versions`` must equal the kernel's; a module without ``__versions``
   loads only with ``CONFIG_MODULE_FORCE_LOAD``; a missing entry only warns;
3. ``verify_namespace_is_imported``: a namespaced export needs
   ``MODULE_IMPORT_NS`` (``.modinfo`` ``import_ns=``).

Refusals 2 and 3 are error pointers (``-EINVAL``): even a weak reference fails.

Before any of that, ``check_modstruct_version`` compares the CRC of
``module_layout`` (the layout of ``struct module``): a mismatch refuses the
whole module (``-ENOEXEC``, "Invalid module format" for insmod).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .kernel import KernelTarget, config_setting

if TYPE_CHECKING:
    from .elf import ElfModule
    from .plugins import ArchHooks
    from .symbols import KernelSymbols

#: ``license_is_gpl_compatible`` (include/linux/license.h)
GPL_COMPATIBLE = frozenset(
    {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"}
)
#: sizeof(struct modversion_info) on 64-bit: unsigned long crc, char name[56]
MODVERSION_INFO_SIZE = 64


@dataclass(frozen=True)
class Refusal:
    """Why the kernel does not give a module an export."""

    errno: int  # -2: not found (GPL-only hidden); -22: error pointer
    why: str
    #: what the kernel prints before "Unknown symbol %s (err %d)"
    kernel_lines: list[str] = field(default_factory=list)


def module_versions(elf: ElfModule, extended: bool = False) -> dict[str, int] | None:
    """The module's symbol CRCs (name -> CRC), or None without them.

    ``extended`` (6.14+): ``__version_ext_crcs`` (u32 each) with
    ``__version_ext_names`` (the names, NUL-terminated, in the same order) are
    used instead of ``__versions`` when present."""
    if extended:
        crcs, names = elf.section_by_name("__version_ext_crcs"), elf.section_by_name("__version_ext_names")
        if crcs is not None and names is not None and not crcs.is_nobits and not names.is_nobits:
            raw = elf.section_data(crcs.index)
            name_list = elf.section_data(names.index).split(b"\0")
            ext: dict[str, int] = {}
            for k in range(len(raw) // 4):
                if k >= len(name_list):
                    break
                crc = int.from_bytes(raw[4 * k : 4 * k + 4], elf.byteorder)  # type: ignore[arg-type]
                ext.setdefault(name_list[k].decode("utf-8", "replace"), crc)
            return ext
    sec = elf.section_by_name("__versions")
    if sec is None or sec.is_nobits:
        return None
    data = elf.section_data(sec.index)
    out: dict[str, int] = {}
    for k in range(0, len(data) - MODVERSION_INFO_SIZE + 1, MODVERSION_INFO_SIZE):
        crc = int.from_bytes(data[k : k + 8], elf.byteorder)  # type: ignore[arg-type]
        out.setdefault(data[k + 8 : k + MODVERSION_INFO_SIZE].split(b"\0", 1)[0].decode("utf-8", "replace"), crc)
    return out


class ExportChecker:
    """The checks for one module; facts that do not depend on the symbol are read once."""

    def __init__(self, elf: ElfModule, symbols: KernelSymbols, kernel: KernelTarget, hooks: ArchHooks | None) -> None:
        self.elf = elf
        self.meta = symbols.export_meta
        self.kernel = kernel
        self.hooks = hooks
        info = elf.modinfo
        licenses = info.get("license") or []
        self.license = licenses[-1] if licenses else None
        self.imports = set(info.get("import_ns", []))
        cfg = kernel.config
        # without --config: a Module.symvers with CRCs comes from a MODVERSIONS build
        self.modversions = cfg.enabled("MODVERSIONS") if cfg is not None else any(m.crc for m in self.meta.values())
        self._versions: dict[str, int] | bool | None = False  # False: not read yet

    def versions(self) -> dict[str, int] | None:
        if self._versions is False:
            self._versions = module_versions(self.elf, self.kernel.has("extended_modversions"))
        return self._versions  # type: ignore[return-value]

    def check_modstruct(self) -> Refusal | None:
        """``check_modstruct_version``: the module's ``module_layout`` CRC."""
        meta = self.meta.get("module_layout")
        versions = self.versions() if self.modversions and meta is not None else None
        if meta is None or versions is None or versions.get("module_layout", meta.crc) == meta.crc:
            return None
        return Refusal(
            -8,
            f"built for a different struct module: module_layout CRC {versions['module_layout']:#010x} in "
            f"__versions, the kernel's is {meta.crc:#010x} (insmod: Invalid module format)",
            [f"{self.elf.name}: disagrees about version of symbol module_layout"],
        )

    def check(self, name: str) -> Refusal | None:
        meta = self.meta.get(name)
        if meta is None:
            return None
        mod = self.elf.name
        if meta.gpl_only and self.license not in GPL_COMPATIBLE:
            return Refusal(
                -2,
                f"exported GPL-only (EXPORT_SYMBOL_GPL) and the module's license {self.license!r} is not "
                "GPL-compatible",
            )
        if self.modversions:
            versions = self.versions()
            if versions is None:
                force = config_setting(self.hooks, self.kernel, "MODULE_FORCE_LOAD").value in ("y", "m")
                if not force:
                    return Refusal(
                        -22,
                        "the module has no __versions section and the kernel has no MODULE_FORCE_LOAD "
                        "(try_to_force_load fails)",
                    )
            elif name in versions and versions[name] != meta.crc:
                return Refusal(
                    -22,
                    f"modversions CRC {versions[name]:#010x} in __versions differs from the kernel's {meta.crc:#010x}",
                    [f"{mod}: disagrees about version of symbol {name}"],
                )
        if meta.namespace and meta.namespace not in self.imports:
            return Refusal(
                -22,
                f"exported in namespace {meta.namespace}, which the module does not import (MODULE_IMPORT_NS)",
                [f"{mod}: module uses symbol ({name}) from namespace {meta.namespace}, but does not import it."],
            )
        return None

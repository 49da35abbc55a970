"""The kernel's load sequence for one module on one target, in the kernel's order.

``load_module`` (kernel/module/main.c, 6.1 and 6.19): ELF validity and
architecture; ``setup_load_info`` (symbol table, ``.gnu.linkonce.this_module``);
``check_modstruct_version`` (the ``module_layout`` CRC) before ``check_modinfo``
(vermagic, whose release part is ignored when the module has ``__versions``;
livepatch support); ``check_export_symbol_versions``; ``simplify_symbols``
(every undefined symbol: found among exports, GPL-only hidden from a module
whose license is not GPL-compatible, CRC by ``check_version``, namespace
imported); ``apply_relocations`` (the core engine); ``complete_formation``
(``verify_exported_symbols``); then the module's init, which for a livepatch
calls ``klp_enable_patch``: every object and function initialised, every
``old_name`` found by the sympos rule, then every function given an ftrace
location.  A patched module that loads later goes through
``klp_module_coming``: its livepatch relocations, then its functions.

Each step returns :class:`Finding` objects; the first step that refuses the
module ends the sequence, as the kernel does.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .. import constants as C
from ..elf import ElfModule
from ..errors import Diagnostic, InputError, KlpError, NoPluginError, ResolutionError
from ..kernel import KernelTarget, parse_version
from ..loader import DEFAULT_BASE, Loader
from ..modtree import module_kernel_name
from ..plugins import default_plugin_manager
from ..symbols import KernelSymbols, symbols_from_elf
from .kmsg import Version, has_message, klp_line, kmsg
from .modinfo import ModInfo, read_modinfo, undefined_symbols
from .patches import PatchInfo, VmlinuxImage, module_ftrace_sites, read_patch
from .target import SymversEntry, Target, read_input

REFUSED, PATCH_FAILS = "refused", "patch-fails"
MODULE_NAME_LEN = 56
#: where dependencies and patched target modules are placed (apart from the checked module)
DEP_BASE = DEFAULT_BASE + 0x10000000
DEP_STRIDE = 0x1000000
#: module area slots (the x86_64 module area ends at 0xffffffffff000000)
DEP_SLOTS = 46
ERR_NOENT, ERR_INVAL = -2, -22
#: load rules a distribution's kernel patches change: distribution -> {rule: (value, source)}
DISTRIBUTION_RULES: dict[str, dict[str, tuple[bool, str]]] = {
    "debian": {
        # upstream check_version warns once and accepts an import without a __versions entry;
        # Debian (since 4.9) prints the warning and refuses it (seen on 6.1.0-50: kc_noentry, kc_nolayout)
        "missing_crc_refused": (True, "Debian's patch 'module: Disable matching missing version CRC' (2016)"),
    },
}


@dataclass
class Finding:
    """One result of one check: an error (with the outcome it causes), a warning,
    or a check that could not be made."""

    check: str
    severity: str  # "error", "warning", "info", "not-checked"
    message: str
    kernel_message: str | None = None
    outcome: str | None = None  # REFUSED or PATCH_FAILS for errors
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "kernel_message": self.kernel_message,
        }
        if self.outcome:
            out["outcome"] = self.outcome
        out.update(self.extra)
        return out


@dataclass
class Export:
    name: str
    owner: str  # "vmlinux" or a module name
    gpl: bool | None  # None: unknown (no Module.symvers)
    crc: int | None
    namespace: str


class Stop(Exception):
    """A step refused the module; the kernel goes no further."""


class PairCheck:
    """Checks one module file against one target."""

    def __init__(self, target: Target, path: str, *, depth: int = 0, kernel_options: dict[str, Any] | None = None):
        self.target = target
        self.path = path
        self.depth = depth
        self.kernel_options = kernel_options or {}
        self.findings: list[Finding] = []
        self.info: ModInfo | None = None
        self.patch: PatchInfo | None = None
        self.patched: list[dict[str, Any]] = []
        rel = target.release
        self.version: Version = parse_version(rel) if rel and _is_version(rel) else (99, 0)
        self.version_known = rel is not None and _is_version(rel)
        self._taint_forced = False
        self._lockdep_off = False  # add_taint prints its line once, at the first such taint

    # --------------------------------------------------------------- helpers
    def add(
        self,
        check: str,
        severity: str,
        message: str,
        kernel: str | None = None,
        outcome: str | None = None,
        **extra: Any,
    ) -> Finding:
        f = Finding(check, severity, message, kernel, outcome, extra)
        self.findings.append(f)
        return f

    def refuse(self, check: str, message: str, kernel: str | None = None, **extra: Any) -> Finding:
        return self.add(check, "error", message, kernel, REFUSED, **extra)

    def not_checked(self, check: str, why: str) -> None:
        self.add(check, "not-checked", f"not checked: {why}")

    def msg(self, key: str, **fields: Any) -> str:
        return kmsg(key, self.version, **fields)

    @property
    def name(self) -> str:
        return self.info.name if self.info else module_kernel_name(self.path)

    def force_load(self, check: str, reason: str, what: str) -> bool:
        """``try_to_force_load``: taint with CONFIG_MODULE_FORCE_LOAD, else refuse silently."""
        force = self.target.config_bool("CONFIG_MODULE_FORCE_LOAD")
        if force is None:
            self.not_checked(check, f"{what}; whether the kernel allows forced loads needs its config")
            return True
        if force:
            if not self._taint_forced:
                f = self.add(
                    check,
                    "warning",
                    f"{what}: loads with a taint (CONFIG_MODULE_FORCE_LOAD)",
                    self.msg("force_taint", name=self.name, reason=reason),
                )
                self.lockdep_taint(f)
                self._taint_forced = True
            return True
        return False

    def lockdep_taint(self, finding: Finding) -> None:
        """A taint that makes lockdep unreliable (forced load, proprietary module): the first one
        on a freshly booted kernel also prints the lockdep line."""
        if not self._lockdep_off:
            self._lockdep_off = True
            finding.extra["then"] = [*finding.extra.get("then", []), self.msg("lockdep_off")]

    # ------------------------------------------------------------------ run
    def run(self) -> list[Finding]:
        try:
            self.step_modules()
            elf, raw = self.step_elf()
            self.step_load_info(elf, raw)
            self.step_modstruct()
            self.step_modinfo()
            self.step_export_versions()
            deps = self.step_dependencies()
            self.step_symbols(deps)
            loaded = self.step_relocations(deps)
            self.step_duplicate_exports(deps)
            self.step_livepatch(loaded, deps)
        except Stop:
            pass
        return self.findings

    # ------------------------------------------------------------- modules
    def step_modules(self) -> None:
        """A kernel built without CONFIG_MODULES has no init_module/finit_module (ENOSYS, no message)."""
        cfg = self.target.config
        if cfg is not None and cfg.get("CONFIG_MODULES") == "n":
            self.refuse(
                "modules",
                "the target kernel has no loadable-module support (CONFIG_MODULES is not set): "
                "insmod fails with ENOSYS",
            )
            raise Stop

    # ----------------------------------------------------------------- ELF
    def step_elf(self) -> tuple[ElfModule, bytes]:
        raw = read_input(self.path, "module", limit=1 << 30)
        if len(raw) < C.EHDR_SIZE:
            self.refuse("elf", "file too short for an ELF header", self.msg("elf_len", len=len(raw)))
            raise Stop
        if raw[:4] != C.ELFMAG:
            self.refuse("elf", "not an ELF file", self.msg("elf_magic"))
            raise Stop
        order: Literal["little", "big"] = "little" if raw[5] == C.ELFDATA2LSB else "big"
        etype = int.from_bytes(raw[16:18], order)
        if etype != C.ET_REL:
            self.refuse("elf", f"ELF type {etype} is not ET_REL", self.msg("elf_type", etype=etype))
            raise Stop
        machine = int.from_bytes(raw[18:20], order)
        tm = self.target.machine
        if tm is None:
            self.not_checked("elf", "the target's architecture is unknown (no config, no module tree)")
        elif machine != tm:
            self.refuse(
                "elf",
                f"module is for e_machine {machine}, the target kernel for {tm}",
                self.msg("elf_arch", machine=machine),
            )
            raise Stop
        try:
            elf = ElfModule(raw, path=self.path)
        except KlpError as exc:
            d = exc.diagnostics[0]
            if "no symbol table" in d.message:
                name = _modinfo_name(raw) or "(missing .modinfo section or name field)"
                self.refuse("elf", d.message, self.msg("no_symbols", name=name))
            else:
                self.refuse("elf", d.message, "Invalid ELF ... (elf_validity_check)")
            raise Stop from None
        return elf, raw

    def step_load_info(self, elf: ElfModule, raw: bytes) -> None:
        info = read_modinfo(elf, self.path, raw)
        self.info = info
        if not info.has_this_module:
            self.refuse(
                "elf",
                "no .gnu.linkonce.this_module section (not built as a module)",
                self.msg("no_module", name=info.name),
            )
            raise Stop

    # --------------------------------------------------------- modversions
    @property
    def modversions(self) -> bool | None:
        """Whether the target exports carry CRCs (CONFIG_MODVERSIONS)."""
        v = self.target.config_bool("CONFIG_MODVERSIONS")
        if v is not None:
            return v
        sv = self.target.symvers
        if sv is not None:
            return any(e.crc for e in sv.values())
        return None

    def distribution_rule(self, rule: str) -> bool:
        """A load rule the target's distribution patched in (``--distribution`` overrides the guess)."""
        dist = self.target.distribution
        return bool(dist and DISTRIBUTION_RULES.get(dist, {}).get(rule, (False, ""))[0])

    def check_version(self, check: str, sym: str, crc: int | None) -> bool:
        """``check_version``; False means the symbol is refused (-EINVAL)."""
        info = self.info
        assert info is not None
        if crc is None:
            return True
        if info.ext_versions is not None and has_message("no_ext_version", self.version):
            got = info.ext_versions.get(sym)
            if got is None:
                self.add(
                    check,
                    "warning",
                    f"no extended symbol version for {sym} (accepted)",
                    self.msg("no_ext_version", name=info.name, sym=sym),
                )
                return True
        else:
            if info.versions is None:
                return self.force_load(check, sym, "module has no __versions section")
            got = info.versions.get(sym)
            if got is None and self.distribution_rule("missing_crc_refused"):
                self.refuse(
                    check,
                    f"module's __versions has no entry for {sym}: refused by "
                    + DISTRIBUTION_RULES[self.target.distribution or ""]["missing_crc_refused"][1],
                    self.msg("no_version", name=info.name, sym=sym),
                    symbol=sym,
                )
                return False
            if got is None:
                self.add(
                    check,
                    "warning",
                    f"module's __versions has no entry for {sym} (accepted; printed once)",
                    self.msg("no_version", name=info.name, sym=sym),
                )
                return True
        if got == crc:
            return True
        self.refuse(
            check,
            f"CRC of {sym}: module {got:#010x}, target {crc:#010x}",
            self.msg("disagrees", name=info.name, sym=sym),
            symbol=sym,
        )
        return False

    def step_modstruct(self) -> None:
        mv = self.modversions
        if mv is False:
            return
        sv = self.target.symvers
        if mv is None or sv is None:
            self.not_checked("modversions", "module_layout CRC needs the target's Module.symvers and config")
            return
        entry = sv.get("module_layout")
        if entry is None:
            self.add("modversions", "info", "target exports no module_layout; check skipped as by kernels without it")
            return
        if not self.check_version("modversions", "module_layout", entry.crc):
            if not self.findings or self.findings[-1].outcome != REFUSED:
                self.refuse(
                    "modversions", "module has no __versions and the target has no CONFIG_MODULE_FORCE_LOAD", None
                )
            raise Stop

    def step_modinfo(self) -> None:
        info = self.info
        assert info is not None
        magic = self.target.vermagic
        if info.vermagic is None:
            if not self.force_load("vermagic", "bad vermagic", "module has no vermagic"):
                self.refuse("vermagic", "module has no vermagic and the target has no CONFIG_MODULE_FORCE_LOAD")
                raise Stop
        elif magic is None:
            self.not_checked("vermagic", "the target's vermagic needs an in-tree module or release and config")
        else:
            has_crcs = info.versions is not None
            a, b = info.vermagic, magic
            if has_crcs:
                a, b = a[a.find(" ") if " " in a else len(a) :], b[b.find(" ") if " " in b else len(b) :]
            if a != b:
                self.refuse(
                    "vermagic",
                    "vermagic differs" + (" (release part ignored: module has __versions)" if has_crcs else ""),
                    self.msg("vermagic", name=info.name, modmagic=info.vermagic, vermagic=magic),
                )
                raise Stop
        if not info.intree:
            self.add("taint", "warning", "out-of-tree module taints the kernel", self.msg("taint_oot", name=info.name))
        if info.livepatch:
            lp = self.target.config_bool("CONFIG_LIVEPATCH")
            if lp is None:
                self.not_checked("livepatch", "CONFIG_LIVEPATCH needs the target's config")
            elif not lp:
                self.refuse(
                    "livepatch", "target kernel has no CONFIG_LIVEPATCH", self.msg("livepatch_disabled", name=info.name)
                )
                raise Stop
            else:
                self.add(
                    "livepatch",
                    "warning",
                    "taints the kernel (TAINT_LIVEPATCH)",
                    self.msg("taint_livepatch", name=info.name),
                )
        if not info.gpl_compatible:
            lic = self.add(
                "license",
                "warning",
                f"license '{info.license or 'unspecified'}' is not GPL-compatible: "
                "taints the kernel and hides GPL-only exports",
                self.msg("taint_license", name=info.name, license=info.license or "unspecified"),
            )
            self.lockdep_taint(lic)
        if self.target.config_bool("CONFIG_MODULE_SIG") and self.depth == 0:
            self.step_signature(info)

    def step_signature(self, info: ModInfo) -> None:
        """``module_sig_check``: an unsigned module, or one whose key the kernel does not hold, taints
        (printed once per boot) or, with CONFIG_MODULE_SIG_FORCE, is refused.  The target's trusted
        keys are approximated by the key that signed its own modules."""
        why = "unsigned module"
        if info.signed:
            own = self.target.tree_signer
            if own is None:
                self.not_checked(
                    "signature", "whether the target trusts the module's signing key needs its signed modules"
                )
                return
            if info.signer == own:
                self.add("signature", "info", "signed with the key that signed the target's own modules")
                return
            why = "signed with a key other than the target's own modules' (unless that key is in its keyring)"
        if self.target.config_bool("CONFIG_MODULE_SIG_FORCE"):
            self.refuse("signature", f"{why} on a kernel with CONFIG_MODULE_SIG_FORCE", None)
            raise Stop
        self.add(
            "signature",
            "warning",
            f"{why}: taints the kernel (refused under Secure Boot lockdown)",
            self.msg("taint_unsigned", name=info.name),
        )

    def step_export_versions(self) -> None:
        info = self.info
        assert info is not None
        if not info.exports or not self.modversions:
            return
        plain = [e for e in info.exports if not e.gpl]
        gpl = [e for e in info.exports if e.gpl]
        missing = (plain and not info.has_kcrctab) or (gpl and not info.has_gpl_kcrctab)
        if missing and not self.force_load(
            "export-versions", "no versions for exported symbols", "module exports symbols without CRCs"
        ):
            self.refuse("export-versions", "exports without CRCs and no CONFIG_MODULE_FORCE_LOAD")
            raise Stop

    # -------------------------------------------------------- dependencies
    def step_dependencies(self) -> list[DepModule]:
        info = self.info
        assert info is not None
        deps_map = self.target.modules_dep
        names = deps_map.get(info.name) if deps_map is not None and info.name in deps_map else info.depends
        if not names:
            return []
        if self.target.modules_dir is None:
            self.not_checked("dependencies", f"depends on {', '.join(names)}; the target has no module tree")
            return []
        out: list[DepModule] = []
        for dep in names:
            for d in load_dependency(self.target, dep, self.kernel_options, set()):
                if d not in out:
                    out.append(d)
        for d in out:
            if d.path is None:
                self.add(
                    "dependencies",
                    "error",
                    f"dependency '{d.name}' is not in the target's module tree; its symbols stay unknown",
                    None,
                    REFUSED,
                )
            elif d.refused:
                first = d.refused[0]
                self.refuse(
                    "dependencies",
                    f"dependency '{d.name}' is refused: {first.message}",
                    first.kernel_message,
                    dependency=d.name,
                )
        if any(f.outcome == REFUSED for f in self.findings if f.check == "dependencies"):
            raise Stop
        loaded = [d.name for d in out]
        self.add("dependencies", "info", f"loaded first: {', '.join(loaded)}")
        return out

    # --------------------------------------------------------------- exports
    def exports(self, deps: list[DepModule]) -> dict[str, Export] | None:
        """Exports visible to the module: vmlinux's, then each loaded dependency's."""
        cache = self.target.cache
        base = cache.get("vmlinux_exports")
        if base is None:
            base = {}
            sv = self.target.symvers
            if sv is not None:
                for name, e in sv.items():
                    if e.module == C.VMLINUX:
                        base[name] = Export(name, C.VMLINUX, e.gpl, e.crc, e.namespace)
            elif self.target.symbols is not None:
                for name in self.target.symbols.objects[C.VMLINUX].names if self.target.symbols.has(C.VMLINUX) else []:
                    if name.startswith("__ksymtab_"):
                        n = name[len("__ksymtab_") :]
                        base[n] = Export(n, C.VMLINUX, None, None, "")
            else:
                return None
            cache["vmlinux_exports"] = base
        out = dict(base)
        for d in deps:
            if d.info is None:
                continue
            for x in d.info.exports:
                if x.name in out:
                    continue
                entry: SymversEntry | None = self.target.symvers.get(x.name) if self.target.symvers else None
                out[x.name] = Export(
                    x.name,
                    d.name,
                    x.gpl,
                    entry.crc if entry and self.modversions else None,
                    entry.namespace if entry else "",
                )
        return out

    def step_symbols(self, deps: list[DepModule]) -> None:
        info = self.info
        assert info is not None
        exports = self.exports(deps)
        if exports is None:
            self.not_checked("symbols", "no Module.symvers and no symbol table: exports unknown")
            return
        if self.target.symvers is None:
            self.not_checked("symbols", "CRCs, GPL-only and namespaces need Module.symvers; only names checked")
        gplok = info.gpl_compatible
        ignored = _ignored_undefined(self.target.machine, self.version)
        allow_missing_ns = bool(self.target.config_bool("CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS"))
        mv = self.modversions
        failed = False
        for _i, sym, weak in undefined_symbols(info.elf):
            e = exports.get(sym)
            hidden = e is not None and e.gpl and not gplok
            if e is None or hidden:
                if weak or sym in ignored:
                    continue
                why = (
                    f"GPL-only export of {e.owner}, and the module's license "  # type: ignore[union-attr]
                    f"'{info.license or 'unspecified'}' is not GPL-compatible"
                    if hidden
                    else "not exported by the target kernel or a loaded dependency"
                )
                self.refuse(
                    "symbols",
                    f"unknown symbol {sym}: {why}",
                    self.msg("unknown_symbol", name=info.name, sym=sym, err=ERR_NOENT),
                    symbol=sym,
                )
                failed = True
                continue
            ok = self.check_version("symbols", sym, e.crc if mv else None)
            if (
                ok
                and e.namespace
                and e.namespace not in info.import_ns
                and not _module_ns_ok(e.namespace, info.name, self.version)
            ):
                text = self.msg("namespace", name=info.name, sym=sym, ns=e.namespace)
                if allow_missing_ns:
                    self.add(
                        "symbols",
                        "warning",
                        f"{sym} is in namespace {e.namespace}, not imported (allowed by "
                        "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS)",
                        text,
                    )
                else:
                    self.refuse(
                        "symbols",
                        f"{sym} is in namespace {e.namespace}; add MODULE_IMPORT_NS({e.namespace})",
                        text,
                        symbol=sym,
                    )
                    ok = False
            if not ok:
                self.findings[-1].extra.setdefault(
                    "then", self.msg("unknown_symbol", name=info.name, sym=sym, err=ERR_INVAL)
                )
                failed = True
        for i in np.flatnonzero(info.elf.symbols["st_shndx"] == C.SHN_COMMON).tolist():
            if not info.elf.symbol_names[i].startswith("__gnu_lto"):
                self.refuse("symbols", f"common symbol {info.elf.symbol_names[i]}", self.msg("common", name=info.name))
                failed = True
        if failed:
            raise Stop

    # ---------------------------------------------------------- relocations
    def kernel_target(self) -> KernelTarget:
        lp = self.target.config_bool("CONFIG_LIVEPATCH")
        rwx = self.target.config_bool("CONFIG_STRICT_MODULE_RWX")
        options = dict(self.kernel_options)
        if self.target.config_bool("CONFIG_DYNAMIC_FTRACE") is False:
            options.setdefault("dynamic_ftrace", False)
        return KernelTarget(
            version=self.version if self.version_known else KernelTarget().version,
            strict_module_rwx=True if rwx is None else rwx,
            livepatch=True if lp is None else lp,
            options=options,
        )

    def kernel_symbols(self, deps: list[DepModule]) -> KernelSymbols | None:
        base = self.target.symbols
        if base is None:
            return None
        ks = KernelSymbols()
        ks.objects = dict(base.objects)
        ks.source_names = list(base.source_names)
        for d in deps:
            if d.symbols is not None:
                for name, obj in d.symbols.objects.items():
                    ks.objects.setdefault(name, obj)
        return ks

    def step_relocations(self, deps: list[DepModule]) -> Any:
        info = self.info
        assert info is not None
        ks = self.kernel_symbols(deps)
        if ks is None:
            self.not_checked("relocations", "no kernel symbol table (" + self.target.missing.get("symbols", "") + ")")
            return None
        loader = Loader(default_plugin_manager(), kernel=self.kernel_target())
        try:
            mod = loader.open(info.elf)
        except NoPluginError as exc:
            self.not_checked("relocations", str(exc.diagnostics[0].message))
            return None
        except KlpError as exc:
            self._engine_errors("relocations", exc.diagnostics, REFUSED)
            raise Stop from None
        try:
            loaded = loader.load(mod, ks, mod.arch.default_base)
        except KlpError as exc:
            self._engine_errors("relocations", exc.diagnostics, REFUSED)
            raise Stop from None
        n = sum(loaded.relocation_counts().values())
        self.add(
            "relocations",
            "info",
            f"{n} relocations applied at load" + (" and enable" if len(loaded.phases) > 1 else ""),
        )
        for w in loaded.warnings:
            self.add("relocations", "warning", w.message, w.kernel_message)
        return loaded

    def _engine_errors(self, check: str, diags: list[Diagnostic], outcome: str, **extra: Any) -> None:
        for d in diags[:20]:
            where = d.location()
            self.add(
                check, "error", f"{where}: {d.message}" if where else d.message, d.kernel_message, outcome, **extra
            )
        if len(diags) > 20:
            self.add(check, "error", f"... and {len(diags) - 20} more", None, outcome, **extra)

    # -------------------------------------------------------- duplicates
    def step_duplicate_exports(self, deps: list[DepModule]) -> None:
        info = self.info
        assert info is not None
        if not info.exports:
            return
        exports = self.exports(deps)
        if exports is None:
            self.not_checked("exports", "the target's exports are unknown")
            return
        for e in info.exports:
            other = exports.get(e.name)
            if other is not None:
                owner = "kernel" if other.owner == C.VMLINUX else other.owner
                self.refuse(
                    "exports",
                    f"{e.name} is already exported by {owner}",
                    self.msg("duplicate_export", name=info.name, sym=e.name, owner=owner),
                )
                raise Stop

    # ------------------------------------------------------------ livepatch
    def step_livepatch(self, loaded: Any, deps: list[DepModule]) -> None:
        info = self.info
        assert info is not None
        if self.depth:
            return
        patch = read_patch(info.elf)
        self.patch = patch
        if not patch.objects:
            if info.livepatch:
                self.add(
                    "livepatch",
                    "warning",
                    "marked livepatch=Y but no klp_patch, klp-build or kpatch function "
                    "list was found; patched functions not checked",
                )
            return
        for p in patch.problems:
            self.add("livepatch", "warning", p)
        if not info.livepatch:
            self.refuse(
                "livepatch",
                'the module enables a patch but lacks MODULE_INFO(livepatch, "Y"); klp_enable_patch fails in its init',
                self.msg("not_livepatch", name=info.name),
            )
            return
        lp = LivepatchCheck(self, loaded, deps, patch)
        lp.run()


@dataclass(eq=False)
class DepModule:
    name: str
    path: str | None
    info: ModInfo | None = None
    symbols: KernelSymbols | None = None
    refused: list[Finding] = field(default_factory=list)


def load_dependency(target: Target, name: str, options: dict[str, Any], seen: set[str]) -> list[DepModule]:
    """``name`` and its own dependencies, depth first, each checked once per target."""
    key = name.replace("-", "_")
    cache: dict[str, DepModule] = target.cache.setdefault("deps", {})
    if key in seen:
        return []
    seen.add(key)
    if key in cache:
        d = cache[key]
        chain: list[DepModule] = []
        if d.info is not None:
            for sub in _dep_names(target, d.info):
                chain += load_dependency(target, sub, options, seen)
        return [*chain, d]
    path = target.find_module(key)
    if path is None:
        d = DepModule(key, None)
        cache[key] = d
        return [d]
    chain = []
    try:
        raw = read_input(path, "module", limit=1 << 30)
        elf = ElfModule(raw, path=str(path))
        info = read_modinfo(elf, str(path), raw)
    except KlpError as exc:
        d = DepModule(key, str(path), refused=[Finding("dependencies", "error", str(exc), None, REFUSED)])
        cache[key] = d
        return [d]
    for sub in _dep_names(target, info):
        chain += load_dependency(target, sub, options, seen)
    d = DepModule(info.name, str(path), info)
    cache[key] = d
    pc = PairCheck(target, str(path), depth=1, kernel_options=options)
    pc.info = info
    try:
        pc.step_modstruct()
        pc.step_modinfo()
        pc.step_symbols(chain)
    except Stop:
        pass
    d.refused = [f for f in pc.findings if f.outcome == REFUSED]
    index = len(cache)
    try:
        d.symbols = symbols_from_elf(raw, str(path), base=DEP_BASE + (index % 24) * DEP_STRIDE, objname=info.name)
    except KlpError as exc:
        d.refused.append(Finding("dependencies", "error", str(exc), None, REFUSED))
    return [*chain, d]


def _dep_names(target: Target, info: ModInfo) -> list[str]:
    dep = target.modules_dep
    if dep is not None and info.name in dep:
        return dep[info.name]
    return info.depends


class LivepatchCheck:
    """``klp_enable_patch`` and ``klp_module_coming`` for each patched object."""

    def __init__(self, pc: PairCheck, loaded: Any, deps: list[DepModule], patch: PatchInfo) -> None:
        self.pc = pc
        self.loaded = loaded
        self.deps = deps
        self.patch = patch
        self.target = pc.target

    def run(self) -> None:
        pc = self.pc
        info = pc.info
        assert info is not None
        ksym_len = 512 if pc.version >= (6, 1) else 128
        # klp_init_object / klp_init_func: silent -EINVAL refusals
        for obj in self.patch.objects:
            if obj.name is not None and len(obj.name) >= MODULE_NAME_LEN:
                pc.refuse(
                    "livepatch",
                    f"object name '{obj.name}' is {len(obj.name)} characters (limit "
                    f"{MODULE_NAME_LEN - 1}); klp_init_object fails with -EINVAL (no message)",
                )
            for f in obj.funcs:
                if f.old_name is None:
                    pc.refuse("livepatch", f"a function of object {obj.label} has no old_name (-EINVAL, no message)")
                elif len(f.old_name) >= ksym_len:
                    pc.refuse("livepatch", f"old_name '{f.old_name[:40]}...' is longer than KSYM_NAME_LEN - 1")
                if f.new_ptr is None:
                    pc.refuse("livepatch", f"{f.old_name}: no replacement function (new_func NULL, -EINVAL)")
        if any(x.outcome == REFUSED for x in pc.findings):
            return
        vmlinux_objs = [o for o in self.patch.objects if o.name is None]
        module_objs = [o for o in self.patch.objects if o.name is not None]
        # klp_init_patch: each loaded object's functions resolved (klp_init_object_loaded), the
        # first failure ends it silently; then __klp_enable_patch: "enabling patch", each
        # function's ftrace location (the first failure ends it), the transition
        resolved: list[tuple[Any, Any, int | None]] = []
        ks = self.target.symbols
        for obj in vmlinux_objs:
            for f in obj.funcs:
                addr = self.resolve_vmlinux(f) if ks is not None else None
                if ks is None:
                    pc.not_checked("patched-functions", f"{f.old_name}: vmlinux symbols missing")
                resolved.append((obj, f, addr))
        if (ks is not None or not vmlinux_objs) and not any(x.outcome == REFUSED for x in pc.findings):
            pc.add("livepatch", "info", "klp_enable_patch enables the patch", pc.msg("klp_enabling", name=info.name))
            failed = None
            for obj, f, addr in resolved:
                if addr is not None and failed is None:
                    failed = self.ftrace_vmlinux(obj, f, addr)
                elif addr is not None:
                    self.ftrace_vmlinux(obj, f, addr, reached=False)
            if failed is not None:
                failed.extra["then"] = [
                    *failed.extra.get("then", []),
                    pc.msg("klp_enable", name=info.name),
                    pc.msg("klp_unpatched", name=info.name),
                ]
            else:
                pc.add("livepatch", "info", "the patching transition starts", pc.msg("klp_start", name=info.name))
                pc.add(
                    "livepatch",
                    "info",
                    "the transition completes once every task is out of the patched functions (asynchronous)",
                    pc.msg("klp_complete", name=info.name),
                )
        # module objects: when the module is, or later gets, loaded
        for obj in module_objs:
            self.module_object(obj)

    def record(self, obj: Any, f: Any, **fields: Any) -> dict[str, Any]:
        row = {"object": obj.label, "old_name": f.old_name, "sympos": f.sympos, "replacement": f.new_func}
        row.update(fields)
        self.pc.patched.append(row)
        return row

    # ----------------------------------------------------------- vmlinux
    def resolve_vmlinux(self, f: Any) -> int | None:
        pc = self.pc
        ks = self.target.symbols
        assert ks is not None and f.old_name is not None
        try:
            addr = ks.find_object_symbol(None, f.old_name, f.sympos)
        except ResolutionError as exc:
            d = exc.diagnostics[0]
            cands = self.vmlinux_candidates(f.old_name)
            self.record(_Obj(None), f, status="error", candidates=cands)
            first = not any(x.check == "patched-functions" and x.outcome == REFUSED for x in pc.findings)
            pc.refuse(
                "patched-functions",
                _klp_message(d, cands) + ("" if first else " (the kernel stops at the first failure: not printed)"),
                klp_line(d.kernel_message) if first else None,
                object=C.VMLINUX,
                function=f.old_name,
                candidates=cands,
            )
            return None
        self.record(_Obj(None), f, status="resolved", address=hex(addr))
        return addr

    def vmlinux_sorted(self) -> tuple[list[int], ...]:
        cache = self.target.cache
        got = cache.get("vmlinux_addrs")
        if got is None:
            assert self.target.symbols is not None
            obj = self.target.symbols.objects[C.VMLINUX]
            got = (sorted(set(obj.addrs)),)
            cache["vmlinux_addrs"] = got
        return got

    def kallsyms_size(self, addr: int) -> int:
        (addrs,) = self.vmlinux_sorted()
        i = bisect.bisect_right(addrs, addr)
        return addrs[i] - addr if i < len(addrs) else 0

    def vmlinux_image(self) -> VmlinuxImage | None:
        cache = self.target.cache
        if "vmlinux_image" not in cache:
            p = self.target.vmlinux_path
            try:
                cache["vmlinux_image"] = VmlinuxImage(p) if p is not None else None
            except (OSError, ValueError):
                cache["vmlinux_image"] = None
        return cache["vmlinux_image"]  # type: ignore[no-any-return]

    def vmlinux_candidates(self, name: str) -> list[dict[str, Any]]:
        ks = self.target.symbols
        assert ks is not None
        img = self.vmlinux_image()
        out = []
        for i, a in enumerate(ks.objects[C.VMLINUX].matches(name) if ks.has(C.VMLINUX) else []):
            row: dict[str, Any] = {"sympos": i + 1, "address": hex(a), "size": self.kallsyms_size(a)}
            if img is not None:
                row["file"] = img.source_file(a)
            out.append(row)
        return out

    def ftrace_vmlinux(self, obj: Any, f: Any, addr: int, reached: bool = True) -> Finding | None:
        """The refusal when ``f`` has no ftrace location (``reached``: the kernel gets to it)."""
        pc = self.pc
        ks = self.target.symbols
        assert ks is not None
        sites = self.target.cache.get("vmlinux_mcount")
        if sites is None:
            img = self.vmlinux_image()
            vm = ks.objects.get(C.VMLINUX)
            start = vm.matches("__start_mcount_loc") if vm else []
            stop = vm.matches("__stop_mcount_loc") if vm else []
            arr = img.mcount_sites(start[0], stop[0]) if img is not None and start and stop else None
            if arr is None:
                arr = self.target.ftrace_sites
            if arr is None:
                why = (
                    "no vmlinux ELF"
                    if img is None
                    else "no __start_mcount_loc/__stop_mcount_loc symbols"
                    if not start or not stop
                    else "__mcount_loc is not in the vmlinux ELF's sections"
                )
                pc.not_checked(
                    "ftrace",
                    f"{f.old_name}: ftrace locations need the vmlinux ELF's __mcount_loc or "
                    f"available_filter_functions_addrs ({why})",
                )
                return None
            sites = arr
            self.target.cache["vmlinux_mcount"] = sites
        size = self.kallsyms_size(addr) or 1
        i = int(np.searchsorted(sites, addr))
        rows = [r for r in pc.patched if r["object"] == C.VMLINUX and r["old_name"] == f.old_name]
        row = rows[-1] if rows else {}
        if i < len(sites) and int(sites[i]) < addr + size:
            row["ftrace"] = hex(int(sites[i]))
            return None
        row["ftrace"] = None
        text = f"{f.old_name} at {addr:#x} has no ftrace location (notrace, or inlined code without a call site)"
        if not reached:
            return pc.refuse(
                "patched-functions",
                text + " (the kernel stops at the first failure: not printed)",
                None,
                object=C.VMLINUX,
                function=f.old_name,
            )
        return pc.refuse(
            "patched-functions",
            text,
            pc.msg("klp_ftrace", sym=f.old_name),
            object=C.VMLINUX,
            function=f.old_name,
            then=[pc.msg("klp_patch_object", obj=C.VMLINUX)],
        )

    # ------------------------------------------------------------ modules
    def module_object(self, obj: Any) -> None:
        pc = self.pc
        info = pc.info
        assert info is not None
        name = obj.name
        if self.target.modules_dir is None:
            pc.not_checked("patched-objects", f"object {name}: the target has no module tree")
            for f in obj.funcs:
                self.record(obj, f, status="not-checked")
            return
        path = self.target.module_index.get(name)
        if path is None:
            norm = module_kernel_name(name)
            if norm != name and norm in self.target.module_index:
                pc.add(
                    "patched-objects",
                    "error",
                    f"object '{name}' names no module: the kernel compares names "
                    f"exactly and calls {self.target.module_index[norm].name} '{norm}'; the patch loads but never "
                    "applies",
                    None,
                    PATCH_FAILS,
                    object=name,
                    module=norm,
                )
            else:
                pc.add(
                    "patched-objects",
                    "warning",
                    f"no module of the target is called '{name}'; the patch waits for it and applies nothing there",
                    None,
                    object=name,
                )
            for f in obj.funcs:
                self.record(obj, f, status="object-missing")
            return
        tm = self.target_module(name, str(path))
        if tm is None:
            return
        elf, symbols = tm
        kmsg_then = [
            pc.msg("klp_coming", name=info.name, obj=name, err=ERR_INVAL),
            pc.msg("klp_refuse_module", name=info.name, obj=name),
        ]
        # klp_module_coming: klp_init_object_loaded (the object's livepatch relocations, then every
        # function looked up; the first failure ends it), "applying patch", then klp_patch_object
        # (every function's ftrace location; the first failure ends it)
        if self.loaded is not None:
            try:
                self.loaded.coming(name, symbols)
            except KlpError as exc:
                pc._engine_errors("patched-objects", exc.diagnostics, PATCH_FAILS, object=name, then=kmsg_then)
                return
        ks = KernelSymbols()
        ks.objects = {name: symbols.objects[name]} if name in symbols.objects else {}
        sites = module_ftrace_sites(elf)
        failed = False
        found: list[tuple[Any, dict[str, Any]]] = []
        for f in obj.funcs:
            try:
                addr = ks.find_object_symbol(name, f.old_name, f.sympos)
            except ResolutionError as exc:
                d = exc.diagnostics[0]
                cands = self.module_candidates(elf, f.old_name)
                self.record(obj, f, status="error", candidates=cands)
                pc.add(
                    "patched-functions",
                    "error",
                    _klp_message(d, cands)
                    + (" (the kernel stops at the first failure: not printed)" if failed else ""),
                    None if failed else klp_line(d.kernel_message),
                    PATCH_FAILS,
                    object=name,
                    function=f.old_name,
                    candidates=cands,
                    **({} if failed else {"then": kmsg_then}),
                )
                failed = True
                continue
            found.append((f, self.record(obj, f, status="resolved", address=hex(addr))))
        if not failed:
            pc.add(
                "patched-objects",
                "info",
                f"when {name} loads, klp_module_coming applies the patch to it",
                pc.msg("klp_applying", name=info.name, obj=name),
                object=name,
            )
        for f, row in found:
            ext = self.module_extent(elf, f.old_name, f.sympos)
            if sites is None or ext is None:
                pc.not_checked("ftrace", f"{name}:{f.old_name}: the module has no __mcount_loc")
                continue
            shndx, value, size = ext
            offs = sites.get(shndx, [])
            i = bisect.bisect_left(offs, value)
            if i < len(offs) and offs[i] < value + max(size, 1):
                row["ftrace"] = True
                continue
            row["ftrace"] = None
            pc.add(
                "patched-functions",
                "error",
                f"{name}:{f.old_name} has no ftrace location"
                + (" (the kernel stops at the first failure: not printed)" if failed else ""),
                None if failed else pc.msg("klp_ftrace", sym=f.old_name),
                PATCH_FAILS,
                object=name,
                function=f.old_name,
                **(
                    {}
                    if failed
                    else {
                        "then": [
                            pc.msg("klp_apply_failed", name=info.name, obj=name, err=ERR_INVAL),
                            kmsg_then[1],
                        ]
                    }
                ),
            )
            failed = True

    def target_module(self, name: str, path: str) -> tuple[ElfModule, KernelSymbols] | None:
        cache: dict[str, Any] = self.target.cache.setdefault("patched_modules", {})
        if name not in cache:
            try:
                raw = read_input(path, "module", limit=1 << 30)
                elf = ElfModule(raw, path=path)
                base = DEP_BASE + (24 + len(cache) % (DEP_SLOTS - 24)) * DEP_STRIDE
                cache[name] = (elf, symbols_from_elf(raw, path, base=base, objname=name))
            except (KlpError, InputError) as exc:
                cache[name] = str(exc)
        got = cache[name]
        if isinstance(got, str):
            self.pc.not_checked("patched-objects", f"object {name}: {path}: {got}")
            return None
        return got  # type: ignore[no-any-return]

    @staticmethod
    def module_extent(elf: ElfModule, name: str | None, sympos: int) -> tuple[int, int, int] | None:
        syms = elf.symbols
        hits = []
        for i, n in enumerate(elf.symbol_names):
            if n == name:
                nd = int(syms["st_shndx"][i])
                if 0 < nd < C.SHN_LORESERVE and elf.sections[nd].is_alloc:
                    hits.append((nd, int(syms["st_value"][i]), int(syms["st_size"][i])))
        k = (sympos - 1) if sympos else 0
        return hits[k] if 0 <= k < len(hits) else None

    @staticmethod
    def module_candidates(elf: ElfModule, name: str | None) -> list[dict[str, Any]]:
        syms = elf.symbols
        out: list[dict[str, Any]] = []
        for i, n in enumerate(elf.symbol_names):
            if n == name and 0 < int(syms["st_shndx"][i]) < C.SHN_LORESERVE:
                nd = int(syms["st_shndx"][i])
                out.append(
                    {
                        "sympos": len(out) + 1,
                        "section": elf.sections[nd].name,
                        "offset": hex(int(syms["st_value"][i])),
                        "size": int(syms["st_size"][i]),
                    }
                )
        return out


@dataclass
class _Obj:
    name: str | None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else C.VMLINUX


def _klp_message(d: Diagnostic, cands: list[dict[str, Any]]) -> str:
    kind = d.extra.get("kind")
    if kind == "ambiguous" and cands:
        lines = "; ".join(
            f"{c['sympos']}: {c.get('address', c.get('offset'))} size {c['size']}"
            + (f" ({c['file']})" if c.get("file") else "")
            for c in cands
        )
        return f"'{d.symbol}' is ambiguous ({len(cands)} candidates); give old_sympos: {lines}"
    return d.message


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True


def _modinfo_name(raw: bytes) -> str | None:
    i = raw.find(b"\0name=")
    if i < 0:
        return None
    end = raw.find(b"\0", i + 6)
    return raw[i + 6 : end].decode("utf-8", "replace") if end > 0 else None


def _ignored_undefined(machine: int | None, version: Version) -> tuple[str, ...]:
    """``ignore_undef_symbol``: x86_64 ignores ``_GLOBAL_OFFSET_TABLE_`` (5.12+)."""
    if machine == 62 and version >= (5, 12):
        return ("_GLOBAL_OFFSET_TABLE_",)
    return ()


def _module_ns_ok(namespace: str, modname: str, version: Version) -> bool:
    """``verify_module_namespace`` (6.17+; release UNCONFIRMED): ``module:NAME[,NAME]`` exports."""
    if version < (6, 17) or not namespace.startswith("module:"):
        return False
    return modname in namespace[len("module:") :].split(",")


def _basename(path: str) -> str:
    return os.path.basename(path)

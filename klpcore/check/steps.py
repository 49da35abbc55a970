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

from typing import Any

import numpy as np

from .. import constants as C
from ..elf import ElfModule
from ..elfheader import read_ident
from ..errors import KlpError, NoPluginError
from ..loader import Loader
from ..plugins import arch_spec, default_plugin_manager
from ..symbols import KernelSymbols
from .dependencies import DependencySteps, DepModule, module_base, percpu_base
from .livepatch import LivepatchCheck
from .modinfo import ModInfo, read_modinfo, undefined_symbols
from .pair import ERR_INVAL, ERR_NOENT, PATCH_FAILS, REFUSED, Finding, Stop
from .patches import read_patch
from .target import read_input

__all__ = ["PATCH_FAILS", "REFUSED", "Finding", "PairCheck"]


class PairCheck(DependencySteps):
    """Checks one module file against one target: the steps, in the kernel's order (modversions in
    :mod:`.modversions`, dependencies in :mod:`.dependencies`, the patch in :mod:`.livepatch`)."""

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

    def dependency_check(self, path: str) -> PairCheck:
        """A dependency at ``path`` goes through the same steps, at depth 1, on this pair's target."""
        return PairCheck(self.target, path, depth=1, kernel_options=self.kernel_options)

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

    def step_elf(self) -> tuple[ElfModule, bytes]:
        raw = read_input(self.path, "module", limit=1 << 30)
        if len(raw) < C.EHDR_SIZE:
            self.refuse("elf", "file too short for an ELF header", self.msg("elf_len", len=len(raw)))
            raise Stop
        if raw[:4] != C.ELFMAG:
            self.refuse("elf", "not an ELF file", self.msg("elf_magic"))
            raise Stop
        ident = read_ident(raw)  # long enough, and the magic is right
        etype = ident.type
        if etype != C.ET_REL:
            self.refuse("elf", f"ELF type {etype} is not ET_REL", self.msg("elf_type", etype=etype))
            raise Stop
        machine = ident.machine
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
        self.step_this_module_size(info)

    def step_this_module_size(self, info: ModInfo) -> None:
        """``elf_validity_check`` (6.4+; 6.13+ ``elf_validity_cache_index_mod``): the module's
        ``.gnu.linkonce.this_module`` is its ``struct module`` as its build saw it; a size other than
        the running kernel's ``sizeof(struct module)`` is refused (-ENOEXEC), before any version check."""
        if not self.kernel_target().has("this_module_size"):
            return
        sec = info.elf.section_by_name(".gnu.linkonce.this_module")
        assert sec is not None  # has_this_module
        want = self.target.module_struct_size
        if want is None:
            self.not_checked(
                "this_module",
                "the size of the target's struct module is read from an in-tree module of its tree: "
                + ("none could be read" if self.target.module_index else self.target.supplier("module tree")),
            )
        elif sec.size != want:
            self.refuse(
                "this_module",
                f".gnu.linkonce.this_module is {sec.size} bytes, the target's struct module {want} "
                "(the module was built for another kernel build)",
                self.msg("this_module_size", name=info.name),
            )
            raise Stop

    def module_namespace_reaches(self, namespace: str, modname: str) -> bool:
        """Does an export in ``namespace`` reach module ``modname`` without MODULE_IMPORT_NS (a
        ``module:`` namespace naming it, on a kernel that has them)?"""
        return self.kernel_target().has("module_namespaces") and _module_ns_ok(namespace, modname)

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
            # same_magic skips the release word only on a kernel with CONFIG_MODVERSIONS and a module with
            # __versions; without modversions (Debian 7.x) it is strcmp of the whole string.  A config fact,
            # not a release one (same_magic has read so since modversions existed): no versions.py row
            has_crcs = info.versions is not None and self.modversions is not False
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
                if self.target.config_bool("CONFIG_MODULE_SIG_FORCE") is False:
                    # without MODULE_SIG_FORCE an untrusted key only taints: nothing here can refuse it
                    self.add(
                        "signature",
                        "info",
                        "signed; whether the target trusts the key is unknown (no signed module in its tree): "
                        "at worst it taints",
                    )
                    return
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

    def step_symbols(self, deps: list[DepModule]) -> None:
        info = self.info
        assert info is not None
        exports = self.exports(deps)
        if exports is None:
            self.not_checked("symbols", "no Module.symvers and no symbol table: exports unknown")
            return
        if self.target.symvers is None:
            ks = self.target.symbols
            if ks is None or C.VMLINUX not in ks.exported:
                self.not_checked("symbols", "CRCs, GPL-only and namespaces need Module.symvers; only names checked")
            elif self.modversions and C.VMLINUX not in ks.export_crcs:
                # GPL-only flags and namespaces came with the kernel image's export table
                self.not_checked("symbols", "CRCs need Module.symvers (the kernel image has no __kcrctab)")
        gplok = info.gpl_compatible
        ignored = self._ignored_undefined(info.elf)
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
                and not self.module_namespace_reaches(e.namespace, info.name)
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

    def kernel_symbols(self, deps: list[DepModule]) -> KernelSymbols | None:
        base = self.target.symbols
        if base is None:
            return None
        ks = KernelSymbols()
        ks.objects = dict(base.objects)
        ks.source_names = list(base.source_names)
        ks.text_only = list(base.text_only)
        ks.exported = dict(base.exported)  # a kernel image's export table decides (kimage)
        ks.export_crcs = dict(base.export_crcs)
        ks.ftrace = dict(base.ftrace)
        vmlinux_exports = self._vmlinux_exports_from_symvers(base)
        if vmlinux_exports is not None:
            ks.exported[C.VMLINUX] = vmlinux_exports
        for d in deps:
            if d.symbols is not None:
                for name, obj in d.symbols.objects.items():
                    ks.objects.setdefault(name, obj)
        return ks

    def _vmlinux_exports_from_symvers(self, base: KernelSymbols) -> dict[str, int] | None:
        """vmlinux's export table when the symbol source has none (no image export table, no
        ``__ksymtab_`` symbols: kallsyms or an image of a kernel without CONFIG_KALLSYMS_ALL): the
        headers' Module.symvers names the exports, the symbol source gives their addresses."""
        if C.VMLINUX in base.exported or not base.has(C.VMLINUX) or base.has_export_info:
            return None
        cache = self.target.cache
        if "vmlinux_exports_table" not in cache:
            sv = self.target.symvers
            table: dict[str, int] | None = None
            if sv is not None:
                vm = base.objects[C.VMLINUX]
                table = {}
                unplaced = set()
                for name, e in sv.items():
                    if e.module == C.VMLINUX:
                        hits = vm.matches(name)
                        if hits:
                            table[name] = int(hits[0])
                        else:
                            unplaced.add(name)
                cache["vmlinux_exports_unplaced"] = frozenset(unplaced)
            cache["vmlinux_exports_table"] = table
        got = cache["vmlinux_exports_table"]
        return got if got is None else dict(got)

    def _ignored_undefined(self, elf: ElfModule) -> frozenset[str]:
        """``ignore_undef_symbol`` (5.12+): the undefined symbols the module's architecture
        ignores (``ArchSpec.ignored_undefined``); none when no installed plugin claims it."""
        spec = arch_spec(default_plugin_manager(), elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
        if spec is None:
            return frozenset()
        if not self.kernel_target().has("ignore_undef_symbol"):
            return spec.frob_defined
        return spec.ignored_undefined | spec.frob_defined

    def step_relocations(self, deps: list[DepModule]) -> Any:
        info = self.info
        assert info is not None
        ks = self.kernel_symbols(deps)
        if ks is None:
            self.not_checked("relocations", "no kernel symbol table (" + self.target.missing.get("symbols", "") + ")")
            return None
        unplaced: frozenset[str] = self.target.cache.get("vmlinux_exports_unplaced", frozenset())
        used = sorted({sym for _i, sym, _weak in undefined_symbols(info.elf)} & unplaced)
        if used:
            self.not_checked(
                "relocations",
                f"{len(used)} of the vmlinux exports the module uses ({', '.join(used[:3])}"
                + (", ..." if len(used) > 3 else "")
                + ") have no address in the target's symbol source (a kernel without CONFIG_KALLSYMS_ALL lists "
                "only code); supplied by " + self.target.supplier("symbols"),
            )
            return None
        kernel = self.kernel_target()
        loader = Loader(default_plugin_manager(), kernel=kernel, percpu_base=percpu_base(self.target, info.elf, kernel))
        try:
            mod = loader.open(info.elf)
        except NoPluginError as exc:
            self.not_checked("relocations", str(exc.diagnostics[0].message))
            return None
        except KlpError as exc:
            self.engine_errors("relocations", exc.diagnostics, REFUSED)
            raise Stop from None
        try:
            loaded = loader.load(mod, ks, module_base(self.target, info.elf, kernel))
        except KlpError as exc:
            self.engine_errors("relocations", exc.diagnostics, REFUSED)
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


def _modinfo_name(raw: bytes) -> str | None:
    i = raw.find(b"\0name=")
    if i < 0:
        return None
    end = raw.find(b"\0", i + 6)
    return raw[i + 6 : end].decode("utf-8", "replace") if end > 0 else None


def _module_ns_ok(namespace: str, modname: str) -> bool:
    """``verify_module_namespace`` (6.16+, row ``module_namespaces``): ``module:PATTERN[,PATTERN...]``
    exports (EXPORT_SYMBOL_GPL_FOR_MODULES, 6.17's EXPORT_SYMBOL_FOR_MODULES) reach the modules the
    patterns name, compared as ``mod_strncmp`` does (``-`` and ``_`` equal: Debian 7.2's kvm-amd and
    kvm-intel import kvm_x86_vendor_init from ``module:kvm-amd,kvm-intel``), a trailing ``*`` a prefix
    match.  Out-of-tree modules are matched too: the proposed in-tree-only rule ("module: Restrict
    module namespace access to in-tree modules", v1, July 2025) was dropped before merging (v4 only
    renamed the macro) and the loader has no ``intree`` test."""
    if not namespace.startswith("module:"):
        return False
    name = modname.replace("-", "_")
    for pattern in namespace[len("module:") :].split(","):
        pat = pattern.replace("-", "_")
        if pat.endswith("*") and name.startswith(pat[:-1]):
            return True
        if pat == name:
            return True
    return False

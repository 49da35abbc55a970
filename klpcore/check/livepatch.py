"""The livepatch check: ``klp_enable_patch`` for the patch's vmlinux functions and
``klp_module_coming`` for each patched module, with the kernel's messages and their order."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import constants as C
from ..elf import ElfModule
from ..errors import Diagnostic, InputError, KlpError, ResolutionError
from ..modtree import module_kernel_name
from ..symbols import KernelSymbols, symbols_from_elf
from .dependencies import DepModule, patched_address
from .kmsg import klp_line
from .pair import ERR_INVAL, PATCH_FAILS, REFUSED, Finding, PairBase
from .patches import PatchInfo, VmlinuxImage, module_ftrace_sites
from .target import read_input

MODULE_NAME_LEN = 56


class LivepatchCheck:
    """``klp_enable_patch`` and ``klp_module_coming`` for each patched object."""

    def __init__(self, pc: PairBase, loaded: Any, deps: list[DepModule], patch: PatchInfo) -> None:
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
                pc.engine_errors("patched-objects", exc.diagnostics, PATCH_FAILS, object=name, then=kmsg_then)
                return
        ks = KernelSymbols()
        ks.objects = {name: symbols.objects[name]} if name in symbols.objects else {}
        sites = module_ftrace_sites(elf)
        if sites is None and self.target.config_bool("CONFIG_DYNAMIC_FTRACE"):
            # ftrace_module_init records a module's call sites from its own table only:
            # without one, none of its functions has an ftrace location
            sites = {}
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
                pc.not_checked(
                    "ftrace",
                    f"{name}:{f.old_name}: "
                    + (
                        "the module has no __mcount_loc and the target's config does not say CONFIG_DYNAMIC_FTRACE"
                        if sites is None
                        else "not found in the module's symbol table"
                    ),
                )
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
                base = patched_address(elf, len(cache), self.target)
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

"""Deciding which relocations become livepatch relocations, and writing them.

The rules follow klp-build's ``klp_reloc_needed()`` (tools/objtool/klp-diff.c)
applied to a linked patch module, whose only references to the kernel are its
undefined symbols:

* a symbol the module defines (its own code and data, strings, local labels,
  section symbols) is never converted;
* a symbol vmlinux exports stays an ordinary relocation (its namespace is
  added as ``import_ns=`` when the module lacks it);
* a symbol a *module* exports is always converted, against that module
  (late module patching: the patch may load before it);
* any other undefined symbol is converted when the patched object (``--object``)
  or vmlinux defines it, else it is an error (a weak one stays, as 0);
* the architecture's rules (:class:`~klpcore.convert.rules.ConvertRules`) keep
  some names and types ordinary and name late writes the kernel cannot do.

sympos is what the kernel's ``klp_find_object_symbol`` counts: 0 for a name
unique in the object, else the 1-based position among the object's symbols of
that name, in address order for vmlinux and symbol-table order for a module.
klp-convert's annotated input (undefined ``.klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>``
symbols) is taken as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import constants as C
from ..elf import ElfModule
from ..errors import Diagnostic, InputError, KlpError
from ..kernel import KernelTarget
from ..livepatch import rfc_objname
from ..symbols import KernelSymbols, ObjectSymbols
from ..versions import BEHAVIOURS
from .elfedit import ElfEditError, Format, KlpSym, Style, check_objname, rewrite
from .rules import ConvertRules

ANNOTATED_PREFIX = ".klp.sym.rela."
#: special sections whose entries the kernel reads at patch-module load; a key in a
#: module cannot be relocated there (klp-build's error), with what to use instead
SPECIAL_SECTIONS = {
    "__jump_table": "static_key_enabled() on the key instead of a static branch",
    ".static_call_sites": "KLP_STATIC_CALL() (a call through the static call's trampoline) instead",
}


class ConvertError(KlpError):
    """The module cannot be converted as asked (CLI exit code 1)."""


@dataclass(frozen=True)
class ExportOwner:
    """Who exports a symbol, and in which namespace."""

    owner: str  # "vmlinux" or a module name
    namespace: str = ""


@dataclass
class TargetSymbols:
    """What convert knows about the target kernel.

    ``vmlinux``: its symbols in address order; ``module(name)`` returns a module's
    symbols in symbol-table order (None when unknown); ``export(name)`` who
    exports a symbol (None when nobody does); ``has_exports`` whether the
    sources list exports at all; ``source_file(name)`` maps each address of a
    local ``name`` to its source file when a vmlinux ELF is known.
    """

    vmlinux: ObjectSymbols | None
    module: Callable[[str], ObjectSymbols | None]
    export: Callable[[str], ExportOwner | None]
    has_exports: bool
    source_file: Callable[[str], dict[int, str]] = field(default=lambda name: {})
    description: str = ""
    #: the modules whose symbols are known without reading more files
    module_names: Callable[[], list[str]] = field(default=lambda: [])


@dataclass(frozen=True)
class Converted:
    """One converted symbol."""

    index: int
    name: str
    objname: str
    sympos: int
    relocations: int
    section_object: str
    how: str  # "unexported", "module export", "annotated"

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.name,
            "object": self.objname,
            "sympos": self.sympos,
            "relocations": self.relocations,
            "section_object": self.section_object,
            "how": self.how,
        }


@dataclass
class Result:
    data: bytes
    converted: list[Converted]
    kept: dict[str, str]  # symbol -> why it stays an ordinary relocation
    modinfo_added: list[str]
    style: Style
    fmt: Format
    warnings: list[Diagnostic] = field(default_factory=list)


# ---------------------------------------------------------------------------
# target symbols from klpcore's sources
# ---------------------------------------------------------------------------
def _module_name(owner: str) -> str:
    return os.path.basename(owner).replace("-", "_")


def from_kernel_symbols(ks: KernelSymbols, vmlinux_elf: str | None = None) -> TargetSymbols:
    """Target symbols from ``--symbols`` sources (System.map, kallsyms, vmlinux,
    mod.ko@ADDR, Module.symvers)."""

    def export(name: str) -> ExportOwner | None:
        meta = ks.export_meta.get(name)
        if meta is not None:
            return ExportOwner(_module_name(meta.owner), meta.namespace)
        m = ks.find_exported(name)
        return ExportOwner(m.objname) if m is not None else None

    return TargetSymbols(
        vmlinux=ks.objects.get(C.VMLINUX),
        module=lambda name: ks.objects.get(name) if name != C.VMLINUX else None,
        export=export,
        has_exports=bool(ks.export_meta) or ks.has_export_info,
        source_file=(lambda name: source_files(vmlinux_elf, name)) if vmlinux_elf else (lambda name: {}),
        description=", ".join(ks.source_names),
        module_names=lambda: ks.loaded_modules,
    )


def module_object_symbols(elf: ElfModule, name: str) -> ObjectSymbols:
    """A module's symbols as its kallsyms lists them once loaded, in symbol-table
    order: defined, named, not section or file symbols, in allocated non-init
    sections (addresses are section offsets: the module's load address is not
    needed for positions)."""
    obj = ObjectSymbols(name)
    shndx = elf.symbols["st_shndx"].tolist()
    info = elf.symbols["st_info"].tolist()
    value = elf.symbols["st_value"].tolist()
    keep_sec = [s.is_alloc and not s.name.startswith(".init") for s in elf.sections]
    names, addrs, types = [], [], []
    for i, n in enumerate(elf.symbol_names):
        sh = shndx[i]
        if not i or not n or info[i] & 0xF in (C.STT_SECTION, C.STT_FILE):
            continue
        if sh == C.SHN_UNDEF or (sh < C.SHN_LORESERVE and not keep_sec[sh]) or sh in (C.SHN_LIVEPATCH, C.SHN_XINDEX):
            continue
        names.append(n)
        addrs.append(value[i])
        types.append("T" if info[i] >> 4 != C.STB_LOCAL else "t")
    obj.extend(names, addrs, types, elf.path or name)
    return obj


def source_files(vmlinux: str, name: str) -> dict[int, str]:
    """Address -> source file (the ``STT_FILE`` symbol before it) of every local
    symbol called ``name`` in the vmlinux ELF ``vmlinux``; {} when unreadable."""
    try:
        import io

        from elftools.elf.elffile import ELFFile

        from ..elf import sym_dtype

        with open(vmlinux, "rb") as fh:
            data = fh.read()
        elf = ELFFile(io.BytesIO(data))
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return {}
        endian = "<" if elf.little_endian else ">"
        arr = np.frombuffer(
            data, dtype=sym_dtype(endian), count=symtab["sh_size"] // C.SYM_SIZE, offset=symtab["sh_offset"]
        )
        strtab = elf.get_section(symtab["sh_link"]).data()
    except Exception:  # best effort: the candidates are listed without files
        return {}
    wanted = name.encode("utf-8", "surrogateescape") + b"\0"
    offsets = [m.start() for m in re.finditer(re.escape(wanted), strtab)]
    if not offsets:
        return {}
    stype = arr["st_info"] & 0xF
    files = np.nonzero(stype == C.STT_FILE)[0]
    hits = np.nonzero(np.isin(arr["st_name"], np.array(offsets, dtype=np.uint32)) & (stype != C.STT_FILE))[0]
    out: dict[int, str] = {}
    for i in hits.tolist():
        k = int(np.searchsorted(files, i)) - 1
        if k >= 0:
            off = int(arr["st_name"][files[k]])
            out[int(arr["st_value"][i])] = strtab[off : strtab.find(b"\0", off)].decode("utf-8", "replace")
    return out


# ---------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------
@dataclass
class _Use:
    """Relocations against one symbol, per relocation section: (relocation section,
    target section, target writable, offsets, types) as arrays."""

    chunks: list[tuple[str, str, bool, np.ndarray, np.ndarray]] = field(default_factory=list)
    _sites: list[tuple[str, str, int, int, bool]] | None = None

    @property
    def count(self) -> int:
        return sum(len(c[3]) for c in self.chunks)

    def sites(self) -> list[tuple[str, str, int, int, bool]]:
        """One site per (relocation section, type): its first offset; rules depend on no more."""
        if self._sites is not None:
            return self._sites
        out = []
        for relsec, target, writable, offs, types in self.chunks:
            uniq, first = np.unique(types, return_index=True)
            for t, k in sorted(zip(uniq.tolist(), first.tolist(), strict=True), key=lambda p: p[1]):
                out.append((relsec, target, int(offs[k]), int(t), writable))
        self._sites = out
        return out


def _uses(elf: ElfModule) -> dict[int, _Use]:
    """Relocations of ordinary RELA sections that apply to allocated sections, against
    undefined symbols, by symbol (arrays; Python runs per section and symbol)."""
    out: dict[int, _Use] = {}
    undefined = elf.symbols["st_shndx"] == C.SHN_UNDEF
    for rs in elf.rela_sections():
        if rs.flags & (C.SHF_RELA_LIVEPATCH | C.SHF_RELA_LIVEPATCH_RFC) or not 0 < rs.info < len(elf.sections):
            continue
        target = elf.sections[rs.info]
        if not target.is_alloc:
            continue
        arr = elf.relas(rs.index)
        syms = (arr["r_info"] >> np.uint64(32)).astype(np.int64)
        pick = np.nonzero(undefined[syms] & (syms > 0))[0]
        if not pick.size:
            continue
        syms = syms[pick]
        order = np.argsort(syms, kind="stable")
        syms = syms[order]
        offs = arr["r_offset"][pick][order]
        types = (arr["r_info"][pick][order] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        writable = target.is_write and target.name != ".data..ro_after_init"
        uniq, starts = np.unique(syms, return_index=True)
        bounds = [*starts.tolist(), len(syms)]
        for n, sym in enumerate(uniq.tolist()):
            a, b = bounds[n], bounds[n + 1]
            out.setdefault(sym, _Use()).chunks.append((rs.name, target.name, writable, offs[a:b], types[a:b]))
    return out


def _parse_annotated(name: str) -> tuple[str, str, str, int] | None:
    """``.klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>`` -> its four parts."""
    rest = name[len(ANNOTATED_PREFIX) :]
    lp_obj, dot1, rest = rest.partition(".")
    sym_obj, dot2, rest = rest.partition(".")
    sym, comma, pos = rest.rpartition(",")
    if not (dot1 and dot2 and comma and lp_obj and sym_obj and sym) or not pos.isdigit():
        return None
    return lp_obj, sym_obj, sym, int(pos)


def plan_and_write(
    elf: ElfModule,
    target: TargetSymbols,
    kernel: KernelTarget,
    rules: ConvertRules,
    type_name: Callable[[int], str],
    *,
    objname: str = C.VMLINUX,
    positions: Mapping[str, int] | None = None,
    mark: bool = False,
    fmt: Format = "final",
) -> Result:
    """Convert ``elf`` (see the module docstring); raises :class:`ConvertError`
    with one diagnostic per problem, or :class:`InputError` for bad requests."""
    positions = dict(positions or {})
    mod = elf.name
    errors: list[Diagnostic] = []
    warnings: list[Diagnostic] = []

    def err(message: str, **kw: Any) -> None:
        errors.append(Diagnostic(message, module=mod, **kw))

    try:
        check_objname(objname, "--object")
    except ElfEditError as exc:
        raise InputError(str(exc)) from None
    if objname != C.VMLINUX and target.module(objname) is None:
        raise InputError(
            f"--object {objname}: no symbols of module {objname} in the target ({target.description or 'no sources'}); "
            f"give --symbols {objname}.ko@ADDRESS or a kallsyms that lists [{objname}], or --target with its module"
        )
    if target.vmlinux is None or not len(target.vmlinux):
        raise InputError(
            "no vmlinux symbols in the target: give --symbols System.map (the linux-image -dbg package has it), "
            "a vmlinux ELF or kallsyms"
        )
    if not target.has_exports:
        raise InputError(
            "the symbol sources list no exports (no __ksymtab_ entries and no Module.symvers): convert cannot tell "
            "an exported symbol from an unexported one; add --symbols Module.symvers (linux-headers package) or a "
            "System.map"
        )
    if not elf.is_livepatch and not mark:
        err(
            'module is not marked as a livepatch module (.modinfo has no livepatch=Y, MODULE_INFO(livepatch, "Y")): '
            "the kernel would not treat it as one; give --mark to add livepatch=Y"
        )
    if fmt == "final" and not kernel.has("final_klp_format"):
        raise InputError(
            f"Linux {kernel.label} reads the 2015 RFC format only (versions row final_klp_format, "
            f"{BEHAVIOURS['final_klp_format'].label}): use --format rfc2015"
        )

    names = elf.symbol_names
    shndx = elf.symbols["st_shndx"].tolist()
    info = elf.symbols["st_info"].tolist()
    uses = _uses(elf)
    chosen: dict[int, KlpSym] = {}
    converted: list[Converted] = []
    kept: dict[str, str] = {}
    namespaces: set[str] = set()
    used_positions: set[str] = set()
    have_ns = set(elf.modinfo.get("import_ns", []))

    for index in sorted(uses):
        use = uses[index]
        name = names[index]
        if index == 0 or shndx[index] != C.SHN_UNDEF or not name:
            continue  # the module defines it (or it is already a livepatch symbol)
        bind = info[index] >> 4
        where = f"symbol '{name}'"
        if name.startswith(ANNOTATED_PREFIX):
            parts = _parse_annotated(name)
            if parts is None:
                err(f"{where}: not of the form .klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>", symbol=name)
                continue
            lp_obj, a_obj, sym, pos = parts
            chosen[index] = KlpSym(a_obj, pos, section_object=lp_obj, name=sym)
            converted.append(Converted(index, sym, a_obj, pos, use.count, lp_obj, "annotated"))
            continue
        why = rules.keep_symbol(name)
        if why is not None:
            kept[name] = why
            continue
        owner = target.export(name)
        if owner is not None and owner.owner == C.VMLINUX:
            kept[name] = "exported by vmlinux"
            if owner.namespace and owner.namespace not in have_ns:
                namespaces.add(owner.namespace)
            continue
        how = "module export" if owner is not None else "unexported"
        sym_obj: str | None = owner.owner if owner is not None else None
        table: ObjectSymbols | None = None
        if sym_obj is not None:
            table = target.module(sym_obj)
        else:
            for cand in (objname, C.VMLINUX) if objname != C.VMLINUX else (C.VMLINUX,):
                t = target.vmlinux if cand == C.VMLINUX else target.module(cand)
                if t is not None and t.has_name(name):
                    sym_obj, table = cand, t
                    break
        if sym_obj is None:
            if bind == C.STB_WEAK:
                kept[name] = "weak, defined nowhere in the target: the kernel resolves it to 0"
                continue
            where_looked = "vmlinux" if objname == C.VMLINUX else f"{objname} or vmlinux"
            others = [m for m in target.module_names() if m != objname and (t := target.module(m)) and t.has_name(name)]
            hint = (
                f"; {', '.join(others)} define{'s' if len(others) == 1 else ''} it: give --object {others[0]}"
                if others
                else ""
            )
            err(
                f"{where}: undefined, not exported to modules and not defined in {where_looked} "
                f"({target.description or 'the target'}){hint}",
                symbol=name,
            )
            continue
        try:
            check_objname(sym_obj, where)
        except ElfEditError as exc:
            err(str(exc), symbol=name)
            continue
        if fmt == "rfc" and rfc_objname(f"{C.KLP_RFC_RELA_PREFIX}{sym_obj}.text") != sym_obj:
            err(
                f"{where}: object {sym_obj} cannot be named in the 2015 RFC format: its __klp_rela_ section names "
                f"are read back as object {rfc_objname(f'{C.KLP_RFC_RELA_PREFIX}{sym_obj}.text')!r} (the text after "
                "the last '_')",
                symbol=name,
            )
            continue
        sympos = _sympos(name, sym_obj, table, positions, target, err)
        if name in positions:
            used_positions.add(name)
        if sympos is None:
            continue
        kept_types = [(s, why) for s in use.sites() if (why := rules.keep_type(s[3], s[1])) is not None]
        if kept_types:
            (relsec, tsec, off, rtype, _), reason = kept_types[0]
            err(
                f"{where} ({sym_obj}, {how}) needs a livepatch relocation, but {type_name(rtype)} at {tsec}+{off:#x} "
                f"must stay an ordinary relocation on this architecture ({reason})",
                symbol=name,
                section=relsec,
            )
            continue
        late = sym_obj != C.VMLINUX or not kernel.has("early_vmlinux_klp")
        for relsec, tsec, off, rtype, writable in use.sites():
            if tsec in SPECIAL_SECTIONS and late:
                err(
                    f"{tsec} entry at {off:#x} refers to '{name}' of {sym_obj}: the kernel reads {tsec} when the "
                    f"patch module loads, before {sym_obj} may be there, and cannot take a livepatch relocation "
                    f"there; use {SPECIAL_SECTIONS[tsec]}",
                    symbol=name,
                    section=relsec,
                )
                break
            if late and tsec.startswith(".init"):
                err(
                    f"{tsec}+{off:#x} refers to '{name}' of {sym_obj}: its livepatch relocation would be applied when "
                    f"{sym_obj if sym_obj != C.VMLINUX else 'the patch'} is enabled, after the kernel freed the patch "
                    "module's init memory; move the reference out of init code",
                    symbol=name,
                    section=relsec,
                )
                break
            b = rules.late_hazard(rtype, tsec, writable, kernel) if late else None
            if b is not None:
                err(
                    f"{type_name(rtype)} at {tsec}+{off:#x} against '{name}' ({sym_obj}) is applied late (when "
                    f"{sym_obj if sym_obj != C.VMLINUX else 'the patch'} is enabled), into "
                    f"{'writable' if writable else 'read-only'} memory, which Linux {kernel.label} cannot write "
                    f"for this type (versions row {b.name}, {b.label}: {b.description})",
                    symbol=name,
                    section=relsec,
                    index=None,
                )
                break
        else:
            # the 2015 RFC marks a symbol found through the exports (klp_find_external_symbol) external
            ksym = KlpSym(sym_obj, sympos, external=fmt == "rfc" and how == "module export")
            chosen[index] = ksym
            converted.append(Converted(index, name, sym_obj, sympos, use.count, sym_obj, how))

    for name in sorted(set(positions) - used_positions):
        err(f"--position {name}={positions[name]}: the module has no reference to convert to '{name}'", symbol=name)
    if errors:
        raise ConvertError(errors)

    style: Style = "objtool" if rules.none_type == 0 and fmt == "final" else "kpatch"
    modinfo = [f"import_ns={ns}" for ns in sorted(namespaces)]
    try:
        data = rewrite(elf, chosen, fmt=fmt, style=style, livepatch_modinfo=mark, modinfo=modinfo)
    except ElfEditError as exc:
        raise ConvertError(Diagnostic(str(exc), module=mod)) from None
    if mark and not elf.is_livepatch:
        modinfo.insert(0, "livepatch=Y")
    if not chosen:
        warnings.append(
            Diagnostic(
                "no relocation needed converting: the output has no livepatch relocations",
                module=mod,
                severity="warning",
            )
        )
    return Result(data, converted, kept, modinfo, style, fmt, warnings)


def _sympos(
    name: str,
    objname: str,
    table: ObjectSymbols | None,
    positions: Mapping[str, int],
    target: TargetSymbols,
    err: Callable[..., None],
) -> int | None:
    """The kernel's position of ``name`` in ``objname`` (0 when unique)."""
    given = positions.get(name)
    addrs = table.matches(name) if table is not None else []
    if given is not None:
        if addrs and not 1 <= given <= len(addrs):
            err(
                f"--position {name}={given}: {objname} has {len(addrs)} symbol(s) called '{name}' "
                f"(positions 1..{len(addrs)})",
                symbol=name,
            )
            return None
        return given
    if len(addrs) <= 1:
        return 0
    files = target.source_file(name) if objname == C.VMLINUX else {}
    listing = "; ".join(f"{k}: {a:#x}" + (f" ({files[a]})" if a in files else "") for k, a in enumerate(addrs, 1))
    err(
        f"symbol '{name}' occurs {len(addrs)} times in {objname}: settle it with --position {name}=N ({listing})",
        symbol=name,
        extra={
            "object": objname,
            "kind": "ambiguous",
            "positions": [{"sympos": k, "address": hex(a)} for k, a in enumerate(addrs, 1)],
            "candidates": [
                {"sympos": k, "address": hex(a), **({"file": files[a]} if a in files else {})}
                for k, a in enumerate(addrs, 1)
            ],
        },
    )
    return None


def convert(
    elf: ElfModule,
    target: TargetSymbols,
    kernel: KernelTarget,
    *,
    objname: str = C.VMLINUX,
    positions: Mapping[str, int] | None = None,
    mark: bool = False,
    fmt: Format = "final",
    pm: Any = None,
) -> Result:
    """Convert ``elf`` with its architecture plugin's rules (see :func:`plan_and_write`)."""
    from ..plugins import default_plugin_manager, identify

    pm = pm or default_plugin_manager()
    hooks = identify(pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags, kernel)
    rules = hooks.klp_arch_convert_rules(arch=hooks.spec, kernel=kernel)  # type: ignore[attr-defined]
    if rules is None:
        rules = ConvertRules(none_type=0 if 0 in hooks.spec.types else None)
    return plan_and_write(
        elf,
        target,
        kernel,
        rules,
        hooks.spec.type_name,
        objname=objname,
        positions=positions,
        mark=mark,
        fmt=fmt,
    )


__all__: Sequence[str] = [
    "ConvertError",
    "Converted",
    "ExportOwner",
    "Result",
    "TargetSymbols",
    "convert",
    "from_kernel_symbols",
    "from_target",
    "module_object_symbols",
    "plan_and_write",
]


def from_target(target: Any) -> TargetSymbols:
    """Target symbols from a :class:`klpcore.check.target.Target` (an extracted
    distribution kernel): its System.map / kallsyms / vmlinux, its
    Module.symvers for exports (else the ``__ksymtab_`` entries) and its module
    tree for the symbols of a module object."""
    ks = target.symbols
    if ks is None:
        raise InputError(f"target {target.path}: no vmlinux symbols ({target.missing.get('symbols', 'not found')})")
    symvers = target.symvers
    base = from_kernel_symbols(ks, str(target.vmlinux_path) if target.vmlinux_path else None)
    cache: dict[str, ObjectSymbols | None] = {}

    def export(name: str) -> ExportOwner | None:
        if symvers is not None:
            e = symvers.get(name)
            return ExportOwner(_module_name(e.module), e.namespace) if e is not None else None
        return base.export(name)

    def module(name: str) -> ObjectSymbols | None:
        if name == C.VMLINUX:
            return None
        if name not in cache:
            found = ks.objects.get(name)
            if found is None and target.find_module(name) is not None:
                found = module_object_symbols(target.module_tree.read(name), name)
            cache[name] = found
        return cache[name]

    return TargetSymbols(
        vmlinux=base.vmlinux,
        module=module,
        export=export,
        has_exports=symvers is not None or base.has_exports,
        source_file=base.source_file,
        description=str(target.path),
        module_names=base.module_names,
    )

"""The patched functions of a livepatch module, and whether the target has them.

Three producers describe a patch differently; each is read through the
relocations of its data (the pointers are relocations in the ``.ko``):

* upstream sample style (``samples/livepatch``, hand-written modules): static
  ``struct klp_patch`` / ``klp_object[]`` / ``klp_func[]`` initialisers.  The
  patch is the datum whose first pointer is ``__this_module`` and whose second
  points at an object array; ``klp_object`` starts ``name, funcs``; ``klp_func``
  starts ``old_name, new_func, old_sympos``.  Array strides come from the
  array symbols' sizes (one terminating zero element each);
* klp-build (objtool): ``struct klp_object_ext`` (64 bytes: ``name``, ``funcs``,
  callbacks, ``nr_funcs`` at 56) and ``struct klp_func_ext`` (24 bytes:
  ``old_name``, ``new_func``, ``sympos``) in ``__klp_objects``/``__klp_funcs``
  (6.19) or ``.init.klp_objects``/``.init.klp_funcs`` (later);
* kpatch-build: ``struct kpatch_patch_func`` (56 bytes: ``new_addr``,
  ``new_size``, ``old_addr``, ``old_size``, ``sympos``, ``name``, ``objname``)
  in ``.kpatch.funcs``.
"""

from __future__ import annotations

import bisect
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import constants as C
from ..elf import ElfModule
from ..elfheader import ElfHeaderError, read_header, section_headers

KLP_BUILD_SECTIONS = ((".init.klp_objects", ".init.klp_funcs"), ("__klp_objects", "__klp_funcs"))
OBJ_EXT_SIZE, FUNC_EXT_SIZE, NR_FUNCS_OFFSET = 64, 24, 56
KPATCH_FUNC_SIZE = 56


def pointer_type(elf: ElfModule) -> int | None:
    """The relocation type of a 64-bit pointer in ``elf``'s data (``ArchSpec.pointer_type``
    of its architecture plugin); None (every type counts) when no installed plugin claims it."""
    from ..plugins import arch_spec, default_plugin_manager

    spec = arch_spec(default_plugin_manager(), elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
    return spec.pointer_type if spec is not None else None


@dataclass(frozen=True)
class Pointer:
    """A pointer field: the target section and offset, and the symbol it was written against."""

    shndx: int
    offset: int
    symbol: str


@dataclass
class PatchFunc:
    old_name: str | None
    sympos: int
    new_func: str | None  # the replacement, as symbol[+offset]
    new_ptr: Pointer | None = None


@dataclass
class PatchObject:
    name: str | None  # None = vmlinux
    funcs: list[PatchFunc] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else C.VMLINUX


@dataclass
class PatchInfo:
    producer: str | None  # "sample", "klp-build", "kpatch" or None
    objects: list[PatchObject]
    problems: list[str] = field(default_factory=list)

    @property
    def functions(self) -> list[tuple[PatchObject, PatchFunc]]:
        return [(o, f) for o in self.objects for f in o.funcs]


class _Pointers:
    """Pointer fields of a module's data, read from its (non-livepatch) relocations."""

    def __init__(self, elf: ElfModule) -> None:
        self.elf = elf
        self._maps: dict[int, dict[int, Pointer]] = {}
        self._by_target = {s.info: s.index for s in elf.rela_sections() if not s.flags & C.SHF_RELA_LIVEPATCH}
        self._func_syms: dict[int, list[tuple[int, str]]] | None = None
        self.abs64 = pointer_type(elf)

    def fields(self, shndx: int) -> dict[int, Pointer]:
        m = self._maps.get(shndx)
        if m is not None:
            return m
        m = {}
        rel = self._by_target.get(shndx)
        if rel is not None:
            relas = self.elf.relas(rel)
            syms = self.elf.symbols
            for off, info, addend in zip(
                relas["r_offset"].tolist(), relas["r_info"].tolist(), relas["r_addend"].tolist(), strict=True
            ):
                if self.abs64 is not None and info & 0xFFFFFFFF != self.abs64:
                    continue
                si = info >> 32
                nd = int(syms["st_shndx"][si])
                value = int(syms["st_value"][si])
                name = self.elf.symbol_names[si]
                if not name and 0 < nd < len(self.elf.sections):
                    name = self.elf.sections[nd].name
                m[off] = Pointer(nd, value + addend, name if addend == 0 else f"{name}+{addend:#x}")
        self._maps[shndx] = m
        return m

    def get(self, shndx: int, offset: int) -> Pointer | None:
        return self.fields(shndx).get(offset)

    def string(self, p: Pointer | None) -> str | None:
        if p is None or not 0 < p.shndx < len(self.elf.sections):
            return None
        data = self.elf.section_data(p.shndx)
        if p.offset >= len(data):
            return None
        end = data.find(b"\0", p.offset)
        return data[p.offset : end if end >= 0 else len(data)].decode("utf-8", "replace")

    def u64(self, shndx: int, offset: int) -> int:
        data = self.elf.section_data(shndx)
        if offset + 8 > len(data):
            return 0
        return int(struct.unpack_from(self.elf.endian + "Q", data, offset)[0])

    def u32(self, shndx: int, offset: int) -> int:
        data = self.elf.section_data(shndx)
        if offset + 4 > len(data):
            return 0
        return int(struct.unpack_from(self.elf.endian + "I", data, offset)[0])

    def function_name(self, p: Pointer | None) -> str | None:
        """``name`` or ``name+off`` of the function a pointer reaches."""
        if p is None:
            return None
        if self._func_syms is None:
            self._func_syms = {}
            syms = self.elf.symbols
            for i in range(1, self.elf.nsyms):
                if int(syms["st_info"][i]) & 0xF == C.STT_FUNC:
                    nd = int(syms["st_shndx"][i])
                    self._func_syms.setdefault(nd, []).append((int(syms["st_value"][i]), self.elf.symbol_names[i]))
            for v in self._func_syms.values():
                v.sort()
        funcs = self._func_syms.get(p.shndx, [])
        i = bisect.bisect_right(funcs, (p.offset, "\uffff")) - 1
        if i >= 0:
            value, name = funcs[i]
            return name if value == p.offset else f"{name}+{p.offset - value:#x}"
        return p.symbol

    def array_symbol_size(self, shndx: int, offset: int) -> int | None:
        syms = self.elf.symbols
        hit = np.nonzero(
            (syms["st_shndx"] == shndx) & (syms["st_value"] == offset) & ((syms["st_info"] & 0xF) == C.STT_OBJECT)
        )[0]
        sizes = [int(syms["st_size"][i]) for i in hit.tolist() if int(syms["st_size"][i])]
        return max(sizes) if sizes else None


def read_patch(elf: ElfModule) -> PatchInfo:
    """The livepatch objects and functions ``elf`` declares (empty when none)."""
    ptrs = _Pointers(elf)
    for objs_name, _funcs_name in KLP_BUILD_SECTIONS:
        sec = elf.section_by_name(objs_name)
        if sec is not None:
            return _klp_build(elf, ptrs, sec.index)
    sec = elf.section_by_name(".kpatch.funcs")
    if sec is not None:
        return _kpatch(elf, ptrs, sec.index)
    return _sample(elf, ptrs)


def _klp_build(elf: ElfModule, ptrs: _Pointers, objs: int) -> PatchInfo:
    info = PatchInfo("klp-build", [])
    size = elf.sections[objs].size
    for base in range(0, size - OBJ_EXT_SIZE + 1, OBJ_EXT_SIZE):
        name = ptrs.string(ptrs.get(objs, base))
        funcs_ptr = ptrs.get(objs, base + 8)
        nr = ptrs.u32(objs, base + NR_FUNCS_OFFSET)
        obj = PatchObject(name)
        if funcs_ptr is None:
            info.problems.append(f"{elf.sections[objs].name}+{base:#x}: no funcs pointer")
        else:
            for j in range(nr):
                off = funcs_ptr.offset + j * FUNC_EXT_SIZE
                new = ptrs.get(funcs_ptr.shndx, off + 8)
                obj.funcs.append(
                    PatchFunc(
                        ptrs.string(ptrs.get(funcs_ptr.shndx, off)),
                        ptrs.u64(funcs_ptr.shndx, off + 16),
                        ptrs.function_name(new),
                        new,
                    )
                )
        info.objects.append(obj)
    return info


def _kpatch(elf: ElfModule, ptrs: _Pointers, sec: int) -> PatchInfo:
    info = PatchInfo("kpatch", [])
    by_obj: dict[str | None, PatchObject] = {}
    for base in range(0, elf.sections[sec].size - KPATCH_FUNC_SIZE + 1, KPATCH_FUNC_SIZE):
        new = ptrs.get(sec, base)
        objname = ptrs.string(ptrs.get(sec, base + 48))
        key = None if objname in (None, C.VMLINUX) else objname
        obj = by_obj.get(key)
        if obj is None:
            obj = by_obj[key] = PatchObject(key)
            info.objects.append(obj)
        obj.funcs.append(
            PatchFunc(ptrs.string(ptrs.get(sec, base + 40)), ptrs.u64(sec, base + 32), ptrs.function_name(new), new)
        )
    return info


def _stride(starts: list[int], base: int, total: int | None) -> int | None:
    """Element size of an array with ``starts`` elements and a zero terminator."""
    if len(starts) >= 2:
        return starts[1] - starts[0]
    if total:
        return total // (len(starts) + 1)
    return None


def _sample(elf: ElfModule, ptrs: _Pointers) -> PatchInfo:
    """Static ``klp_patch`` initialisers (samples/livepatch style)."""
    this_module = {i for i, n in enumerate(elf.symbol_names) if n == "__this_module"}
    if not this_module:
        return PatchInfo(None, [])
    syms = elf.symbols
    marks = np.array(sorted(this_module), dtype=np.uint64)
    for sec in elf.sections:
        if not sec.is_alloc or sec.is_exec or sec.name.startswith(".gnu.linkonce"):
            continue
        rel = ptrs._by_target.get(sec.index)
        if rel is None or not np.isin(elf.relas(rel)["r_info"] >> np.uint64(32), marks).any():
            continue  # no pointer to __this_module here (most sections): no field map to build
        for off, p in sorted(ptrs.fields(sec.index).items()):
            if p.symbol != "__this_module" and not p.symbol.startswith("__this_module+"):
                continue
            objs_ptr = ptrs.get(sec.index, off + 8)
            if objs_ptr is None or not 0 < objs_ptr.shndx < len(elf.sections):
                continue
            objects = _sample_objects(elf, ptrs, objs_ptr)
            if objects is not None:
                return objects
    del syms
    return PatchInfo(None, [])


def _looks_like_funcs(elf: ElfModule, ptrs: _Pointers, p: Pointer) -> bool:
    name = ptrs.get(p.shndx, p.offset)
    new = ptrs.get(p.shndx, p.offset + 8)
    if name is None or new is None or not 0 < new.shndx < len(elf.sections):
        return False
    return elf.sections[new.shndx].is_exec and ptrs.string(name) is not None


def _sample_objects(elf: ElfModule, ptrs: _Pointers, objs: Pointer) -> PatchInfo | None:
    total = ptrs.array_symbol_size(objs.shndx, objs.offset)
    fields = ptrs.fields(objs.shndx)
    limit = objs.offset + total if total else elf.sections[objs.shndx].size
    starts = []
    for off in sorted(fields):
        if objs.offset <= off - 8 < limit and (off - 8 - objs.offset) >= 0:
            p = fields[off]
            if 0 < p.shndx < len(elf.sections) and _looks_like_funcs(elf, ptrs, p):
                starts.append(off - 8)
    if not starts or starts[0] != objs.offset:
        return None
    info = PatchInfo("sample", [])
    stride = _stride(starts, objs.offset, total)
    if stride is None:
        info.problems.append("object array size unknown (no symbol); read one object")
        starts = starts[:1]
    else:
        starts = [s for s in starts if (s - objs.offset) % stride == 0]
    for s in starts:
        obj = PatchObject(ptrs.string(ptrs.get(objs.shndx, s)))
        funcs = fields[s + 8]
        ftotal = ptrs.array_symbol_size(funcs.shndx, funcs.offset)
        ffields = ptrs.fields(funcs.shndx)
        flimit = funcs.offset + ftotal if ftotal else elf.sections[funcs.shndx].size
        fstarts = []
        pos = funcs.offset
        for off in sorted(ffields):
            if funcs.offset <= off < flimit and _looks_like_funcs(elf, ptrs, Pointer(funcs.shndx, off, "")):
                fstarts.append(off)
        fstride = _stride(fstarts, funcs.offset, ftotal)
        if fstride is None:
            info.problems.append(f"function array of object {obj.label} has unknown size; read one function")
            fstarts = fstarts[:1]
        else:
            fstarts = [f for f in fstarts if (f - funcs.offset) % fstride == 0]
        for pos in fstarts:
            new = ptrs.get(funcs.shndx, pos + 8)
            obj.funcs.append(
                PatchFunc(
                    ptrs.string(ptrs.get(funcs.shndx, pos)),
                    ptrs.u64(funcs.shndx, pos + 16),
                    ptrs.function_name(new),
                    new,
                )
            )
        info.objects.append(obj)
    return info


# --------------------------------------------------------------------------
# ftrace locations
# --------------------------------------------------------------------------
def module_ftrace_sites(elf: ElfModule) -> dict[int, list[int]] | None:
    """``__mcount_loc``/``__patchable_function_entries`` of a module: section -> sorted offsets.
    ``None`` when the module has neither section."""
    out: dict[int, list[int]] = {}
    ptrs = _Pointers(elf)
    found = False
    for name in ("__mcount_loc", "__patchable_function_entries"):
        sec = elf.section_by_name(name)
        if sec is None:
            continue
        found = True
        for p in ptrs.fields(sec.index).values():
            out.setdefault(p.shndx, []).append(p.offset)
    for v in out.values():
        v.sort()
    return out if found else None


def module_function_extent(elf: ElfModule, name: str, sympos: int) -> list[tuple[int, int, int]]:
    """``(shndx, value, size)`` of every defined symbol ``name`` in symtab order."""
    syms = elf.symbols
    out = []
    for i, n in enumerate(elf.symbol_names):
        if n != name:
            continue
        nd = int(syms["st_shndx"][i])
        if nd == C.SHN_UNDEF or nd >= C.SHN_LORESERVE:
            continue
        out.append((nd, int(syms["st_value"][i]), int(syms["st_size"][i])))
    return out


class VmlinuxImage:
    """Sections of a vmlinux ELF read through ``mmap``: only what a check asks for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "rb")  # noqa: SIM115 - kept open for the mmap's lifetime
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            hdr = read_header(self._map)
            self.sections = section_headers(self._map, hdr)
        except ElfHeaderError as exc:  # a ValueError, as callers expect
            raise ValueError(f"{path}: {exc}") from None
        self.endian = hdr.endian
        self._files: tuple[list[int], list[str]] | None = None

    def read(self, address: int, size: int) -> bytes | None:
        for _name, stype, _flags, addr, off, sz, *_ in self.sections:
            if stype != C.SHT_NOBITS and addr and addr <= address and address + size <= addr + sz:
                return bytes(self._map[off + address - addr : off + address - addr + size])
        return None

    def mcount_sites(self, start: int, stop: int) -> np.ndarray | None:
        raw = self.read(start, stop - start)
        if raw is None:
            return None
        return np.sort(np.frombuffer(raw, dtype=self.endian + "u8"))

    def source_files(self) -> tuple[list[int], list[str]]:
        """(address, file) of each local function, from the STT_FILE symbols that precede them."""
        if self._files is not None:
            return self._files
        addrs: list[int] = []
        files: list[str] = []
        symtab = next((s for s in self.sections if s[1] == C.SHT_SYMTAB), None)
        if symtab is not None:
            strsec = self.sections[symtab[6]]
            strtab = self._map[strsec[4] : strsec[4] + strsec[5]]
            dt = np.dtype(
                [
                    ("name", self.endian + "u4"),
                    ("info", "u1"),
                    ("other", "u1"),
                    ("shndx", self.endian + "u2"),
                    ("value", self.endian + "u8"),
                    ("size", self.endian + "u8"),
                ]
            )
            arr = np.frombuffer(self._map, dtype=dt, count=symtab[5] // 24, offset=symtab[4])
            types = arr["info"] & 0xF
            idx = np.nonzero(types == C.STT_FILE)[0]
            current = ""
            file_at = {int(i): 0 for i in idx.tolist()}
            local_funcs = np.nonzero((types == C.STT_FUNC) & ((arr["info"] >> 4) == C.STB_LOCAL))[0]
            merged = sorted(list(file_at) + local_funcs.tolist())
            for i in merged:
                if i in file_at:
                    off = int(arr["name"][i])
                    current = bytes(strtab[off : strtab.find(b"\0", off)]).decode("utf-8", "replace")
                else:
                    addrs.append(int(arr["value"][i]))
                    files.append(current)
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = [addrs[i] for i in order]
            files = [files[i] for i in order]
        self._files = (addrs, files)
        return self._files

    def source_file(self, address: int) -> str | None:
        addrs, files = self.source_files()
        i = bisect.bisect_left(addrs, address)
        if i < len(addrs) and addrs[i] == address:
            return files[i] or None
        return None

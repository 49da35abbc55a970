"""Tiny x86_64 kernel modules and target-kernel directories for the ``check`` tests.

Everything is built in Python (tests/elfbuild.py); nothing is read from the
machine.  Addresses and CRCs are made up but consistent.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elfbuild import Obj, Rela, Sec, Sym

from klpcore import constants as C

EM_X86_64 = 62
R_64, R_PLT32 = 1, 4
RELEASE = "6.1.0-9-amd64"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "
#: vmlinux functions: name -> (address, size); "dup" twice, "notrace_fn" without an ftrace site
VMLINUX_FUNCS = {
    "cmdline_proc_show": (0xFFFFFFFF81400000, 0x40),
    "dup": (0xFFFFFFFF81400100, 0x20),
    "notrace_fn": (0xFFFFFFFF81400200, 0x20),
    "printk": (0xFFFFFFFF81400300, 0x40),
    "gpl_only_fn": (0xFFFFFFFF81400400, 0x40),
    "ns_fn": (0xFFFFFFFF81400500, 0x40),
    "klp_enable_patch": (0xFFFFFFFF81400600, 0x40),
    "__fentry__": (0xFFFFFFFF81400700, 0x10),
}
DUP2 = 0xFFFFFFFF81400800
MCOUNT_START = 0xFFFFFFFF83000000
#: symbol -> (crc, export type, namespace)
EXPORTS = {
    "module_layout": (0x11111111, "EXPORT_SYMBOL", ""),
    "printk": (0x22222222, "EXPORT_SYMBOL", ""),
    "gpl_only_fn": (0x33333333, "EXPORT_SYMBOL_GPL", ""),
    "ns_fn": (0x44444444, "EXPORT_SYMBOL_GPL", "MY_NS"),
    "klp_enable_patch": (0x55555555, "EXPORT_SYMBOL_GPL", ""),
    "__fentry__": (0x77777777, "EXPORT_SYMBOL", ""),
}


@dataclass
class Mod:
    """A module to build."""

    name: str
    imports: list[str] = field(default_factory=list)
    weak_imports: list[str] = field(default_factory=list)
    versions: dict[str, int] | None = None  # None: the CRCs of EXPORTS for every import + module_layout
    no_versions: bool = False
    exports: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=lambda: ["work"])
    notrace: list[str] = field(default_factory=list)  # functions without an __mcount_loc entry
    no_mcount: bool = False  # no __mcount_loc section at all (built without ftrace)
    modinfo: dict[str, str] = field(default_factory=dict)
    license: str | None = "GPL"
    vermagic: str | None = VERMAGIC
    livepatch: bool = False
    #: patch: object name (None = vmlinux) -> [(old_name, sympos)]
    patch: dict[str | None, list[tuple[str, int]]] | None = None
    this_module: bool = True
    machine: int = EM_X86_64

    def build(self) -> bytes:
        text = bytearray()
        syms: list[Sym] = []
        relas: list[Rela] = []
        mcount: list[int] = []
        funcs = list(self.functions)
        if self.patch:
            funcs += [f"new_{o or 'vmlinux'}_{n}" for o, fl in self.patch.items() for n, _ in fl]
        for fn in funcs:
            off = len(text)
            text += b"\xe8\x00\x00\x00\x00" + b"\xc3" + bytes(10)  # call __fentry__; ret
            syms.append(Sym(fn, ".text", off, C.STB_GLOBAL if fn in self.exports else C.STB_LOCAL, C.STT_FUNC, 16))
            relas.append(Rela(".text", off + 1, R_PLT32, "__fentry__", -4))
            if fn not in self.notrace:
                mcount.append(off)
        calls = [*self.imports, *self.weak_imports]
        for imp in calls:
            off = len(text)
            text += b"\xe8\x00\x00\x00\x00\xc3"
            relas.append(Rela(".text", off + 1, R_PLT32, imp, -4))
        secs = [Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(text), align=16)]
        if not self.no_mcount:
            secs.append(Sec("__mcount_loc", flags=C.SHF_ALLOC, data=bytes(8 * len(mcount)), align=8))
            relas += [Rela("__mcount_loc", 8 * i, R_64, ".text", o) for i, o in enumerate(mcount)]
        syms.append(Sym(".text", ".text", 0, C.STB_LOCAL, C.STT_SECTION))
        undefined = {"__fentry__", *self.imports}
        syms += [Sym(n) for n in sorted(undefined)]
        syms += [Sym(n, bind=C.STB_WEAK) for n in self.weak_imports]
        if not self.no_versions:
            versions = self.versions
            if versions is None:
                versions = {n: EXPORTS[n][0] for n in ["module_layout", *undefined, *self.weak_imports] if n in EXPORTS}
            vdata = b"".join(struct.pack("<Q", crc) + n.encode().ljust(56, b"\0") for n, crc in versions.items())
            secs.append(Sec("__versions", flags=C.SHF_ALLOC, data=vdata, align=32))
        if self.exports:
            secs.append(Sec("__ksymtab", flags=C.SHF_ALLOC, data=bytes(12 * len(self.exports)), align=4))
            secs.append(Sec("__kcrctab", flags=C.SHF_ALLOC, data=bytes(4 * len(self.exports)), align=4))
            for i, e in enumerate(self.exports):
                syms.append(Sym(f"__ksymtab_{e}", "__ksymtab", 12 * i, C.STB_LOCAL, C.STT_OBJECT, 12))
        if self.this_module:
            secs.append(Sec(".gnu.linkonce.this_module", flags=C.SHF_ALLOC | C.SHF_WRITE, data=bytes(0x380), align=64))
            syms.append(Sym("__this_module", ".gnu.linkonce.this_module", 0, C.STB_GLOBAL, C.STT_OBJECT, 0x380))
        if self.patch:
            self._patch_data(secs, syms, relas)
        modinfo = {"name": self.name}
        if self.license is not None:
            modinfo["license"] = self.license
        if self.vermagic is not None:
            modinfo["vermagic"] = self.vermagic
        if self.livepatch:
            modinfo["livepatch"] = "Y"
        modinfo.update(self.modinfo)
        return Obj(self.machine, sections=secs, symbols=syms, relas=relas, modinfo=modinfo).build()

    def _patch_data(self, secs: list[Sec], syms: list[Sym], relas: list[Rela]) -> None:
        """Sample-style static klp_patch / klp_object[] / klp_func[] (strides 200/168/152 as Linux 6.1)."""
        assert self.patch is not None
        strings = bytearray()
        data = bytearray(200)  # struct klp_patch
        relas.append(Rela(".data", 0, R_64, "__this_module"))
        objs_off = len(data)
        nobj = len(self.patch)
        data += bytes(168 * (nobj + 1))
        relas.append(Rela(".data", 8, R_64, ".data", objs_off))
        syms.append(Sym("objs", ".data", objs_off, C.STB_LOCAL, C.STT_OBJECT, 168 * (nobj + 1)))
        for k, (obj, flist) in enumerate(self.patch.items()):
            base = objs_off + 168 * k
            if obj is not None:
                relas.append(Rela(".data", base, R_64, ".rodata.str", len(strings)))
                strings += obj.encode() + b"\0"
            funcs_off = len(data)
            data += bytes(152 * (len(flist) + 1))
            relas.append(Rela(".data", base + 8, R_64, ".data", funcs_off))
            syms.append(Sym(f"funcs{k}", ".data", funcs_off, C.STB_LOCAL, C.STT_OBJECT, 152 * (len(flist) + 1)))
            for j, (old, pos) in enumerate(flist):
                fb = funcs_off + 152 * j
                relas.append(Rela(".data", fb, R_64, ".rodata.str", len(strings)))
                strings += old.encode() + b"\0"
                relas.append(Rela(".data", fb + 8, R_64, f"new_{obj or 'vmlinux'}_{old}"))
                struct.pack_into("<Q", data, fb + 16, pos)
        secs.append(Sec(".data", flags=C.SHF_ALLOC | C.SHF_WRITE, data=bytes(data), align=32))
        secs.append(Sec(".rodata.str", flags=C.SHF_ALLOC, data=bytes(strings) or b"\0"))
        syms.append(Sym(".data", ".data", 0, C.STB_LOCAL, C.STT_SECTION))
        syms.append(Sym(".rodata.str", ".rodata.str", 0, C.STB_LOCAL, C.STT_SECTION))
        # the replacements must be functions of this module (new_* were added to .text)


def system_map_text() -> str:
    rows = [(a, "T", n) for n, (a, _s) in VMLINUX_FUNCS.items()]
    rows.append((DUP2, "t", "dup"))
    rows.append((0xFFFFFFFF81400900, "T", "_etext_marker"))
    for i, n in enumerate(EXPORTS):
        rows.append((0xFFFFFFFF82000000 + 16 * i, "r", f"__ksymtab_{n}"))
    rows.append((0xFFFFFFFF81000000, "T", "module_layout"))
    rows.append((MCOUNT_START, "D", "__start_mcount_loc"))
    rows.append((MCOUNT_START + 8 * len(mcount_sites()), "D", "__stop_mcount_loc"))
    rows.sort()
    return "".join(f"{a:016x} {t} {n}\n" for a, t, n in rows)


def mcount_sites() -> list[int]:
    out = [a + 5 for n, (a, _s) in VMLINUX_FUNCS.items() if n not in ("notrace_fn", "__fentry__")]
    out.append(DUP2 + 5)
    return sorted(out)


def vmlinux() -> bytes:
    """A minimal ET_EXEC: ``.init.data`` holds the ``__mcount_loc`` array; ``.symtab`` has FILE symbols."""
    mdata = b"".join(struct.pack("<Q", a) for a in mcount_sites())
    strtab = bytearray(b"\0")
    symrows = [struct.pack("<IBBHQQ", 0, 0, 0, 0, 0, 0)]

    def sym(name: str, info: int, shndx: int, value: int, size: int) -> None:
        off = len(strtab)
        strtab.extend(name.encode() + b"\0")
        symrows.append(struct.pack("<IBBHQQ", off, info, 0, shndx, value, size))

    sym("fs/proc/cmdline.c", C.STT_FILE, C.SHN_ABS, 0, 0)
    sym("dup", C.STT_FUNC, 1, VMLINUX_FUNCS["dup"][0], 0x20)
    sym("kernel/other.c", C.STT_FILE, C.SHN_ABS, 0, 0)
    sym("dup", C.STT_FUNC, 1, DUP2, 0x20)
    sections = [
        (".text", C.SHT_PROGBITS, 0xFFFFFFFF81000000, b"\0" * 16),
        (".init.data", C.SHT_PROGBITS, MCOUNT_START, mdata),
        (".symtab", C.SHT_SYMTAB, 0, b"".join(symrows)),
        (".strtab", C.SHT_STRTAB, 0, bytes(strtab)),
    ]
    shstr = bytearray(b"\0")
    names = []
    for n, *_ in [*sections, (".shstrtab",)]:
        names.append(len(shstr))
        shstr += n.encode() + b"\0"
    sections.append((".shstrtab", C.SHT_STRTAB, 0, bytes(shstr)))
    out = bytearray(64)
    offs = []
    for _n, _t, _a, d in sections:
        out += bytes((-len(out)) % 8)
        offs.append(len(out))
        out += d
    out += bytes((-len(out)) % 8)
    shoff = len(out)
    out += bytes(64)
    for i, (_n, t, a, d) in enumerate(sections):
        link = 4 if t == C.SHT_SYMTAB else 0
        out += struct.pack("<IIQQQQIIQQ", names[i], t, 0, a, offs[i], len(d), link, 0, 8, 24 if link else 0)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    out[0:64] = ident + struct.pack(
        "<HHIQQQIHHHHHH", C.ET_EXEC, EM_X86_64, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(sections) + 1, len(sections)
    )
    return bytes(out)


CONFIG = {
    "CONFIG_X86_64": "y",
    "CONFIG_SMP": "y",
    "CONFIG_PREEMPT_BUILD": "y",
    "CONFIG_MODVERSIONS": "y",
    "CONFIG_MODULE_FORCE_LOAD": "y",
    "CONFIG_MODULE_UNLOAD": "y",
    "CONFIG_LIVEPATCH": "y",
    "CONFIG_DYNAMIC_FTRACE": "y",
    "CONFIG_STRICT_MODULE_RWX": "y",
}


def make_target(
    root: Path,
    *,
    layout: str = "installed",
    config: dict[str, str | None] | None = None,
    symvers: bool = True,
    system_map: bool = True,
    vmlinux_elf: bool = True,
    tree: dict[str, Mod] | None = None,
    placeholder: bool = True,
) -> Path:
    """A target kernel directory; ``layout`` is "installed" (extracted packages) or "flat"."""
    cfg = dict(CONFIG)
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    flat = layout == "flat"
    boot = root if flat else root / "boot"
    dbg = root if flat else root / "usr/lib/debug/boot"
    hdr = root if flat else root / f"usr/src/linux-headers-{RELEASE}"
    mods = root if flat else root / f"lib/modules/{RELEASE}"
    for d in (boot, dbg, hdr, mods):
        d.mkdir(parents=True, exist_ok=True)
    cfg_text = "".join(f"{k}={v}\n" for k, v in cfg.items()) + "# CONFIG_MODULE_SIG is not set\n"
    (boot / ("config" if flat else f"config-{RELEASE}")).write_text(cfg_text)
    if not flat and placeholder:
        (boot / f"System.map-{RELEASE}").write_text(
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
        )
    if system_map:
        (dbg / ("System.map" if flat else f"System.map-{RELEASE}")).write_text(system_map_text())
    if vmlinux_elf:
        (dbg / ("vmlinux" if flat else f"vmlinux-{RELEASE}")).write_bytes(vmlinux())
    if symvers:
        lines = [f"0x{crc:08x}\t{n}\tvmlinux\t{kind}\t{ns}\n" for n, (crc, kind, ns) in EXPORTS.items()]
        for m in (tree or {}).values():
            lines += [f"0x{0x66666666:08x}\t{e}\tkernel/{m.name}\tEXPORT_SYMBOL\t\n" for e in m.exports]
        (hdr / "Module.symvers").write_text("".join(lines))
    if flat:
        (root / "release").write_text(RELEASE + "\n")
    for fname, m in (tree or {}).items():
        p = mods / ("" if flat else "kernel") / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(m.build())
    return root

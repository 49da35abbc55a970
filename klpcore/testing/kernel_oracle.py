"""Compare klpcore's relocated module with the bytes a real kernel wrote.

A *recording* (made by ``tools/kernel_oracle/run.py`` and trimmed by
``tests/kernel_oracle/fixtures/build.py``) holds, for one module loaded by a
real kernel: the ``.ko``, every section's load address (``/sys/module/*/sections``),
the core/init/per-CPU bases, and the kernel's bytes of each section of the core
allocation.  :func:`compare` lays klpcore's output next to it and accounts for
every relocation site and every differing byte:

* ``identical``: klpcore wrote exactly the kernel's bytes;
* a rule's class: the kernel rewrote the site after relocation (ftrace, return
  thunks, sorted tables, run-time state, ...); each rule checks that the
  kernel's bytes are the documented ones, otherwise the site stays unexplained;
* ``not-in-memory:<why>``: the kernel's bytes cannot be read (init memory freed
  after insmod, sections the kernel does not load);
* ``unexplained``: anything else.  A faithful klpcore has none.

Nothing is dropped silently: every relocation site of the module lands in
exactly one class, and every differing byte outside relocation sites is
grouped into runs that are classified the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from klpcore.config import KernelConfig
from klpcore.elf import ElfModule

EM_X86_64, EM_AARCH64, EM_PPC64, EM_S390 = 62, 183, 21, 22

#: field width (bytes) of each relocation type the Debian modules use, per machine
WIDTHS: dict[int, dict[int, int]] = {
    EM_X86_64: {0: 0, 1: 8, 2: 4, 4: 4, 10: 4, 11: 4, 24: 8},
    EM_AARCH64: {
        **{t: 4 for t in (258, 261, 275, 276, 277, 278, 282, 283, 284, 285, 286, 299)},
        257: 8,
        260: 8,
    },
    # ENTRY (118) rewrites the two-instruction global entry sequence
    EM_PPC64: {38: 8, 44: 8, 26: 4, 10: 4, 50: 2, 48: 2, 64: 2, 49: 2, 63: 2, 51: 8, 118: 8},
    EM_S390: {22: 8, 5: 4, 23: 8, 19: 4, 20: 4, 16: 2, 17: 2, 18: 2, 26: 4, 4: 4, 1: 1, 2: 2, 3: 2},
}

#: sections whose entries the kernel sorts in place at load: (entry size, fields)
#: fields: "rel" s32 relative to the field, "abs" u64 absolute, "rel64" s64
#: relative (jump-label key; the loader sets/clears bit 1), "raw<n>" bytes kept
SORTED_TABLES: dict[str, tuple[int, tuple[str, ...]]] = {
    "__mcount_loc": (8, ("abs",)),
    "__patchable_function_entries": (8, ("abs",)),
    "__jump_table": (16, ("rel", "rel", "key64")),
    ".static_call_sites": (8, ("rel", "sckey")),
}
EXTABLE = {
    EM_X86_64: (12, ("rel", "rel", "raw4")),
    EM_AARCH64: (12, ("rel", "rel", "raw4")),
    EM_PPC64: (8, ("rel", "rel")),
    EM_S390: (12, ("rel", "rel", "raw4")),
}

#: sections holding run-time state that the running kernel changes after load
RUNTIME_SECTIONS = (
    ".data",
    ".bss",
    "__dyndbg",
    "__tracepoints",
    ".data..read_mostly",
    ".data.once",
    ".ref.data",
    ".data..ro_after_init",  # written by the module's init before it becomes read-only
)
X86_NOP5 = bytes.fromhex("0f1f440000")


@dataclass
class RecSection:
    name: str
    address: int
    size: int
    data: bytes | None  # None: not in the dumped core memory


@dataclass
class Recording:
    """One module as a real kernel loaded it."""

    name: str  # e.g. "x86_64/koc_basic"
    directory: Path
    module: str
    ko: Path
    core_base: int
    coresize: int
    init_base: int | None
    percpu_base: int | None
    sections: dict[str, RecSection]
    boot: dict[str, object]
    #: "legacy" (one core allocation, before 6.4) or "memory" (one allocation per memory type)
    style: str = "legacy"

    @property
    def config(self) -> Path:
        return self.directory / "config.gz"

    @property
    def symbol_files(self) -> list[Path]:
        return [p for p in (self.directory / "kallsyms", self.directory / "systemmap") if p.stat().st_size]

    @cached_property
    def config_values(self) -> dict[str, str]:
        return KernelConfig.from_file(self.config).values

    def config_value(self, option: str) -> str | None:
        return self.config_values.get(option)

    def page_size(self) -> int:
        """PAGE_SIZE of the recorded kernel, from its configuration."""
        for option, size in (
            ("CONFIG_PPC_64K_PAGES", 65536),
            ("CONFIG_ARM64_64K_PAGES", 65536),
            ("CONFIG_ARM64_16K_PAGES", 16384),
        ):
            if self.config_value(option) == "y":
                return size
        return 4096

    def static_call_keys(self) -> dict[int, int]:
        """``__SCT__x`` address -> ``__SCK__x`` address, from the recorded symbol lines."""
        addr: dict[str, int] = {}
        for path in self.symbol_files:
            for line in path.read_text().splitlines():
                w = line.split()
                if len(w) >= 3 and w[2].startswith(("__SCT__", "__SCK__")):
                    addr.setdefault(w[2], int(w[0], 16))
        return {
            a: addr["__SCK__" + n[7:]] for n, a in addr.items() if n.startswith("__SCT__") and "__SCK__" + n[7:] in addr
        }

    def ftrace_ops(self) -> set[int]:
        """Addresses of the kernel's ``ftrace_ops`` an arm64 CALL_OPS site may point at."""
        out: set[int] = set()
        for path in self.symbol_files:
            for line in path.read_text().splitlines():
                w = line.split()
                if len(w) == 3 and w[2] in ("ftrace_nop_ops", "ftrace_list_ops"):
                    out.add(int(w[0], 16))
        return out

    def kernel_memory(self) -> dict[int, bytes]:
        """Start address -> the kernel's bytes, for each recorded span."""
        return {s.address: s.data for s in self.sections.values() if s.data is not None}


def read_recording(directory: Path, module: str) -> Recording:
    meta = json.loads((directory / f"{module}.json").read_text())
    blob = (directory / f"{module}.bin").read_bytes()
    sections: dict[str, RecSection] = {}
    for name, s in meta["sections"].items():
        data = None
        if s["offset"] is not None:
            stored = blob[s["offset"] : s["offset"] + s["stored"]]
            data = stored + bytes(s["size"] - len(stored))
        addr = int(s["address"], 16)
        sections[name] = RecSection(name, addr, s["size"], data)
    init_base = meta.get("init_base")
    boot = json.loads((directory / "boot.json").read_text())
    return Recording(
        name=f"{directory.name}/{module}",
        directory=directory,
        module=module,
        ko=directory / meta.get("ko", f"{module}.ko"),
        core_base=int(meta["core_base"], 16),
        coresize=meta["coresize"],
        init_base=int(init_base, 16) if init_base else _init_base(sections, int(meta["core_base"], 16), meta),
        percpu_base=int(meta["percpu_base"], 16) if meta.get("percpu_base") else None,
        sections=sections,
        boot=boot,
        style=meta.get("style", "legacy"),
    )


def _init_base(sections: dict[str, RecSection], core: int, meta: dict[str, object]) -> int | None:
    """The init allocation starts at its lowest section (page aligned by the kernel)."""
    coresize = int(str(meta["coresize"]))
    outside = [s.address for s in sections.values() if not core <= s.address < core + coresize]
    return min(outside) if outside else None


def recordings(root: Path) -> list[tuple[str, str]]:
    """(recording folder, module) for every recorded module under ``root``."""
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "boot.json").exists()):
        for j in sorted(d.glob("*.json")):
            if j.name != "boot.json":
                out.append((d.name, j.stem))
    return out


# --------------------------------------------------------------------------
@dataclass
class Site:
    section: str
    offset: int  # in the section
    address: int
    width: int
    what: str  # "R_<type> symbol" or "bytes"
    kernel: bytes
    klpcore: bytes
    klass: str = ""


@dataclass
class Result:
    recording: str
    counts: Counter[str] = field(default_factory=Counter)
    unexplained: list[Site] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)  # sections at a different address
    sites: list[Site] = field(default_factory=list)
    bytes_compared: int = 0  # recorded kernel bytes compared with klpcore's
    bytes_identical: int = 0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        lines = [f"{self.recording}: {parts}; bytes {self.bytes_identical}/{self.bytes_compared} identical"]
        lines += [f"  misplaced: {m}" for m in self.misplaced]
        lines += [
            f"  unexplained: {s.section}+{s.offset:#x} ({s.address:#x}) {s.what}: "
            f"kernel {s.kernel.hex()} klpcore {s.klpcore.hex()}"
            for s in self.unexplained
        ]
        return "\n".join(lines)


@dataclass
class Placed:
    """klpcore's output: section name -> (address, bytes)."""

    sections: dict[str, tuple[int, bytes]]

    @classmethod
    def from_elf(cls, data: bytes) -> Placed:
        elf = ElfModule(data)
        out = {}
        for s in elf.sections:
            if s.is_alloc and s.addr:
                out[s.name] = (s.addr, b"" if s.is_nobits else elf.section_data(s.index))
        return cls(out)

    def read(self, address: int, size: int) -> bytes:
        """klpcore's bytes at [address, address+size); zero where no section lies."""
        buf = bytearray(size)
        for addr, data in self.sections.values():
            lo, hi = max(addr, address), min(addr + len(data), address + size)
            if lo < hi:
                buf[lo - address : hi - address] = data[lo - addr : hi - addr]
        return bytes(buf)


def _u(data: bytes, off: int, size: int, endian: str, signed: bool = False) -> int:
    return int.from_bytes(data[off : off + size], "little" if endian == "<" else "big", signed=signed)


def table_entries(
    data: bytes,
    address: int,
    layout: tuple[int, tuple[str, ...]],
    endian: str,
    key_map: dict[int, int] | None = None,
) -> Counter[tuple[int, ...]]:
    """The entries of a sorted table as absolute values (multiset).

    ``key_map`` maps static-call trampolines (``__SCT__x``) to their keys
    (``__SCK__x``), as ``static_call_add_module`` rewrites the key field."""
    size, fields = layout
    out: Counter[tuple[int, ...]] = Counter()
    for base in range(0, len(data) - size + 1, size):
        vals: list[int] = []
        off = base
        for f in fields:
            if f == "rel":
                vals.append((address + off + _u(data, off, 4, endian, True)) & (2**64 - 1))
                off += 4
            elif f == "abs":
                vals.append(_u(data, off, 8, endian))
                off += 8
            elif f == "key64":  # relative key with flag bits; the loader sets/clears bit 1 (init)
                vals.append((address + off + _u(data, off, 8, endian, True)) & (2**64 - 1) & ~2)
                off += 8
            elif f == "sckey":  # static call key: bit 1 tail (objtool), bit 0 init (set by the kernel)
                raw = (address + off + _u(data, off, 4, endian, True)) & (2**64 - 1)
                key = raw & ~3
                vals.append((key_map or {}).get(key, key) | (raw & 2))
                off += 4
            else:
                n = int(f[3:])
                vals.append(_u(data, off, n, endian))
                off += n
        out[tuple(vals)] += 1
    return out


class _Context:
    def __init__(self, rec: Recording, placed: Placed, elf: ElfModule) -> None:
        self.rec, self.placed, self.elf = rec, placed, elf
        self.endian = elf.endian
        self.machine = elf.machine
        k = rec.kernel_memory()
        # ftrace call sites, from the kernel's table (absolute addresses)
        self.ftrace: set[int] = set()
        for name in ("__mcount_loc", "__patchable_function_entries"):
            s = rec.sections.get(name)
            if s is not None and s.data is not None:
                self.ftrace |= {e[0] for e in table_entries(s.data, s.address, (8, ("abs",)), self.endian)}
        self.return_sites = self._rel_table(".return_sites")
        self.ftrace_ops = rec.ftrace_ops()
        self.static_calls = self._rel_table(".static_call_sites", 8)
        self.endbr_sealed = self._rel_table(".ibt_endbr_seal")
        self.lwsync_sites = self._rel_table("__lwsync_fixup") if self.machine == EM_PPC64 else set()
        self.jump_sites: set[int] = set()
        #: jump-label code address -> its target (from klpcore's own __jump_table)
        self.jump_targets: dict[int, int] = {}
        if "__jump_table" in placed.sections:
            a, d = placed.sections["__jump_table"]
            for e in table_entries(d, a, SORTED_TABLES["__jump_table"], self.endian):
                self.jump_targets[e[0]] = e[1]
            self.jump_sites = set(self.jump_targets)
        self.stack_protector_sites = self._abs_table("__stack_protector_loc")
        self.alt_ranges = self._alternatives()
        self.static_call_keys = rec.static_call_keys()
        self.sorted_ok: dict[str, bool] = {}
        for name, layout in self._sorted_tables().items():
            s = rec.sections.get(name)
            if s is None or s.data is None or name not in placed.sections:
                continue
            a, d = placed.sections[name]
            kd = s.data[: len(d)]
            self.sorted_ok[name] = table_entries(kd, s.address, layout, self.endian) == table_entries(
                d, a, layout, self.endian, self.static_call_keys
            )
        # .orc_unwind is sorted together with .orc_unwind_ip: compare (ip, entry) pairs
        if ".orc_unwind_ip" in rec.sections and ".orc_unwind" in rec.sections:
            self.sorted_ok[".orc_unwind_ip"] = self.sorted_ok[".orc_unwind"] = self._orc_pairs(k) is True

    def rec_bytes(self, address: int, size: int) -> bytes:
        """The kernel's bytes at [address, address+size) (zeros where nothing was recorded)."""
        for s in self.rec.sections.values():
            if s.data is not None and s.address <= address and address + size <= s.address + len(s.data):
                return s.data[address - s.address : address - s.address + size]
        return bytes(size)

    def _sorted_tables(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        t = dict(SORTED_TABLES)
        t["__ex_table"] = EXTABLE[self.machine]
        return t

    def _abs_table(self, name: str) -> set[int]:
        """Absolute 8-byte addresses listed in one of klpcore's sections."""
        if name not in self.placed.sections:
            return set()
        _, d = self.placed.sections[name]
        return {_u(d, o, 8, self.endian) for o in range(0, len(d) - 7, 8)}

    def _rel_table(self, name: str, stride: int = 4) -> set[int]:
        if name not in self.placed.sections:
            return set()
        a, d = self.placed.sections[name]
        return {(a + o + _u(d, o, 4, self.endian, True)) & (2**64 - 1) for o in range(0, len(d) - 3, stride)}

    def release(self) -> tuple[int, int]:
        """The recorded kernel's release (boot.json ``release``; the 6.1 recordings predate the field)."""
        from klpcore.kernel import parse_version

        text = self.rec.boot.get("release")
        return parse_version(str(text)) if text else (6, 1)

    def _alternatives(self) -> list[tuple[int, int, int, int]]:
        """.altinstructions: (site, site length, replacement, replacement length), from klpcore's bytes.
        x86 6.1: s32 instr, s32 repl, u16 cpuid, u8 instrlen, u8 replacementlen (12 bytes); from 6.3
        u32 ft_flags instead of the u16 (14 bytes).  s390 7.x: s32 instr, s32 repl, u32 feature,
        u8 instrlen (13 bytes; the replacement has the site's length)."""
        if ".altinstructions" not in self.placed.sections:
            return []
        a, d = self.placed.sections[".altinstructions"]
        if self.machine == EM_X86_64:
            size, at = (14, 12) if self.release() >= (6, 3) else (12, 10)
        elif self.machine == EM_S390 and len(d) % 13 == 0:
            size, at = 13, 12
        else:
            return []
        out = []
        for o in range(0, len(d) - size + 1, size):
            instr = (a + o + _u(d, o, 4, self.endian, True)) & (2**64 - 1)
            repl = (a + o + 4 + _u(d, o + 4, 4, self.endian, True)) & (2**64 - 1)
            n = d[o + at]
            out.append((instr, n, repl, d[o + at + 1] if self.machine == EM_X86_64 else n))
        return out

    def _orc_pairs(self, kmem: dict[int, bytes]) -> bool:
        def pairs(ip_a: int, ip: bytes, orc: bytes) -> Counter[tuple[int, bytes]]:
            n = len(ip) // 4
            return Counter(
                ((ip_a + 4 * i + _u(ip, 4 * i, 4, "<", True)) & (2**64 - 1), orc[6 * i : 6 * i + 6]) for i in range(n)
            )

        if ".orc_unwind_ip" not in self.placed.sections or ".orc_unwind" not in self.placed.sections:
            return False
        pa, pip = self.placed.sections[".orc_unwind_ip"]
        _, porc = self.placed.sections[".orc_unwind"]
        kip_s, korc_s = self.rec.sections[".orc_unwind_ip"], self.rec.sections[".orc_unwind"]
        if kip_s.data is None or korc_s.data is None:
            return False
        return pairs(kip_s.address, kip_s.data[: len(pip)], korc_s.data[: len(porc)]) == pairs(pa, pip, porc)


# Each rule: (context, site) -> class name if the rule explains the difference.
Rule = Callable[[_Context, Site], "str | None"]


def _rule_sorted(ctx: _Context, site: Site) -> str | None:
    if ctx.sorted_ok.get(site.section):
        return f"sorted-table:{site.section}"
    return None


def _rule_ftrace(ctx: _Context, site: Site) -> str | None:
    """The call-site instruction ftrace rewrites at module load (ftrace_init_nop / ftrace_make_nop)."""
    hits = [a for a in ctx.ftrace if a <= site.address + site.width - 1 and site.address < a + 8]
    if not hits:
        return None
    a = hits[0]
    o = a - site.address
    k = ctx.rec_bytes(a, 8)
    p = ctx.placed.read(a, 8)
    m = ctx.machine
    if m == EM_X86_64 and k[:5] == X86_NOP5 and p[0] == 0xE8 and o >= -4:
        return "ftrace:call-to-nop5"
    if m == EM_PPC64 and _u(k, 0, 4, "<") == 0x60000000 and _u(p, 0, 4, "<") >> 26 == 18:
        return "ftrace:bl-to-nop"
    if m == EM_AARCH64 and _u(k, 0, 4, "<") == 0xAA1E03E9 and _u(p, 0, 4, "<") == 0xD503201F:
        return "ftrace:nop-to-mov-x9-x30"
    if m == EM_S390 and k[:2] == b"\xc0\x04" and p[:2] == b"\xc0\x04":
        return "ftrace:brcl-displacement"
    return None


ARM64_NOP, ARM64_MOV_X9_X30 = 0xD503201F, 0xAA1E03E9


def _rule_arm64_call_ops(ctx: _Context, site: Site) -> str | None:
    """arm64 with DYNAMIC_FTRACE_WITH_CALL_OPS (6.4+; -fpatchable-function-entry=4,2): the table entry
    is the first of two NOPs before the function; ftrace_init_nop writes the address of an
    ftrace_ops there (``ftrace_nop_ops`` when nothing traces it) and ``mov x9, x30`` at the entry:
    16 bytes per call site, the last NOP kept."""
    if ctx.machine != EM_AARCH64:
        return None
    for a in ctx.ftrace:
        if not (a <= site.address < a + 16 and site.address + site.width <= a + 16):
            continue
        k, p = ctx.rec_bytes(a, 16), ctx.placed.read(a, 16)
        if any(_u(p, o, 4, "<") != ARM64_NOP for o in (0, 4, 8, 12)):
            return None
        ops = _u(k, 0, 8, "<")
        if _u(k, 8, 4, "<") == ARM64_MOV_X9_X30 and _u(k, 12, 4, "<") == ARM64_NOP and ops in ctx.ftrace_ops:
            return "ftrace:arm64-call-ops"
    return None


def _rule_return_thunk(ctx: _Context, site: Site) -> str | None:
    for a in ctx.return_sites:
        if (
            a <= site.address < a + 5
            and ctx.rec_bytes(a, 5) == b"\xc3\xcc\xcc\xcc\xcc"
            and ctx.placed.read(a, 1) == b"\xe9"
        ):
            return "x86:return-thunk-to-ret"
    return None


#: a static call to __static_call_return0 becomes ``xor %eax,%eax`` with CS prefixes (7.x)
X86_RET0 = bytes.fromhex("2e2e2e31c0")


def _rule_static_call(ctx: _Context, site: Site) -> str | None:
    """``.static_call_sites``: the kernel points each call at the key's current function: a NOP, a
    direct call/jmp, ``xor %eax,%eax`` for ``__static_call_return0`` (7.x) or, for the WARN trap
    static call, an ``addr32 ud1`` (``67 48 0f b9 <modrm>``, 7.x)."""
    for a in ctx.static_calls:
        if a <= site.address < a + 5 and site.address + site.width <= a + 5:
            k = ctx.rec_bytes(a, 5)
            if k == X86_NOP5 or k[0] in (0xE8, 0xE9):
                return "x86:static-call-site"
            if k == X86_RET0:
                return "x86:static-call-ret0"
            if k[:4] == bytes.fromhex("67480fb9"):
                return "x86:static-call-ud1"
    return None


def _rule_ppc64_lwsync(ctx: _Context, site: Site) -> str | None:
    """ppc64: each barrier listed in ``__lwsync_fixup`` becomes ``lwsync`` on a CPU with
    CPU_FTR_LWSYNC (do_lwsync_fixups in module_finalize; klpcore keeps the file's ``isync``)."""
    for a in ctx.lwsync_sites:
        if (
            a <= site.address
            and site.address + site.width <= a + 4
            and _u(ctx.rec_bytes(a, 4), 0, 4, "<") == 0x7C2004AC
        ):
            return "ppc64:lwsync-fixup"
    return None


def _rule_endbr_seal(ctx: _Context, site: Site) -> str | None:
    """x86 IBT: an ``endbr64`` listed in ``.ibt_endbr_seal`` (a function never called indirectly) is
    poisoned by ``apply_seal_endbr`` into a 4-byte NOP (``66 0f 1e fa`` or ``66 0f 1f 00``; 7.x
    ``0f 1f 40 d6``, ``nopl -42(%rax)``)."""
    for a in ctx.endbr_sealed:
        if a <= site.address and site.address + site.width <= a + 4:
            k, p = ctx.rec_bytes(a, 4), ctx.placed.read(a, 4)
            if p == bytes.fromhex("f30f1efa") and k.hex() in ("660f1efa", "660f1f00", "0f1f40d6"):
                return "x86:endbr-sealed"
    return None


def _rule_jump_label(ctx: _Context, site: Site) -> str | None:
    """A static branch the running kernel turned on or off: its NOP or its jump to the entry's target."""
    m = ctx.machine
    width = {EM_X86_64: 5, EM_S390: 6}.get(m, 4)
    for a in ctx.jump_sites:
        if not a <= site.address < a + width:
            continue
        k = ctx.rec_bytes(a, width)
        target = ctx.jump_targets[a]
        if m == EM_X86_64 and (k == X86_NOP5 or k[0] in (0xE9, 0xEB) or k[:2] == b"\x66\x90"):
            return "jump-label-site"
        if m == EM_PPC64:
            insn = _u(k, 0, 4, "<")
            rel = insn & 0x03FFFFFC
            rel -= (rel & 0x02000000) << 1
            if insn == 0x60000000 or (insn >> 26 == 18 and insn & 3 == 0 and a + rel == target):
                return "jump-label-site"
        if m == EM_AARCH64:
            insn = _u(k, 0, 4, "<")
            rel = (insn & 0x03FFFFFF) << 2
            rel -= (rel & 0x08000000) << 1
            if insn == ARM64_NOP or (insn >> 26 == 0b000101 and a + rel == target):
                return "jump-label-site"
        # s390: brcl 0 (off) / brcl 15 (on)
        if m == EM_S390 and k[0] == 0xC0 and k[1] in (0x04, 0xF4) and a + 2 * _u(k, 2, 4, ">", True) == target:
            return "jump-label-site"
    return None


def _rule_s390_stack_protector(ctx: _Context, site: Site) -> str | None:
    """s390 (7.x): each instruction listed in ``__stack_protector_loc`` loads the canary's address;
    the kernel rewrites it to ``llilf %rX,<lowcore offset of the canary>`` (``c0 Xf imm32``), the
    register kept (klpcore wrote the relocated ``lgrl``/``larl`` of the file)."""
    if ctx.machine != EM_S390:
        return None
    for a in ctx.stack_protector_sites:
        if a <= site.address and site.address + site.width <= a + 6:
            k, p = ctx.rec_bytes(a, 6), ctx.placed.read(a, 6)
            if (
                k[0] == 0xC0
                and k[1] & 0xF == 0xF
                and k[1] >> 4 == p[1] >> 4
                and (p[0], p[1] & 0xF) in ((0xC4, 0x8), (0xC0, 0x0))
                and _u(k, 2, 4, ">") < 0x2000
            ):
                return "s390:stack-protector-lowcore"
    return None


#: x86 NOPs the 6.1 kernel pads with (x86_nops[] for 64-bit), longest first
X86_NOPS = [
    bytes.fromhex(h)
    for h in (
        "0f1f840000000000",
        "0f1f8000000000",
        "660f1f440000",
        "0f1f440000",
        "0f1f4000",
        "0f1f00",
        "6690",
        "90",
    )
]


def _is_x86_padding(b: bytes) -> bool:
    """NOPs from the kernel's table, or a short jmp over int3s (add_nops for long runs)."""
    if len(b) >= 2 and b[0] == 0xEB and b[1] == len(b) - 2 and set(b[2:]) <= {0xCC}:
        return True
    i = 0
    while i < len(b):
        n = next((len(nop) for nop in X86_NOPS if b[i : i + len(nop)] == nop), 0)
        if not n:
            return False
        i += n
    return True


def _rule_alternative(ctx: _Context, site: Site) -> str | None:
    """apply_alternatives: the kernel wrote the replacement (a leading call/jmp
    re-targeted to the same place) padded with NOPs, or kept the original
    with its padding NOPs optimized."""
    for a, n, repl_addr, repl_len in ctx.alt_ranges:
        if not a <= site.address < a + n:
            continue
        k = ctx.rec_bytes(a, n)
        orig = ctx.placed.read(a, n)
        repl = ctx.placed.read(repl_addr, repl_len)
        if ctx.machine == EM_S390:  # same length; the kernel copies the replacement as it is
            if k == repl:
                return "s390:alternative-applied"
            continue
        if repl_len <= n and _is_x86_padding(k[repl_len:]):
            if k[:repl_len] == repl:
                return "x86:alternative-applied"
            if repl_len >= 5 and repl[0] in (0xE8, 0xE9) and k[0] == repl[0]:
                t_repl = repl_addr + 5 + _u(repl, 1, 4, "<", True)
                t_k = a + 5 + _u(k, 1, 4, "<", True)
                if t_repl == t_k and k[5:repl_len] == repl[5:]:
                    return "x86:alternative-applied"
        for cut in range(n, -1, -1):  # original kept, trailing NOPs (or an all-NOP site) rewritten
            if k[:cut] == orig[:cut] and _is_x86_padding(k[cut:]) and _is_x86_padding(orig[cut:]):
                return "x86:alternative-nops-optimized"
    return None


def _rule_static_call_trampoline(ctx: _Context, site: Site) -> str | None:
    """x86 static_call_update rewrites the module's own trampoline (__SCT__*):
    jmp to the new function, or ret for NULL."""
    if ctx.machine != EM_X86_64 or site.section != ".static_call.text":
        return None
    start = site.address - 1 if site.what != "bytes" else site.address
    if ctx.placed.read(start, 1) == b"\xe9" and ctx.rec_bytes(start, 1) in (b"\xe9", b"\xc3"):
        return "x86:static-call-trampoline"
    return None


def _rule_runtime(ctx: _Context, site: Site) -> str | None:
    if site.section == ".gnu.linkonce.this_module":
        return "runtime:struct-module"
    if site.section in RUNTIME_SECTIONS or site.section.startswith("__tracepoints"):
        return f"runtime:{site.section}"
    return None


def _rule_arm64_ftrace_plt(ctx: _Context, site: Site) -> str | None:
    """arm64 .text.ftrace_trampoline: two PLT entries module_finalize writes (adrp x16; add x16; br x16)."""
    if ctx.machine == EM_AARCH64 and site.section == ".text.ftrace_trampoline":
        s = ctx.rec.sections[site.section]
        if s.data is not None and _u(s.data, 8, 4, "<") == 0xD61F0200:
            return "arm64:ftrace-trampoline-plt"
    return None


RULES: list[Rule] = [
    _rule_sorted,
    _rule_ftrace,
    _rule_arm64_call_ops,
    _rule_return_thunk,
    _rule_static_call,
    _rule_endbr_seal,
    _rule_ppc64_lwsync,
    _rule_jump_label,
    _rule_s390_stack_protector,
    _rule_alternative,
    _rule_static_call_trampoline,
    _rule_arm64_ftrace_plt,
    _rule_runtime,
]


def relocation_sites(elf: ElfModule) -> Iterable[tuple[str, int, int, str]]:
    """(target section, offset, width, description) of every relocation entry of the module."""
    widths = WIDTHS.get(elf.machine, {})
    for rs in elf.rela_sections():
        target = elf.sections[rs.info]
        for r in elf.relas(rs.index):
            t = int(r["r_info"]) & 0xFFFFFFFF
            index = int(r["r_info"]) >> 32
            sym = elf.symbol_name(index)
            shndx = int(elf.symbols["st_shndx"][index])
            if not sym and 0 < shndx < len(elf.sections):  # a section symbol
                sym = f"[{elf.sections[shndx].name}]"
            yield target.name, int(r["r_offset"]), widths.get(t, 8), f"type {t} {sym} ({rs.name})"


def compare(rec: Recording, placed: Placed, rules: list[Rule] | None = None) -> Result:
    """Account for every relocation site and every differing byte of ``rec``."""
    rules = RULES if rules is None else rules
    elf = ElfModule.from_file(rec.ko)
    ctx = _Context(rec, placed, elf)
    res = Result(rec.name)

    symtab_at = _symtab_copy_addresses(rec, placed, elf)
    for name, s in rec.sections.items():
        if name.startswith("["):
            continue
        got = placed.sections.get(name)
        if got is None and name in symtab_at:
            # layout_symtab: the kernel copies the full symbol and string
            # tables (not SHF_ALLOC in the file) to the end of init memory
            # for kallsyms during init; klpcore does not load them
            if symtab_at[name] == s.address:
                res.counts["section:symtab-copy-in-init"] += 1
            else:
                res.misplaced.append(
                    f"{name}: kernel {s.address:#x}, end of klpcore's init layout {symtab_at[name]:#x}"
                )
        elif got is None:
            res.misplaced.append(f"{name}: kernel {s.address:#x}, klpcore did not place it")
        elif got[0] != s.address:
            res.misplaced.append(f"{name}: kernel {s.address:#x}, klpcore {got[0]:#x}")

    def classify(site: Site) -> str:
        if site.kernel == site.klpcore:
            return "identical"
        for rule in rules:
            c = rule(ctx, site)
            if c:
                return c
        return "unexplained"

    covered: dict[str, list[tuple[int, int]]] = {}
    for sec, off, width, what in relocation_sites(elf):
        target = rec.sections.get(sec)
        if target is None:
            res.counts["not-in-memory:not-loaded"] += 1
            continue
        if target.data is None:
            res.counts["not-in-memory:init-freed"] += 1
            continue
        a = target.address + off
        site = Site(sec, off, a, width, what, target.data[off : off + width], placed.read(a, width))
        site.klass = classify(site)
        covered.setdefault(sec, []).append((off, off + max(width, 1)))
        res.counts[site.klass] += 1
        res.sites.append(site)
        if site.klass == "unexplained":
            res.unexplained.append(site)

    # every other byte of the recorded spans: differing runs are sites too
    for name, s in rec.sections.items():
        if s.data is None:
            continue
        mine = placed.read(s.address, len(s.data))
        res.bytes_compared += len(mine)
        res.bytes_identical += sum(1 for x, y in zip(mine, s.data, strict=True) if x == y)
        mask = bytearray(len(s.data))
        for lo, hi in covered.get(name, []):
            mask[lo:hi] = b"\1" * (min(hi, len(mask)) - lo) if lo < len(mask) else b""
        i = 0
        n = len(s.data)
        while i < n:
            if mask[i] or s.data[i] == mine[i]:
                i += 1
                continue
            j = i
            while j < n and not mask[j] and s.data[j] != mine[j]:
                j += 1
            site = Site(name, i, s.address + i, j - i, "bytes", s.data[i:j], mine[i:j])
            site.klass = classify(site)
            key = "bytes:" + site.klass if site.klass != "unexplained" else "unexplained"
            res.counts[key] += 1
            res.sites.append(site)
            if site.klass == "unexplained":
                res.unexplained.append(site)
            i = j
    return res


def _symtab_copy_addresses(rec: Recording, placed: Placed, elf: ElfModule) -> dict[str, int]:
    """Where ``layout_symtab`` puts ``.symtab`` and ``.strtab``: appended to the
    init layout (after the last init section, each at its alignment), with
    klpcore's own init addresses."""
    if rec.style == "memory":
        return _symtab_in_init_data(rec, placed, elf)
    core_end = rec.core_base + rec.coresize
    end = rec.init_base or 0
    for sec in elf.sections:
        got = placed.sections.get(sec.name)
        # init sections: placed outside core and listed by the kernel (the
        # per-CPU section is placed elsewhere too, but not in sysfs)
        if got and sec.is_alloc and sec.name in rec.sections and not rec.core_base <= got[0] < core_end:
            end = max(end, got[0] + sec.size)
    if rec.config_value("CONFIG_STRICT_MODULE_RWX") == "y":  # strict_align() of the whole init layout
        page = rec.page_size()
        end = (end + page - 1) // page * page
    out = {}
    for name in (".symtab", ".strtab"):
        table = elf.section_by_name(name)
        if table is None:
            continue
        align = max(table.addralign, 1)
        end = (end + align - 1) // align * align
        out[name] = end
        end += table.size
    return out


def _symtab_in_init_data(rec: Recording, placed: Placed, elf: ElfModule) -> dict[str, int]:
    """6.4+: ``layout_symtab`` appends ``.symtab`` and ``.strtab`` to ``MOD_INIT_DATA``
    (after its sections, each at its alignment); with no init data section the
    kernel's own address of ``.symtab`` starts it."""
    end = None
    for sec in elf.sections:
        got = placed.sections.get(sec.name)
        freed = sec.name in rec.sections and rec.sections[sec.name].data is None  # init memory, not core
        if got and freed and sec.name.startswith(".init") and sec.is_write and not sec.is_exec:
            end = max(end or 0, got[0] + sec.size)
    if end is None:  # MOD_INIT_DATA holds only the tables (ppc64: .init.* live in core): its own allocation
        s = rec.sections.get(".symtab")
        end = s.address if s is not None else 0
    out = {}
    for name in (".symtab", ".strtab"):
        table = elf.section_by_name(name)
        if table is None:
            continue
        align = max(table.addralign, 1)
        end = (end + align - 1) // align * align
        out[name] = end
        end += table.size
    return out


def klpcore_apply_args(rec: Recording, out: Path) -> list[str]:
    """The ``klpcore apply`` command line that lays ``rec`` out at the kernel's addresses
    (``--sections`` with the kernel's own section addresses where the recording has them)."""
    listing = rec.directory / f"{rec.module}.sections"
    args = ["apply", str(rec.ko), "--config", str(rec.config), "-o", str(out), "-q"]
    for f in rec.symbol_files:
        args += ["--symbols", str(f)]
    if listing.exists():
        args += ["--sections", str(listing)]
        return args if rec.percpu_base is None else [*args, "--percpu-base", f"{rec.percpu_base:#x}"]
    args += ["--base", f"{rec.core_base:#x}"]
    if rec.init_base is not None:
        args += ["--init-base", f"{rec.init_base:#x}"]
    if rec.percpu_base is not None:
        args += ["--percpu-base", f"{rec.percpu_base:#x}"]
    return args


def corrupt(rec: Recording, section: str, offset: int) -> Recording:
    """A copy of ``rec`` with one of the kernel's bytes flipped (negative control)."""
    import copy

    bad = copy.deepcopy(rec)
    s = bad.sections[section]
    assert s.data is not None
    b = bytearray(s.data)
    b[offset] ^= 0xFF
    s.data = bytes(b)
    return bad


__all__ = [
    "RULES",
    "Placed",
    "RecSection",
    "Recording",
    "Result",
    "Site",
    "compare",
    "corrupt",
    "klpcore_apply_args",
    "read_recording",
    "recordings",
    "relocation_sites",
]

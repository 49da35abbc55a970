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

What is architecture-specific (each relocation type's field width, the
``__ex_table`` entry layout, how ftrace rewrites a call site, the rewrites
only one architecture does) is the architecture plugin's
:class:`OracleRules`, from its hook ``klp_arch_kernel_oracle``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from klpcore.config import KernelConfig
from klpcore.elf import ElfModule

#: sections whose entries the kernel sorts in place at load: (entry size, fields)
#: fields: "rel" s32 relative to the field, "abs" u64 absolute, "rel64" s64
#: relative (jump-label key; the loader sets/clears bit 1), "raw<n>" bytes kept
SORTED_TABLES: dict[str, tuple[int, tuple[str, ...]]] = {
    "__mcount_loc": (8, ("abs",)),
    "__patchable_function_entries": (8, ("abs",)),
    "__jump_table": (16, ("rel", "rel", "key64")),
    ".static_call_sites": (8, ("rel", "sckey")),
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
        """PAGE_SIZE of the recorded kernel, from its configuration (the
        architecture plugin's ``klp_arch_page_size``; 4096 without a plugin)."""
        from klpcore.kernel import KernelTarget, page_size_setting

        kernel = KernelTarget(config=KernelConfig.from_file(self.config))
        hooks = _arch_hooks(ElfModule.from_file(self.ko), kernel)
        return int(page_size_setting(hooks, kernel).value)

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

    def release(self) -> tuple[int, int]:
        """The recorded kernel's release (boot.json ``release``; the 6.1 recordings predate the field)."""
        from klpcore.kernel import parse_version

        text = self.boot.get("release")
        return parse_version(str(text)) if text else (6, 1)

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


def uint_at(data: bytes, off: int, size: int, endian: str, signed: bool = False) -> int:
    """The ``size``-byte integer at ``off`` of ``data`` (``endian``: "<" or ">")."""
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
                vals.append((address + off + uint_at(data, off, 4, endian, True)) & (2**64 - 1))
                off += 4
            elif f == "abs":
                vals.append(uint_at(data, off, 8, endian))
                off += 8
            elif f == "key64":  # relative key with flag bits; the loader sets/clears bit 1 (init)
                vals.append((address + off + uint_at(data, off, 8, endian, True)) & (2**64 - 1) & ~2)
                off += 8
            elif f == "sckey":  # static call key: bit 1 tail (objtool), bit 0 init (set by the kernel)
                raw = (address + off + uint_at(data, off, 4, endian, True)) & (2**64 - 1)
                key = raw & ~3
                vals.append((key_map or {}).get(key, key) | (raw & 2))
                off += 4
            else:
                n = int(f[3:])
                vals.append(uint_at(data, off, n, endian))
                off += n
        out[tuple(vals)] += 1
    return out


# Each rule: (context, site) -> class name if the rule explains the difference.
Rule = Callable[["Context", Site], "str | None"]


@dataclass(frozen=True)
class OracleRules:
    """An architecture's part of the comparison (hook ``klp_arch_kernel_oracle``)."""

    #: field width (bytes) of each relocation type the recorded modules use (others: 8)
    widths: Mapping[int, int] = field(default_factory=dict)
    #: ``__ex_table`` entry layout (entry size, fields as in :data:`SORTED_TABLES`); None: not compared as sorted
    extable: tuple[int, tuple[str, ...]] | None = None
    #: ftrace's rewrite of a call site at module load: (the kernel's 8 bytes at the
    #: ftrace location, klpcore's, location - site address) -> class, or None
    ftrace: Callable[[bytes, bytes, int], str | None] | None = None
    #: rewrites only this architecture does, tried after the sorted-table and
    #: ftrace rules and before the run-time state rule
    rules: Sequence[Rule] = ()


def _arch_hooks(elf: ElfModule, kernel: Any = None) -> Any:
    """The hooks of ``elf``'s architecture plugin, or None when none is installed."""
    from klpcore.errors import KlpError
    from klpcore.kernel import KernelTarget
    from klpcore.plugins import default_plugin_manager, identify

    try:
        return identify(
            default_plugin_manager(), elf.machine, elf.elfclass, elf.byteorder, elf.e_flags, kernel or KernelTarget()
        )
    except KlpError:
        return None


def arch_rules(elf: ElfModule) -> OracleRules:
    """The comparison rules of ``elf``'s architecture plugin (none without one)."""
    hooks = _arch_hooks(elf)
    rules = hooks.klp_arch_kernel_oracle() if hooks is not None else None
    return rules if rules is not None else OracleRules()


class Context:
    """What the rules see: the recording, klpcore's output, the module and tables read from them."""

    def __init__(self, rec: Recording, placed: Placed, elf: ElfModule, arch: OracleRules | None = None) -> None:
        self.rec, self.placed, self.elf = rec, placed, elf
        self.endian = elf.endian
        self.machine = elf.machine
        self.arch = arch if arch is not None else arch_rules(elf)
        #: per-comparison data an architecture's rules compute once
        self.cache: dict[str, Any] = {}
        k = rec.kernel_memory()
        # ftrace call sites, from the kernel's table (absolute addresses)
        self.ftrace: set[int] = set()
        for name in ("__mcount_loc", "__patchable_function_entries"):
            s = rec.sections.get(name)
            if s is not None and s.data is not None:
                self.ftrace |= {e[0] for e in table_entries(s.data, s.address, (8, ("abs",)), self.endian)}
        self.return_sites = self._rel_table(".return_sites")
        self.static_calls = self._rel_table(".static_call_sites", 8)
        self.jump_sites: set[int] = set()
        #: jump-label code address -> its target (from klpcore's own __jump_table)
        self.jump_targets: dict[int, int] = {}
        if "__jump_table" in placed.sections:
            a, d = placed.sections["__jump_table"]
            for e in table_entries(d, a, SORTED_TABLES["__jump_table"], self.endian):
                self.jump_targets[e[0]] = e[1]
            self.jump_sites = set(self.jump_targets)
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
        if self.arch.extable is not None:
            t["__ex_table"] = self.arch.extable
        return t

    def abs_table(self, name: str) -> set[int]:
        """Absolute 8-byte addresses listed in one of klpcore's sections."""
        if name not in self.placed.sections:
            return set()
        _, d = self.placed.sections[name]
        return {uint_at(d, o, 8, self.endian) for o in range(0, len(d) - 7, 8)}

    def rel_table(self, name: str, stride: int = 4) -> set[int]:
        """Addresses listed as s32 offsets from each entry in one of klpcore's sections (cached)."""
        key = f"rel_table:{name}:{stride}"
        if key not in self.cache:
            self.cache[key] = self._rel_table(name, stride)
        return self.cache[key]  # type: ignore[no-any-return]

    def _rel_table(self, name: str, stride: int = 4) -> set[int]:
        if name not in self.placed.sections:
            return set()
        a, d = self.placed.sections[name]
        return {(a + o + uint_at(d, o, 4, self.endian, True)) & (2**64 - 1) for o in range(0, len(d) - 3, stride)}

    def _orc_pairs(self, kmem: dict[int, bytes]) -> bool:
        def pairs(ip_a: int, ip: bytes, orc: bytes) -> Counter[tuple[int, bytes]]:
            n = len(ip) // 4
            return Counter(
                ((ip_a + 4 * i + uint_at(ip, 4 * i, 4, "<", True)) & (2**64 - 1), orc[6 * i : 6 * i + 6])
                for i in range(n)
            )

        if ".orc_unwind_ip" not in self.placed.sections or ".orc_unwind" not in self.placed.sections:
            return False
        pa, pip = self.placed.sections[".orc_unwind_ip"]
        _, porc = self.placed.sections[".orc_unwind"]
        kip_s, korc_s = self.rec.sections[".orc_unwind_ip"], self.rec.sections[".orc_unwind"]
        if kip_s.data is None or korc_s.data is None:
            return False
        return pairs(kip_s.address, kip_s.data[: len(pip)], korc_s.data[: len(porc)]) == pairs(pa, pip, porc)


def _rule_sorted(ctx: Context, site: Site) -> str | None:
    if ctx.sorted_ok.get(site.section):
        return f"sorted-table:{site.section}"
    return None


def _rule_ftrace(ctx: Context, site: Site) -> str | None:
    """The call-site instruction ftrace rewrites at module load (ftrace_init_nop / ftrace_make_nop)."""
    hits = [a for a in ctx.ftrace if a <= site.address + site.width - 1 and site.address < a + 8]
    if not hits:
        return None
    a = hits[0]
    o = a - site.address
    k = ctx.rec_bytes(a, 8)
    p = ctx.placed.read(a, 8)
    return ctx.arch.ftrace(k, p, o) if ctx.arch.ftrace is not None else None


def _rule_runtime(ctx: Context, site: Site) -> str | None:
    if site.section == ".gnu.linkonce.this_module":
        return "runtime:struct-module"
    if site.section in RUNTIME_SECTIONS or site.section.startswith("__tracepoints"):
        return f"runtime:{site.section}"
    return None


#: the core's rules; an architecture's (:attr:`OracleRules.rules`) go between ftrace and run-time state
RULES: list[Rule] = [_rule_sorted, _rule_ftrace, _rule_runtime]


def relocation_sites(elf: ElfModule, arch: OracleRules | None = None) -> Iterable[tuple[str, int, int, str]]:
    """(target section, offset, width, description) of every relocation entry of the module."""
    widths = (arch if arch is not None else arch_rules(elf)).widths
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
    """Account for every relocation site and every differing byte of ``rec``
    (``rules``: instead of the core's and the architecture's)."""
    elf = ElfModule.from_file(rec.ko)
    ctx = Context(rec, placed, elf)
    rules = [_rule_sorted, _rule_ftrace, *ctx.arch.rules, _rule_runtime] if rules is None else rules
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
    for sec, off, width, what in relocation_sites(elf, ctx.arch):
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
    return _tables_from(elf, end)


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
    return _tables_from(elf, end)


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
    "Context",
    "OracleRules",
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
    "uint_at",
]


def _tables_from(elf: ElfModule, end: int) -> dict[str, int]:
    """``layout_symtab``: ``.symtab`` then ``.strtab`` from ``end``, each at its alignment."""
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

"""s390x against the real kernel: Debian's 6.1 s390x kernel loaded the modules
in ``tests/kernel_oracle/fixtures/s390x`` under qemu and recorded every
section's address and bytes (``tests/kernel_oracle/fixtures/build.py``).
klpcore loads the same modules at the kernel's own addresses and must write
what the kernel wrote: the GOT and PLT at the start of core (``[core-head]``)
byte for byte, and every relocation site; the bytes the kernel changes later
are classified by rule."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from klpcore import KernelTarget, Loader, get_plugin_manager
from klpcore import constants as C
from klpcore.symbols import parse_symbol_text

s390 = pytest.importorskip("klpcore_s390x")

FX = Path(__file__).resolve().parents[1] / "kernel_oracle" / "fixtures" / "s390x"
MODULES = ["koc_basic", "koc_asm"]
#: sections the running kernel changes after loading (struct module, zeroed data in use)
RUNTIME_STATE = {".gnu.linkonce.this_module", ".bss"}


def record(name: str) -> tuple[dict, bytes]:
    return json.loads((FX / f"{name}.json").read_text()), (FX / f"{name}.bin").read_bytes()


def load(name: str):
    rec, _ = record(name)
    secs = rec["sections"]
    init = [int(v["address"], 16) for k, v in secs.items() if k.startswith(".init")]
    symbols = parse_symbol_text((FX / "kallsyms").read_text() + (FX / "systemmap").read_text())
    # recorded on Debian's 6.1.0-50: one core and one init allocation
    loader = Loader(get_plugin_manager(), kernel=KernelTarget((6, 1)), percpu_base=int(rec.get("percpu_base", "0"), 16))
    base = int(rec["core_base"], 16)
    return loader.load(str(FX / f"{name}.ko"), symbols, base, init_base=min(init) if init else None)


def kernel_bytes(rec: dict, blob: bytes, name: str) -> bytes:
    v = rec["sections"][name]
    return blob[v["offset"] : v["offset"] + v["stored"]]


def ftrace_sites(lm) -> set[int]:
    """Addresses of the bytes ftrace rewrites: the displacement of the
    ``brcl 0,...`` at each ``__mcount_loc`` entry (hotpatch trampolines)."""
    sec = lm.module.section_by_name("__mcount_loc")
    if sec is None:
        return set()
    data = lm.section_bytes(sec.index)
    out: set[int] = set()
    for (addr,) in struct.iter_unpack(">Q", data):
        out.update(range(addr + 2, addr + 6))
    return out


@pytest.mark.parametrize("name", MODULES)
def test_layout_is_the_kernels(name: str) -> None:
    rec, _ = record(name)
    lm = load(name)
    got = lm.module.layout.reserved[s390.gotplt.GOT_NAME]
    assert got.address == int(rec["core_base"], 16) == int(rec["sections"]["[core-head]"]["address"], 16)
    for sname, v in rec["sections"].items():
        if sname.startswith("[") or sname in (".symtab", ".strtab"):  # the kallsyms copy: not a module section
            continue
        sec = lm.module.section_by_name(sname)
        assert sec is not None, sname
        assert lm.section_address(sec.index) == int(v["address"], 16), sname


@pytest.mark.parametrize("name", MODULES)
def test_got_and_plt_are_the_kernels_bytes(name: str) -> None:
    rec, blob = record(name)
    lm = load(name)
    kernel = kernel_bytes(rec, blob, "[core-head]")
    got_addr, got = lm.reserved_bytes(s390.gotplt.GOT_NAME)
    plt_addr, plt = lm.reserved_bytes(s390.gotplt.PLT_NAME)
    assert plt_addr == got_addr + len(got)
    mine = (got + plt).ljust(rec["sections"]["[core-head]"]["size"], b"\0")
    assert len(got) and len(plt)
    assert mine[: len(kernel)] == kernel


def classify(name: str) -> Counter[str]:
    """Every relocation site of the recorded sections, by class; and every
    other byte that differs must be an ftrace site or run-time state."""
    rec, blob = record(name)
    lm = load(name)
    elf = lm.module.elf
    ftrace = ftrace_sites(lm)
    classes: Counter[str] = Counter()
    types = {t.number: t for t in s390.types.reloc_types(lm.kernel)}
    covered: dict[str, set[int]] = {}
    for rs in elf.rela_sections():
        target = lm.module.sections[rs.info]
        v = rec["sections"].get(target.name)
        if v is None or not target.flags & C.SHF_ALLOC:
            continue
        relas = elf.relas(rs.index)
        if v["offset"] is None:
            classes["init memory (freed after init, not recorded)"] += len(relas)
            continue
        kernel = kernel_bytes(rec, blob, target.name).ljust(v["size"], b"\0")
        mine = lm.section_bytes(target.index)
        for r in relas:
            width = types[int(r["r_info"]) & 0xFFFFFFFF].width
            off = int(r["r_offset"])
            covered.setdefault(target.name, set()).update(range(off, off + width))
            if mine[off : off + width] == kernel[off : off + width]:
                classes["identical"] += 1
            elif target.name in RUNTIME_STATE:
                classes["run-time state"] += 1
            else:
                classes["UNEXPLAINED"] += 1
    for sname, v in rec["sections"].items():
        if sname.startswith("[") or v["offset"] is None or sname in RUNTIME_STATE:
            continue
        sec = lm.module.section_by_name(sname)
        base = lm.section_address(sec.index)
        kernel = kernel_bytes(rec, blob, sname)
        mine = lm.section_bytes(sec.index)
        sites = covered.get(sname, set())
        for i in range(len(kernel)):
            if mine[i] != kernel[i]:
                # ftrace excuses only bytes no relocation wrote: a relocation site must be the kernel's
                classes["ftrace byte" if base + i in ftrace and i not in sites else "UNEXPLAINED byte"] += 1
        classes["relocated bytes compared"] += len(sites)
    return classes


@pytest.mark.parametrize("name", MODULES)
def test_every_relocation_site_is_the_kernels(name: str) -> None:
    classes = classify(name)
    assert classes["identical"] > 0
    assert classes["UNEXPLAINED"] == 0 and classes["UNEXPLAINED byte"] == 0, classes


def test_site_counts() -> None:
    """The counts the closing note quotes (both modules together)."""
    total: Counter[str] = Counter()
    for name in MODULES:
        total += classify(name)
    assert total["identical"] == 49
    # every byte of every relocation site in the recorded sections was compared with the kernel's
    assert total["relocated bytes compared"] == 278
    assert total["ftrace byte"] == 6
    assert set(total) <= {
        "identical",
        "run-time state",
        "init memory (freed after init, not recorded)",
        "ftrace byte",
        "relocated bytes compared",
    }

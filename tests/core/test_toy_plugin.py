"""An architecture needs only a plugin: the toy architecture of tests/toyarch.py
(machine 0xBEEF, which nothing in klpcore/ knows) is installed under an entry
point, the way a pip-installed plugin is, and runs ``klpcore apply``,
``klpcore check`` and the conformance suite with no change to the core.

The byte and range tests below are the conformance suite's oracle for the toy
types: each expected field is computed here from the type's formula
(hand-derived, not read back from klpcore)."""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import KernelTarget, Loader, RelocationError, get_plugin_manager, parse_symbol_text
from klpcore import constants as C
from klpcore.elf import ElfModule
from klpcore.testing.conformance import ACCEPTED, REFUSED, behaviour_tests, conformance_tests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "check"))
import kbuild

PRINTK = 0xFFFFFFFF81000000
SYMS = f"{PRINTK:016x} T printk\nffffffff82000000 r __ksymtab_printk\nffffffff81000100 T _stext\n"
TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR


def sa(value: int) -> int:
    """``value`` modulo 2**64 as a signed addend (S + A wraps as the kernel's u64 arithmetic does)."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


DATA = C.SHF_ALLOC | C.SHF_WRITE
BASE = 0xFFFFFFFFC0000000  # the toy's default_base
#: (type, section, offset, addend) of the all-types module
ALL_TYPES = [
    (T.ABS64, ".data", 0, 0x10),
    (T.PREL32, ".text", 0, -4),
    (T.ABS32, ".text", 4, sa(0x1234 - PRINTK)),
    (T.CALL, ".text", 8, 0x20),
    (T.ZERO32, ".text", 12, sa(0x5678 - PRINTK)),
    (T.ABS16, ".text", 16, sa(0xBEEF - PRINTK)),
]
#: the directory the conformance suite reads its fixtures from (written by the fixture below)
FIX = Path(tempfile.mkdtemp(prefix="klpcore-toy-"))


def module(relas: list[tuple[int, str, int, int]], name: str = "toymod") -> bytes:
    return Obj(
        machine=T.TOY,
        sections=[
            Sec(".text", flags=TEXT, data=bytes(32), align=16),
            Sec(".data", flags=DATA, data=bytes(16), align=8),
        ],
        symbols=[Sym("printk")],
        relas=[Rela(sec, off, t, "printk", a) for t, sec, off, a in relas],
        modinfo={"name": name, "license": "GPL"},
    ).build()


@pytest.fixture(autouse=True)
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy plugin as a pip-installed distribution: a dist-info with its entry point on sys.path,
    and only that entry point loaded (KLPCORE_LOAD_PLUGINS)."""
    (FIX / "all_types.o").write_bytes(module(ALL_TYPES))
    (FIX / "System.map").write_text(SYMS)
    dist = FIX / "site" / "klpcore_toy-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: klpcore-toy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[klpcore.arch]\ntoy = toyarch\n")
    monkeypatch.syspath_prepend(str(FIX / "site"))
    monkeypatch.delenv("KLPCORE_PLUGINS", raising=False)
    monkeypatch.delenv("KLPCORE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "toy")
    yield


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(FIX, ignore_errors=True)


def load(data: bytes, kernel: KernelTarget | None = None):  # type: ignore[no-untyped-def]
    return Loader(get_plugin_manager(), kernel=kernel).load(data, parse_symbol_text(SYMS))


def field(lm, section: str, offset: int, size: int) -> int:  # type: ignore[no-untyped-def]
    data = lm.section_bytes(lm.module.section_by_name(section).index)
    return int.from_bytes(data[offset : offset + size], "little")


def test_registered_through_its_entry_point() -> None:
    pm = get_plugin_manager()
    assert pm.get_name(T) == "toy"
    assert {pm.get_name(p) for p in pm.get_plugins()} == {"toy", "klpcore.defaults"}
    assert [(dist.metadata["Name"], dist.version) for p, dist in pm.list_plugin_distinfo() if p is T] == [
        ("klpcore-toy", "1.0")
    ]


def test_toy_types_write_the_documented_bytes() -> None:
    lm = load(module(ALL_TYPES))
    text = lm.section_address(lm.module.section_by_name(".text").index)
    assert lm.section_address(lm.module.section_by_name(".text").index) == BASE  # the toy's module area
    assert field(lm, ".data", 0, 8) == PRINTK + 0x10  # ABS64: S + A
    assert field(lm, ".text", 0, 4) == (PRINTK - 4 - text) & 0xFFFFFFFF  # PREL32: S + A - P
    assert field(lm, ".text", 4, 4) == 0x1234  # ABS32: S + A
    assert field(lm, ".text", 8, 4) == (PRINTK + 0x20) & 0xFFFFFFFF  # CALL: S + A, 4 bytes
    assert field(lm, ".text", 12, 4) == 0x5678  # ZERO32: S + A on a zero place
    assert field(lm, ".text", 16, 2) == 0xBEEF  # ABS16: S + A


# (type, section, offset, width, addend making the value the limit, the limit, one past it)
RANGES = [
    (T.PREL32, ".text", 0, 4, lambda p: sa(0x7FFFFFFF - PRINTK + p), 0x7FFFFFFF),
    (T.ABS32, ".text", 4, 4, lambda p: sa(0xFFFFFFFF - PRINTK), 0xFFFFFFFF),
    (T.ABS16, ".text", 16, 2, lambda p: sa(0xFFFF - PRINTK), 0xFFFF),
]
NAMES = {T.PREL32: "R_TOY_PREL32", T.ABS32: "R_TOY_ABS32", T.ABS16: "R_TOY_ABS16"}


@pytest.mark.parametrize(("rtype", "sec", "off", "width", "addend", "limit"), RANGES, ids=lambda v: str(v))
def test_toy_range_limits(rtype: int, sec: str, off: int, width: int, addend, limit: int) -> None:  # type: ignore[no-untyped-def]
    place = BASE + off  # .text starts the module area
    lm = load(module([(rtype, sec, off, addend(place))]))
    assert field(lm, sec, off, width) == limit
    with pytest.raises(RelocationError) as ei:
        load(module([(rtype, sec, off, addend(place) + 1)]))
    assert ei.value.diagnostics[0].rtype == NAMES[rtype]


def test_toy_behaviour_both_sides() -> None:
    """R_TOY_ABS16 exists from the toy's own version-table row on (toyarch.FEATURE)."""
    ((old, new),) = T.FEATURE.sides()
    data = module([(T.ABS16, ".text", 16, sa(0x10 - PRINTK))])
    assert field(load(data, new), ".text", 16, 2) == 0x10
    with pytest.raises(RelocationError) as ei:
        load(data, old)
    assert ei.value.diagnostics[0].kernel_message == "toymod: Unknown toy relocation: 6"


TestToyBehaviours = behaviour_tests(
    rows=T.BEHAVIOURS,
    boundary_tests={"toy_abs16": test_toy_behaviour_both_sides},
    releases={"toy_abs16": ((6, 9), (6, 10))},
)

TestToyConformance = conformance_tests(
    plugin="toy",
    module=FIX / "all_types.o",
    symbols=FIX / "System.map",
    byte_tested=lambda: {"R_TOY_ABS64", "R_TOY_PREL32", "R_TOY_ABS32", "R_TOY_CALL", "R_TOY_ZERO32", "R_TOY_ABS16"},
    range_cases=lambda: [(NAMES[r[0]], side) for r in RANGES for side in (ACCEPTED, REFUSED)],
    unsupported=[99],
)


def test_klpcore_apply(tmp_path: Path) -> None:
    from klpcore.cli import main

    out = tmp_path / "toymod.relocated.ko"
    assert main(["apply", str(FIX / "all_types.o"), "-s", str(FIX / "System.map"), "-o", str(out), "-q"]) == 0
    elf = ElfModule(out.read_bytes())
    data = elf.section_by_name(".data")
    assert data is not None and data.addr > BASE
    assert struct.unpack_from("<Q", elf.section_data(data.index))[0] == PRINTK + 0x10


def test_klpcore_check(tmp_path: Path) -> None:
    """A toy target kernel (its .config sets the toy's ArchSpec.config_symbol) and a toy module: loads."""
    from klpcore.check import Target, check_pair

    target = kbuild.make_target(tmp_path / "target", config={"CONFIG_X86_64": None, "CONFIG_TOY": "y"})
    assert Target(target).machine == T.TOY
    path = tmp_path / "toymod.ko"
    path.write_bytes(kbuild.Mod("toymod", imports=["printk"], machine=T.TOY).build())
    r = check_pair(str(path), Target(target))
    assert r.verdict == "loads", r.findings
    assert any(f.check == "relocations" and "relocations applied" in f.message for f in r.findings), r.findings
    other = tmp_path / "x86.ko"
    other.write_bytes(kbuild.Mod("x86mod", imports=["printk"]).build())
    assert check_pair(str(other), Target(target)).verdict == "refused"  # a module for another machine

"""The command line: exit codes, JSON, the output ELF (toy arch)."""

from __future__ import annotations

import io
import json
import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym
from elftools.elf.elffile import ELFFile

from klpcore import constants as C
from klpcore.cli import main

BASE = 0xFFFFFFFFC0000000
SYMS = "ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\n"


@pytest.fixture(autouse=True)
def toy_only(monkeypatch):
    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")


@pytest.fixture
def files(tmp_path):
    mod = Obj(
        sections=[
            Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16), align=16),
            Sec(".bss", type=C.SHT_NOBITS, flags=C.SHF_ALLOC | C.SHF_WRITE, size=32, align=8),
        ],
        symbols=[Sym("printk"), Sym("nowhere")],
        relas=[Rela(".text", 0, T.ABS64, "printk", 4)],
        modinfo={"name": "clitest"},
    )
    good = Obj(**{**mod.__dict__, "symbols": [Sym("printk")]})
    p = tmp_path / "good.ko"
    p.write_bytes(good.build())
    bad = tmp_path / "bad.ko"
    bad.write_bytes(mod.build())
    s = tmp_path / "System.map"
    s.write_text(SYMS)
    return p, bad, s, tmp_path


def test_plugins_json(capsys) -> None:
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 2 and data["command"] == "plugins" and data["ok"] is True
    toy = next(p for p in data["plugins"] if p["name"] == "toyarch")
    names = [t["name"] for a in toy["archs"] for t in a["types"]]
    assert "R_TOY_PREL32" in names


def test_inspect_json(files, capsys) -> None:
    good, _, _, _ = files
    assert main(["inspect", str(good), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["module"] == "clitest" and data["arch"] == "toy"
    assert data["relocation_sections"][0]["types"] == {"R_TOY_ABS64": 1}


def test_apply_writes_relocated_elf(files, capsys) -> None:
    good, _, syms, tmp = files
    out = tmp / "out.ko"
    report = tmp / "report.json"
    assert main(["apply", str(good), "-s", str(syms), "-o", str(out), "--json", str(report)]) == 0
    elf = ELFFile(io.BytesIO(out.read_bytes()))
    text = elf.get_section_by_name(".text")
    assert text["sh_addr"] == BASE
    assert struct.unpack_from("<Q", text.data(), 0)[0] == 0xFFFFFFFF81000004
    assert elf.get_section_by_name(".bss")["sh_type"] == "SHT_NOBITS"
    assert elf.get_section_by_name(".modinfo")["sh_addr"] == 0  # not loaded by the kernel
    rep = json.loads(report.read_text())
    assert rep["relocations"] == {"R_TOY_ABS64": 1}
    assert rep["sections"][0]["address"] == hex(BASE)
    assert "clitest: 1 relocations applied" in capsys.readouterr().out


def test_resolve_exit_codes(files, capsys) -> None:
    good, bad, syms, _ = files
    assert main(["resolve", str(good), "-s", str(syms)]) == 0
    capsys.readouterr()
    assert main(["resolve", str(bad), "-s", str(syms)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: module clitest, symbol nowhere: unknown symbol nowhere: not found in any symbol source "
        "[kernel: clitest: Unknown symbol nowhere (err -2)]"
    ]


def test_apply_failure_exit_1_and_no_output(files, capsys) -> None:
    _, bad, syms, tmp = files
    out = tmp / "never.ko"
    assert main(["apply", str(bad), "-s", str(syms), "-o", str(out)]) == 1
    assert not out.exists()
    assert "Unknown symbol nowhere" in capsys.readouterr().err


def test_usage_and_input_errors_exit_2(files, capsys) -> None:
    good, _, syms, tmp = files
    assert main(["apply", str(good), "-o", str(tmp / "x")]) == 2  # no symbols
    assert "no symbol source given" in capsys.readouterr().err
    junk = tmp / "junk.ko"
    junk.write_bytes(b"not an elf at all" * 8)
    assert main(["inspect", str(junk)]) == 2
    assert "not an ELF file" in capsys.readouterr().err
    assert main(["apply", str(good), "-s", str(syms), "--base", "zzz"]) == 2
    assert "--base: 'zzz' is not an address" in capsys.readouterr().err
    assert main(["apply", str(good), "-s", str(tmp / "missing.map")]) == 2
    assert main(["inspect", str(good), "--kernel", "banana"]) == 2


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "klpcore does in user space" in capsys.readouterr().out


def test_kernel_options(files, capsys) -> None:
    from klpcore.cli import build_parser, kernel_target

    args = build_parser().parse_args(["apply", "m.ko", "-O", "relocate_percpu=false"])
    assert kernel_target(args).options == {"relocate_percpu": False}
    good, _, syms, _ = files
    assert main(["resolve", str(good), "-s", str(syms), "-O", "novalue"]) == 2
    assert main(["resolve", str(good), "-s", str(syms), "-O", "name=x"]) == 2
    err = capsys.readouterr().err
    assert "-O name: unknown option; the core and the installed plugins accept: " in err
    accepted = err.split("accept: ")[1].split("\n")[0].split(", ")
    assert {"relocate_percpu", "page_size", "klp_object_order", "relocates_percpu"} <= set(accepted)
    assert accepted == sorted(accepted)

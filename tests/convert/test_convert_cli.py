"""``klpcore convert`` on the command line: exit codes, messages, JSON (schema 2),
the special-section, annotation, namespace, late-write and format paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from klpcore.cli import main
from klpcore.elf import ElfModule
from klpcore.kernel import KernelTarget
from klpcore.livepatch import discover
from klpcore.loader import Loader
from klpcore.symbols import load_many

pytest.importorskip("klpcore_x86_64")
FIX = Path(__file__).resolve().parent / "fixtures"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "klpcore" / "schema" / "v2.json").read_text())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["convert", *argv, "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["exit_code"] == code
    return code, doc, err


def base(arch: str, tmp: Path, *extra: str, name: str = "lp_patch") -> list[str]:
    pytest.importorskip(f"klpcore_{arch}")
    return [str(FIX / f"{name}.{arch}.o"), "-s", str(FIX / f"{arch}.kallsyms"), "-o", str(tmp / "out.ko"), *extra]


def errors(doc: dict[str, Any]) -> list[str]:
    return [e["message"] for e in doc["errors"]]


def test_success_json_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, "--object", "tgtmod", "--position", "dup_static=2", "--mark"))
    assert code == 0
    assert doc["written"] and doc["style"] == "none-type" and doc["format"] == "final"
    assert {c["symbol"]: c["sympos"] for c in doc["converted"]}["dup_static"] == 2
    assert doc["kept"] == [{"symbol": "exp_fn", "why": "exported by vmlinux"}]
    assert doc["modinfo_added"] == ["livepatch=Y"]
    assert main(["inspect", str(tmp_path / "out.ko"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["livepatch"] and info["klp_format"] == "final"
    assert {o["name"] for o in info["objects"]} == {"vmlinux", "tgtmod"}


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = base("ppc64le", tmp_path, "--object", "tgtmod", "--position", "dup_static=2", "--mark")
    assert main(["convert", *argv]) == 0
    out = capsys.readouterr().out
    assert "lp_patch.ppc64le: 7 relocation(s) of 5 symbol(s) converted (final format)" in out
    assert "the originals are removed (the kernel takes no type 0 here)" in out
    assert ".TOC. (the module loader resolves .TOC. to the module's own TOC base)" in out


def test_refusals_list_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = cli(capsys, *base("x86_64", tmp_path))
    assert code == 1 and not doc["ok"]
    msgs = errors(doc)
    assert any("module is not marked as a livepatch module" in m and "give --mark" in m for m in msgs)
    amb = next(e for e in doc["errors"] if e.get("kind") == "ambiguous")
    assert "occurs 2 times in vmlinux: settle it with --position dup_static=N" in amb["message"]
    assert amb["positions"] == [
        {"sympos": 1, "address": "0xffffffff81200200"},
        {"sympos": 2, "address": "0xffffffff81200400"},
    ]
    assert any(
        "'mod_hidden': undefined, not exported" in m and "tgtmod defines it: give --object tgtmod" in m for m in msgs
    )
    assert not (tmp_path / "out.ko").exists()
    assert "error: " in err


def test_ambiguity_lists_source_files_from_a_vmlinux_elf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(FIX / "lp_patch.x86_64.o"), "-s", str(FIX / "vmlinux.x86_64"), "-s", str(FIX / "Module.symvers")]
    code, doc, _ = cli(capsys, *argv, "--mark", "-o", str(tmp_path / "o.ko"))
    assert code == 1
    amb = next(e for e in doc["errors"] if e.get("kind") == "ambiguous")
    assert [c["file"] for c in amb["candidates"]] == ["vmlinux_a.c", "vmlinux_b.c"]
    assert "(vmlinux_a.c)" in amb["message"] and "(vmlinux_b.c)" in amb["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--position", "dup_static"], "--position dup_static: expected NAME=N with N a position from 1"),
        (["--position", "dup_static=0"], "--position dup_static=0: expected NAME=N"),
        (["--object", "ext4.ko"], "--object: object name 'ext4.ko' contains '.'"),
        (["--object", "m" * 56], "is longer than 55 characters"),
        (["--object", "nosuchmod"], "--object nosuchmod: no symbols of module nosuchmod"),
    ],
)
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, "--mark", *extra))
    assert code == 2
    assert any(message in m for m in errors(doc)), errors(doc)


def test_no_symbols(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc, _ = cli(capsys, str(FIX / "lp_patch.x86_64.o"), "-o", str(tmp_path / "x.ko"))
    assert code == 2
    assert errors(doc) == ["convert: give the target kernel's symbols: --symbols FILE ... or --target DIR"]


def test_symbols_without_exports(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = [str(FIX / "lp_patch.x86_64.o"), "-s", str(FIX / "vmlinux.x86_64"), "-o", str(tmp_path / "x.ko")]
    code, doc, _ = cli(capsys, *argv, "--mark")
    assert code == 2
    assert "the symbol sources list no exports" in errors(doc)[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--position", "dup_static=3"], "--position dup_static=3: vmlinux has 2 symbol(s) called 'dup_static'"),
        (["--position", "dup_static=2", "--position", "exp_fn=1"], "--position exp_fn=1: the module has no reference"),
    ],
)
def test_position_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, "--mark", "--object", "tgtmod", *extra))
    assert code == 1
    assert any(message in m for m in errors(doc)), errors(doc)


def test_jump_table_key_in_a_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, name="lp_jump"))
    assert code == 1
    (msg,) = errors(doc)
    assert msg.startswith("__jump_table entry at 0x0 refers to 'mod_key' of tgtmod")
    assert "use static_key_enabled() on the key instead of a static branch" in msg


def test_module_reference_from_init_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, "--object", "tgtmod", name="lp_init"))
    assert code == 1
    (msg,) = errors(doc)
    assert msg.startswith(".init.text+0x6 refers to 'mod_hidden' of tgtmod: its livepatch relocation would be applied")
    assert "after the kernel freed the patch module's init memory" in msg


def test_annotated_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, name="lp_annot"))
    assert code == 0
    assert doc["converted"] == [
        {
            "symbol": "dup_static",
            "object": "vmlinux",
            "sympos": 2,
            "relocations": 1,
            "section_object": "vmlinux",
            "how": "annotated",
        }
    ]
    out = ElfModule.from_file(tmp_path / "out.ko")
    assert ".klp.sym.vmlinux.dup_static,2" in out.symbol_names
    assert [rs.name for rs in discover(out).reloc_secs] == [".klp.rela.vmlinux..text"]
    loaded = Loader(kernel=KernelTarget()).load(out, load_many([str(FIX / "x86_64.kallsyms")]), 0xFFFFFFFFC0000000)
    assert {r.value for r in loaded.resolutions if r.how == "livepatch"} == {0xFFFFFFFF81200400}


def test_import_ns_added(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(
        capsys,
        *base("x86_64", tmp_path, "--mark", "--object", "tgtmod", "--position", "dup_static=2"),
        "-s",
        str(FIX / "Module.symvers"),
    )
    assert code == 0
    assert doc["modinfo_added"] == ["livepatch=Y", "import_ns=EXP_NS"]
    assert ElfModule.from_file(tmp_path / "out.ko").modinfo["import_ns"] == ["EXP_NS"]


@pytest.mark.parametrize(
    ("arch", "before", "after", "row"),
    [("ppc64le", "5.15", "5.16", "ppc64_patch_instruction"), ("arm64", "6.16", "6.17", "arm64_late_text_poke")],
)
def test_late_write_hazard_names_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, before: str, after: str, row: str
) -> None:
    argv = base(arch, tmp_path, "--mark", "--object", "tgtmod", "--position", "dup_static=2")
    code, doc, _ = cli(capsys, *argv, "--kernel", before)
    assert code == 1
    msgs = errors(doc)
    assert all("mod_hidden" in m or "mod_exp_data" in m for m in msgs)
    assert any(f"which Linux {before} cannot write for this type (versions row {row}" in m for m in msgs), msgs
    code, doc, _ = cli(capsys, *argv, "--kernel", after)
    assert code == 0, errors(doc)


def test_rfc2015(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(
        capsys,
        *base("x86_64", tmp_path, "--mark", "--object", "tgtmod", "--position", "dup_static=2", "--format", "rfc2015"),
    )
    assert code == 1
    assert any("the rfc format has no sympos (got 2)" in m for m in errors(doc))
    only = tmp_path / "one.kallsyms"
    only.write_text(
        "".join(
            ln
            for ln in (FIX / "x86_64.kallsyms").read_text().splitlines(True)
            if "t dup_static" not in ln or "200400" in ln
        )
    )
    argv = [str(FIX / "lp_patch.x86_64.o"), "-s", str(only), "-o", str(tmp_path / "rfc.ko")]
    code, doc, _ = cli(capsys, *argv, "--mark", "--object", "tgtmod", "--format", "rfc2015")
    assert code == 0, errors(doc)
    assert doc["style"] == "removed"
    info = discover(ElfModule.from_file(tmp_path / "rfc.ko"))
    assert info.fmt == "rfc"
    assert sorted(info.objects) == ["tgtmod", "vmlinux"]
    assert {s.raw for s in info.symbols if s.external} == {"mod_exp_data"}


def test_final_format_refused_for_the_rfc_era(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, *base("x86_64", tmp_path, "--mark", "--object", "tgtmod", "--kernel", "4.4"))
    assert code == 2
    assert (
        "Linux 4.4 reads the 2015 RFC format only (versions row final_klp_format, 4.7): use --format rfc2015"
        in (errors(doc)[0])
    )


def flat_target(tmp: Path) -> Path:
    """A target directory as --target reads it: System.map, Module.symvers, the module tree (tgtmod.ko)."""
    d = tmp / "target"
    d.mkdir()
    lines = (FIX / "x86_64.kallsyms").read_text().splitlines(True)
    (d / "System.map").write_text("".join(ln for ln in lines if "[" not in ln))
    (d / "Module.symvers").write_text(
        "0x1\texp_fn\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tmod_exp_data\tdrivers/misc/tgtmod\tEXPORT_SYMBOL_GPL\t\n"
    )
    (d / "tgtmod.ko").write_bytes((FIX / "tgtmod.x86_64.ko").read_bytes())
    return d


def test_target_module_positions_in_symbol_table_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = flat_target(tmp_path)
    argv = [
        str(FIX / "lp_moddup.x86_64.o"),
        "--target",
        str(target),
        "--object",
        "tgtmod",
        "-o",
        str(tmp_path / "o.ko"),
    ]
    code, doc, _ = cli(capsys, *argv)
    assert code == 1
    amb = next(e for e in doc["errors"] if e.get("kind") == "ambiguous")
    assert amb["message"].startswith("symbol 'dup_mod' occurs 2 times in tgtmod: settle it with --position dup_mod=N")
    code, doc, _ = cli(capsys, *argv, "--position", "dup_mod=2")
    assert code == 0, errors(doc)
    assert {c["symbol"]: (c["object"], c["sympos"]) for c in doc["converted"]} == {
        "dup_mod": ("tgtmod", 2),
        "mod_hidden": ("tgtmod", 0),
    }
    # klpcore's resolver, with tgtmod loaded, finds position 2 where the module's second dup_mod lies
    base = 0xFFFFFFFFC1000000
    symbols = load_many([f"{FIX / 'tgtmod.x86_64.ko'}@{base:#x}:tgtmod", str(target / "System.map")])
    loaded = Loader(kernel=KernelTarget()).load(ElfModule.from_file(tmp_path / "o.ko"), symbols, 0xFFFFFFFFC0000000)
    got = {r.name: r.value for r in loaded.resolutions if r.how == "livepatch"}
    assert got[".klp.sym.tgtmod.dup_mod,2"] == symbols.objects["tgtmod"].matches("dup_mod")[1]
    assert got[".klp.sym.tgtmod.dup_mod,2"] != symbols.objects["tgtmod"].matches("dup_mod")[0]


def test_target_kernel_release_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = flat_target(tmp_path)
    argv = [str(FIX / "lp_patch.x86_64.o"), "--target", str(target), "--object", "tgtmod", "-o", str(tmp_path / "o.ko")]
    code, doc, _ = cli(capsys, *argv, "--mark", "--position", "dup_static=2")
    assert code == 0, errors(doc)
    how = {c["symbol"]: c["how"] for c in doc["converted"]}
    assert how["mod_exp_data"] == "module export"  # Module.symvers: exported by tgtmod
    assert how["mod_hidden"] == "unexported"
    assert doc["kept"] == [{"symbol": "exp_fn", "why": "exported by vmlinux"}]


def test_target_without_symbols(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    argv = [str(FIX / "lp_patch.x86_64.o"), "--target", str(tmp_path / "empty"), "-o", str(tmp_path / "o.ko")]
    code, doc, _ = cli(capsys, *argv)
    assert code == 2
    assert errors(doc)[0].startswith(f"target {tmp_path / 'empty'}: no vmlinux symbols (no System.map")

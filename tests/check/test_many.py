"""klpcore check at scale through the command line: module directories and
@FILE lists, targets of several architectures, --format table|json|jsonl|csv,
--compare, --jobs; the output is the same whatever runs the pairs."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from kbuild import Mod, make_target

from klpcore.check.inputs import expand_modules, expand_targets, module_machine
from klpcore.check.progress import Progress
from klpcore.cli import main
from klpcore.errors import InputError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernel"
T50 = FIXTURES / "x86_64-6.1.0-50" / "target"
T54 = FIXTURES / "x86_64-6.1.0-54" / "target"
M54 = FIXTURES / "x86_64-6.1.0-54"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["check", "--quiet", *argv])
    return code, capsys.readouterr().out


def test_directory_and_list_arguments(tmp_path: Path) -> None:
    mods = expand_modules([str(M54)])
    assert [Path(m).name for m in mods] == ["kc_lp.ko", "kc_plain.ko", "ppp_synctty.ko", "relt.ko"] + [
        "ppp_generic.ko.xz",
        "slhc.ko.xz",
    ]  # every .ko* below, in path order (target/ is below too)
    lst = tmp_path / "mods.txt"
    lst.write_text(f"# the 6.1.0-54 cases\n{M54 / 'kc_plain.ko'}\n\n{M54 / 'relt.ko'}\n{M54 / 'kc_plain.ko'}\n")
    assert expand_modules([f"@{lst}"]) == [str(M54 / "kc_plain.ko"), str(M54 / "relt.ko"), str(M54 / "kc_plain.ko")]
    tl = tmp_path / "targets.txt"
    tl.write_text(f"{T50}\n{T54}:6.1.0-54-amd64\n")
    specs = expand_targets([f"@{tl}"], None)
    assert [(s.roots, s.release) for s in specs] == [((str(T50),), None), ((str(T54),), "6.1.0-54-amd64")]
    with pytest.raises(InputError, match="no such module file or directory"):
        expand_modules([str(tmp_path / "nope.ko")])
    with pytest.raises(InputError, match="cannot read the list"):
        expand_modules([f"@{tmp_path / 'missing.txt'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="a directory without module files"):
        expand_modules([str(tmp_path / "empty")])
    loop = tmp_path / "loop.txt"
    loop.write_text(f"@{loop}\n")
    with pytest.raises(InputError, match="includes itself"):
        expand_modules([f"@{loop}"])


def test_module_machine_reads_compressed_headers() -> None:
    assert module_machine(str(M54 / "kc_plain.ko")) == 62
    assert module_machine(str(T50 / "slhc.ko.xz")) == 62
    assert module_machine(__file__) is None


def test_formats_agree(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [str(M54), "-t", str(T50), "-t", str(T54), "--jobs", "2"]
    code, text = cli(capsys, *args)
    assert code == 1
    assert re.search(r"^\d+ module\(s\) x 2 target\(s\): 14 pairs$", text, re.M) is None  # 12 pairs: a few
    jcode, jtext = cli(capsys, *args, "--format", "json")
    doc = json.loads(jtext)
    assert jcode == code and doc["exit_code"] == 1 and len(doc["modules"]) == 6
    lcode, ltext = cli(capsys, *args, "--format", "jsonl")
    lines = [json.loads(x) for x in ltext.splitlines()]
    assert lcode == code and [x["kind"] for x in lines] == ["pair"] * 12 + ["summary"]
    # the lines are the report's pairs, in its order
    flat = [dict(t, module=m["module"], path=m["path"]) for m in doc["modules"] for t in m["targets"]]
    assert [{k: v for k, v in x.items() if k != "kind"} for x in lines[:-1]] == flat
    assert lines[-1]["verdicts"] == {v: sum(1 for p in flat if p["verdict"] == v) for v in {p["verdict"] for p in flat}}
    ccode, ctext = cli(capsys, *args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(ctext)))
    assert ccode == code and [r["verdict"] for r in rows] == [p["verdict"] for p in flat]
    relt = next(r for r in rows if r["module"] == "relt" and r["release"] == "6.1.0-54-amd64")
    assert relt["verdict"] == "refused" and relt["first_check"] == "symbols"
    assert "disagrees about version of symbol kmalloc_trace" in relt["first_failure"]


def test_one_process_and_workers_print_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(FIXTURES), "-t", str(T50), "-t", str(T54), "--format", "jsonl"]
    one = cli(capsys, *args, "--jobs", "1")
    two = cli(capsys, *args, "--jobs", "2")
    assert one == two and one[1].count("\n") > 50


def test_many_pairs_summary_causes_and_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    dirs = [str(FIXTURES / d) for d in ("x86_64-6.1.0-50", "x86_64-6.1.0-54", "x86_64-6.1.0-54-rt")]
    code, text = cli(capsys, *dirs, "-t", str(T50), "-t", str(T54))
    assert code == 1
    assert re.search(r"^\d+ module\(s\) x 2 target\(s\): \d+ pairs$", text, re.M)
    assert "failures by cause:" in text
    # one cause, several modules, named without the module's own name
    assert re.search(
        r"^  2 modules refused on 6\.1\.0-54-amd64 \(T2\): modversions: <module>: "
        r"disagrees about version of symbol module_layout\n      kc_layout, slhc$",
        text,
        re.M,
    ), text
    # the matrix (a module name found twice: its files name the rows)
    assert re.search(r"^\S+/x86_64-6\.1\.0-50/kc_lp_sympos2\.ko +ok +REF$", text, re.M)
    assert "/kc_plain.ko " not in text  # loads everywhere: not in the matrix without -v


def test_compare_two_targets(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli(capsys, str(M54), "-t", str(T50), "-t", str(T54), "--compare", "--format", "json")
    comp = json.loads(text)["comparison"]
    changes = {c["module"]: c for c in comp["changes"]}
    assert changes["relt"]["from"] == "loads" and changes["relt"]["to"] == "refused"
    assert "kmalloc_trace" in changes["relt"]["to_failure"] and changes["relt"]["from_failure"] is None
    assert all(c["from"] != c["to"] for c in comp["changes"])
    code, text = cli(capsys, str(M54), "-t", str(T50), "-t", str(T54), "--compare")
    assert re.search(r"^from 6\.1\.0-50-amd64 to 6\.1\.0-54-amd64: \d+ module\(s\) change", text, re.M)
    assert "  relt: loads -> refused\n" in text
    assert main(["check", str(M54), "-t", str(T50), "--compare"]) == 2
    assert "--compare needs exactly two targets (1 given)" in capsys.readouterr().err


def test_targets_of_several_architectures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # telling an arm64 target from its config needs the arm64 plugin (the core names no architecture)
    pytest.importorskip("klpcore_arm64")
    arm = make_target(tmp_path / "arm64", config={"CONFIG_X86_64": None, "CONFIG_ARM64": "y"})
    (tmp_path / "armmod.ko").write_bytes(Mod("armmod", machine=183).build())
    argv = [str(M54 / "kc_plain.ko"), str(tmp_path / "armmod.ko"), "-t", str(T50), "-t", str(arm)]
    code, text = cli(capsys, *argv, "--format", "json")
    doc = json.loads(text)
    verdicts = {(m["module"], t["target"]): t["verdict"] for m in doc["modules"] for t in m["targets"]}
    assert verdicts[("kc_plain", str(T50))] == "loads"
    assert verdicts[("kc_plain", str(arm))] == "not-applicable"
    assert verdicts[("armmod", str(T50))] == "not-applicable"
    assert verdicts[("armmod", str(arm))] != "not-applicable"  # judged on its own architecture's target
    na = next(t for m in doc["modules"] for t in m["targets"] if t["verdict"] == "not-applicable")
    assert na["findings"] == [] and re.match(r"a (x86_64|arm64) module; the target is (arm64|x86_64)", na["notes"][0])
    # an x86_64 module with no x86_64 target is judged (the kernel refuses it), never skipped
    code, text = cli(capsys, str(M54 / "kc_plain.ko"), "-t", str(arm), "--format", "json")
    assert code == 1 and json.loads(text)["targets"][0]["verdict"] == "refused"


def test_bad_jobs_and_executor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(M54 / "kc_plain.ko"), "-t", str(T50), "--jobs", "0"]) == 2
    assert "--jobs 0: must be 1 or more" in capsys.readouterr().err
    assert main(["check", str(M54), "-t", str(T50), "-t", str(T54), "--executor", "nope"]) == 2
    assert "--executor nope: unknown" in capsys.readouterr().err


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_lines_and_quiet() -> None:
    now = [0.0]
    for tty in (True, False):
        now[0] = 0.0
        out = FakeStream(tty)
        p = Progress(stream=out, clock=lambda: now[0])
        now[0] = 0.5
        p.update(1, 100)  # the first second: nothing
        assert out.getvalue() == ""
        now[0] = 2.0
        p.update(20, 100)
        now[0] = 2.1
        p.update(21, 100)  # too soon after the last
        now[0] = 20.0
        p.update(50, 100)
        p.update(100, 100)
        p.close()
        text = out.getvalue()
        if tty:
            assert "\r\x1b[K[####....................] 20/100 pairs (20%), 2 s, about 8 s left" in text
            assert "21/100" not in text and text.endswith("\r\x1b[K")
        else:
            assert text.splitlines() == [
                "check: 20/100 pairs (20%), 2 s, about 8 s left",
                "check: 50/100 pairs (50%), 20 s, about 20 s left",
                "check: 100/100 pairs (100%), 20 s",
            ]
    quiet = FakeStream(True)
    p = Progress(stream=quiet, quiet=True, clock=lambda: now[0] + 100)
    p.update(5, 10)
    p.close()
    assert quiet.getvalue() == ""


def test_unknown_pairs_name_what_was_not_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    t = make_target(tmp_path / "t", system_map=False, vmlinux_elf=False)
    mods = tmp_path / "mods"
    mods.mkdir()
    for i in range(13):
        (mods / f"good{i}.ko").write_bytes(Mod(f"good{i}", imports=["printk"]).build())
    code, text = cli(capsys, str(mods), "-t", str(t), "-t", str(T50))
    assert code == 1  # kc-free toy modules are refused on the real 6.1.0-50 slice (CRCs): worse than unknown
    assert re.search(r"^T1 missing symbols: ", text, re.M), text
    assert re.search(r"^  13 modules unknown on \S+ \(T1\): relocations: not checked: ", text, re.M), text
    code, text = cli(capsys, str(mods), "-t", str(t), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 4 and {r["verdict"] for r in rows} == {"unknown"}
    assert all(r["first_check"] == "relocations" and r["first_failure"].startswith("not checked: ") for r in rows)

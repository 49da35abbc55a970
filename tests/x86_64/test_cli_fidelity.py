"""CLI: --config, --init-base, --percpu-base, the version from vermagic, and
reports that say which rules and facts they used (x86_64 example module)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from klpcore.cli import main

pytest.importorskip("klpcore_x86_64")

EX = Path(__import__("klpcore_x86_64").__file__).parent / "examples"
MOD = str(EX / "klpdemo.ko")
MAP = str(EX / "System.map")
CONFIG = "CONFIG_STRICT_MODULE_RWX=y\nCONFIG_ARCH_HAS_STRICT_MODULE_RWX=y\nCONFIG_LIVEPATCH=y\n"


def report(tmp_path, *extra: str) -> dict:
    out = tmp_path / "r.json"
    assert main(["apply", MOD, "-s", MAP, "--json", str(out), "-q", *extra]) == 0
    return json.loads(out.read_text())


def test_version_from_vermagic_and_defaults_said(tmp_path) -> None:
    rep = report(tmp_path)
    rules = rep["kernel_rules"]
    assert rep["kernel"] == "6.1" and rules["version"] == "6.1"
    assert rules["version_source"] == "vermagic 6.1.0-50-amd64"
    assert rules["config"] is None
    assert rules["settings"]["PAGE_SIZE"] == {"value": 4096, "source": "arch default"}
    assert rules["settings"]["STRICT_MODULE_RWX"]["source"] == "arch default"
    assert rep["layout_style"] == "legacy"  # 6.1


def test_explicit_kernel_wins(tmp_path) -> None:
    rules = report(tmp_path, "--kernel", "6.19")["kernel_rules"]
    assert rules["version"] == "6.19" and rules["version_source"] == "--kernel"
    rules = report(tmp_path, "--kernel", "newest")["kernel_rules"]
    assert rules["version"] == "7.2" and rules["version_source"] == "newest checked release"
    rules = report(tmp_path, "--kernel", "7.3")["kernel_rules"]
    assert rules["version_source"] == "--kernel; newer than the newest checked release 7.2, whose rules are used"


def test_config_gz_is_read_and_reported(tmp_path) -> None:
    cfg = tmp_path / "config.gz"
    cfg.write_bytes(gzip.compress(CONFIG.encode()))
    rules = report(tmp_path, "--config", str(cfg))["kernel_rules"]
    assert rules["config"] == str(cfg)
    assert rules["settings"]["STRICT_MODULE_RWX"] == {"value": "y", "source": "config"}
    assert rules["settings"]["PAGE_SIZE"]["source"] == "config"


def test_bad_config_is_a_usage_error(tmp_path, capsys) -> None:
    bad = tmp_path / "config"
    bad.write_text("this is not a config\n")
    assert main(["apply", MOD, "-s", MAP, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a kernel configuration line" in err and "Traceback" not in err


def test_init_and_percpu_bases(tmp_path) -> None:
    rep = report(tmp_path, "--base", "0xffffffffc0400000", "--init-base", "0xffffffffc0800000")
    sec = {s["name"]: s for s in rep["sections"]}
    assert sec[".init.text"]["address"] == "0xffffffffc0800000"
    assert sec[".text"]["address"].startswith("0xffffffffc04")
    assert main(["apply", MOD, "-s", MAP, "--init-base", "0x1001", "-q"]) == 2  # not page aligned
    assert main(["apply", MOD, "-s", MAP, "--percpu-base", "0xffffffffa0010000", "-q"]) == 0


def test_text_report_names_the_rules(capsys) -> None:
    assert main(["apply", MOD, "-s", MAP]) == 0
    out = capsys.readouterr().out
    assert "kernel rules: Linux 6.1 (vermagic 6.1.0-50-amd64); PAGE_SIZE=4096 (arch default)" in out
    assert "no --config: each fact is the architecture's common distribution setting" in out


def test_resolve_json_names_the_rules(capsys) -> None:
    assert main(["resolve", MOD, "-s", MAP, "--json", "--kernel", "5.10"]) == 0
    data = json.loads(capsys.readouterr().out)
    rules = data["kernel_rules"]
    assert rules["version"] == "5.10" and rules["version_source"] == "--kernel"


def test_version_from_the_config_header_when_the_module_has_no_vermagic(tmp_path) -> None:
    from elfbuild import Obj, Sec

    from klpcore import constants as C

    mod = tmp_path / "novermagic.ko"
    mod.write_bytes(
        Obj(
            machine=62,
            sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(8))],
            modinfo={"name": "nv"},
        ).build()
    )
    cfg = tmp_path / "config"
    cfg.write_text("#\n# Linux/x86 6.12.9 Kernel Configuration\n#\n" + CONFIG)
    out = tmp_path / "r.json"
    args = ["apply", str(mod), "-s", MAP, "--json", str(out), "-q"]
    assert main([*args, "--config", str(cfg)]) == 0
    rules = json.loads(out.read_text())["kernel_rules"]
    assert rules["version"] == "6.12" and rules["version_source"] == "--config header 6.12.9"
    assert main(args) == 0
    assert json.loads(out.read_text())["kernel_rules"]["version_source"] == "newest checked release"

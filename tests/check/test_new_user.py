"""What a new user meets first (issue 14, item 6): no abbreviated options, argparse errors worded
once and with the subcommand's usage, a MODULE that is not an ELF file is bad input in every
command, and "module" is the module's name in every JSON document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kbuild import Mod, make_target

from klpcore.cli import main


def test_no_abbreviated_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_target(tmp_path / "t")
    (tmp_path / "m.ko").write_bytes(Mod("m", imports=["printk"]).build())
    # --kernel is not check's --kernel-option (argparse would take the abbreviation)
    assert main(["check", str(tmp_path / "m.ko"), "--target", str(tmp_path / "t"), "--kernel", "6.1"]) == 2
    err = capsys.readouterr().err
    assert "error: klpcore check: unrecognized arguments: --kernel 6.1" in err
    assert err.count("error:") == 1
    assert "usage: klpcore check" in err  # the subcommand's usage, not the top-level one
    assert main(["inspect", str(tmp_path / "m.ko"), "--jso"]) == 2
    assert "usage: klpcore inspect" in capsys.readouterr().err


def test_non_elf_module_is_bad_input_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_target(tmp_path / "t")
    text = tmp_path / "notes-v2.txt"
    text.write_text("not a module\n" * 10)
    deb = tmp_path / "linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb"
    deb.write_bytes(b"!<arch>\ndebian-binary   " + bytes(64))
    for m in (text, deb):
        assert main(["check", str(m), "--target", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err
        assert str(m) in err  # its name intact
        assert main(["inspect", str(m)]) == 2
        capsys.readouterr()
    assert "Debian package" in (main(["check", str(deb), "-t", str(tmp_path / "t")]), capsys.readouterr().err)[1]


def test_json_module_is_the_name_in_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_target(tmp_path / "t")
    ko = tmp_path / "my-mod.ko"
    ko.write_bytes(Mod("my_mod", imports=["printk"]).build())
    main(["check", str(ko), "--target", str(tmp_path / "t"), "--json", "-"])
    check = json.loads(capsys.readouterr().out)
    main(["inspect", str(ko), "--json"])
    inspect = json.loads(capsys.readouterr().out)
    assert check["schema"] == inspect["schema"] == 2
    assert check["module"] == inspect["module"] == "my_mod"
    assert check["path"] == inspect["path"] == str(ko)


def test_api_kernel_options_validated_as_the_cli_does() -> None:
    """Found by fuzzing: options given through the Python API reached the ppc64le plugin unchecked
    and ended in ValueError/TypeError there.  One validation serves -O and options=: the core's keys
    and a plugin's (x86_64's address option here, the plugin this env has)."""
    from klpcore.errors import KlpError
    from klpcore.kernel import KernelTarget

    assert KernelTarget.from_string("6.1", options=None).options == {}
    assert KernelTarget.from_string("6.1", options={"stack_chk_guard_ptr": "0x10"}).options == {
        "stack_chk_guard_ptr": 16
    }
    assert KernelTarget.from_string("6.1", options={"page_size": 4096, "relocate_percpu": "yes"}).options == {
        "page_size": 4096,
        "relocate_percpu": True,
    }
    for bad in (
        {"stack_chk_guard_ptr": ""},
        {"stack_chk_guard_ptr": None},
        {"stack_chk_guard_ptr": "ten"},
        {"page_size": "ten"},
        {"relocate_percpu": "maybe"},
        {"no_such_option": 1},
        ["page_size"],
    ):
        with pytest.raises(KlpError):
            KernelTarget.from_string("6.1", options=bad)  # type: ignore[arg-type]
    with pytest.raises(KlpError):
        KernelTarget.from_string("banana")


def test_check_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first command: one module loads, one is refused with the real kernel's line."""
    assert main(["check", "--example"]) == 1
    out = capsys.readouterr().out
    assert "2 pairs: 1 loads, 1 refused" in out
    assert "kernel: livepatch: symbol 'kc_no_such_function' not found in symbol table" in out
    assert main(["check", "--example", "x.ko"]) == 2
    # the shipped example is the real-kernel fixture (tests/check/fixtures/kernel/build.py regenerates it)
    from importlib import resources

    example = Path(str(resources.files("klpcore") / "check" / "example"))
    fixture = Path(__file__).parent / "fixtures/kernel/x86_64-6.1.0-50"
    for rel in ("kc_lp.ko", "kc_lp_nosym.ko", "target/System.map", "target/config", "target/Module.symvers"):
        assert (example / rel).read_bytes() == (fixture / rel).read_bytes(), rel


def test_same_name_modules_shown_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_target(tmp_path / "t")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "ext4.ko").write_bytes(Mod("ext4", imports=["printk"]).build())
    main(["check", str(tmp_path / "a/ext4.ko"), str(tmp_path / "b/ext4.ko"), "-t", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert str(tmp_path / "a/ext4.ko") in out and str(tmp_path / "b/ext4.ko") in out

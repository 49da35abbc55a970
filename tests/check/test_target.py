"""Targets as distributions ship them: usr-merged trees, Debian 7.x's split packages, several roots
for one kernel, placeholder System.maps, and targets that are not kernels (bad input, exit 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kbuild import EXPORTS, RELEASE, Mod, make_target

from klpcore.check import Target, check_pair
from klpcore.check.command import parse_target_spec
from klpcore.cli import main
from klpcore.errors import InputError, SymbolFileError
from klpcore.symbols import parse_symbol_text

LIB = Mod("helper_lib", exports=["helper_fn"], functions=["helper_fn"], imports=["printk"])
USER = Mod(
    "user",
    imports=["helper_fn"],
    versions={"module_layout": EXPORTS["module_layout"][0], "helper_fn": 0x66666666},
    modinfo={"depends": "helper-lib"},
)


def usr_merged(root: Path) -> Path:
    """6.12's layout: boot/ for config and image, usr/lib/modules/R/ for the modules."""
    make_target(root, tree={"kernel/lib/helper-lib.ko": LIB})
    (root / "usr/lib/modules").mkdir(parents=True, exist_ok=True)
    shutil.move(root / "lib/modules" / RELEASE, root / "usr/lib/modules" / RELEASE)
    shutil.rmtree(root / "lib")
    return root


def split_roots(tmp: Path) -> list[Path]:
    """7.2's split packages, each extracted into its own root: base (config, placeholder System.map
    in usr/lib/modules/R/), modules, headers, -dbg."""
    whole = make_target(tmp / "whole", tree={"kernel/lib/helper-lib.ko": LIB})
    base, mods, hdr, dbg = (tmp / n for n in ("base", "modules", "headers", "dbg"))
    moddir = f"usr/lib/modules/{RELEASE}"
    (base / moddir).mkdir(parents=True)
    shutil.move(whole / f"boot/config-{RELEASE}", base / moddir / "config")
    shutil.move(whole / f"boot/System.map-{RELEASE}", base / moddir / "System.map")
    (mods / "usr/lib/modules").mkdir(parents=True)
    shutil.move(whole / f"lib/modules/{RELEASE}", mods / moddir)
    (hdr / "usr/src").mkdir(parents=True)
    shutil.move(whole / f"usr/src/linux-headers-{RELEASE}", hdr / f"usr/src/linux-headers-{RELEASE}")
    (dbg / "usr/lib").mkdir(parents=True)
    shutil.move(whole / "usr/lib/debug", dbg / "usr/lib/debug")
    return [base, mods, hdr, dbg]


def test_usr_merged_module_tree(tmp_path: Path) -> None:
    root = usr_merged(tmp_path / "t")
    t = Target(root)
    assert t.modules_dir == root / "usr/lib/modules" / RELEASE
    (tmp_path / "user.ko").write_bytes(USER.build())
    r = check_pair(str(tmp_path / "user.ko"), t)
    assert r.verdict == "loads", r.findings
    assert any("loaded first: helper_lib" in f.message for f in r.findings)


def test_split_packages_in_several_roots(tmp_path: Path) -> None:
    roots = split_roots(tmp_path)
    t = Target(roots)
    assert t.release == RELEASE
    assert t.config_path == roots[0] / f"usr/lib/modules/{RELEASE}/config"
    assert t.modules_dir == roots[1] / f"usr/lib/modules/{RELEASE}"
    assert t.symvers_path is not None and t.symbols is not None
    (tmp_path / "user.ko").write_bytes(USER.build())
    r = check_pair(str(tmp_path / "user.ko"), t)
    assert r.verdict == "loads", r.findings
    # the same kernel without its -dbg root: the placeholder is named, the symbols are missing
    t = Target(roots[:3])
    assert t.symbols is None
    assert "placeholder" in t.missing["symbols"] and "debug package" in t.missing["symbols"]


def test_target_spec_syntax(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b+1"
    a.mkdir()
    b.mkdir()
    assert parse_target_spec(str(a)) == ([str(a)], None)
    assert parse_target_spec(f"{a},{b}") == ([str(a), str(b)], None)
    assert parse_target_spec(f"{a},{b}:6.12.117+deb13-amd64") == ([str(a), str(b)], "6.12.117+deb13-amd64")
    with pytest.raises(InputError, match="not a directory"):
        parse_target_spec(f"{a},{tmp_path / 'nowhere'}")


def test_cli_several_roots(tmp_path: Path) -> None:
    roots = split_roots(tmp_path)
    (tmp_path / "user.ko").write_bytes(USER.build())
    assert main(["check", str(tmp_path / "user.ko"), "--target", ",".join(map(str, roots))]) == 0


def test_release_that_is_not_there_is_bad_input(tmp_path: Path) -> None:
    make_target(tmp_path / "t")
    (tmp_path / "m.ko").write_bytes(Mod("m", imports=["printk"]).build())
    t = Target(tmp_path / "t", release="6.1.0-99-amd64")
    with pytest.raises(InputError, match="no files of release 6.1.0-99-amd64"):
        t.validate()
    assert main(["check", str(tmp_path / "m.ko"), "--target", f"{tmp_path / 't'}:6.1.0-99-amd64"]) == 2
    assert main(["check", str(tmp_path / "m.ko"), "--target", f"{tmp_path / 't'}:{RELEASE}"]) == 0


def test_not_a_kernel_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.ko").write_bytes(Mod("m", imports=["printk"]).build())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["check", str(tmp_path / "m.ko"), "--target", str(empty)]) == 2
    assert "not a kernel" in capsys.readouterr().err
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb").write_bytes(b"!<arch>\n")
    assert main(["check", str(tmp_path / "m.ko"), "--target", str(debs)]) == 2
    assert "no data.tar member" in capsys.readouterr().err  # a folder of packages is read: this one is broken


def test_headers_btf_vmlinux_is_not_a_symbol_table(tmp_path: Path) -> None:
    # the linux-headers package of 6.12+ ships a vmlinux holding only .BTF: not the kernel's symbols
    make_target(tmp_path / "t", system_map=False, vmlinux_elf=False)
    from elfbuild import Obj, Sec

    o = Obj(machine=62)
    o.sections.append(Sec(".BTF", data=b"\0" * 16))
    (tmp_path / f"t/usr/src/linux-headers-{RELEASE}/vmlinux").write_bytes(o.build())
    t = Target(tmp_path / "t")
    assert t.vmlinux_path is None and t.symbols is None


def test_has_code_tells_a_kernel_image_from_btf_and_junk(tmp_path: Path) -> None:
    """The vmlinux test reads the ELF headers (klpcore.elfheader) from a file or from anything with
    read_bytes(): a symbol table and a non-BTF PROGBITS section, in either byte order."""
    from elfbuild import Obj, Sec, Sym
    from kbuild import vmlinux

    from klpcore.check.target import _has_code

    def both(name: str, data: bytes) -> bool:
        (tmp_path / name).write_bytes(data)
        via_file = _has_code(tmp_path / name)
        via_bytes = _has_code(type("Member", (), {"read_bytes": lambda self: data})())
        assert via_file == via_bytes
        return via_file

    image = vmlinux()
    assert both("vmlinux", image)
    big = Obj(machine=22, endian=">", sections=[Sec(".text", data=b"\x07" * 8)], symbols=[Sym("f", ".text", 0, size=8)])
    assert both("big", big.build())
    assert not both("btf", Obj(machine=62, sections=[Sec(".BTF", data=b"\0" * 16)]).build())
    assert not both("empty", b"")
    assert not both("text", b"not an ELF file at all, but long enough to hold a header" * 2)
    assert not both("cut", image[: len(image) - 100])  # the section header table is cut short
    elf32 = bytearray(image)
    elf32[4] = 1  # ELFCLASS32
    assert not both("elf32", bytes(elf32))


def test_placeholder_system_map_named_with_its_fix() -> None:
    text = "ffffffffffffffff B The real System.map is in the linux-image-7.2.13+deb14-amd64-dbg package\n"
    with pytest.raises(SymbolFileError, match="linux-image-7.2.13\\+deb14-amd64-dbg package"):
        parse_symbol_text(text, "System.map")
    with pytest.raises(SymbolFileError, match="placeholder"):
        parse_symbol_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")


def test_unknown_verdict_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing refused it but the relocations could not be checked: verdict unknown, exit 4, and the
    default output names the unchecked step and the file/package that supplies its input."""
    make_target(tmp_path / "t", system_map=False, vmlinux_elf=False)
    (tmp_path / "m.ko").write_bytes(Mod("m", imports=["printk"]).build())
    r = check_pair(str(tmp_path / "m.ko"), Target(tmp_path / "t"))
    assert r.verdict == "unknown"
    assert [f.check for f in r.unchecked] == ["relocations"]
    assert main(["check", str(tmp_path / "m.ko"), "--target", str(tmp_path / "t")]) == 4
    out = capsys.readouterr().out
    assert ": unknown" in out and "not checked" in out
    assert f"usr/lib/debug/boot/System.map-{RELEASE}" in out
    # several pairs: the worst wins (refused 1 over unknown 4)
    make_target(tmp_path / "nolp", config={"CONFIG_MODULES": "n"})
    assert main(["check", str(tmp_path / "m.ko"), "-t", str(tmp_path / "t"), "-t", str(tmp_path / "nolp")]) == 1
    assert "1 refused, 1 unknown" in capsys.readouterr().out


def test_kflagstab_exports_gpl_flag() -> None:
    """7.x modules keep every export in __ksymtab with one flag byte per entry in __kflagstab (bit 0:
    GPL-only, kernel commit "module: use kflagstab instead of *_gpl sections"); older ones use
    __ksymtab_gpl.  Both read the same."""
    from elfbuild import Obj, Sec, Sym

    from klpcore import constants as C
    from klpcore.elf import ElfModule
    from klpcore.modtree import module_exports

    def build(sections: list[Sec], syms: list[Sym]) -> list[tuple[str, bool]]:
        o = Obj(machine=62, sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16)), *sections])
        o.symbols = syms
        return module_exports(ElfModule(o.build(), path="x.ko"))

    new = build(
        [Sec("__ksymtab", flags=C.SHF_ALLOC, data=bytes(24)), Sec("__kflagstab", flags=C.SHF_ALLOC, data=b"\0\1")],
        [Sym("__ksymtab_plain", "__ksymtab", 0), Sym("__ksymtab_gplonly", "__ksymtab", 12)],
    )
    old = build(
        [Sec("__ksymtab", flags=C.SHF_ALLOC, data=bytes(12)), Sec("__ksymtab_gpl", flags=C.SHF_ALLOC, data=bytes(12))],
        [Sym("__ksymtab_plain", "__ksymtab", 0), Sym("__ksymtab_gplonly", "__ksymtab_gpl", 0)],
    )
    assert new == old == [("plain", False), ("gplonly", True)]


def test_module_namespace_matches_as_the_kernel_does() -> None:
    """EXPORT_SYMBOL_FOR_MODULES(sym, "kvm-amd,kvm-intel"): the module called kvm_amd may use it
    (mod_strncmp takes '-' and '_' as equal; Debian 7.2's kvm-amd was refused before); a tail '*' is a
    prefix; from 6.18 (UNCONFIRMED) only in-tree modules; before 6.17 no module namespace exists."""
    from klpcore.check.steps import _module_ns_ok

    ns = "module:kvm-amd,kvm-intel"
    assert _module_ns_ok(ns, "kvm_amd", (7, 2)) and _module_ns_ok(ns, "kvm_intel", (6, 17))
    assert not _module_ns_ok(ns, "kvm", (7, 2))
    assert not _module_ns_ok(ns, "kvm_amd", (6, 16))
    assert _module_ns_ok("module:snd-*", "snd_hda_intel", (7, 2))
    assert not _module_ns_ok(ns, "kvm_amd", (6, 18), intree=False)
    assert _module_ns_ok(ns, "kvm_amd", (6, 17), intree=False)


def _deb(path: Path, root: Path) -> Path:
    """A .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding the files under ``root``."""
    import io
    import tarfile

    def tar_xz(add: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, data in add.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    files = {"./" + str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_xz({"./control": b"Package: x\n"})),
        ("data.tar.xz", tar_xz(files)),
    ]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) & 1)
    path.write_bytes(out)
    return path


def test_deb_files_as_parts_of_a_target(tmp_path: Path) -> None:
    """.deb files read directly (streamed, nothing extracted): Debian 7.x's split packages given as
    packages, one kernel from several of them, or a folder holding only them."""
    roots = split_roots(tmp_path / "x")
    debs = tmp_path / "debs"
    debs.mkdir()
    parts = [_deb(debs / f"{r.name}.deb", r) for r in roots]
    (tmp_path / "user.ko").write_bytes(USER.build())
    t = Target(parts)
    assert t.release == RELEASE and t.config is not None and t.symvers is not None and t.symbols is not None
    r = check_pair(str(tmp_path / "user.ko"), t)
    assert r.verdict == "loads", r.findings
    assert any("loaded first: helper_lib" in f.message for f in r.findings)
    assert main(["check", str(tmp_path / "user.ko"), "--target", str(debs)]) == 0  # a folder of packages
    mixed = ",".join([*map(str, parts[:3]), str(roots[3])])  # packages and an extracted -dbg root
    assert main(["check", str(tmp_path / "user.ko"), "--target", mixed]) == 0
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    assert main(["check", str(tmp_path / "user.ko"), "--target", str(tmp_path / "bad.deb")]) == 2


def test_vermagic_whole_without_modversions(tmp_path: Path) -> None:
    """same_magic without CONFIG_MODVERSIONS (Debian 7.x) compares the whole vermagic, release included,
    even for a module that has __versions; with it, the release word is skipped."""
    from kbuild import VERMAGIC

    other = VERMAGIC.replace("6.1.0-9", "6.1.0-10")
    mod = Mod("m", imports=["printk"], vermagic=other)
    (tmp_path / "m.ko").write_bytes(mod.build())
    make_target(tmp_path / "mv")
    make_target(tmp_path / "nomv", config={"CONFIG_MODVERSIONS": None})
    assert check_pair(str(tmp_path / "m.ko"), Target(tmp_path / "mv")).verdict == "loads"
    r = check_pair(str(tmp_path / "m.ko"), Target(tmp_path / "nomv"))
    assert r.verdict == "refused"
    assert r.first_error is not None and r.first_error.check == "vermagic"
    assert "release part ignored" not in r.first_error.message


def test_symbol_source_without_export_markers(tmp_path: Path) -> None:
    """kallsyms (or a kernel image) of a kernel without CONFIG_KALLSYMS_ALL has no __ksymtab_ entries
    and no data symbols: the exports come from Module.symvers, their addresses from the symbol source;
    an export whose address the source lacks leaves the relocations unchecked (unknown), never an
    "Unknown symbol" refusal (Debian 6.1 arm64's image: 3,135 of 3,684 modules were refused so)."""
    from kbuild import system_map_text

    root = make_target(tmp_path / "t", system_map=False, vmlinux_elf=False)
    text = "".join(line + "\n" for line in system_map_text().splitlines() if " __ksymtab_" not in line)
    (root / "kallsyms").write_text(text)
    sv = root / f"usr/src/linux-headers-{RELEASE}/Module.symvers"
    sv.write_text(sv.read_text() + "0x12345678\tjiffies\tvmlinux\tEXPORT_SYMBOL\t\n")
    t = Target(root)
    (tmp_path / "m.ko").write_bytes(Mod("m", imports=["printk"]).build())
    r = check_pair(str(tmp_path / "m.ko"), t)
    assert r.verdict == "loads", r.findings
    (tmp_path / "d.ko").write_bytes(
        Mod("d", imports=["printk", "jiffies"], versions={**CRCS, "jiffies": 0x12345678}).build()
    )
    r = check_pair(str(tmp_path / "d.ko"), t)
    assert r.verdict == "unknown", r.findings
    assert "jiffies" in r.unchecked[0].message and "KALLSYMS_ALL" in r.unchecked[0].message


CRCS = {"module_layout": EXPORTS["module_layout"][0], "printk": EXPORTS["printk"][0]}

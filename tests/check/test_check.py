"""klpcore check: each load step's pass and fail, with the kernel's messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kbuild import EXPORTS, RELEASE, VMLINUX_FUNCS, Mod, make_target

from klpcore.check import Target, check_pair, read_patch
from klpcore.cli import main
from klpcore.elf import ElfModule
from klpcore.modtree import module_kernel_name


def run(tmp_path: Path, mod: Mod, **target_kw: object) -> tuple[str, list]:
    tdir = tmp_path / "target"
    if not tdir.exists():
        make_target(tdir, **target_kw)  # type: ignore[arg-type]
    path = tmp_path / f"{mod.name}.ko"
    path.write_bytes(mod.build())
    r = check_pair(str(path), Target(tdir))
    return r.verdict, r.findings


def errors(findings: list) -> list:
    return [f for f in findings if f.severity == "error"]


def kmsgs(findings: list) -> list[str]:
    return [f.kernel_message for f in findings if f.kernel_message]


def test_plain_module_loads(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("good", imports=["printk"]))
    assert verdict == "loads", findings
    assert "good: loading out-of-tree module taints kernel." in kmsgs(findings)
    assert any(f.check == "relocations" and "relocations applied" in f.message for f in findings)


def test_wrong_architecture(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("arm", machine=183))
    assert verdict == "refused"
    assert kmsgs(findings) == ["Invalid architecture in ELF header: 183"]


def test_not_elf(tmp_path: Path) -> None:
    make_target(tmp_path / "target")
    (tmp_path / "x.ko").write_bytes(b"hello world, not a module" * 4)
    r = check_pair(str(tmp_path / "x.ko"), Target(tmp_path / "target"))
    assert r.verdict == "refused"
    assert r.findings[0].kernel_message == "Invalid ELF header magic: != \\x7fELF"


def test_no_this_module(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("bare", this_module=False))
    assert verdict == "refused"
    assert kmsgs(findings) == ["bare: No module found in object"]


@pytest.mark.parametrize(
    ("release", "line"),
    [
        ("6.3.0-1-amd64", "bare: No module found in object"),
        ("6.4.0-1-amd64", "module bare: Only one .gnu.linkonce.this_module section must exist."),
        ("6.12.0-1-amd64", "module bare: Only one .gnu.linkonce.this_module section must exist."),
        ("6.13.0-1-amd64", "module bare: Exactly one .gnu.linkonce.this_module section must exist."),
        ("7.2.0-1-amd64", "module bare: Exactly one .gnu.linkonce.this_module section must exist."),
    ],
)
def test_no_this_module_by_release(tmp_path: Path, release: str, line: str) -> None:
    """6.4 moved the check into elf_validity_check (new words), 6.13 into elf_validity_cache_index_mod."""
    make_target(tmp_path / "target")
    path = tmp_path / "bare.ko"
    path.write_bytes(Mod("bare", this_module=False).build())
    r = check_pair(str(path), Target(tmp_path / "target", release=release))
    assert r.verdict == "refused"
    assert kmsgs(r.findings) == [line]


def test_module_layout_crc_first(tmp_path: Path) -> None:
    # module_layout is checked before vermagic: a wrong vermagic is not reported
    versions = {"module_layout": 0xDEAD, "printk": EXPORTS["printk"][0]}
    verdict, findings = run(tmp_path, Mod("lay", imports=["printk"], versions=versions, vermagic="5.10 SMP"))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["lay: disagrees about version of symbol module_layout"]


def test_module_layout_missing_entry_warns(tmp_path: Path) -> None:
    versions = {"printk": EXPORTS["printk"][0]}
    verdict, findings = run(tmp_path, Mod("nolay", imports=["printk"], versions=versions))
    assert verdict == "loads"
    assert "nolay: no symbol version for module_layout" in kmsgs(findings)


def test_no_versions_force_load_taints(tmp_path: Path) -> None:
    verdict, findings = run(
        tmp_path,
        Mod(
            "nover", imports=["printk"], no_versions=True, vermagic="6.1.0-9-amd64 SMP preempt mod_unload modversions "
        ),
    )
    assert verdict == "loads"
    assert "nover: module_layout: kernel tainted." in kmsgs(findings)


def test_no_versions_without_force_load_refused(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("nover", no_versions=True), config={"CONFIG_MODULE_FORCE_LOAD": None})
    assert verdict == "refused"
    assert errors(findings)[0].check == "modversions"


def test_vermagic_release_ignored_with_versions(tmp_path: Path) -> None:
    magic = "6.1.0-8-amd64 SMP preempt mod_unload modversions "
    verdict, _ = run(tmp_path, Mod("other_rel", vermagic=magic))
    assert verdict == "loads"


def test_vermagic_mismatch(tmp_path: Path) -> None:
    magic = "6.1.0-9-amd64 SMP mod_unload modversions "
    verdict, findings = run(tmp_path, Mod("vm", vermagic=magic))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == [
        f"vm: version magic '{magic}' should be '6.1.0-9-amd64 SMP preempt mod_unload modversions '"
    ]


def test_vermagic_release_compared_without_versions(tmp_path: Path) -> None:
    magic = "6.1.0-8-amd64 SMP preempt mod_unload modversions "
    verdict, findings = run(tmp_path, Mod("vm2", vermagic=magic, no_versions=True))
    assert verdict == "refused"
    assert errors(findings)[0].check == "vermagic"


def test_symbol_crc_disagrees(tmp_path: Path) -> None:
    versions = {"module_layout": EXPORTS["module_layout"][0], "printk": 0xBAD}
    verdict, findings = run(tmp_path, Mod("crc", imports=["printk"], versions=versions))
    assert verdict == "refused"
    err = errors(findings)[0]
    assert err.kernel_message == "crc: disagrees about version of symbol printk"
    assert err.extra["then"] == "crc: Unknown symbol printk (err -22)"


def test_symbol_without_version_warns(tmp_path: Path) -> None:
    versions = {"module_layout": EXPORTS["module_layout"][0]}
    verdict, findings = run(tmp_path, Mod("nv", imports=["printk"], versions=versions))
    assert verdict == "loads"
    assert "nv: no symbol version for printk" in kmsgs(findings)


def test_unknown_symbol(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("unk", imports=["no_such_fn", "printk"]))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["unk: Unknown symbol no_such_fn (err -2)"]


def test_weak_unknown_symbol_is_fine(tmp_path: Path) -> None:
    verdict, _ = run(tmp_path, Mod("weak", weak_imports=["no_such_fn"]))
    assert verdict == "loads"


def test_gpl_only_export_hidden_from_proprietary(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("prop", imports=["gpl_only_fn"], license="Proprietary"))
    assert verdict == "refused"
    assert "prop: module license 'Proprietary' taints kernel." in kmsgs(findings)
    err = errors(findings)[0]
    assert err.kernel_message == "prop: Unknown symbol gpl_only_fn (err -2)"
    assert "GPL-only" in err.message
    verdict, _ = run(tmp_path, Mod("gplok", imports=["gpl_only_fn"], license="Dual MIT/GPL"))
    assert verdict == "loads"


def test_namespace_not_imported(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("ns", imports=["ns_fn"]))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["ns: module uses symbol (ns_fn) from namespace MY_NS, but does not import it."]
    verdict, _ = run(tmp_path, Mod("ns2", imports=["ns_fn"], modinfo={"import_ns": "MY_NS"}))
    assert verdict == "loads"


def test_namespace_allowed_missing_is_warning(tmp_path: Path) -> None:
    verdict, findings = run(
        tmp_path, Mod("ns", imports=["ns_fn"]), config={"CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS": "y"}
    )
    assert verdict == "loads"
    assert any(f.severity == "warning" and "MY_NS" in (f.kernel_message or "") for f in findings)


def test_duplicate_export(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("dupexp", exports=["printk"], functions=["printk"]))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["dupexp: exports duplicate symbol printk (owned by kernel)"]


def test_dependency_exports_feed_resolution(tmp_path: Path) -> None:
    lib = Mod("helper_lib", exports=["helper_fn"], functions=["helper_fn"], modinfo={"intree": "Y"})
    user = Mod(
        "user",
        imports=["helper_fn"],
        versions={"module_layout": EXPORTS["module_layout"][0], "helper_fn": 0x66666666},
        modinfo={"depends": "helper-lib"},
    )
    verdict, findings = run(tmp_path, user, tree={"lib/helper-lib.ko": lib})
    assert verdict == "loads", findings
    assert any("loaded first: helper_lib" in f.message for f in findings)


def test_missing_dependency(tmp_path: Path) -> None:
    user = Mod("user", imports=["helper_fn"], modinfo={"depends": "helper_lib"})
    verdict, findings = run(tmp_path, user)
    # modprobe loads what depmod computed from the symbols; depends= is not read by the kernel
    assert verdict == "refused"
    assert "user: Unknown symbol helper_fn (err -2)" in kmsgs(findings)


def test_refused_dependency(tmp_path: Path) -> None:
    lib = Mod("bad_lib", exports=["helper_fn"], functions=["helper_fn"], imports=["no_such_fn"])
    user = Mod("user", imports=["helper_fn"], modinfo={"depends": "bad_lib"})
    verdict, findings = run(tmp_path, user, tree={"bad_lib.ko": lib})
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["bad_lib: Unknown symbol no_such_fn (err -2)"]


# ------------------------------------------------------------------ livepatch
def lp(patch: dict, **kw: object) -> Mod:
    return Mod("lp", imports=["klp_enable_patch"], livepatch=True, patch=patch, **kw)  # type: ignore[arg-type]


def test_livepatch_reads_sample_style_functions(tmp_path: Path) -> None:
    m = lp({None: [("cmdline_proc_show", 0), ("dup", 2)], "target_mod": [("tfunc", 0)]})
    info = read_patch(ElfModule(m.build(), path="lp.ko"))
    assert info.producer == "sample"
    got = [(o.name, f.old_name, f.sympos, f.new_func) for o, f in info.functions]
    assert got == [
        (None, "cmdline_proc_show", 0, "new_vmlinux_cmdline_proc_show"),
        (None, "dup", 2, "new_vmlinux_dup"),
        ("target_mod", "tfunc", 0, "new_target_mod_tfunc"),
    ]


def test_livepatch_loads(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("cmdline_proc_show", 0), ("dup", 2)]}))
    assert verdict == "loads", findings
    assert "lp: tainting kernel with TAINT_LIVEPATCH" in kmsgs(findings)


def test_livepatch_without_config_livepatch(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("cmdline_proc_show", 0)]}), config={"CONFIG_LIVEPATCH": None})
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["lp: module is marked as livepatch module, but livepatch support is disabled"]


def test_patch_without_livepatch_modinfo(tmp_path: Path) -> None:
    m = Mod("lp", imports=["klp_enable_patch"], livepatch=False, patch={None: [("cmdline_proc_show", 0)]})
    verdict, findings = run(tmp_path, m)
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["livepatch: module lp is not marked as a livepatch module"]


def test_patched_function_not_found(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("renamed_fn", 0)]}))
    assert verdict == "refused"
    err = errors(findings)[0]
    assert err.kernel_message == "livepatch: symbol 'renamed_fn' not found in symbol table"
    assert "then" not in err.extra  # klp_init_patch fails silently: no "failed to enable patch"


def test_ambiguous_function_lists_candidates(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("dup", 0)]}))
    assert verdict == "refused"
    err = errors(findings)[0]
    assert err.kernel_message == "livepatch: unresolvable ambiguity for symbol 'dup' in object '(null)'"
    cands = err.extra["candidates"]
    assert [(c["sympos"], c["address"], c["file"]) for c in cands] == [
        (1, hex(VMLINUX_FUNCS["dup"][0]), "fs/proc/cmdline.c"),
        (2, "0xffffffff81400800", "kernel/other.c"),
    ]
    assert cands[0]["size"] == 0x100  # kallsyms size: distance to the next symbol


def test_sympos_beyond_count(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("dup", 3)]}))
    assert verdict == "refused"
    assert kmsgs(errors(findings)) == ["livepatch: symbol position 3 for symbol 'dup' in object 'vmlinux' not found"]


def test_function_without_ftrace_location(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("notrace_fn", 0)]}))
    assert verdict == "refused"
    err = errors(findings)[0]
    assert err.kernel_message == "livepatch: failed to find location for function 'notrace_fn'"
    assert err.extra["then"][0] == "livepatch: failed to patch object 'vmlinux'"


def test_ftrace_not_checked_without_vmlinux(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, lp({None: [("notrace_fn", 0)]}), vmlinux_elf=False)
    assert verdict == "unknown"  # the kernel could refuse it there: never "loads" unchecked
    assert any(f.severity == "not-checked" and f.check == "ftrace" for f in findings)


def test_module_object(tmp_path: Path) -> None:
    tree = {
        "drivers/target-mod.ko": Mod(
            "target_mod", functions=["tfunc", "quiet"], notrace=["quiet"], modinfo={"intree": "Y"}
        )
    }
    verdict, findings = run(tmp_path, lp({"target_mod": [("tfunc", 0)]}), tree=tree)
    assert verdict == "loads", findings
    verdict, findings = run(tmp_path, lp({"target_mod": [("gone", 0)]}))
    assert verdict == "patch-fails"
    err = errors(findings)[0]
    assert err.kernel_message == "livepatch: symbol 'gone' not found in symbol table"
    assert (
        err.extra["then"][1]
        == "livepatch: patch 'lp' failed for module 'target_mod', refusing to load module 'target_mod'"
    )
    verdict, findings = run(tmp_path, lp({"target_mod": [("quiet", 0)]}))
    assert verdict == "patch-fails"
    assert kmsgs(errors(findings)) == ["livepatch: failed to find location for function 'quiet'"]


def test_object_name_with_dash_or_suffix(tmp_path: Path) -> None:
    tree = {"drivers/target-mod.ko": Mod("target_mod", functions=["tfunc"])}
    for bad in ("target-mod", "target_mod.ko"):
        verdict, findings = run(tmp_path, lp({bad: [("tfunc", 0)]}), tree=tree)
        assert verdict == "patch-fails"
        assert "'target_mod'" in errors(findings)[0].message
    verdict, findings = run(tmp_path, lp({"absent": [("f", 0)]}))
    assert verdict == "loads"
    assert any(f.severity == "warning" and "absent" in f.message for f in findings)


# ---------------------------------------------------------------- targets
def test_flat_target_and_placeholder(tmp_path: Path) -> None:
    make_target(tmp_path / "flat", layout="flat")
    t = Target(tmp_path / "flat")
    assert t.release == RELEASE
    assert t.symbols is not None and t.symvers is not None and t.config is not None
    make_target(tmp_path / "inst", system_map=False, vmlinux_elf=False)
    t = Target(tmp_path / "inst")
    assert t.symbols is None
    assert any("placeholder" in n for n in t.notes)
    assert "symbols" in t.missing


def test_missing_files_are_not_checked(tmp_path: Path) -> None:
    verdict, findings = run(tmp_path, Mod("m", imports=["printk"]), symvers=False, system_map=False, vmlinux_elf=False)
    assert verdict == "unknown"
    checks = {f.check for f in findings if f.severity == "not-checked"}
    assert {"modversions", "symbols", "relocations"} <= checks


def test_module_kernel_name() -> None:
    assert module_kernel_name("a/b/dm-persistent-data.ko.xz") == "dm_persistent_data"


# -------------------------------------------------------------------- CLI
def test_cli_table_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_target(tmp_path / "t1")
    make_target(tmp_path / "t2", config={"CONFIG_LIVEPATCH": None})
    ko = tmp_path / "lp.ko"
    ko.write_bytes(lp({None: [("cmdline_proc_show", 0)]}).build())
    rc = main(
        [
            "check",
            str(ko),
            "--target",
            str(tmp_path / "t1"),
            "--target",
            str(tmp_path / "t2"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert "verdict" in out.splitlines()[0]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema"] == 2 and doc["module"] == "lp" and doc["path"] == str(ko)
    assert [t["verdict"] for t in doc["targets"]] == ["loads", "refused"]
    assert {"check", "severity", "message", "kernel_message"} <= set(doc["targets"][1]["findings"][0])
    assert main(["check", str(ko), "--target", str(tmp_path / "t1")]) == 0
    assert main(["check", str(ko), "--target", str(tmp_path / "nowhere")]) == 2
    assert main(["check", str(tmp_path / "missing.ko"), "--target", str(tmp_path / "t1")]) == 2
    capsys.readouterr()
    rc = main(["check", str(ko), str(ko), "--target", str(tmp_path / "t1"), "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(doc["modules"]) == 2


def _klp_build_module(objs_sec: str, funcs_sec: str) -> bytes:
    from elfbuild import Obj, Rela, Sec, Sym

    from klpcore import constants as C

    text = Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(32), align=16)
    strings = b"\0target_mod\0tfunc\0cmdline_proc_show\0"
    objs = bytearray(128)
    objs[56:60] = (1).to_bytes(4, "little")
    objs[64 + 56 : 64 + 60] = (1).to_bytes(4, "little")
    funcs = bytearray(48)
    funcs[16:24] = (0).to_bytes(8, "little")
    funcs[24 + 16 : 24 + 24] = (2).to_bytes(8, "little")
    secs = [
        text,
        Sec(".klp.strings", flags=C.SHF_ALLOC, data=strings),
        Sec(objs_sec, flags=C.SHF_ALLOC, data=bytes(objs), align=8),
        Sec(funcs_sec, flags=C.SHF_ALLOC, data=bytes(funcs), align=8),
    ]
    syms = [
        Sym(".klp.strings", ".klp.strings", 0, C.STB_LOCAL, C.STT_SECTION),
        Sym(funcs_sec, funcs_sec, 0, C.STB_LOCAL, C.STT_SECTION),
        Sym("new_a", ".text", 0, C.STB_LOCAL, C.STT_FUNC, 16),
        Sym("new_b", ".text", 16, C.STB_LOCAL, C.STT_FUNC, 16),
    ]
    relas = [
        Rela(objs_sec, 8, 1, funcs_sec, 0),  # vmlinux object: no name
        Rela(objs_sec, 64, 1, ".klp.strings", 1),
        Rela(objs_sec, 72, 1, funcs_sec, 24),
        Rela(funcs_sec, 0, 1, ".klp.strings", 18),
        Rela(funcs_sec, 8, 1, "new_a"),
        Rela(funcs_sec, 24, 1, ".klp.strings", 12),
        Rela(funcs_sec, 32, 1, "new_b"),
    ]
    return Obj(62, sections=secs, symbols=syms, relas=relas, modinfo={"livepatch": "Y"}).build()


@pytest.mark.parametrize("names", [(".init.klp_objects", ".init.klp_funcs"), ("__klp_objects", "__klp_funcs")])
def test_klp_build_layout(names: tuple[str, str]) -> None:
    info = read_patch(ElfModule(_klp_build_module(*names), path="x.ko"))
    assert info.producer == "klp-build"
    assert [(o.name, f.old_name, f.sympos, f.new_func) for o, f in info.functions] == [
        (None, "cmdline_proc_show", 0, "new_a"),
        ("target_mod", "tfunc", 2, "new_b"),
    ]


def test_kpatch_layout() -> None:
    from elfbuild import Obj, Rela, Sec, Sym

    from klpcore import constants as C

    strings = b"\0vmlinux\0cmdline_proc_show\0"
    data = bytearray(56)
    data[32:40] = (3).to_bytes(8, "little")
    secs = [
        Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16), align=16),
        Sec(".kpatch.strings", flags=C.SHF_ALLOC, data=strings),
        Sec(".kpatch.funcs", flags=C.SHF_ALLOC, data=bytes(data), align=8),
    ]
    syms = [
        Sym(".kpatch.strings", ".kpatch.strings", 0, C.STB_LOCAL, C.STT_SECTION),
        Sym("cmdline_proc_show", ".text", 0, C.STB_LOCAL, C.STT_FUNC, 16),
    ]
    relas = [
        Rela(".kpatch.funcs", 0, 1, "cmdline_proc_show"),
        Rela(".kpatch.funcs", 40, 1, ".kpatch.strings", 9),
        Rela(".kpatch.funcs", 48, 1, ".kpatch.strings", 1),
    ]
    elf = ElfModule(Obj(62, sections=secs, symbols=syms, relas=relas).build(), path="k.ko")
    info = read_patch(elf)
    assert info.producer == "kpatch"
    assert [(o.label, f.old_name, f.sympos, f.new_func) for o, f in info.functions] == [
        ("vmlinux", "cmdline_proc_show", 3, "cmdline_proc_show")
    ]


def test_inspect_shows_patched_functions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ko = tmp_path / "lp.ko"
    ko.write_bytes(lp({None: [("cmdline_proc_show", 0)], "target_mod": [("tfunc", 2)]}).build())
    assert main(["inspect", str(ko), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["patched_functions"] == [
        {
            "object": "vmlinux",
            "old_name": "cmdline_proc_show",
            "sympos": 0,
            "replacement": "new_vmlinux_cmdline_proc_show",
        },
        {"object": "target_mod", "old_name": "tfunc", "sympos": 2, "replacement": "new_target_mod_tfunc"},
    ]


def test_kernel_without_module_support(tmp_path: Path) -> None:
    # a kernel built without CONFIG_MODULES (as this sandbox's) has no init_module: ENOSYS, no message
    tdir = make_target(tmp_path / "target")
    cfg = tdir / "boot" / f"config-{RELEASE}"
    cfg.write_text(cfg.read_text() + "# CONFIG_MODULES is not set\n")
    verdict, findings = run(tmp_path, Mod("good", imports=["printk"]))
    assert verdict == "refused"
    assert [(f.check, f.kernel_message) for f in errors(findings)] == [("modules", None)]
    # a config that does not mention it is not taken as "no modules"
    cfg.write_text(cfg.read_text().replace("# CONFIG_MODULES is not set\n", ""))
    r = check_pair(str(tmp_path / "good.ko"), Target(tdir))
    assert r.verdict == "loads"


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".zst"])
def test_dependency_from_a_compressed_tree(tmp_path: Path, suffix: str) -> None:
    # distributions compress their module trees (.ko.xz, .ko.gz, .ko.zst): a dependency is found,
    # read and checked the same way
    import gzip
    import lzma

    from klpcore import compress

    lib = Mod("helper_lib", exports=["helper_fn"], functions=["helper_fn"], modinfo={"intree": "Y"})
    user = Mod(
        "user",
        imports=["helper_fn"],
        versions={"module_layout": EXPORTS["module_layout"][0], "helper_fn": 0x66666666},
        modinfo={"depends": "helper-lib"},
    )
    tdir = make_target(tmp_path / "target", tree={"lib/helper-lib.ko": lib})
    plain = next(tdir.rglob("helper-lib.ko"))
    data = plain.read_bytes()
    if suffix == ".xz":
        packed = lzma.compress(data, format=lzma.FORMAT_XZ)
    elif suffix == ".gz":
        packed = gzip.compress(data)
    else:
        import zstandard as zstd

        packed = zstd.ZstdCompressor().compress(data)
    plain.with_name("helper-lib.ko" + suffix).write_bytes(packed)
    plain.unlink()
    assert compress.read_input(plain.with_name("helper-lib.ko" + suffix), limit=1 << 20, what="t") == data
    verdict, findings = run(tmp_path, user)
    assert verdict == "loads", findings
    assert any("loaded first: helper_lib" in f.message for f in findings)


def test_missing_crc_rule_by_distribution(tmp_path: Path) -> None:
    # upstream accepts an import without a __versions entry (warning); Debian's kernels refuse it
    # (tests/check/test_kernel_verdicts.py: kc_noentry, kc_nolayout on the real 6.1.0-50)
    versions = {"module_layout": EXPORTS["module_layout"][0]}
    mod = Mod("noent", imports=["printk"], versions=versions)
    verdict, _ = run(tmp_path, mod)
    assert verdict == "loads"
    r = check_pair(str(tmp_path / "noent.ko"), Target(tmp_path / "target", distribution="debian"))
    assert r.verdict == "refused"
    assert kmsgs(errors(r.findings)) == [f"noent: no symbol version for {n}" for n in ("__fentry__", "printk")]
    deb = make_target(tmp_path / "debian", config={"CONFIG_CC_VERSION_TEXT": '"gcc-12 (Debian 12.2.0-14) 12.2.0"'})
    assert Target(deb).distribution == "debian"
    r = check_pair(str(tmp_path / "noent.ko"), Target(deb))
    assert r.verdict == "refused"
    assert errors(r.findings)[-1].extra["then"] == "noent: Unknown symbol printk (err -22)"
    assert check_pair(str(tmp_path / "noent.ko"), Target(deb, distribution="upstream")).verdict == "loads"

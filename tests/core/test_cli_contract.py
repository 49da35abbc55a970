"""The command-line contract (docs/cli.md): exit codes, no traceback, one JSON schema.

One test (or a parametrized group) per item of the contract.  Subprocess runs
cover each exit-code class end to end; the rest calls ``main()`` in-process,
which is the same code path and much faster.  The toy architecture stands in
for real plugins; the tests that need a real plugin are in tests/plugins/.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import constants as C
from klpcore.cli import COMMANDS, EXIT_INTERNAL, build_parser, main
from klpcore.testing.klpify import KlpSym

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
BASE = 0xFFFFFFFFC0000000
SYMS = "ffffffff81000000 T _stext\nffffffff81000010 T printk\nffffffff82000000 r __ksymtab_printk\n"


def _schema() -> dict:
    return json.loads((resources.files("klpcore") / "schema" / "v2.json").read_text())


def validate(doc: dict) -> None:
    jsonschema.validate(doc, _schema(), cls=jsonschema.Draft202012Validator)


@pytest.fixture(autouse=True)
def toy_only(monkeypatch):
    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")


def toy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KLPCORE_PLUGINS="toyarch",
        KLPCORE_LOAD_PLUGINS="",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


#: address-space limit of every CLI subprocess: hostile inputs must not need more
MEMORY_LIMIT = 2 << 30


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess with bounded memory; asserts the contract that
    holds for every run (a MemoryError would be exit 3 and fail)."""
    env = dict(env or toy_env(), OPENBLAS_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-m", "klpcore", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 1, 2, 3, 4), p.returncode
    return p


def call(*args: str) -> tuple[int, str, str]:
    """``main()`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    assert "Traceback" not in err.getvalue(), err.getvalue()
    assert code in (0, 1, 2, 3, 4)  # 4: check, verdict unknown
    json_to_stdout = "--json" in args and ("-" in args or "apply" not in args)
    if json_to_stdout and out.getvalue().strip():
        validate(json.loads(out.getvalue()))
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- fixtures
def toy_module(relas=(), sections=None, symbols=None, modinfo=None) -> bytes:
    return Obj(
        sections=sections
        or [
            Sec(".text", flags=TEXT, data=bytes(64), align=16),
            Sec(".rodata.str1.1", flags=C.SHF_ALLOC | C.SHF_MERGE | C.SHF_STRINGS, data=b"hello\0", align=1),
            Sec(".bss", type=C.SHT_NOBITS, flags=DATA, size=32, align=8),
        ],
        symbols=symbols if symbols is not None else [Sym("printk")],
        relas=list(relas) or [Rela(".text", 0, T.ABS64, "printk", 4)],
        modinfo=modinfo or {"name": "clitest"},
    ).build()


def set_shdr(data: bytes, name: str, field: int, value: int) -> bytes:
    """``data`` with the 8-byte section header field at ``field`` of section ``name`` set."""
    buf = bytearray(data)
    shoff = struct.unpack_from("<Q", buf, 0x28)[0]
    shnum, shstrndx = struct.unpack_from("<HH", buf, 0x3C)
    stroff = struct.unpack_from("<Q", buf, shoff + shstrndx * 64 + 24)[0]
    for i in range(shnum):
        at = shoff + i * 64
        n = struct.unpack_from("<I", buf, at)[0]
        if buf[stroff + n : buf.index(b"\0", stroff + n)] == name.encode():
            struct.pack_into("<Q", buf, at + field, value)
            return bytes(buf)
    raise KeyError(name)


@pytest.fixture
def files(tmp_path):
    mod = tmp_path / "good.ko"
    mod.write_bytes(toy_module())
    syms = tmp_path / "System.map"
    syms.write_text(SYMS)
    return mod, syms, tmp_path


def patch_module() -> bytes:
    return T.toy_livepatch(helper=KlpSym("ext4", 1))


# =========================================================== 1: no traceback
@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("0x1234", "--base: 0x1234 is not page aligned"),
        ("0xffffffffc0000001", "--base: 0xffffffffc0000001 is not page aligned"),
        ("-5", "--base: -0x5 is outside the 64-bit address range"),
        ("0xfffffffffffff000", "runs past the end of the 64-bit address space"),
        ("0x10000000000000000", "--base: 0x10000000000000000 is outside the 64-bit address range"),
        ("-4096", "--base: -0x1000 is outside the 64-bit address range"),
        ("0123", "a leading 0 is ambiguous"),
        ("banana", "--base: 'banana' is not an address"),
        ("0", "--base 0: module memory at address 0 is not modelled"),
    ],
)
def test_bad_base_is_one_line_exit_2(files, base, message) -> None:
    mod, syms, _ = files
    code, _, err = call("apply", str(mod), "-s", str(syms), f"--base={base}")
    assert code == 2
    assert message in one_line(err)


def test_bad_base_subprocess(files) -> None:
    mod, syms, _ = files
    p = run("apply", str(mod), "-s", str(syms), "--base", "0x1234")
    assert p.returncode == 2
    assert "--base: 0x1234 is not page aligned" in one_line(p.stderr)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("@0xffffffffc0000010", "is not page aligned"),
        ("@0123", "a leading 0 is ambiguous"),
        ("@-4096", "outside the 64-bit address range"),
        ("@0x10000000000000000", "outside the 64-bit address range"),
        ("@0xffffffffc0000000:bad/name", "is not a module name"),
        ("@0xfffffffffffff000", "runs past the end of the 64-bit address space"),
    ],
)
def test_module_symbol_source_address(files, suffix, message) -> None:
    mod, syms, tmp = files
    dep = tmp / "dep.ko"
    dep.write_bytes(toy_module(modinfo={"name": "dep"}))
    code, _, err = call("resolve", str(mod), "-s", str(syms), "-s", f"{dep}{suffix}")
    assert code == 2
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("toy_address=banana", "-O toy_address: 'banana' is not an address"),
        ("toy_address=-1", "-O toy_address: -0x1 is outside the 64-bit address range"),
        ("toy_flag=maybe", "-O toy_flag=maybe: expected true or false"),
        ("toy_count=x", "-O toy_count=x: expected a number"),
        ("novalue", "--kernel-option expects KEY=VALUE"),
        (
            "nosuch=1",
            "-O nosuch: unknown option; the core and the installed plugins accept: ",
        ),
    ],
)
def test_kernel_option_values(files, option, message) -> None:
    mod, syms, _ = files
    code, _, err = call("apply", str(mod), "-s", str(syms), "-O", option)
    assert code == 2
    assert message in one_line(err)
    if option == "nosuch=1":  # the list names the core's keys and the plugin's, sorted
        accepted = one_line(err).split("accept: ")[1].split(", ")
        assert {"relocate_percpu", "toy_address", "toy_count", "toy_flag"} <= set(accepted)
        assert accepted == sorted(accepted)


def test_unwritable_outputs(files) -> None:
    mod, syms, tmp = files
    (tmp / "file").write_text("x")
    p = run("apply", str(mod), "-s", str(syms), "-o", "/dev/full")
    assert p.returncode == 2
    assert "cannot write relocated module /dev/full: No space left on device" in one_line(p.stderr)
    for out, reason in [
        ("/", "Is a directory"),
        (str(tmp / "missing" / "out.ko"), "No such file or directory"),
        (str(tmp / "file" / "out.ko"), "Not a directory"),
        ("/dev/full", "No space left on device"),
    ]:
        code, _, err = call("apply", str(mod), "-s", str(syms), "-o", out)
        assert code == 2, (out, err)
        assert f"cannot write relocated module {out}: {reason}" in one_line(err)
        code, _, err = call("apply", str(mod), "-s", str(syms), "--json", out)
        assert code == 2
        assert f"cannot write JSON report {out}: {reason}" in one_line(err)
    assert not list(tmp.glob(".*.tmp"))  # no temporary file left behind


def test_internal_error_exit_3_one_line_and_debug_traceback(files) -> None:
    mod, _, _ = files
    env = toy_env(KLPCORE_PLUGINS="toyarch,crashplugin")
    p = run("inspect", str(mod), env=env)
    assert p.returncode == EXIT_INTERNAL == 3
    line = one_line(p.stderr)
    assert re.fullmatch(
        r"error: internal error in klpcore \S+ \(a bug\): RuntimeError: simulated bug in a plugin; "
        r"rerun with --debug for the traceback",
        line,
    ), line
    p = subprocess.run(
        [sys.executable, "-m", "klpcore", "--debug", "inspect", str(mod)], capture_output=True, text=True, env=env
    )
    assert p.returncode == 3
    assert "Traceback (most recent call last)" in p.stderr and "the traceback is above" in p.stderr
    p = run("inspect", str(mod), "--json", env=env)
    doc = json.loads(p.stdout)
    validate(doc)
    assert doc["exit_code"] == 3 and "internal error in klpcore" in doc["errors"][0]["message"]


def test_exit_classes_subprocess(files) -> None:
    mod, syms, tmp = files
    bad = tmp / "bad.ko"
    bad.write_bytes(toy_module(symbols=[Sym("printk"), Sym("nowhere")], relas=[Rela(".text", 0, T.ABS64, "nowhere")]))
    assert run("apply", str(mod), "-s", str(syms), "-o", str(tmp / "o.ko")).returncode == 0
    p = run("apply", str(bad), "-s", str(syms), "-o", str(tmp / "n.ko"))
    assert p.returncode == 1 and "Unknown symbol nowhere" in p.stderr
    assert not (tmp / "n.ko").exists()
    p = run("apply", "--nosuch")
    assert p.returncode == 2 and "unrecognized arguments: --nosuch" in p.stderr


def test_corrupt_gzip_symbol_file(files) -> None:
    mod, _, tmp = files
    bad = tmp / "System.map.gz"
    bad.write_bytes(gzip.compress(SYMS.encode())[:-12] + b"garbage!")
    code, _, err = call("resolve", str(mod), "-s", str(bad))
    assert code == 2 and f"symbol file {bad}: corrupt gzip data" in one_line(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5 T neg\n", "not a symbol line"),
        ("10000000000000000 T big\n", "is not a 64-bit hex address"),
        ("ffffffff81000000 T a [m]\n-1 t b [m]\n", "not a symbol line"),
        ("ff_ff T under\n", "not a symbol line"),
    ],
)
def test_symbol_file_addresses(files, text, message) -> None:
    mod, _, tmp = files
    s = tmp / "hostile.map"
    s.write_text(text)
    code, _, err = call("resolve", str(mod), "-s", str(s))
    assert code == 2 and message in one_line(err)


def _vmlinux_elf(machine: int = T.TOY, symtab_offset: int | None = None) -> bytes:
    data = bytearray(
        Obj(
            machine=machine,
            sections=[Sec(".text", flags=TEXT, data=bytes(16))],
            symbols=[Sym("_stext", ".text", 0)],
        ).build()
    )
    struct.pack_into("<H", data, 16, C.ET_EXEC)
    if symtab_offset is not None:
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shnum = struct.unpack_from("<H", data, 0x3C)[0]
        for i in range(shnum):
            if struct.unpack_from("<I", data, shoff + i * 64 + 4)[0] == C.SHT_SYMTAB:
                struct.pack_into("<Q", data, shoff + i * 64 + 24, symtab_offset)
    return bytes(data)


def test_vmlinux_symbol_source_hostile_symtab(files) -> None:
    mod, _, tmp = files
    v = tmp / "vmlinux"
    v.write_bytes(_vmlinux_elf(symtab_offset=(1 << 64) - 8))
    code, _, err = call("resolve", str(mod), "-s", str(v))
    assert code == 2 and f"{v}: unreadable ELF" in one_line(err)
    # a compressed (SHF_COMPRESSED) string table whose contents are not zlib data
    v.write_bytes(set_shdr(_vmlinux_elf(), ".strtab", 8, 0x800))
    code, _, err = call("resolve", str(mod), "-s", str(v))
    assert code == 2 and f"{v}: unreadable ELF" in one_line(err)


def test_duplicate_section_names(tmp_path) -> None:
    data = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(32), align=16),
            Sec(".text", flags=TEXT, data=bytes(32), align=16),
        ],
        symbols=[Sym("printk")],
        relas=[Rela(".text", 0, T.ABS64, "printk", 0)],
        modinfo={"name": "dups"},
    ).build()
    m = tmp_path / "dups.ko"
    m.write_bytes(data)
    s = tmp_path / "System.map"
    s.write_text(SYMS)
    for cmd in (["apply", "-o", str(tmp_path / "o.ko")], ["disasm"], ["inspect"], ["resolve"]):
        args = [cmd[0], str(m), *cmd[1:]] + ([] if cmd[0] == "inspect" else ["-s", str(s)])
        code, _, _ = call(*args)
        assert code in (0, 2)


def test_relocfailure_outside_a_handler_stays_in_the_hierarchy() -> None:
    """A RelocFailure raised by a section hook (not a per-entry handler), as the
    clear path did for an empty .klp.rela section, becomes a RelocationError
    naming the section: never a bare exception."""
    from klpcore import KlpError, Loader, RelocationError, RelocFailure, get_plugin_manager, hookimpl
    from klpcore import parse_symbol_text as pst

    class Refuse:
        @hookimpl(tryfirst=True)
        def klp_arch_clear_section(self, ctx):
            raise RelocFailure("section has no bytes in module memory")

    assert issubclass(RelocFailure, KlpError)
    pm = get_plugin_manager(plugins=[Refuse()])
    lm = Loader(pm).load(
        patch_module(),
        pst(SYMS + "ffffffff81000100 t secret\nffffffffc1000000 t helper [ext4]\n"),
        BASE,
    )
    with pytest.raises(RelocationError) as ei:
        lm.going("ext4")
    assert ei.value.diagnostics[0].section == ".klp.rela.ext4..text.fn"


# ============================================================= 2: bounded
def test_huge_alignment_of_unloaded_section_is_not_padded(files) -> None:
    _, syms, tmp = files
    m = tmp / "align.ko"
    m.write_bytes(
        set_shdr(
            toy_module(
                sections=[
                    Sec(".text", flags=TEXT, data=bytes(64), align=16),
                    Sec(".comment", data=b"x" * 16, align=1),
                ]
            ),
            ".comment",
            48,  # sh_addralign
            1 << 32,
        )
    )
    out = tmp / "out.ko"
    code, _, _ = call("apply", str(m), "-s", str(syms), "-o", str(out))
    assert code == 0
    assert out.stat().st_size < 1 << 20


def test_gzip_bomb_and_dev_zero(files) -> None:
    mod, syms, tmp = files
    bomb = tmp / "System.map.gz"
    with gzip.open(bomb, "wb") as fh:
        line = b"ffffffff81000000 T x\n" * 50000
        for _ in range(140):  # 147 MB of text, more than the 128 MiB limit
            fh.write(line)
    p = run("resolve", str(mod), "-s", str(bomb))
    assert p.returncode == 2 and "gzip-compressed data is larger than the 128 MiB klpcore reads" in one_line(p.stderr)
    p = run("inspect", "/dev/zero")
    assert p.returncode == 2 and "module /dev/zero is a character device" in one_line(p.stderr)
    code, _, err = call("resolve", str(mod), "-s", "/dev/zero")
    assert code == 2 and "symbol file /dev/zero is a character device" in one_line(err)


def test_overlapping_placement_refused(files) -> None:
    _, syms, tmp = files
    m = tmp / "percpu.ko"
    m.write_bytes(
        toy_module(
            sections=[
                Sec(".text", flags=TEXT, data=bytes(64), align=16),
                Sec(".data..percpu", flags=DATA, data=bytes(64), align=64),
            ]
        )
    )
    code, _, err = call("apply", str(m), "-s", str(syms), "--base", "0xffffffffa0000000")
    assert code == 2
    assert re.search(r"MOD_TEXT 0xffffffffa0000000\.\.0xffffffffa0001000 overlaps the per-CPU area", one_line(err))
    assert call("apply", str(m), "-s", str(syms))[0] == 0


def test_failing_relocation_names_section_symbol(files) -> None:
    _, syms, tmp = files
    m = tmp / "secsym.ko"
    # an ABS32 against the section symbol of .rodata.str1.1: its address does not fit 32 bits
    secsym = Sym("", ".rodata.str1.1", bind=C.STB_LOCAL, type=C.STT_SECTION)
    m.write_bytes(toy_module(symbols=[secsym, Sym("printk")], relas=[Rela(".text", 0, T.ABS32, 1, 0)]))
    code, _, err = call("apply", str(m), "-s", str(syms))
    assert code == 1
    assert "symbol .rodata.str1.1 + 0:" in err


def test_function_index_matches_a_scan() -> None:
    """The sorted index that describes addresses answers as a scan of every symbol would."""
    from klpcore import Loader, get_plugin_manager, parse_symbol_text
    from klpcore.engine import ApplyContext, StagedMemory

    funcs = [Sym(f"f{i}", ".text", 8 * i, type=C.STT_FUNC, size=(8 if i % 3 else 0)) for i in range(6)]
    funcs.append(Sym("outer", ".text", 0, type=C.STT_FUNC, size=48))
    data = toy_module(symbols=[Sym("printk"), *funcs])
    loader = Loader(get_plugin_manager())
    lm = loader.load(data, parse_symbol_text(SYMS), BASE)
    mod = lm.module
    ctx = ApplyContext(mod, mod.arch, loader.kernel, StagedMemory(lm.image, []), lm.symvals, {}, "x")
    elf = mod.elf
    for addr in range(BASE - 4, BASE + 72):
        best = None
        for i in range(1, elf.nsyms):
            if int(elf.symbols["st_info"][i]) & 0xF != C.STT_FUNC:
                continue
            start = BASE + int(elf.symbols["st_value"][i])
            size = int(elf.symbols["st_size"][i])
            if start <= addr < start + max(size, 1) and (best is None or start > best[0]):
                best = (start, size, elf.symbol_names[i])
        assert ctx.function_at(addr) == best, hex(addr)


# ============================================================ 3: surprises
def test_apply_without_output_says_so(files) -> None:
    mod, syms, _ = files
    code, out, _ = call("apply", str(mod), "-s", str(syms))
    assert code == 0 and "nothing written: give -o OUT to write the relocated module" in out


def test_example_with_module_is_an_error(files) -> None:
    mod, syms, _ = files
    code, _, err = call("apply", str(mod), "--example", "-s", str(syms))
    assert code == 2 and f"apply: give either MODULE ({mod}) or --example, not both" in one_line(err)


def test_output_naming_the_input_is_refused(files) -> None:
    mod, syms, _ = files
    before = mod.read_bytes()
    code, _, err = call("apply", str(mod), "-s", str(syms), "-o", str(mod))
    assert code == 2 and f"relocated module {mod} is the input file" in one_line(err)
    code, _, err = call("apply", str(mod), "-s", str(syms), "--json", str(syms))
    assert code == 2 and "is the input file" in one_line(err)
    assert mod.read_bytes() == before and syms.read_text() == SYMS


def test_disasm_unknown_section_is_an_error(files) -> None:
    mod, syms, _ = files
    code, _, err = call("disasm", str(mod), "-s", str(syms), "--section", ".nope")
    assert code == 2 and "--section .nope: no executable section of that name was loaded; sections: .text" in err


def test_kernel_outside_modelled_range(files) -> None:
    mod, _, _ = files
    code, _, err = call("inspect", str(mod), "--kernel", "2.6")
    assert (
        code == 2
        and "kernel 2.6 is outside the versions klpcore models (4.3 and newer; releases after 7.2 get its rules)"
        in one_line(err)
    )


def test_resolve_and_apply_agree_on_unloaded_objects(tmp_path) -> None:
    m = tmp_path / "lp.ko"
    m.write_bytes(patch_module())
    s = tmp_path / "System.map"
    s.write_text(SYMS + "ffffffff81000100 t secret\n")
    code, out, err = call("resolve", str(m), "-s", str(s))
    assert code == 0 and "patched object 'ext4' is not loaded" in err and "not loaded: ext4" in out
    code, out, _ = call("apply", str(m), "-s", str(s))
    assert code == 0 and "not applied (patched objects not loaded): ext4" in out
    code, out, _ = call("resolve", str(m), "-s", str(s), "--json")
    doc = json.loads(out)
    assert doc["ok"] and doc["pending_objects"] == ["ext4"] and doc["warnings"]


# ====================================================== 4: inputs users have
@pytest.mark.parametrize("fmt", ["gz", "xz", "zst"])
def test_compressed_modules(files, fmt) -> None:
    import zstandard

    mod, syms, tmp = files
    comp = {"gz": gzip.compress, "xz": lzma.compress, "zst": zstandard.ZstdCompressor().compress}[fmt]
    m = tmp / f"good.ko.{fmt}"
    m.write_bytes(comp(mod.read_bytes()))
    code, out, _ = call("inspect", str(m), "--json")
    assert code == 0 and json.loads(out)["module"] == "clitest"
    assert call("apply", str(m), "-s", str(syms), "-o", str(tmp / "o.ko"))[0] == 0


def test_symbol_source_of_another_architecture(files) -> None:
    mod, _, tmp = files
    ppc = tmp / "ppc.map"
    ppc.write_text("c000000000000000 T _stext\nc000000000001000 T printk\nc000000001000000 r __ksymtab_printk\n")
    code, _, err = call("apply", str(mod), "-s", str(ppc))
    assert code == 2
    assert f"{ppc}: _stext is at 0xc000000000000000, but toy kernel code lies in 0xffffffff80000000.." in err
    v = tmp / "vmlinux"
    v.write_bytes(_vmlinux_elf(machine=62))
    code, _, err = call("resolve", str(mod), "-s", str(v))
    assert code == 2 and f"{v} is an ELF file for machine 62, but module clitest is toy" in one_line(err)


def test_kallsyms_without_kallsyms_all(files) -> None:
    _, _, tmp = files
    m = tmp / "data.ko"
    m.write_bytes(toy_module(symbols=[Sym("printk"), Sym("jiffies")], relas=[Rela(".text", 0, T.ABS64, "jiffies")]))
    k = tmp / "kallsyms"
    k.write_text("ffffffff81000000 T _stext\nffffffff81000010 T printk\nffffffff81000020 t helper\n")
    code, _, err = call("apply", str(m), "-s", str(k))
    assert code == 1
    assert "lists only code symbols" in err and "CONFIG_KALLSYMS_ALL" in err


# ================================================= 5: missing dependencies
def test_unknown_symbols_grouped_by_missing_module(files) -> None:
    _, syms, tmp = files
    names = [f"dep_fn{i}" for i in range(30)]
    m = tmp / "user.ko"
    m.write_bytes(
        toy_module(
            symbols=[Sym(n) for n in names],
            relas=[Rela(".text", 8 * (i % 8), T.ABS64, n) for i, n in enumerate(names[:8])],
            modinfo={"name": "user", "depends": "dep-mod"},
        )
    )
    code, _, err = call("apply", str(m), "-s", str(syms))
    assert code == 1
    line = one_line(err)
    assert "30 unknown symbols (dep_fn0, dep_fn1, dep_fn2, dep_fn3, dep_fn4, ... (25 more))" in line
    assert "module dep_mod, which user depends on (depends= in .modinfo)" in line
    assert "--symbols dep_mod.ko@ADDRESS" in line
    code, out, _ = call("resolve", str(m), "-s", str(syms), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["errors"][0]["kind"] == "missing-module" and doc["errors"][0]["count"] == 30


def exporter(name: str, exports: list[str]) -> bytes:
    """A toy module exporting ``exports`` as a linked .ko does (__ksymtab_NAME in __ksymtab / __ksymtab_gpl)."""
    half = len(exports) // 2
    return Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16 * len(exports) or 16), align=16),
            Sec("__ksymtab", flags=C.SHF_ALLOC, data=bytes(12 * max(half, 1)), align=4),
            Sec("__ksymtab_gpl", flags=C.SHF_ALLOC, data=bytes(12 * max(len(exports) - half, 1)), align=4),
        ],
        symbols=[Sym(e, ".text", 16 * i, type=C.STT_FUNC, size=16) for i, e in enumerate(exports)]
        + [
            Sym(f"__ksymtab_{e}", "__ksymtab" if i < half else "__ksymtab_gpl", 12 * (i % max(half, 1)), C.STB_LOCAL)
            for i, e in enumerate(exports)
        ]
        # a name that only looks like an export (not in an export section) is not one
        + [Sym("__ksymtab_fake_export", ".text", 0, C.STB_LOCAL)],
        modinfo={"name": name},
    ).build()


@pytest.fixture
def tree(tmp_path):
    """lib/modules/<release> with two exporting modules (one xz-compressed, one with a '-' in its name)."""
    root = tmp_path / "root"
    d = root / "lib" / "modules" / "6.1.0-toy" / "kernel" / "drivers"
    d.mkdir(parents=True)
    (d / "ppp-gen.ko").write_bytes(exporter("ppp_gen", [f"ppp_fn{i}" for i in range(7)]))
    (d / "slhc.ko.xz").write_bytes(lzma.compress(exporter("slhc", ["slhc_init", "slhc_free"])))
    (d / "unrelated.ko").write_bytes(exporter("unrelated", ["other"]))
    (root / "lib" / "modules" / "6.1.0-toy" / "build").mkdir()
    (root / "lib" / "modules" / "6.1.0-toy" / "build" / "decoy.ko").write_bytes(exporter("decoy", ["slhc_init"]))
    return root


def tree_user(tmp: Path) -> Path:
    names = [f"ppp_fn{i}" for i in range(7)] + ["slhc_init", "slhc_free", "fake_export", "nowhere"]
    m = tmp / "user.ko"
    m.write_bytes(
        toy_module(
            symbols=[Sym(n) for n in names],
            relas=[Rela(".text", 8 * (i % 8), T.ABS64, n) for i, n in enumerate(names[:8])],
            modinfo={"name": "user", "depends": "ppp-gen"},  # slhc is not declared: only the tree knows it
        )
    )
    return m


@pytest.mark.parametrize("where", ["root", "release dir", "flat"])
def test_unknown_symbols_grouped_by_module_tree(files, tree, where) -> None:
    _, syms, tmp = files
    m = tree_user(tmp)
    rel = tree / "lib" / "modules" / "6.1.0-toy"
    if where == "flat":
        flat = tmp / "flat"
        flat.mkdir()
        for p in (rel / "kernel" / "drivers").iterdir():
            (flat / p.name).write_bytes(p.read_bytes())
        given = flat
    else:
        given = tree if where == "root" else rel
    code, _, err = call("apply", str(m), "-s", str(syms), "--module-tree", str(given))
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, err  # one per missing module, one for what no module exports
    ppp, slhc, rest = lines
    assert (
        "7 unknown symbols (ppp_fn0, ppp_fn1, ppp_fn2, ppp_fn3, ppp_fn4, ... (2 more)) are exported by module " in ppp
    )
    assert "module ppp_gen (" in ppp and "ppp-gen.ko), which is not among the symbol sources" in ppp
    assert "--symbols " in ppp and "ppp-gen.ko@ADDRESS (where ppp_gen is loaded)" in ppp
    assert "2 unknown symbols (slhc_init, slhc_free) are exported by module slhc (" in slhc
    assert "slhc.ko.xz@ADDRESS" in slhc and "/build/" not in slhc
    assert "2 unknown symbols (fake_export, nowhere) are not exported by any symbol source" in rest
    assert "exports them either" in rest
    code, out, _ = call("resolve", str(m), "-s", str(syms), "--json", "--module-tree", str(given))
    doc = json.loads(out)
    groups = [(e["kind"], e.get("provider"), e["count"]) for e in doc["errors"]]
    assert code == 1 and groups == [
        ("missing-module", "ppp_gen", 7),
        ("missing-module", "slhc", 2),
        ("unknown-symbols", None, 2),
    ]
    assert doc["errors"][1]["path"].endswith("slhc.ko.xz") and doc["errors"][1]["symbols"] == ["slhc_init", "slhc_free"]


def test_module_tree_given_as_a_source_is_not_missing(files, tree) -> None:
    """A tree module that is among the sources (mod.ko@ADDR) is not reported missing."""
    _, syms, tmp = files
    m = tree_user(tmp)
    ppp = tree / "lib" / "modules" / "6.1.0-toy" / "kernel" / "drivers" / "ppp-gen.ko"
    code, _, err = call(
        "resolve", str(m), "-s", str(syms), "-s", f"{ppp}@0xffffffffc1000000", "--module-tree", str(tree)
    )
    assert code == 1 and "ppp_gen" not in err and "module slhc" in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t / "nope", "not a directory"),
        (lambda t: t / "good.ko", "not a directory"),
        (lambda t: (t / "empty").mkdir(exist_ok=True) or t / "empty", "no .ko, .ko.xz, .ko.zst or .ko.gz files"),
    ],
)
def test_module_tree_bad_path(files, make, message) -> None:
    mod, syms, tmp = files
    for cmd in ("resolve", "apply", "disasm"):
        code, _, err = call(cmd, str(mod), "-s", str(syms), "--module-tree", str(make(tmp)))
        assert code == 2 and message in one_line(err), err


def test_module_tree_several_releases(files, tree) -> None:
    mod, syms, tmp = files
    (tree / "lib" / "modules" / "5.10.0-toy").mkdir()
    code, _, err = call("resolve", str(mod), "-s", str(syms), "--module-tree", str(tree))
    assert code == 2 and "several releases under lib/modules (5.10.0-toy, 6.1.0-toy)" in one_line(err)


def test_module_tree_shared_with_check(tree) -> None:
    """check's target and the CLI read module trees through one class (klpcore.modtree)."""
    from klpcore.check.target import Target
    from klpcore.modtree import ModuleTree

    t = Target(tree)
    assert isinstance(t.module_tree, ModuleTree)
    assert set(t.module_index) == {"ppp_gen", "slhc", "unrelated"}  # build/ is not part of the tree
    assert t.module_tree.exports("slhc") == {"slhc_init", "slhc_free"}
    assert t.module_tree.providers(["ppp_fn3", "slhc_free", "fake_export"]) == {
        "ppp_fn3": "ppp_gen",
        "slhc_free": "slhc",
    }


# ===================================================== 6: one JSON schema
SAMPLES = {
    "plugins": [["plugins", "--json"], ["plugins", "--json", "-O", "x=1"]],
    "inspect": [["inspect", "{mod}", "--json"], ["inspect", "{junk}", "--json"]],
    "resolve": [["resolve", "{mod}", "-s", "{syms}", "--json"], ["resolve", "{bad}", "-s", "{syms}", "--json"]],
    "apply": [
        ["apply", "{mod}", "-s", "{syms}", "--json", "-"],
        ["apply", "{bad}", "-s", "{syms}", "--json", "-"],
        ["apply", "{mod}", "--base", "0x1", "-s", "{syms}", "--json", "-"],
    ],
    "disasm": [["disasm", "{mod}", "-s", "{syms}", "--json"], ["disasm", "{mod}", "--json"]],
    "check": [
        ["check", "{ckmod}", "--target", "{tmp}", "--json", "-"],  # unknown: {tmp} has no symbol table
        ["check", "{xmod}", "--target", "{xtarget}", "--json", "-"],  # loads: a whole x86_64 target
        ["check", "{mod}", "--target", "{tmp}", "--json", "-"],  # refused: no .gnu.linkonce.this_module
        ["check", "{mod}", "--target", "{junk}", "--json", "-"],  # not a directory
    ],
    "convert": [
        ["convert", "{mod}", "-s", "{syms}", "--mark", "-o", "{tmp}/converted.ko", "--json"],
        ["convert", "{bad}", "-s", "{syms}", "-o", "{tmp}/converted.ko", "--json"],  # not livepatch=Y, 'nowhere'
    ],
}


def test_every_command_has_json_samples() -> None:
    assert set(SAMPLES) >= set(COMMANDS), f"add JSON samples for {set(COMMANDS) - set(SAMPLES)}"


def _plugin_installed(arch: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == arch for ep in entry_points(group="klpcore.arch"))


def _check_target(tmp: Path) -> tuple[Path, Path]:
    """An x86_64 module and a whole target it loads on (tests/check/kbuild.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "check"))
    from kbuild import Mod, make_target

    xtarget = make_target(tmp / "xtarget")
    xmod = tmp / "x.ko"
    xmod.write_bytes(Mod("x", imports=["printk"]).build())
    return xmod, xtarget


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_output_validates(files, name, monkeypatch) -> None:
    mod, syms, tmp = files
    bad = tmp / "bad.ko"
    bad.write_bytes(toy_module(symbols=[Sym("nowhere")], relas=[Rela(".text", 0, T.ABS64, "nowhere")]))
    junk = tmp / "junk.ko"
    junk.write_bytes(b"junk" * 20)
    ckmod = tmp / "ck.ko.module"  # not a .ko: the flat target's module tree stays empty
    this_module = Sec(".gnu.linkonce.this_module", flags=DATA, data=bytes(0x40), align=64)
    ckmod.write_bytes(toy_module(sections=[Sec(".text", flags=TEXT, data=bytes(64), align=16), this_module]))
    xmod, xtarget = _check_target(tmp)
    if name == "check" and _plugin_installed("x86_64"):
        monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "x86_64")  # the x86_64 sample's relocations
    codes = set()
    for sample in SAMPLES[name]:
        argv = [
            a.format(mod=mod, syms=syms, bad=bad, junk=junk, ckmod=ckmod, tmp=tmp, xmod=xmod, xtarget=xtarget)
            for a in sample
        ]
        code, out, _ = call(*argv)
        doc = json.loads(out)
        validate(doc)
        assert doc["command"] == name and doc["exit_code"] == code and doc["ok"] == (code == 0)
        codes.add(code)
    # success and failure both covered (check's loads needs the x86_64 plugin: without it, unknown)
    assert (0 in codes or (name == "check" and not _plugin_installed("x86_64"))) and codes - {0}, codes


def test_argument_errors_as_json(files) -> None:
    mod, syms, _ = files
    for argv in (["inspect", "--json", "--nosuch"], ["resolve", str(mod), "--json"], ["--json", "nosuchcmd"]):
        code, out, err = call(*argv)
        assert code == 2
        doc = json.loads(out)
        validate(doc)
        assert doc["exit_code"] == 2 and doc["errors"] and err
    code, out, _ = call("apply", str(mod), "-s", str(syms), "--json", "-", "--base", "0x3")
    assert json.loads(out)["written"] is False


def test_same_keys_for_the_same_things(files) -> None:
    mod, syms, tmp = files
    _, out, _ = call("resolve", str(mod), "-s", str(syms), "--json")
    _, rep, _ = call("apply", str(mod), "-s", str(syms), "--json", "-", "-q")
    assert json.loads(out)["symbols"] == json.loads(rep)["symbols"]
    assert "rtype" not in json.dumps(json.loads(rep)) and "resolved" not in json.loads(out)


# =================================================== 7: help and output
def test_help_texts() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in sp._actions:
            assert action.help, (name, action.dest)
    apply_help = sub.choices["apply"].format_help()
    assert "(required" in apply_help and "--symbols" in apply_help


def test_resolve_counts_distinct_symbols(files) -> None:
    _, syms, tmp = files
    m = tmp / "twice.ko"
    m.write_bytes(toy_module(symbols=[Sym("printk"), Sym("printk")], relas=[Rela(".text", 0, T.ABS64, 1)]))
    code, out, _ = call("resolve", str(m), "-s", str(syms))
    assert code == 0 and "1 distinct symbol resolved (2 symbol table entries), 0 error(s)" in out


def test_truncation_summary_names_its_first_entry(files) -> None:
    _, syms, tmp = files
    far = tmp / "far.map"
    far.write_text(SYMS + "00007fff00000000 T low\n00007fff00001000 r __ksymtab_low\n")
    m = tmp / "many.ko"
    m.write_bytes(
        toy_module(
            sections=[Sec(".text", flags=TEXT, data=bytes(4 * 30), align=16)],
            symbols=[Sym("low")],
            relas=[Rela(".text", 4 * i, T.PREL32, "low") for i in range(30)],
        )
    )
    code, _, err = call("apply", str(m), "-s", str(far))
    assert code == 1
    assert "... and 10 more entries with the same problem" in err
    assert "the first of them relocation #20 at offset 0x50" in err


# ================================================ 8: a first run that ends well
def test_write_elf_is_public_api() -> None:
    import klpcore

    assert "write_elf" in klpcore.__all__ and callable(klpcore.write_elf)
    assert "examples" in klpcore.__all__


def test_plugins_table_shows_byte_order_and_each_type_list_once() -> None:
    """The toy plugin answers for both byte orders: two rows that differ in byte order, one type list."""
    code, out, _ = call("plugins")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("toy ")]
    assert [r[-2] for r in rows] == ["little", "big"] and "byte order" in out
    assert sum(1 for line in out.splitlines() if line.startswith("toy: ")) == 1


def test_kernel_help_states_the_modelled_range() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = " ".join(sub.choices["resolve"].format_help().split())
    assert "4.3 or newer" in text and "a later release gets its rules and reports say so" in text
    code, _, err = call("plugins", "--kernel", "4.2")
    assert code == 2 and "(4.3 and newer; releases after" in one_line(err)


@pytest.mark.parametrize("command", ["resolve", "apply"])
def test_symbol_name_not_utf8(files, command) -> None:
    """A symbol name that is not UTF-8 (read back with surrogate escapes) is counted in the
    kernel's kallsyms copy by its bytes, as strlen counts it: no internal error (found by the
    fuzz test in the ppc64le env: UnicodeEncodeError in the kallsyms tail of the 6.4+ layout)."""
    _, syms, tmp = files
    data = bytearray(toy_module(symbols=[Sym("fn", ".text", 0, type=C.STT_FUNC, size=8), Sym("printk")]))
    at = data.index(b"\0fn\0") + 1
    data[at : at + 2] = b"f\xa6"
    m = tmp / "notutf8.ko"
    m.write_bytes(bytes(data))
    code, out, err = call(command, str(m), "-s", str(syms))
    assert code == 0, (out, err)
    assert "internal error" not in err

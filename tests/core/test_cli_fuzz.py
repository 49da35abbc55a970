"""Property test of the command-line contract on hostile inputs.

Every subcommand runs (``main()``, the same code as the console script, in one
long-lived subprocess with a limited address space) on structure-aware mutations of valid modules — ELF header fields,
section header fields, symbol entries, relocation entries, string tables,
livepatch symbol names, ``.modinfo`` — on generated System.map / kallsyms text
and on generated argument vectors.  Whatever the input: the exit code is 0, 1
or 2 (never 3, an internal error: a MemoryError over the memory budget is one),
stderr holds no traceback, and with
``--json`` stdout is one document valid against schema 1.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpcore import constants as C
from klpcore.testing.klpify import KlpSym

SCHEMA = json.loads((resources.files("klpcore") / "schema" / "v2.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
SYMS = (
    "ffffffff81000000 T _stext\nffffffff81000010 T printk\nffffffff82000000 r __ksymtab_printk\n"
    "ffffffff81000100 t secret\nffffffffc1000000 t helper\t[ext4]\n"
)
#: more examples for a longer local hunt: KLPCORE_FUZZ_EXAMPLES=5000 (random instead of derandomized)
EXAMPLES = int(os.environ.get("KLPCORE_FUZZ_EXAMPLES", "120"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="KLPCORE_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _plain() -> bytes:
    return Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(64), align=16),
            Sec(".rodata.str1.1", flags=C.SHF_ALLOC | C.SHF_MERGE | C.SHF_STRINGS, data=b"hi\0", align=1),
            Sec(".data..percpu", flags=DATA, data=bytes(16), align=8),
            Sec(".bss", type=C.SHT_NOBITS, flags=DATA, size=32, align=8),
        ],
        symbols=[
            Sym("", ".rodata.str1.1", bind=C.STB_LOCAL, type=C.STT_SECTION),
            Sym("fn", ".text", 0, type=C.STT_FUNC, size=16),
            Sym("printk"),
        ],
        relas=[
            Rela(".text", 0, T.ABS64, "printk", 4),
            Rela(".text", 8, T.PREL32, 1, 0),
            Rela(".text", 16, T.CALL, "fn", 0),
        ],
        modinfo={"name": "fuzzmod", "depends": "dep"},
    ).build()


def _livepatch() -> bytes:
    return T.toy_livepatch("lpfuzz", helper=KlpSym("ext4", 1))


SEEDS = [_plain(), _livepatch()]


# ------------------------------------------------------------ ELF structure
def _order(data: bytes) -> str:
    return ">" if data[5] == 2 else "<"  # EI_DATA: ELFDATA2MSB


def _layout(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """Byte spans of each structure kind: (offset, size) of every field (either byte order: s390x is big)."""
    bo = _order(data)
    shoff = struct.unpack_from(bo + "Q", data, 0x28)[0]
    shnum, shstrndx = struct.unpack_from(bo + "HH", data, 0x3C)
    spans: dict[str, list[tuple[int, int]]] = {"ehdr": [], "shdr": [], "sym": [], "rela": [], "strtab": []}
    for off, size in ((16, 2), (18, 2), (24, 8), (32, 8), (40, 8), (48, 4), (52, 2), (58, 2), (60, 2), (62, 2)):
        spans["ehdr"].append((off, size))
    fields = ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))
    for i in range(shnum):
        at = shoff + 64 * i
        spans["shdr"] += [(at + o, s) for o, s in fields]
        stype, _, _, off, size = struct.unpack_from(bo + "IQQQQ", data, at + 4)
        if stype == C.SHT_SYMTAB:
            for k in range(size // 24):
                e = off + 24 * k
                spans["sym"] += [(e, 4), (e + 4, 1), (e + 5, 1), (e + 6, 2), (e + 8, 8), (e + 16, 8)]
        elif stype == C.SHT_RELA:
            for k in range(size // 24):
                e = off + 24 * k
                spans["rela"] += [(e, 8), (e + 8, 4), (e + 12, 4), (e + 16, 8)]
        elif stype == C.SHT_STRTAB or i == shstrndx:
            spans["strtab"] += [(off + k, 1) for k in range(size)]
    return spans


INTERESTING = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0x10,
    0x40,
    0xFF,
    0x100,
    0x1000,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    1 << 32,
    1 << 40,
    0x7FFFFFFFFFFFFFFF,
    0x8000000000000000,
    0xFFFFFFFFFFFFF000,
    0xFFFFFFFFFFFFFFFF,
    0xFFFFFFFFC0000000,
    C.SHN_LIVEPATCH,
    C.SHN_ABS,
    C.SHN_COMMON,
]


@st.composite
def hostile_module(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    spans = _layout(bytes(data))
    for _ in range(draw(st.integers(1, 3))):
        # relocation and symbol entries more often: their mutations get past the parser into the engine
        kind = draw(st.sampled_from(["rela", "rela", "rela", "sym", "sym", "strtab", "shdr", "ehdr"]))
        if not spans[kind]:
            continue
        off, size = draw(st.sampled_from(spans[kind]))
        if kind == "strtab" and draw(st.booleans()):
            # rewrite a name: klp names, separators, non-UTF-8, a missing terminator
            text = draw(st.sampled_from([b".klp.sym.", b".klp.rela.", b",", b".", b"\xff", b"\0", b"ext4", b"9"]))
            data[off : off + len(text)] = text[: len(data) - off]
            continue
        value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << (8 * size)) - 1)))
        order = "big" if _order(bytes(data)) == ">" else "little"
        data[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, order)
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ------------------------------------------------------------ symbol files
ADDRS = st.one_of(
    st.sampled_from(["ffffffff81000000", "0", "-5", "10000000000000000", "ffff_ffff", "0x10", "zz", "", "٣"]),
    st.integers(0, (1 << 64) - 1).map(lambda v: f"{v:016x}"),
)
NAMES = st.sampled_from(["printk", "__ksymtab_printk", "secret", "helper", "_stext", "x" * 300, "a b", ""])


@st.composite
def symbol_text(draw) -> bytes:
    lines = [SYMS]
    for _ in range(draw(st.integers(0, 6))):
        addr = draw(ADDRS)
        typ = draw(st.sampled_from(["T", "t", "D", "r", "U", "w", "?", "TT", ""]))
        name = draw(NAMES)
        mod = draw(st.sampled_from(["", " [ext4]", "\t[dep]", " [", " []", " [a] b"]))
        lines.append(f"{addr} {typ} {name}{mod}\n")
    text = "".join(lines).encode()
    if draw(st.booleans()):
        text = draw(st.sampled_from([b"", b"\0\xff\xfe", b"\x1f\x8b\x08junk", b"\x7fELF\x02\x01"])) + text
    if draw(st.integers(0, 4)) == 0:
        text = gzip.compress(text)
        if draw(st.booleans()):
            text = text[: len(text) // 2]
    return text


# ----------------------------------------------------------- argument vectors
OPT_VALUES = st.sampled_from(
    [
        "0",
        "0x1000",
        "-4096",
        "0xffffffffc0000000",
        "0xffffffffa0000000",
        "0xfffffffffffff000",
        "0123",
        "banana",
        "0x10000000000000000",
        "",
        "1e3",
        "0x" + "f" * 40,
    ]
)


@st.composite
def argv(draw, tmp: Path) -> list[str]:
    cmd = draw(st.sampled_from(["plugins", "inspect", "resolve", "apply", "disasm", "nosuch"]))
    args = [cmd]
    module = tmp / "m.ko"
    if cmd in ("inspect", "resolve", "apply", "disasm"):
        args.append(str(draw(st.sampled_from([module, tmp / "missing.ko", tmp, Path("/dev/null")]))))
    if cmd in ("resolve", "apply", "disasm") and draw(st.integers(0, 5)):
        spec = draw(st.sampled_from(["s.map", "s.map", "dep.ko@{v}", "dep.ko@{v}:dep", "dep.ko", "m.ko@{v}"]))
        args += ["-s", str(tmp / spec.format(v=draw(OPT_VALUES)))]
    for _ in range(draw(st.integers(0, 3))):
        opt = draw(st.sampled_from(["--base", "-O", "--kernel", "--section", "-o", "--json", "--types", "-q"]))
        if opt == "-O":
            key = draw(st.sampled_from(["toy_address", "toy_flag", "toy_count", "relocate_percpu", "nosuch", ""]))
            args += ["-O", f"{key}={draw(OPT_VALUES)}"]
        elif opt == "-o":
            outs = ["/", "/dev/full", str(tmp / "no" / "x"), str(module), str(tmp / "o")]
            args += ["-o", draw(st.sampled_from(outs))]
        elif opt == "--kernel":
            args += ["--kernel", draw(st.sampled_from(["6.1", "5.4", "2.6", "99.0", "banana", "newest", "4.0"]))]
        elif opt == "--section":
            args += ["--section", draw(st.sampled_from([".text", ".nope", ""]))]
        elif opt == "--json":
            args += ["--json"] + (["-"] if cmd == "apply" else [])
        elif opt == "--base":
            args += [f"--base={draw(OPT_VALUES)}"]
        else:
            args.append(opt)
    return args


# ------------------------------------------------------------------- checks
@pytest.fixture(autouse=True)
def toy_only(monkeypatch):
    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")


CODES: Counter[tuple[str, int]] = Counter()

#: address space each CLI run may use over what Python, numpy, capstone and klpcore occupy after import
MEMORY_BUDGET = 256 << 20

#: the CLI's ``main()`` in one long-lived subprocess whose address space is limited (``RLIMIT_AS``) to the
#: imported baseline plus MEMORY_BUDGET; it reads one JSON request per line (arguments, environment) and
#: answers [exit code, stdout, stderr].  A run that needs more memory fails with MemoryError: exit 3.
WORKER = """
import io, json, os, re, resource, sys
from contextlib import redirect_stderr, redirect_stdout
import capstone, numpy
import klpcore.disasm, klpcore.loader, klpcore.output
from klpcore.cli import main
with open("/proc/self/status") as fh:
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", fh.read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]),) * 2)
answer = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    for key, value in req["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(req["args"])
    answer.write(json.dumps([code, out.getvalue(), err.getvalue()]) + "\\n")
    answer.flush()
"""


class Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def run(self, args: list[str]) -> tuple[int, str, str]:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, sys.path)))
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(MEMORY_BUDGET)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        env = {key: os.environ.get(key) for key in ("KLPCORE_PLUGINS", "KLPCORE_LOAD_PLUGINS")}
        self.proc.stdin.write(json.dumps({"args": args, "env": env}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc = None
            pytest.fail(f"the CLI process died (exit {rc}) on {args}:\n{err}", pytrace=False)
        code, out, errtext = json.loads(line)
        return int(code), str(out), str(errtext)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.communicate("", timeout=60)
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def check(worker: Worker, args: list[str]) -> int:
    code, out, err = worker.run([*args, "--debug"])  # a traceback only for internal errors, which fail anyway
    CODES[(args[0], code)] += 1
    if code not in (0, 1, 2):
        pytest.fail(f"exit {code} for {args}:\n{err}", pytrace=False)
    assert "Traceback" not in err
    wants_json = "--json" in args and (args[0] != "apply" or args[args.index("--json") + 1 :][:1] == ["-"])
    if wants_json and out.strip():
        doc = json.loads(out)
        VALIDATOR.validate(doc)
        assert doc["exit_code"] == code
    return code


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "m.ko").write_bytes(SEEDS[0])
    (tmp_path / "dep.ko").write_bytes(SEEDS[0])
    (tmp_path / "s.map").write_text(SYMS)
    return tmp_path


@SETTINGS
@given(data=hostile_module(), command=st.sampled_from(["inspect", "resolve", "apply", "disasm"]))
def test_hostile_modules(worker, workdir, data, command) -> None:
    m = workdir / "m.ko"
    m.write_bytes(data)
    args = [command, str(m), "--json"] if command != "apply" else [command, str(m), "--json", "-"]
    if command != "inspect":
        args += ["-s", str(workdir / "s.map"), "-s", f"{m}@0xffffffffd0000000:other"]
    check(worker, args)


@SETTINGS
@given(text=symbol_text(), command=st.sampled_from(["resolve", "apply", "disasm"]))
def test_hostile_symbol_files(worker, workdir, text, command) -> None:
    s = workdir / "hostile.map"
    s.write_bytes(text)
    check(worker, [command, str(workdir / "m.ko"), "-s", str(s), "--json"] + (["-"] if command == "apply" else []))


@settings(SETTINGS, max_examples=EXAMPLES * 2)
@given(data=st.data())
def test_argument_vectors(worker, workdir, data) -> None:
    check(worker, data.draw(argv(workdir)))


def _example_seeds() -> list[tuple[bytes, Path]]:
    out = []
    for dist in ("klpcore_x86_64", "klpcore_ppc64le", "klpcore_arm64", "klpcore_s390x"):
        try:
            pkg = Path(__import__(dist).__file__).parent / "examples"
        except ImportError:
            continue
        out.append(((pkg / "klpdemo.ko").read_bytes(), pkg / "System.map"))
    return out


REAL = _example_seeds()


@pytest.mark.skipif(not REAL, reason="fuzzes the real plugins' handlers: no architecture plugin is installed")
@SETTINGS
@given(data=st.data(), command=st.sampled_from(["resolve", "apply", "disasm"]))
def test_hostile_real_modules(worker, workdir, monkeypatch, data, command) -> None:
    """The same mutations through the real plugins' handlers (stubs, TOC, PLT-like paths)."""
    monkeypatch.delenv("KLPCORE_PLUGINS", raising=False)
    monkeypatch.delenv("KLPCORE_LOAD_PLUGINS", raising=False)
    seed, symbols = data.draw(st.sampled_from(REAL))
    global SEEDS
    saved, SEEDS = SEEDS, [seed]
    try:
        module = data.draw(hostile_module())
    finally:
        SEEDS = saved
    m = workdir / "real.ko"
    m.write_bytes(module)
    check(worker, [command, str(m), "-s", str(symbols), "--json"] + (["-"] if command == "apply" else []))


def test_the_memory_bound_is_real(worker, workdir) -> None:
    """A valid module whose .bss needs more than the budget ends in MemoryError (exit 3) in the worker."""
    big = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16), align=16),
            Sec(".bss", type=C.SHT_NOBITS, flags=DATA, size=MEMORY_BUDGET + (64 << 20), align=8),
        ],
        symbols=[Sym("fn", ".text", 0, type=C.STT_FUNC, size=16)],
        modinfo={"name": "bigbss"},
    ).build()
    (workdir / "bss.ko").write_bytes(big)
    code, _out, err = worker.run(["apply", str(workdir / "bss.ko"), "-s", str(workdir / "s.map")])
    assert code == 3 and "MemoryError" in err, err
    # and the worker goes on serving
    assert worker.run(["apply", str(workdir / "m.ko"), "-s", str(workdir / "s.map")])[0] in (0, 1)

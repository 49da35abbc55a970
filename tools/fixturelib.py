"""Steps the fixture build scripts share (development tool, not used by the tests).

``tests/<arch>/fixtures/build.py`` (and ``tests/ppc64le/fixtures/qemu/run_qemu.py``)
import this module the way they import ``ld_oracle``: with ``tools/`` on
``sys.path``.  What is here is the same for every architecture -- compile and
strip an object, list its relocation types, write ``kernel.map`` and JSON
files, place a module with klpcore and record GNU ld's bytes for it, run the
stages a script was asked for.  Each script keeps its own facts: compiler,
flags, fixture list, kernel symbols and the quirks of its architecture.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

U64 = (1 << 64) - 1
#: Sections gcc adds that the committed objects leave out (``.comment`` would
#: tie them to the compiler's version string).
STRIPPED_SECTIONS = (".comment", ".note.GNU-stack")


def run(cmd: Sequence[str], cwd: str | None = None, **kw: Any) -> subprocess.CompletedProcess[Any]:
    """Echo ``cmd`` and run it; a failing command ends the build."""
    print("+", " ".join(cmd))
    return subprocess.run(list(cmd), check=True, cwd=cwd, **kw)


@dataclass(frozen=True)
class Toolchain:
    """A cross toolchain: ``prefix`` names binutils (``aarch64-linux-gnu-``)."""

    prefix: str
    cc: str

    @classmethod
    def cross(cls, prefix: str, cc: str | None = None) -> Toolchain:
        """``cc`` defaults to ``$CC``, else ``<prefix>gcc``."""
        return cls(prefix, cc or os.environ.get("CC", prefix + "gcc"))

    def compile(self, flags: Sequence[str], obj: str, src: str, cwd: str) -> None:
        """``cc flags -o obj src`` run from ``cwd``, then strip STRIPPED_SECTIONS."""
        run([self.cc, *flags, "-o", obj, src], cwd=cwd)
        run([self.prefix + "objcopy", *(f"--remove-section={s}" for s in STRIPPED_SECTIONS), obj], cwd=cwd)

    def reloc_types(self, path: str, prefix: str = "R_") -> list[str]:
        """The sorted relocation type names (``R_...``) readelf lists for ``path``."""
        cmd = [self.prefix + "readelf", "-rW", path]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows = (line.split() for line in out.splitlines())
        return sorted({p[2] for p in rows if len(p) > 2 and p[2].startswith(prefix)})


def write_symbol_map(path: str, entries: Iterable[tuple[int, str, str]]) -> None:
    """System.map-style file of ``(address, type, name)`` sorted by address, then name."""
    with open(path, "w") as f:
        for addr, typ, name in sorted(entries, key=lambda e: (e[0], e[2])):
            f.write(f"{addr & U64:016x} {typ} {name}\n")


def write_kernel_map(path: str, symbols: Mapping[str, tuple[int, str]]) -> None:
    """``kernel.map`` from a ``{name: (address, type)}`` table."""
    write_symbol_map(path, ((addr, typ, name) for name, (addr, typ) in symbols.items()))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data: Any) -> None:
    """JSON as every fixture file is committed: indent 1, final newline."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


#: (name, source in src/, compiler flags, -D defines, kernel outcome, kernel message or None)
OutcomeFixture = tuple[str, str, Sequence[str], Sequence[str], str, str | None]


def build_outcome_fixtures(
    here: str,
    tools: Toolchain,
    base: int,
    symbols: Mapping[str, tuple[int, str]],
    fixtures: Iterable[OutcomeFixture],
    reloc_prefix: str = "R_",
) -> None:
    """Stage 1 of a script whose manifest says what the kernel does with each
    fixture: compile every fixture into ``<name>.o``, then write ``kernel.map``
    and ``manifest.json`` (object, source, defines, kernel outcome and message,
    relocation types)."""
    manifest: dict[str, Any] = {"base": f"{base:#x}", "symbols": "kernel.map", "fixtures": {}}
    for name, src, flags, defines, outcome, msg in fixtures:
        obj = f"{name}.o"
        tools.compile([*flags, *defines], obj, f"src/{src}", cwd=here)
        manifest["fixtures"][name] = {
            "object": obj,
            "source": src,
            "defines": defines,
            "kernel": outcome,
            "kernel_message": msg,
            "relocation_types": tools.reloc_types(os.path.join(here, obj), prefix=reloc_prefix),
        }
    write_kernel_map(os.path.join(here, "kernel.map"), symbols)
    write_json(os.path.join(here, "manifest.json"), manifest)


def write_placed(lm: Any, tmp: str) -> str:
    """klpcore's placed ELF of a loaded module, in ``tmp``; its path."""
    from klpcore.output import write_elf

    placed = os.path.join(tmp, "placed.o")
    with open(placed, "wb") as f:
        f.write(write_elf(lm))
    return placed


def ld_record(arch: str, obj: str, lm: Any, symbols: str, ld_args: Sequence[str] = (), label: str = "") -> Any:
    """Link ``obj`` with GNU ld at the addresses klpcore gave it (``lm``) and
    return ld_oracle's record; ld and klpcore disagreeing ends the build."""
    import ld_oracle

    with tempfile.TemporaryDirectory() as tmp:
        rec = os.path.join(tmp, "rec.json")
        argv = ["--arch", arch, "--object", obj, "--placed", write_placed(lm, tmp), "--symbols", symbols]
        status = ld_oracle.main([*argv, "--record", rec, *ld_args])
        if status != 0:
            raise SystemExit(f"{label or obj}: klpcore differs from ld (status {status})")
        return read_json(rec)


def excluded_sections(not_oracle: Callable[[bytes, Any], Any], obj: str) -> dict[str, Any]:
    """Section name -> byte ranges an ld_oracle ``not_oracle`` function keeps out of the comparison."""
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        data = f.read()
    elf = ELFFile(io.BytesIO(data))
    _, excluded = not_oracle(data, elf)
    return {elf.get_section(i).name: ranges for i, ranges in excluded.items()}


def record_accepted(
    here: str,
    arch: str,
    base: int,
    loader: Any,
    ld_args: Sequence[str] = (),
    extra: Callable[[str, Any, str], dict[str, Any]] | None = None,
) -> None:
    """Stage 2 over manifest.json: every fixture the kernel accepts is loaded
    at ``base``, linked by ld at the same addresses, and ld's record (plus what
    ``extra(object, loaded module, symbol file)`` adds) goes to
    ``expected/<fixture>.json``."""
    from klpcore import load_symbols

    manifest = read_json(os.path.join(here, "manifest.json"))
    os.makedirs(os.path.join(here, "expected"), exist_ok=True)
    syms = os.path.join(here, manifest["symbols"])
    for name, fx in manifest["fixtures"].items():
        if fx["kernel"] != "ok":
            continue
        obj = os.path.join(here, fx["object"])
        lm = loader.load(obj, load_symbols(syms), base)
        record = ld_record(arch, obj, lm, syms, ld_args, label=name)
        if extra is not None:
            record.update(extra(obj, lm, syms))
        write_json(os.path.join(here, "expected", f"{name}.json"), record)


def run_stages(stages: Mapping[int, Callable[[], object]], argv: Sequence[str] | None = None) -> None:
    """``--stage N`` runs stage N; no option runs them all in order."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, choices=tuple(stages))
    a = ap.parse_args(argv)
    for n, fn in stages.items():
        if a.stage in (None, n):
            fn()

"""The target-read cache: parsed System.map and Module.symvers kept between
runs, keyed by the files' content; off with KLPCORE_NO_CACHE=1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from klpcore.check import readcache, target
from klpcore.check.target import Target

T50 = Path(__file__).resolve().parent / "fixtures" / "kernel" / "x86_64-6.1.0-50" / "target"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("KLPCORE_CACHE_DIR", str(d))
    monkeypatch.delenv("KLPCORE_NO_CACHE", raising=False)
    return d


def refuse_to_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(target, "parse_symbol_text", boom)
    monkeypatch.setattr(Target, "_read_symvers", boom)


def test_second_read_comes_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Target(T50)
    syms, symvers = first.symbols, first.symvers
    assert syms is not None and symvers
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["Module.symvers", "System.map"]
    refuse_to_parse(monkeypatch)
    again = Target(T50)
    assert again.symvers == symvers
    assert again.symbols is not None and again.symbols.source_names == syms.source_names
    assert again.symbols.find_object_symbol(None, "_stext", 0) == syms.find_object_symbol(None, "_stext", 0)


def test_changed_content_is_read_again(cache: Path, tmp_path: Path) -> None:
    t = tmp_path / "t"
    shutil.copytree(T50, t)
    before = Target(t).symvers
    assert before is not None
    name = next(iter(before))
    lines = (t / "Module.symvers").read_text().splitlines()
    lines = [
        f"0x00000001\t{name}\t{ln.split(chr(9))[2]}\tEXPORT_SYMBOL" if ln.split("\t")[1] == name else ln for ln in lines
    ]
    (t / "Module.symvers").write_text("\n".join(lines) + "\n")
    after = Target(t).symvers
    assert after is not None and after[name].crc == 1 != before[name].crc
    assert len(list(cache.glob("Module.symvers-*"))) == 2


def test_off_and_damaged(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    assert Target(T50).symbols is not None and not cache.exists()
    monkeypatch.delenv("KLPCORE_NO_CACHE")
    good = Target(T50).symvers
    for entry in cache.iterdir():
        entry.write_bytes(b"not a pickle")
    assert Target(T50).symvers == good  # read from the files again, never trusted


def test_entries_name_the_code(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Target(T50).symvers
    monkeypatch.setattr(readcache, "_CODE", "other code")
    monkeypatch.setattr(Target, "_read_symvers", lambda self, p: {"from": "new code"})
    assert Target(T50).symvers == {"from": "new code"}

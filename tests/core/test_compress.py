"""The bounded input reader: gzip / xz / zstd by magic, limits, devices, corrupt data."""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys

import pytest
import zstandard
from elfbuild import Obj, Sec

from klpcore import constants as C
from klpcore.compress import detect_format, read_input
from klpcore.elf import ElfModule
from klpcore.errors import ElfFormatError, InputError, InputFileError, SymbolFileError
from klpcore.symbols import load_symbols

PAYLOAD = b"".join(b"%016x T sym_%d\n" % (0xFFFFFFFF81000000 + 16 * i, i) for i in range(2000))

COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    # the zstd command line writes a content checksum by default, as kbuild's modules have
    "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
}


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "plain"])
def test_formats_detected_by_content_not_name(tmp_path, fmt) -> None:
    data = PAYLOAD if fmt == "plain" else COMPRESSORS[fmt](PAYLOAD)
    p = tmp_path / "misleading.txt"  # the name says nothing
    p.write_bytes(data)
    assert detect_format(data[:8]) == fmt
    assert read_input(p, limit=len(PAYLOAD), what="symbol file") == PAYLOAD


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_concatenated_streams(tmp_path, fmt) -> None:
    p = tmp_path / "f"
    p.write_bytes(COMPRESSORS[fmt](b"one\n") + COMPRESSORS[fmt](b"two\n"))
    assert read_input(p, limit=100, what="x") == b"one\ntwo\n"


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "plain"])
def test_over_the_limit_refused_naming_the_file(tmp_path, fmt) -> None:
    data = PAYLOAD if fmt == "plain" else COMPRESSORS[fmt](PAYLOAD)
    p = tmp_path / "big"
    p.write_bytes(data)
    with pytest.raises(InputFileError, match=f"{p}.*(larger than|more than) the 1000 bytes"):
        read_input(p, limit=1000, what="module")
    # exactly at the limit is fine
    assert len(read_input(p, limit=len(PAYLOAD), what="module")) == len(PAYLOAD)


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
@pytest.mark.parametrize("damage", ["truncated", "garbled", "trailing"])
def test_corrupt_compressed_data(tmp_path, fmt, damage) -> None:
    data = COMPRESSORS[fmt](os.urandom(5000))
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbled":
        data = data[:12] + bytes(b ^ 0x5A for b in data[12:40]) + data[40:]
    else:
        data += b"garbage!"
    p = tmp_path / "bad"
    p.write_bytes(data)
    if fmt == "xz" and damage == "trailing":  # Python's lzma module ignores data after the last complete stream
        assert len(read_input(p, limit=1 << 20, what="symbol file")) == 5000
        return
    with pytest.raises(InputFileError, match=f"{p}: corrupt {fmt} data"):
        read_input(p, limit=1 << 20, what="symbol file")


def test_bomb_stops_at_the_limit(tmp_path) -> None:
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb", compresslevel=9) as fh:
        chunk = bytes(1 << 20)
        for _ in range(64):
            fh.write(chunk)
    assert p.stat().st_size < 200_000
    with pytest.raises(InputFileError, match="larger than the 4 MiB"):
        read_input(p, limit=4 << 20, what="symbol file")


def test_devices_directories_and_missing_files(tmp_path) -> None:
    with pytest.raises(InputFileError, match="/dev/zero is a character device"):
        read_input("/dev/zero", limit=1 << 40, what="module")
    with pytest.raises(InputFileError, match="cannot read module"):
        read_input(tmp_path, limit=100, what="module")
    with pytest.raises(InputFileError, match="No such file"):
        read_input(tmp_path / "missing", limit=100, what="module")
    with pytest.raises(InputFileError):
        read_input("bad\0path", limit=100, what="module")


def test_custom_error_class_and_hierarchy(tmp_path) -> None:
    with pytest.raises(SymbolFileError):
        read_input(tmp_path / "missing", limit=1, what="symbol file", error=SymbolFileError)
    assert issubclass(InputFileError, InputError)


def test_limit_chosen_from_the_first_bytes(tmp_path) -> None:
    p = tmp_path / "f.zst"
    p.write_bytes(COMPRESSORS["zstd"](PAYLOAD))
    seen: list[bytes] = []

    def limit(head: bytes) -> int:
        seen.append(head)
        return 10

    with pytest.raises(InputFileError, match="larger than the 10 bytes"):
        read_input(p, limit=limit, what="x")
    assert seen == [PAYLOAD[:64]]


def test_pipe_input(tmp_path) -> None:
    """A non-seekable input (a pipe, process substitution) is read too."""
    p = tmp_path / "f.xz"
    p.write_bytes(lzma.compress(PAYLOAD))
    code = (
        "import sys; from klpcore.compress import read_input; "
        "sys.stdout.write(str(len(read_input('/dev/stdin', limit=lambda h: 1 << 30, what='x'))))"
    )
    with open(p, "rb") as fh:
        out = subprocess.run([sys.executable, "-c", code], stdin=fh, capture_output=True, text=True, check=True)
    assert out.stdout == str(len(PAYLOAD))


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_compressed_modules_and_symbol_files(tmp_path, fmt) -> None:
    raw = Obj(sections=[Sec(".text", flags=C.SHF_ALLOC, data=b"x")]).build()
    p = tmp_path / f"demo_mod.ko.{ {'gzip': 'gz', 'xz': 'xz', 'zstd': 'zst'}[fmt] }"
    p.write_bytes(COMPRESSORS[fmt](raw))
    mod = ElfModule.from_file(p)
    assert mod.data == raw
    assert mod.name  # the compression suffix is not part of the module name
    assert not mod.name.endswith((".xz", ".zst", ".gz", ".ko"))
    s = tmp_path / "System.map.any"
    s.write_bytes(COMPRESSORS[fmt](PAYLOAD))
    ks = load_symbols(str(s))
    assert ks.objects["vmlinux"].matches("sym_7") == [0xFFFFFFFF81000000 + 16 * 7]


def test_module_read_errors_are_elf_format_errors(tmp_path) -> None:
    p = tmp_path / "m.ko.xz"
    p.write_bytes(lzma.compress(b"x" * 100)[:-5])
    with pytest.raises(ElfFormatError, match="corrupt xz data"):
        ElfModule.from_file(p)
    with pytest.raises(ElfFormatError, match="character device"):
        ElfModule.from_file("/dev/zero")
    with pytest.raises(SymbolFileError, match="character device"):
        load_symbols("/dev/zero")


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "plain"])
def test_read_head_reads_only_the_start(tmp_path, fmt) -> None:
    from klpcore.compress import read_head

    data = PAYLOAD if fmt == "plain" else COMPRESSORS[fmt](PAYLOAD)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert read_head(p, 20, what="module") == PAYLOAD[:20]
    assert read_head(p, 10 * len(PAYLOAD), what="module") == PAYLOAD  # shorter than asked: all of it
    if fmt != "plain":
        # a stream cut short after its first blocks (zstd's are up to 128 KiB): its first bytes are
        # still there, read_input refuses it
        big = PAYLOAD * 40
        damaged = tmp_path / "damaged"
        damaged.write_bytes(COMPRESSORS[fmt](big)[:-100])
        assert read_head(damaged, 20, what="module") == big[:20]
        with pytest.raises(InputFileError, match="corrupt"):
            read_input(damaged, limit=len(big), what="module")


def test_read_head_of_a_bomb_is_quick(tmp_path) -> None:
    """The header of 4 GiB of zeros, zstd-compressed, needs the first block only."""
    from klpcore.compress import read_head

    p = tmp_path / "bomb.zst"
    cctx = zstandard.ZstdCompressor()
    with open(p, "wb") as fh, cctx.stream_writer(fh) as w:
        block = bytes(1 << 24)
        for _ in range(256):
            w.write(block)
    assert os.path.getsize(p) < 1 << 20
    assert read_head(p, 64, what="module") == bytes(64)
    with pytest.raises(InputFileError, match="larger than"):
        read_input(p, limit=1 << 20, what="module")


def test_read_head_refuses_devices_and_missing_files(tmp_path) -> None:
    from klpcore.compress import read_head

    with pytest.raises(InputFileError, match="character device"):
        read_head("/dev/zero", 20, what="module")
    with pytest.raises(InputFileError, match="cannot read module"):
        read_head(tmp_path / "nope", 20, what="module")

"""One bounded reader for every input file klpcore reads.

Modules are shipped compressed (``.ko.xz``, ``.ko.zst``, ``.ko.gz``: kmod
detects the format by content and so does this reader) and symbol files often
are (``System.map.gz``).  :func:`read_input` detects gzip, xz and zstd by their
magic bytes, never by the file name, reads plain files as they are, and stops
as soon as the decompressed data would exceed ``limit`` bytes: a gzip bomb,
``/dev/zero`` or a multi-gigabyte file is refused with an
:class:`~klpcore.errors.InputFileError` naming the file instead of being read
until memory runs out.  Character and block devices are refused outright.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from .errors import InputError, InputFileError

MiB = 1 << 20
GiB = 1 << 30

#: Largest module file (decompressed) read: an unstripped amdgpu.ko is a few hundred MiB.
MODULE_LIMIT = 1 * GiB
#: Largest System.map / kallsyms text (decompressed): real ones are 5..30 MiB.
SYMBOL_TEXT_LIMIT = 128 * MiB
#: Largest ELF symbol source (vmlinux with debug information).
SYMBOL_ELF_LIMIT = 2 * GiB

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_CHUNK = 1 * MiB

Limit = int | Callable[[bytes], int]


def detect_format(head: bytes) -> str:
    """``"gzip"``, ``"xz"``, ``"zstd"`` or ``"plain"`` from a file's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "plain"


def _size(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n} bytes"


def _decoder(fmt: str, fh: IO[bytes]) -> Any:
    """A file-like object with ``read(n)`` giving the decompressed stream."""
    if fmt == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=fh, mode="rb")
    if fmt == "xz":
        return lzma.LZMAFile(fh, mode="rb")
    if fmt == "zstd":
        try:
            import zstandard
        except ImportError:  # pragma: no cover - a core dependency
            raise InputError("zstd-compressed input needs the 'zstandard' package (pip install zstandard)") from None
        return _ZstdReader(fh, zstandard.ZstdDecompressor())
    return fh


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    import gzip

    errors.append(gzip.BadGzipFile)
    return tuple(errors)


def read_input(
    path: str | os.PathLike[str],
    *,
    limit: Limit,
    what: str,
    error: type[InputError] = InputFileError,
) -> bytes:
    """The contents of ``path``, decompressed if it is gzip, xz or zstd data.

    ``limit`` bounds the decompressed size in bytes; it may also be a function
    of the first decompressed bytes (at least the first 64 bytes of a file that
    is that long), so that a caller can allow more for one format than another.
    ``what`` names the input in messages ("module", "symbol file").  Every
    failure raises ``error`` (an :class:`~klpcore.errors.InputError` subclass,
    default :class:`~klpcore.errors.InputFileError`) naming the file: missing
    or unreadable, a device or directory, over the limit, or corrupt
    compressed data.
    """
    with _opened(path, what, error) as (fh, name, st):
        return _read_bounded(fh, name, st, limit, what, error)


def read_head(path: str | os.PathLike[str], size: int, *, what: str, error: type[InputError] = InputFileError) -> bytes:
    """The first ``size`` bytes of ``path`` (fewer if it is shorter), decompressed if it is gzip, xz
    or zstd: only what is needed is read and decompressed (an ELF header of a compressed module is
    its first 64 bytes).  Fails as :func:`read_input` does, apart from the size limit."""
    with _opened(path, what, error) as (fh, name, st):
        fh, fmt = _detect(fh, name, st, what, error)
        try:
            reader = _decoder(fmt, fh)
            out = b""
            while len(out) < size:
                more = reader.read(size - len(out))
                if not more:
                    break
                out += more
        except _corrupt_errors() as exc:
            raise error(f"{what} {name}: corrupt {fmt} data: {exc}") from None
        except OSError as exc:
            raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
        return out


@contextlib.contextmanager
def _opened(
    path: str | os.PathLike[str], what: str, error: type[InputError]
) -> Iterator[tuple[IO[bytes], str, os.stat_result]]:
    """``path`` open for reading, with its name and status; devices and directories refused."""
    name = os.fspath(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    except ValueError as exc:  # embedded NUL byte in the path
        raise error(f"cannot read {what} {name!r}: {exc}") from None
    with fh:
        try:
            st = os.fstat(fh.fileno())
        except OSError as exc:  # pragma: no cover - fstat on an open file
            raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "character" if stat.S_ISCHR(st.st_mode) else "block"
            raise error(f"{what} {name} is a {kind} device, not a file")
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {name} is a directory, not a file")
        yield fh, name, st


def _detect(fh: IO[bytes], name: str, st: os.stat_result, what: str, error: type[InputError]) -> tuple[IO[bytes], str]:
    """The compression format from the first bytes, and a stream that starts at the beginning again."""
    try:
        head = fh.read(8)
        fmt = detect_format(head)
        if stat.S_ISREG(st.st_mode):
            fh.seek(0)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        # a pipe cannot seek back: put the header bytes in front of the rest
        fh = _Prefixed(head, fh)  # type: ignore[assignment]
    return fh, fmt


def _read_bounded(
    fh: IO[bytes], name: str, st: os.stat_result, limit: Limit, what: str, error: type[InputError]
) -> bytes:
    fh, fmt = _detect(fh, name, st, what, error)
    if stat.S_ISREG(st.st_mode) and fmt == "plain" and isinstance(limit, int) and st.st_size > limit:
        raise error(f"{what} {name} is {st.st_size} bytes, more than the {_size(limit)} klpcore reads")
    corrupt = _corrupt_errors()
    label = "" if fmt == "plain" else f"{fmt}-compressed "
    try:
        reader = _decoder(fmt, fh)
        chunks: list[bytes] = []
        first = b""
        if isinstance(limit, int):
            cap = limit
        else:
            while len(first) < 64:
                more = reader.read(64 - len(first))
                if not more:
                    break
                first += more
            cap = limit(first)
        if first:
            chunks.append(first)
        total = len(first)
        while total <= cap:
            block = reader.read(min(_CHUNK, cap + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
    except corrupt as exc:
        raise error(f"{what} {name}: corrupt {fmt} data: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if total > cap:
        raise error(
            f"{what} {name}: {label}data is larger than the {_size(cap)} klpcore reads "
            "(a decompression bomb, a device, or not a kernel file?)"
        )
    return b"".join(chunks)


class _Prefixed:
    """``head`` followed by the rest of a non-seekable stream."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self._head = head
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._fh.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._fh.read(n)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


class _ZstdReader:
    """Decompressed zstd frames (one after another) with a bounded ``read(n)``.

    Input goes to the decompressor in small pieces: a zstd block of at most
    128 KiB can be encoded in 4 bytes, so a 2 KiB piece inflates to at most
    64 MiB however hostile the data.  Data that ends inside a frame is an
    error (the library's stream reader would return the truncated output).
    """

    _PIECE = 2048

    def __init__(self, fh: IO[bytes], dctx: Any) -> None:
        self._fh = fh
        self._dctx = dctx
        self._obj = dctx.decompressobj()
        self._started = False  # bytes of the current frame were fed
        self._buf = bytearray()
        self._pending = b""

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            piece = self._pending or self._fh.read(self._PIECE)
            self._pending = b""
            if not piece:
                if self._started and not self._obj.eof:
                    raise EOFError("compressed data ends inside a zstd frame")
                break
            if self._obj.eof:
                self._obj = self._dctx.decompressobj()
            self._buf += self._obj.decompress(piece)
            self._started = True
            if self._obj.eof:
                self._pending = self._obj.unused_data
                self._started = False
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

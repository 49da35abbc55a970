"""Writing a loaded module back out as an ELF file.

The output has the input's sections, names and order.  Every section placed
in module memory gets its load address in ``sh_addr`` and the relocated bytes
as contents, so readelf, objdump and capstone show the module as the kernel
would hold it.  A ``SHT_NOBITS`` section into which the arch wrote code or
data (ppc64 ``.stubs``, arm64 ``.plt``) becomes ``SHT_PROGBITS``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import sys
from collections.abc import Sequence

from . import constants as C
from .errors import OutputError
from .loader import LoadedModule

#: File offsets of sections are aligned to ``sh_addralign`` up to this much:
#: a hostile alignment of 2^32 must not make the writer pad gigabytes.  Loaded
#: sections' addresses keep their full alignment (the layout applies it).
MAX_FILE_ALIGN = 1 << 16


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1) if a > 1 else n


def write_elf(loaded: LoadedModule) -> bytes:
    """Serialize ``loaded`` as an ELF image (see module docstring)."""
    elf = loaded.module.elf
    mod = loaded.module
    e = elf.endian
    out = bytearray(elf.data[: C.EHDR_SIZE])
    headers = []
    for orig, sec in zip(elf.sections, mod.sections, strict=True):
        addr = loaded.section_address(sec.index) or 0
        stype = orig.type
        if sec.index == 0:
            headers.append((orig, stype, 0, 0, orig.size))  # keeps extended numbering
            continue
        content: bytes | None
        if addr:
            content = loaded.section_bytes(sec.index)
            if stype == C.SHT_NOBITS and not content.strip(b"\0"):
                content = None
            elif stype == C.SHT_NOBITS:
                stype = C.SHT_PROGBITS
        elif stype == C.SHT_NOBITS:
            content = None
        else:
            content = elf.data[orig.offset : orig.offset + orig.size]
        size = sec.size if addr or stype == C.SHT_NOBITS else orig.size
        if content is None:
            headers.append((orig, stype, addr, len(out), size))
            continue
        off = _align(len(out), min(max(orig.addralign, 1), MAX_FILE_ALIGN))
        out += bytes(off - len(out))
        out += content
        headers.append((orig, stype, addr, off, len(content)))
    shoff = _align(len(out), 8)
    out += bytes(shoff - len(out))
    for orig, stype, addr, off, size in headers:
        out += struct.pack(
            e + "IIQQQQIIQQ",
            _name_offset(elf.data, elf, orig.index),
            stype,
            orig.flags,
            addr,
            off,
            size,
            orig.link,
            orig.info,
            orig.addralign,
            orig.entsize,
        )
    struct.pack_into(e + "Q", out, 0x28, shoff)
    return bytes(out)


def _name_offset(data: bytes, elf: object, index: int) -> int:
    from .elf import ElfModule

    assert isinstance(elf, ElfModule)
    shoff = int.from_bytes(data[0x28:0x30], elf.byteorder)  # type: ignore[arg-type]
    off = shoff + index * C.SHDR_SIZE
    return int.from_bytes(data[off : off + 4], elf.byteorder)  # type: ignore[arg-type]


def write_file(path: str, data: bytes | str, *, what: str, inputs: Sequence[str] = ()) -> None:
    """The one place klpcore writes a file: ``data`` to ``path`` (``-`` is
    standard output).  Every failure — a missing folder, a directory, a path
    under a regular file, a full device, no permission, or a path naming one
    of ``inputs`` — raises :class:`~klpcore.errors.OutputError` naming the
    file; a partly written regular file is removed."""
    payload = data.encode() if isinstance(data, str) else data
    if path == "-":
        try:
            sys.stdout.flush()
            sys.stdout.buffer.write(payload)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write {what} to standard output: {exc.strerror or exc}") from None
        return
    for src in inputs:
        if _same_file(path, src):
            raise OutputError(f"{what} {path} is the input file {src}; choose another output path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {what} {path}: Is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_to(path, payload, what, os.O_WRONLY)  # a device or a pipe: write it directly
        return
    # a regular file: write a temporary file next to it, then rename, so that a
    # failure leaves the old file (or none) instead of a truncated one
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.klpcore-{os.getpid()}.tmp")
    try:
        _write_to(tmp, payload, what, os.O_WRONLY | os.O_CREAT | os.O_EXCL, shown=path)
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from None
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _write_to(path: str, payload: bytes, what: str, flags: int, shown: str | None = None) -> None:
    try:
        fd = os.open(path, flags, 0o666)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {what} {shown or path}: {_reason(exc)}") from None
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {shown or path}: {_reason(exc)}") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False

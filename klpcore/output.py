"""Writing a loaded module back out as an ELF file.

The output has the input's sections, names and order.  Every section placed
in module memory gets its load address in ``sh_addr`` and the relocated bytes
as contents, so readelf, objdump and capstone show the module as the kernel
would hold it.  A ``SHT_NOBITS`` section into which the arch wrote code or
data (ppc64 ``.stubs``, arm64 ``.plt``) becomes ``SHT_PROGBITS``.

Memory the arch setup reserved outside any input section (s390's module GOT
and PLT, see ``LoadingModule.reserve``) is added after the input's sections,
one ``SHT_PROGBITS`` section per non-empty reservation, named after it, with
its load address and contents; its name is appended to the section name
string table.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Sequence

from . import constants as C
from .constants import MemType
from .elfheader import SectionHeader, read_header, section_headers
from .elfwriter import ElfWriter
from .errors import OutputError
from .layout import Placement
from .loader import LoadedModule

#: File offsets of sections are aligned to ``sh_addralign`` up to this much:
#: a hostile alignment of 2^32 must not make the writer pad gigabytes.  Loaded
#: sections' addresses keep their full alignment (the layout applies it).
MAX_FILE_ALIGN = 1 << 16


def write_elf(loaded: LoadedModule) -> bytes:
    """Serialize ``loaded`` as an ELF image (see module docstring)."""
    return bytes(write_elf_buffer(loaded))


def write_elf_buffer(loaded: LoadedModule) -> bytearray:
    """:func:`write_elf`'s bytes as the buffer they were built in (no copy of the whole file: what
    the command line writes to a file)."""
    elf = loaded.module.elf
    mod = loaded.module
    out = ElfWriter(elf.endian, elf.data[: C.EHDR_SIZE])
    raw = section_headers(elf.data, read_header(elf.data), len(elf.sections))
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
            headers.append((orig, stype, addr, out.end, size))
            continue
        off = out.add(content, min(max(orig.addralign, 1), MAX_FILE_ALIGN))
        headers.append((orig, stype, addr, off, len(content)))
    rows = [
        SectionHeader(raw[o.index].name, t, o.flags, a, off, size, o.link, o.info, o.addralign, o.entsize)
        for o, t, a, off, size in headers
    ]
    extra = [p for p in mod.layout.reserved.values() if p.size]
    if extra:
        _add_reserved(loaded, out, rows, extra)
    out.add_section_headers(rows)
    return out.data


def _add_reserved(loaded: LoadedModule, out: ElfWriter, rows: list[SectionHeader], extra: list[Placement]) -> None:
    """Append a section per reservation and a section name table that names them."""
    elf = loaded.module.elf
    strndx = elf.shstrndx
    names = bytearray(elf.section_data(strndx))
    if not names.endswith(b"\0"):
        names += b"\0"
    for p in extra:
        flags = C.SHF_ALLOC | (C.SHF_EXECINSTR if p.memtype.is_text else 0)
        if p.memtype in (MemType.DATA, MemType.INIT_DATA):
            flags |= C.SHF_WRITE
        addr, data = loaded.reserved_bytes(p.name)
        align = next((r.align for r in loaded.module.reservations if r.name == p.name), 1)
        off = out.add(data, align)
        rows.append(SectionHeader(len(names), C.SHT_PROGBITS, flags, addr, off, len(data), 0, 0, align, 0))
        names += p.name.encode("utf-8", "surrogateescape") + b"\0"
    # the new name table: sh_offset, sh_size
    rows[strndx] = rows[strndx]._replace(offset=out.add(bytes(names)), size=len(names))
    if len(rows) >= 0xFF00 or out.header_field("shnum") == 0:
        # extended numbering: e_shnum is 0 and the count is section 0's sh_size
        out.set_header(shnum=0)
        rows[0] = rows[0]._replace(size=len(rows))
    else:
        out.set_header(shnum=len(rows))


def write_file(path: str, data: bytes | bytearray | str, *, what: str, inputs: Sequence[str] = ()) -> None:
    """The one place klpcore writes a file: ``data`` to ``path`` (``-`` is
    standard output).  Every failure — a missing folder, a directory, a path
    under a regular file, a full device, no permission, or a path naming one
    of ``inputs`` — raises :class:`~klpcore.errors.OutputError` naming the
    file; a partly written regular file is removed."""
    payload = data.encode() if isinstance(data, str) else data
    if path == "-":
        try:
            buffer = getattr(sys.stdout, "buffer", None)
            sys.stdout.flush()
            if buffer is not None:
                buffer.write(payload)
                buffer.flush()
            else:  # a text stream (redirected in tests or by an embedder)
                sys.stdout.write(bytes(payload).decode("utf-8", "replace"))
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write {what} to standard output: {exc.strerror or exc}", path) from None
        return
    for src in inputs:
        if _same_file(path, src):
            raise OutputError(f"{what} {path} is the input file {src}; choose another output path", path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}", path) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {what} {path}: Is a directory", path)
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
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}", path) from None
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _write_to(path: str, payload: bytes | bytearray, what: str, flags: int, shown: str | None = None) -> None:
    try:
        fd = os.open(path, flags, 0o666)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {what} {shown or path}: {_reason(exc)}", shown or path) from None
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {shown or path}: {_reason(exc)}", shown or path) from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False

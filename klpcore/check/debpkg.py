"""A Debian package (``.deb``) read as part of a target, without extracting it to disk.

A ``.deb`` is an ``ar`` archive whose ``data.tar.{xz,zst,gz}`` member holds the files.  That member
is streamed once through :mod:`tarfile` (``r|``: no seeking) and only what a target is read for is
kept in memory: module files, ``modules.*``, config, System.map, symvers, the headers'
``Module.symvers`` and ``.config``, vmlinux/vmlinuz images; everything else (headers, docs) is
skipped as it streams by.  :class:`DebRoot` then answers the few questions :class:`~.target.Target`
asks of a directory (``/``, ``glob``, ``is_file``, ``is_dir``, ``stat().st_size``, bytes).
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import IO, Any

from ..errors import InputError

#: the files a target is read for (member paths without the leading "./")
WANTED = re.compile(
    r"^(?:"
    r"(?:usr/)?lib/modules/[^/]+/(?:.*\.ko(?:\.xz|\.zst|\.gz)?|modules\.[a-z.]+|config|System\.map|vmlinu[xz]"
    r"|symvers\.gz)"
    r"|boot/(?:config|System\.map|vmlinux|vmlinuz|symvers)-[^/]+"
    r"|usr/src/linux-headers-[^/]+/(?:Module\.symvers|\.config)"
    r"|usr/lib/debug/boot/(?:System\.map|vmlinux)-[^/]+"
    r"|usr/lib/debug/lib/modules/[^/]+/vmlinux"
    r")$"
)
#: registry of opened packages, so that a member's path text ("PKG.deb:member") can be read back
_OPEN: dict[str, DebRoot] = {}


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mode: int = stat.S_IFREG


class DebPath:
    """A path inside a :class:`DebRoot` (the subset of :class:`pathlib.Path` a target uses)."""

    def __init__(self, root: DebRoot, rel: str) -> None:
        self.root = root
        self.rel = rel.strip("/")

    def __truediv__(self, other: str | os.PathLike[str]) -> DebPath:
        return DebPath(self.root, f"{self.rel}/{os.fspath(other)}" if self.rel else os.fspath(other))

    def __str__(self) -> str:
        return f"{self.root.path}:{self.rel}"

    def __fspath__(self) -> str:
        return str(self)  # no such file: what opens it directly gets an OSError, not a wrong file

    def __repr__(self) -> str:
        return f"DebPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DebPath) and (self.root, self.rel) == (other.root, other.rel)

    def __lt__(self, other: DebPath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash((id(self.root), self.rel))

    @property
    def name(self) -> str:
        return PurePosixPath(self.rel).name

    def is_file(self) -> bool:
        return self.root.resolve(self.rel) in self.root.files

    def is_dir(self) -> bool:
        return self.rel in self.root.dirs or self.rel == ""

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> _Stat:
        return _Stat(len(self.read_bytes()))

    def read_bytes(self) -> bytes:
        got = self.root.files.get(self.root.resolve(self.rel))
        if got is None:
            raise InputError(f"{self}: not in the package (or not one of the files klpcore reads from it)")
        return got

    def read_text(self, errors: str = "strict") -> str:
        return self.read_bytes().decode("utf-8", errors)

    def glob(self, pattern: str) -> list[DebPath]:
        base = f"{self.rel}/" if self.rel else ""
        names = {n for n in (*self.root.files, *self.root.dirs) if n.startswith(base)}
        want = pattern.split("/")
        out = []
        for n in sorted(names):
            got = n[len(base) :].split("/")  # '*' never crosses a '/', as in pathlib
            if len(got) == len(want) and all(fnmatch.fnmatchcase(g, w) for g, w in zip(got, want, strict=True)):
                out.append(DebPath(self.root, n))
        return out


class DebRoot:
    """The files of one ``.deb`` a target needs, read on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"{self.path}: no such package")
        _OPEN[self.path] = self

    def __truediv__(self, other: str) -> DebPath:
        return DebPath(self, other)

    def __str__(self) -> str:
        return self.path

    def glob(self, pattern: str) -> list[DebPath]:
        return DebPath(self, "").glob(pattern)

    def is_dir(self) -> bool:
        return True

    @cached_property
    def _contents(self) -> tuple[dict[str, bytes], set[str], dict[str, str]]:
        files: dict[str, bytes] = {}
        dirs: set[str] = set()
        links: dict[str, str] = {}
        with open(self.path, "rb") as fh:
            data, comp = _data_member(fh, self.path)
            stream = _decompressed(data, comp, self.path)
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for m in tar:
                        name = m.name.removeprefix("./").strip("/")
                        if m.isdir():
                            dirs.add(name)
                            continue
                        parts = name.split("/")
                        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
                        if not WANTED.match(name):
                            continue
                        if m.issym():
                            links[name] = str(PurePosixPath(name).parent / m.linkname)
                        elif m.isfile():
                            f = tar.extractfile(m)
                            if f is not None:
                                files[name] = f.read()
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise InputError(f"{self.path}: cannot read its data archive: {exc}") from None
        return files, dirs, links

    @property
    def files(self) -> dict[str, bytes]:
        return self._contents[0]

    @property
    def dirs(self) -> set[str]:
        return self._contents[1]

    def resolve(self, rel: str) -> str:
        """``rel`` with the package's symbolic links followed (the -dbg package links boot/vmlinux-R)."""
        links = self._contents[2]
        for _ in range(8):
            if rel not in links:
                return rel
            rel = os.path.normpath(links[rel])
        return rel


def _data_member(fh: IO[bytes], name: str) -> tuple[_Slice, str]:
    """The ``data.tar*`` member of an ar archive (positioned at its start) and its compression."""
    if fh.read(8) != b"!<arch>\n":
        raise InputError(f"{name}: not a Debian package (no ar header)")
    while True:
        head = fh.read(60)
        if len(head) < 60:
            raise InputError(f"{name}: no data.tar member")
        member = head[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(head[48:58].decode("ascii").strip())
        except ValueError:
            raise InputError(f"{name}: corrupt ar member header") from None
        if member.startswith("data.tar"):
            return _Slice(fh, size), member.removeprefix("data.tar").lstrip(".")
        fh.seek(size + (size & 1), io.SEEK_CUR)


class _Slice(io.RawIOBase):
    """The next ``size`` bytes of ``fh`` as a stream."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh = fh
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        if n <= 0:
            return 0
        data = self.fh.read(n)
        buf[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _decompressed(raw: _Slice, comp: str, name: str) -> IO[bytes]:
    stream = io.BufferedReader(raw)
    if comp == "xz":
        import lzma

        return lzma.open(stream)
    if comp == "gz":
        import gzip

        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    if comp == "zst":
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{name}: data.tar.zst needs the zstandard package (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(stream)  # type: ignore[no-any-return]
    if comp == "":
        return stream
    raise InputError(f"{name}: data.tar.{comp}: unknown compression")


def member_path(text: str) -> DebPath | None:
    """``"PKG.deb:member"`` (a :class:`DebPath` as text) back to the path, when that package is open."""
    pkg, sep, rel = text.partition(".deb:")
    if not sep:
        return None
    root = _OPEN.get(pkg + ".deb")
    return DebPath(root, rel) if root is not None else None

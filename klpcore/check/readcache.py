"""What a target costs to read, kept between runs: the parsed symbol table and
``Module.symvers`` of a kernel, on disk, keyed by the content of the files they
were read from, their paths (which messages name) and the code that parses
them, so a changed file is read again.

Where: ``$KLPCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/klpcore``, else
``~/.cache/klpcore`` (made private to the user: entries are pickles), beside
:mod:`klpcore.kimage`'s.  Off with ``KLPCORE_NO_CACHE=1``, the switch of both
caches (``klpcore check --no-cache`` sets it for its workers).
Delete the directory to empty it.  A damaged entry is read again from the
files, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: bump when what is stored changes shape in a way the code digest would not show
FORMAT = 1
_CHUNK = 1 << 20
#: per process: (path, size, mtime, inode) -> content digest (a file is hashed once per run)
_DIGESTS: dict[tuple[str, int, int, int], str] = {}
_CODE: str | None = None


def enabled() -> bool:
    return not os.environ.get("KLPCORE_NO_CACHE")


def directory() -> Path:
    d = os.environ.get("KLPCORE_CACHE_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "klpcore"


def file_digest(path: Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    d = _DIGESTS.get(key)
    if d is None:
        h = hashlib.blake2b(digest_size=20)
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        d = _DIGESTS[key] = h.hexdigest()
    return d


def _code_digest() -> str:
    """The parsers' own source: an entry made by other code is not used."""
    global _CODE
    if _CODE is None:
        from .. import symbols
        from . import target

        h = hashlib.blake2b(digest_size=12)
        h.update(str(FORMAT).encode())
        for mod in (symbols, target):
            h.update(Path(mod.__file__ or "").read_bytes())
        _CODE = h.hexdigest()
    return _CODE


def cached(kind: str, paths: Sequence[Path], build: Callable[[], T]) -> T:
    """``build()``, or what it returned before for files of the same content."""
    if not enabled():
        return build()
    try:
        key = hashlib.blake2b(
            repr((kind, _code_digest(), [(str(p), file_digest(p)) for p in paths])).encode(), digest_size=20
        ).hexdigest()
    except OSError:
        return build()
    entry = directory() / f"{kind}-{key}.pickle"
    try:
        with open(entry, "rb") as fh:
            value: Any = pickle.load(fh)
        if isinstance(value, tuple) and len(value) == 2 and value[0] == key:
            return value[1]  # type: ignore[no-any-return]
    except FileNotFoundError:
        pass
    except Exception:  # a damaged or foreign entry: read the files again
        pass
    value = build()
    _store(entry, key, value)
    return value


def _store(entry: Path, key: str, value: Any) -> None:
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump((key, value), fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, entry)  # whole or not at all, also with workers writing the same entry
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # no cache (read-only home, an unpicklable value): the run goes on without one

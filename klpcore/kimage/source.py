"""A kernel image as a :class:`~klpcore.symbols.KernelSymbols` source, cached per image.

The cache holds what was decoded from one image (names, types, link-time
addresses), keyed by the SHA-256 of the image's bytes, in
``$KLPCORE_CACHE_DIR/kimage/`` (default ``$XDG_CACHE_HOME/klpcore/kimage/``,
else ``~/.cache/klpcore/kimage/``) as ``.npz`` files (no pickles).  Set
``KLPCORE_NO_CACHE=1`` (or pass ``cache=False``) to neither read nor write it.
A cache that cannot be written is skipped without a word: it only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import constants as C
from ..symbols import KernelSymbols

#: bump when what is cached, or how it is decoded, changes
CACHE_FORMAT = 1

_DATA_TYPES = frozenset("dDbBrRgGsSvV")


@dataclass
class DecodedImage:
    names: list[str]
    types: list[str]
    addresses: np.ndarray  # uint64
    info: dict[str, object]  # container, arch, address mode, table offsets


def cache_dir() -> Path | None:
    """Where decoded images are cached, or None when caching is off."""
    if os.environ.get("KLPCORE_NO_CACHE"):
        return None
    root = os.environ.get("KLPCORE_CACHE_DIR")
    if root:
        return Path(root) / "kimage"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "klpcore" / "kimage"


def _key(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()}-v{CACHE_FORMAT}"


def _load(path: Path) -> DecodedImage | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z["names"].tobytes().decode("utf-8", "surrogateescape").split("\n")
            types = list(z["types"].tobytes().decode("latin-1"))
            addrs = z["addresses"].astype(np.uint64)
            info = json.loads(z["info"].tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError):
        return None
    if len(names) != len(types) or len(names) != len(addrs) or not isinstance(info, dict):
        return None
    return DecodedImage(names, types, addrs, info)


def _store(path: Path, d: DecodedImage) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                names=np.frombuffer("\n".join(d.names).encode("utf-8", "surrogateescape"), dtype=np.uint8),
                types=np.frombuffer("".join(d.types).encode("latin-1"), dtype=np.uint8),
                addresses=d.addresses.astype(np.uint64),
                info=np.frombuffer(json.dumps(d.info).encode("utf-8"), dtype=np.uint8),
            )
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def decode_image(data: bytes, source: str, *, cache: bool = True) -> DecodedImage:
    """Decode (or fetch from the cache) the symbols of the image ``data``."""
    root = cache_dir() if cache else None
    path = root / f"{_key(data)}.npz" if root is not None else None
    if path is not None and path.exists():
        got = _load(path)
        if got is not None:
            return got
    from .container import open_image
    from .kallsyms import read_kallsyms

    img = open_image(data, source)
    k = read_kallsyms(img)
    t = k.tables
    info: dict[str, object] = {
        "container": img.container,
        "arch": img.arch,
        "byteorder": img.byteorder,
        "address_mode": t.address_mode,
        "num_syms": t.num_syms,
        "link_base": img.segments[0][0] - img.segments[0][1] if img.segments and not img.is_elf else None,
    }
    out = DecodedImage(k.names, k.types, k.addresses, info)
    if path is not None:
        _store(path, out)
    return out


def symbols_from_image(data: bytes, source: str, *, cache: bool = True) -> KernelSymbols:
    """vmlinux's symbols (kallsyms order, link-time addresses) from a kernel image."""
    d = decode_image(data, source, cache=cache)
    ks = KernelSymbols()
    ks.source_names.append(source)
    vmlinux = ks.obj(C.VMLINUX)
    vmlinux.extend(d.names, d.addresses.tolist(), d.types, source)
    vmlinux.sort_by_address()
    if not _DATA_TYPES.intersection(d.types):
        ks.text_only.append(source)
    return ks

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
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import constants as C
from ..errors import SymbolFileError
from ..symbols import ExportInfo, KernelSymbols
from .exports import ImageExport

#: bump when what is cached, or how it is decoded, changes
CACHE_FORMAT = 4

_DATA_TYPES = frozenset("dDbBrRgGsSvV")


@dataclass
class DecodedImage:
    names: list[str]
    types: list[str]
    addresses: np.ndarray  # uint64
    info: dict[str, object]  # container, arch, address mode, table offsets
    #: vmlinux's exports (None: the image does not say where its export table is)
    exports: list[ImageExport] | None = None
    #: vmlinux's ftrace record addresses, sorted (None: not read, see info["ftrace"])
    ftrace: np.ndarray | None = None


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
            exports = None
            if "ex_names" in z:
                en = z["ex_names"].tobytes().decode("utf-8").split("\n")
                ens = z["ex_ns"].tobytes().decode("utf-8").split("\n")
                ea, ef, ec = z["ex_addr"].tolist(), z["ex_gpl"].tolist(), z["ex_crc"].tolist()
                exports = [
                    ImageExport(n, a, bool(f), ns, None if c < 0 else c)
                    for n, a, f, ns, c in zip(en, ea, ef, ens, ec, strict=True)
                ]
            ftrace = z["ftrace"].astype(np.uint64) if "ftrace" in z else None
    except (OSError, ValueError, KeyError):
        return None
    if len(names) != len(types) or len(names) != len(addrs) or not isinstance(info, dict):
        return None
    return DecodedImage(names, types, addrs, info, exports, ftrace)


def _store(path: Path, d: DecodedImage) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            arrays = {
                "names": np.frombuffer("\n".join(d.names).encode("utf-8", "surrogateescape"), dtype=np.uint8),
                "types": np.frombuffer("".join(d.types).encode("latin-1"), dtype=np.uint8),
                "addresses": d.addresses.astype(np.uint64),
                "info": np.frombuffer(json.dumps(d.info).encode("utf-8"), dtype=np.uint8),
                **_export_arrays(d.exports),
                **({} if d.ftrace is None else {"ftrace": d.ftrace.astype(np.uint64)}),
            }
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def _export_arrays(exports: list[ImageExport] | None) -> dict[str, np.ndarray]:
    if exports is None:
        return {}
    return {
        "ex_names": np.frombuffer("\n".join(x.name for x in exports).encode("utf-8"), dtype=np.uint8),
        "ex_ns": np.frombuffer("\n".join(x.namespace for x in exports).encode("utf-8"), dtype=np.uint8),
        "ex_addr": np.array([x.address for x in exports], dtype=np.uint64),
        "ex_gpl": np.array([x.gpl_only for x in exports], dtype=np.uint8),
        "ex_crc": np.array([-1 if x.crc is None else x.crc for x in exports], dtype=np.int64),
    }


def decode_image(data: bytes, source: str, *, cache: bool = True) -> DecodedImage:
    """Decode (or fetch from the cache) the symbols of the image ``data``."""
    root = cache_dir() if cache else None
    path = root / f"{_key(data)}.npz" if root is not None else None
    if path is not None and path.exists():
        got = _load(path)
        if got is not None:
            return got
    try:
        return _decode(data, source, path)
    except (IndexError, ValueError, OverflowError, struct.error) as exc:  # a damaged image past the checks
        raise SymbolFileError(f"{source}: unreadable kernel image: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes, source: str, path: Path | None) -> DecodedImage:
    from .container import open_image
    from .exports import read_exports
    from .ftrace import read_mcount
    from .kallsyms import read_kallsyms

    img = open_image(data, source)
    k = read_kallsyms(img)
    bounds = {
        n: int(a)
        for n, a in zip(k.names, k.addresses.tolist(), strict=True)
        if n.startswith("__st") or n in ("_sinittext", "_einittext", "_text")
    }
    ex = read_exports(img, bounds, dict(zip(k.names, k.addresses.tolist(), strict=True)))
    is_func = np.isin(
        np.frombuffer("".join(k.types).encode("latin-1"), dtype=np.uint8), np.frombuffer(b"tTW", np.uint8)
    )
    ft = read_mcount(img, bounds, np.sort(k.addresses[is_func]))
    t = k.tables
    info: dict[str, object] = {
        "container": img.container,
        "arch": img.arch,
        "byteorder": img.byteorder,
        "address_mode": t.address_mode,
        "num_syms": t.num_syms,
        "link_base": img.segments[0][0] - img.segments[0][1] if img.segments and not img.is_elf else None,
    }
    info["ftrace"] = "read" if ft.sites is not None else ft.why_not
    if ex is not None:
        info["export_layout"] = ex.layout
        info["gpl_from"] = ex.flags_from
        info["exports_found_by"] = ex.found_by
    out = DecodedImage(k.names, k.types, k.addresses, info, None if ex is None else ex.exports, ft.sites)
    if path is not None:
        _store(path, out)
    return out


def boot_offset(arch: str, config: Mapping[str, str] | None) -> int:
    """What a boot without KASLR adds to the link-time addresses of ``arch``'s kernel
    built with ``config`` (:attr:`~.rules.ImageRules.boot_offset`; 0 when its plugin says nothing)."""
    from .rules import image_rules

    rules = next((r for r in image_rules() if r.arch == arch), None)
    return 0 if rules is None or rules.boot_offset is None else rules.boot_offset(config)


def symbols_from_image(
    data: bytes, source: str, *, cache: bool = True, config: Mapping[str, str] | None = None
) -> KernelSymbols:
    """vmlinux's symbols (kallsyms order) from a kernel image: link-time addresses, plus the
    architecture's :func:`boot_offset` where the kernel's ``config`` says it runs elsewhere."""
    d = decode_image(data, source, cache=cache)
    off = boot_offset(str(d.info.get("arch") or ""), config)
    mask = (1 << 64) - 1
    ks = KernelSymbols()
    ks.source_names.append(source)
    vmlinux = ks.obj(C.VMLINUX)
    vmlinux.extend(d.names, (d.addresses + np.uint64(off)).tolist(), d.types, source)
    vmlinux.sort_by_address()
    if not _DATA_TYPES.intersection(d.types):
        ks.text_only.append(source)
    if d.ftrace is not None:
        ks.ftrace[C.VMLINUX] = d.ftrace + np.uint64(off)
    if d.exports is not None:
        ks.exported[C.VMLINUX] = {x.name: (x.address + off) & mask for x in d.exports}
        crcs = {x.name: x.crc for x in d.exports if x.crc is not None}
        if crcs:
            ks.export_crcs[C.VMLINUX] = crcs
        for x in d.exports:
            ks.export_meta.setdefault(x.name, ExportInfo(x.name, x.crc or 0, C.VMLINUX, x.gpl_only, x.namespace))
    return ks


#: where a kernel package puts its image, relative to the target's root ({rel}: the release)
IMAGE_PATHS = ("usr/lib/modules/{rel}/vmlinuz", "lib/modules/{rel}/vmlinuz", "boot/vmlinuz-{rel}", "boot/Image-{rel}")


def read_image_file(path: str | os.PathLike[str], config: Mapping[str, str] | None = None) -> KernelSymbols:
    """:func:`symbols_from_image` of a file (decompressed first when the whole file is gzip/xz/zstd);
    ``config``: the kernel's configuration, when known (see :func:`boot_offset`)."""
    from ..compress import SYMBOL_ELF_LIMIT, read_input
    from ..errors import SymbolFileError

    data = read_input(path, limit=SYMBOL_ELF_LIMIT, what="kernel image", error=SymbolFileError)
    return symbols_from_image(data, os.fspath(path), config=config)

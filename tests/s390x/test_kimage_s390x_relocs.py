"""s390x: export tables found by their contents in a relocatable raw image whose data exports' values
are only in its .rela.dyn (Debian 6.1.0-50 s390x: 8,355 of 8,355 exports equal Module.symvers and
System.map by tools/kimage_truth.py).  The image is built here: absolute ``struct kernel_symbol``
tables, names, a .dynsym and the .rela.dyn right after it.
"""

from __future__ import annotations

import struct

import numpy as np
from klpcore_s390x.image import R_390_64, R_390_RELATIVE, boot_words

from klpcore.kimage.container import KernelImage
from klpcore.kimage.exports import read_exports

BASE = 0x100000


def _image(*, zero_symbol: bool = True, defined: bool = True) -> tuple[KernelImage, dict[str, int], set[str]]:
    main = sorted(f"sym_a{i:03d}" for i in range(80))
    gpl = sorted(f"gplsym_{i:03d}" for i in range(70))
    names = main + gpl
    data_syms = {"sym_a005": 0x9000, "gplsym_010": 0x9100}  # values only in the relocations
    table_off = 0x1000
    strings_off = table_off + 24 * len(names) + 0x40
    strings = bytearray(b"\0")
    at = {}
    for n in names:
        at[n] = strings_off + len(strings)
        strings += n.encode() + b"\0"
    value = {n: BASE + 0x10 + 4 * i for i, n in enumerate(names)} | {n: BASE + a for n, a in data_syms.items()}
    table = bytearray()
    for n in names:
        stored = 0 if n in data_syms else value[n]
        table += struct.pack(">QQQ", stored, BASE + at[n], BASE + strings_off)
    body = bytearray(bytes(table_off) + table + bytes(0x40) + strings)
    body += bytes(-len(body) % 24)
    dynsym = bytearray(bytes(24) if zero_symbol else b"\x01" * 24)
    relas = bytearray()
    for k, n in enumerate(data_syms, start=1):
        dynsym += struct.pack(">IBBHQQ", 0, 0x11, 0, 0x12 if defined else 0, value[n], 8)
        where = BASE + table_off + 24 * names.index(n)
        relas += struct.pack(">QQq", where, (k << 32) | R_390_64, 0)
    relas += struct.pack(">QQq", BASE + 8, R_390_RELATIVE, BASE + 0x40)
    data = bytes(body + dynsym + relas + bytes(64))
    img = KernelImage(data, "s390x vmlinux.bin", "s390x", "big", [(BASE, 0, len(data))])
    return img, value, set(gpl)


def test_data_exports_take_their_values_from_the_relocations() -> None:
    img, value, gpl = _image()
    got = read_exports(img, {}, {})
    assert got is not None and got.layout == "absolute" and got.found_by == "contents"
    assert {x.name: x.address for x in got.exports} == value
    assert {x.name for x in got.exports if x.gpl_only} == gpl


def test_relative_relocation_gives_its_addend() -> None:
    img, _, _ = _image()
    assert boot_words(img, np.array([BASE + 8], np.uint64)).tolist() == [BASE + 0x40]


def test_undefined_symbol_leaves_the_value_unknown_and_no_exports() -> None:
    img, _, _ = _image(defined=False)
    assert read_exports(img, {}, {}) is None


def test_no_dynsym_no_exports() -> None:
    img, _, _ = _image(zero_symbol=False)
    assert read_exports(img, {}, {}) is None

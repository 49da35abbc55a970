"""Export tables found by their contents in a raw image with no KALLSYMS_ALL (klpcore.kimage.ksymtab_scan).

The image is built here: a PREL32 ``__ksymtab`` and ``__ksymtab_gpl`` (names
sorted, as the linker script sorts them), tail-merged names in the strings (a
name may be the tail of another), filler around them.  Checked on the real
Debian 6.1.0-50 arm64 image by tools/kimage_truth.py (10,941 of 10,941 exports).
"""

from __future__ import annotations

import struct

from klpcore.kimage.container import KernelImage
from klpcore.kimage.exports import read_exports

BASE = 0xFFFF800008000000


def _image(n_main: int = 80, n_gpl: int = 70) -> tuple[bytes, dict[str, int], set[str]]:
    main = sorted(f"sym_a{i:03d}" for i in range(n_main))
    gpl = sorted(f"gplsym_{i:03d}" for i in range(n_gpl))
    text = bytes(0x1000)
    strings_off = 0x1000 + 12 * (n_main + n_gpl) + 0x40
    strings = bytearray(b"\0")
    at: dict[str, int] = {}
    for name in main + gpl:
        if name == "sym_a001":
            continue
        at[name] = strings_off + len(strings)
        strings += name.encode() + b"\0"
    # "sym_a001" is stored only as the tail of a longer string (mergeable strings)
    at["sym_a001"] = strings_off + len(strings) + 3
    strings += b"xx_sym_a001\0"
    func = {name: 0x10 + 4 * i for i, name in enumerate(main + gpl)}
    table = bytearray()
    for name in main + gpl:
        here = 0x1000 + len(table)
        ns = strings_off  # the empty namespace: a NUL
        table += struct.pack("<iii", func[name] - here, at[name] - (here + 4), ns - (here + 8))
    data = text + table + bytes(0x40) + bytes(strings) + bytes(0x100)
    return data, {n: BASE + a for n, a in func.items()}, set(gpl)


def test_tables_found_and_placed_by_kallsyms() -> None:
    data, known, gpl = _image()
    img = KernelImage(data, "arm64 Image", "arm64", "little")
    got = read_exports(img, {}, known)
    assert got is not None and got.found_by == "contents" and got.layout == "prel32"
    assert {x.name: x.address for x in got.exports} == known
    assert {x.name for x in got.exports if x.gpl_only} == gpl
    assert all(x.namespace == "" for x in got.exports)


def test_no_table_no_exports() -> None:
    data, known, _ = _image(n_main=10, n_gpl=0)  # shorter than any kernel's table: not trusted
    assert read_exports(KernelImage(data, "arm64 Image", "arm64", "little"), {}, known) is None


def test_placement_needs_kallsyms_agreement() -> None:
    data, _, _ = _image()
    assert read_exports(KernelImage(data, "arm64 Image", "arm64", "little"), {}, {}) is None

#!/usr/bin/env python3
"""Dev-only: cut a small test fixture out of a real kernel image's kallsyms tables.

    python tools/kimage_fixture.py IMAGE OUT.elf OUT.expected [--groups 2]

Takes the first ``--groups`` x 256 symbols of IMAGE's kallsyms as the kernel's
build compressed them (their length-prefixed codes, the real token table and
token index), and writes a minimal ELF (one PT_LOAD, no section headers) whose
tables hold just those symbols in the 7.x layout (count, names, markers, token
table, token index, place-relative offsets re-encoded for the new place, so
the addresses stay the real link-time ones), and the expected
``address type name`` lines decoded from the full image.  The tests read the
fixture with klpcore.kimage and compare (tests/core/test_kimage.py).
"""

from __future__ import annotations

import argparse
import struct
import sys

import numpy as np


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("out_elf")
    p.add_argument("out_expected")
    p.add_argument("--groups", type=int, default=2)
    args = p.parse_args(argv)
    from klpcore.compress import SYMBOL_ELF_LIMIT, read_input
    from klpcore.kimage.container import open_image
    from klpcore.kimage.kallsyms import read_kallsyms

    img = open_image(read_input(args.image, limit=SYMBOL_ELF_LIMIT, what="image"), args.image)
    k = read_kallsyms(img)
    t = k.tables
    e = img.endian
    d = img.data
    n = 256 * args.groups
    # the slice's PT_LOAD is linked 16 MiB past its last symbol (place-relative offsets reach 2 GiB)
    elf_va = (int(k.addresses[n - 1]) + (16 << 20)) & ~0xFFF
    markers = np.frombuffer(d, dtype=f"{e}u{t.marker_size}", count=args.groups + 1, offset=t.markers_off)
    names = d[t.names_off : t.names_off + int(markers[args.groups])]
    table_end = t.token_index_off  # the token table runs up to its index (padding included)
    tokens = d[t.token_table_off : table_end]
    index = d[t.token_index_off : t.token_index_off + 512]
    blob = bytearray(0x100)  # filler before the count
    blob += struct.pack(e + "I", n)
    blob += names
    blob += b"\0" * (-len(blob) % 4)
    blob += b"".join(struct.pack(e + "I", int(m)) for m in markers[: args.groups])
    blob += tokens
    blob += b"\0" * (-len(blob) % 4)
    blob += index
    blob += b"\0" * (-len(blob) % 4)
    at = elf_va + len(blob)
    blob += b"".join(struct.pack(e + "i", int(k.addresses[i]) - (at + 4 * i)) for i in range(n))
    blob += b"\0" * 64
    hdr = bytearray(0x1000)
    hdr[0:16] = b"\x7fELF" + bytes([2, 1 if e == "<" else 2, 1]) + b"\0" * 9
    struct.pack_into(e + "HHIQQQIHHHHHH", hdr, 16, 2, 0, 1, elf_va, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    struct.pack_into(e + "IIQQQQQQ", hdr, 64, 1, 4, 0x1000, elf_va, elf_va, len(blob), len(blob), 0x1000)
    with open(args.out_elf, "wb") as fh:
        fh.write(bytes(hdr) + bytes(blob))
    with open(args.out_expected, "w") as fh:
        for i in range(n):
            fh.write(f"{int(k.addresses[i]):016x} {k.types[i]} {k.names[i]}\n")
    print(f"{args.out_elf}: {n} symbols, {len(hdr) + len(blob)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

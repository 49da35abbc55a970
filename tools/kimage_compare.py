#!/usr/bin/env python3
"""Dev-only: compare what klpcore reads from a kernel image with a System.map
(or a nokaslr /proc/kallsyms dump) of the same build.

    python tools/kimage_compare.py IMAGE SYSTEM.MAP[.gz] [--json]

Prints counts: image symbols, map symbols, (name, address) pairs in both,
pairs only in the image / only in the map (first few of each), type
agreement on the common pairs.  Not used by tests (needs the real files)."""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections import Counter


def read_map(path: str) -> list[tuple[str, int, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt") as fh:  # type: ignore[operator]
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and len(parts) < 5:
                if len(parts) == 4:  # [module] lines of a kallsyms dump
                    continue
                out.append((parts[2], int(parts[0], 16), parts[1]))
    return out


def main(argv: list[str]) -> int:
    from klpcore.kimage import read_image

    image, mapfile = argv[0], argv[1]
    t = time.perf_counter()
    syms = read_image(image, cache=False)
    dt = time.perf_counter() - t
    k = syms.kallsyms
    img = Counter(zip(k.names, (int(a) for a in k.addresses), strict=True))
    ref_rows = read_map(mapfile)
    ref = Counter((n, a) for n, a, _ in ref_rows)
    both = img & ref
    only_img = img - ref
    only_ref = ref - img
    types_img = dict(zip(zip(k.names, (int(a) for a in k.addresses), strict=True), k.types, strict=True))
    types_ref = {(n, a): ty for n, a, ty in ref_rows}
    tdiff = Counter((types_ref[p], types_img[p]) for p in both if types_ref[p] != types_img[p])
    out = {
        "image": image,
        "container": syms.image.container,
        "seconds": round(dt, 3),
        "image_symbols": sum(img.values()),
        "map_symbols": sum(ref.values()),
        "common": sum(both.values()),
        "only_image": sum(only_img.values()),
        "only_map": sum(only_ref.values()),
        "type_mismatch": sum(tdiff.values()),
        "type_mismatch_kinds": {f"{a}->{b}": c for (a, b), c in tdiff.most_common(8)},
        "only_image_first": [f"{a:x} {n}" for n, a in list(only_img)[:8]],
        "only_map_first": [f"{a:x} {n}" for n, a in list(only_ref)[:8]],
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

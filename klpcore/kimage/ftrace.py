"""vmlinux's ftrace call sites read from an image.

The linker script collects every call site the compiler recorded
(``__mcount_loc``: x86's ``-mrecord-mcount``/objtool, s390's
``-mrecord-mcount``; ``__patchable_function_entries`` on arm64 and others)
between ``__start_mcount_loc`` and ``__stop_mcount_loc``: one absolute
``unsigned long`` per site, the link-time address (relocated at boot by the
KASLR offset).  ``ftrace_process_locs`` sorts them and turns each into a
record whose ``ip`` is ``ftrace_call_adjust(site)`` (the architecture's
plugin says how: :attr:`~.rules.ImageRules.ftrace_adjust`); the livepatch core refuses a function with no record
between its start and end ("failed to find location for function").

Records in init text (``_sinittext``.. ``_einittext``) are left out: the
kernel frees them after boot (``ftrace_free_init_mem``), and a booted
kernel's ``available_filter_functions_addrs`` no longer lists them.

Found through kallsyms' ``__start_mcount_loc``/``__stop_mcount_loc``
(``CONFIG_KALLSYMS_ALL``).  A raw image whose table holds zeros keeps the
values in relocations (RELA-only raw images): not read here, and said so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .container import KernelImage
from .rules import image_rules


@dataclass
class FtraceSites:
    sites: np.ndarray | None  # sorted uint64 link-time call sites
    why_not: str = ""  # when sites is None


def read_mcount(img: KernelImage, bounds: dict[str, int], funcs: np.ndarray | None = None) -> FtraceSites:
    """The kernel's ftrace record addresses (``rec->ip``), sorted; ``funcs``: sorted
    addresses of the image's function symbols (for the architecture's adjustment)."""
    start, stop = bounds.get("__start_mcount_loc"), bounds.get("__stop_mcount_loc")
    if start is None or stop is None:
        return FtraceSites(None, "no __start_mcount_loc/__stop_mcount_loc in kallsyms (no CONFIG_KALLSYMS_ALL?)")
    if stop < start or (stop - start) % 8:
        return FtraceSites(None, f"__mcount_loc bounds {start:#x}..{stop:#x} are not a table of addresses")
    off = img.va_to_off(start)
    if off is None or off + (stop - start) > len(img.data):
        return FtraceSites(None, f"__mcount_loc at {start:#x} is not in the image's loaded bytes")
    vals = np.frombuffer(img.data, dtype=f"{img.endian}u8", count=(stop - start) // 8, offset=off)
    if len(vals) and not vals.any():
        return FtraceSites(None, "__mcount_loc holds zeros: its values are in the image's relocations (not read)")
    sites = np.sort(vals[vals != 0])  # 0: a site the linker discarded; the kernel skips it
    rules = next((r for r in image_rules() if r.arch == img.arch), None) if img.arch else None
    got = FtraceSites(rules.ftrace_adjust(img, sites, funcs) if rules and rules.ftrace_adjust else sites)
    lo, hi = bounds.get("_sinittext"), bounds.get("_einittext")
    if got.sites is not None and lo is not None and hi is not None:
        got.sites = got.sites[(got.sites < np.uint64(lo)) | (got.sites >= np.uint64(hi))]
    return got

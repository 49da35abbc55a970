"""ppc64le's ``klpcore convert`` rules (klpcore_ppc64le.convert): each entry of its list."""

from __future__ import annotations

import pytest
from klpcore_ppc64le import convert
from klpcore_ppc64le.abi import (
    R_PPC64_ADDR64,
    R_PPC64_ENTRY,
    R_PPC64_REL16_HA,
    R_PPC64_REL16_LO,
    R_PPC64_REL24,
    R_PPC64_REL64,
    R_PPC64_TOC16_HA,
)

from klpcore.kernel import KernelTarget


def test_toc_symbol_stays_ordinary() -> None:
    rules = convert.rules(KernelTarget())
    assert rules.keep_symbol(".TOC.") is not None
    assert rules.keep_symbol("TOC") is None and rules.keep_symbol("hidden_fn") is None


@pytest.mark.parametrize(
    ("rtype", "section", "kept"),
    [
        (R_PPC64_REL16_HA, ".text", True),
        (R_PPC64_REL16_LO, ".text", True),
        (R_PPC64_ENTRY, ".text", True),
        (R_PPC64_REL64, ".text", True),
        (R_PPC64_REL64, "__jump_table", False),
        (R_PPC64_REL24, ".text", False),
        (R_PPC64_ADDR64, ".toc", False),
        (R_PPC64_TOC16_HA, ".text", False),
    ],
)
def test_types_kept_ordinary(rtype: int, section: str, kept: bool) -> None:
    assert (convert.rules(KernelTarget()).keep_type(rtype, section) is not None) is kept


def test_no_type_zero() -> None:
    assert convert.rules(KernelTarget()).none_type is None


@pytest.mark.parametrize(
    ("version", "rtype", "writable", "hazard"),
    [
        ((5, 13), R_PPC64_ADDR64, False, None),  # module text still writable
        ((5, 14), R_PPC64_REL24, False, "ppc64_patch_instruction"),  # read-only, no patch_instruction yet
        ((5, 15), R_PPC64_REL24, False, "ppc64_patch_instruction"),
        ((5, 16), R_PPC64_REL24, False, None),  # REL24 goes through patch_instruction
        ((5, 16), R_PPC64_TOC16_HA, False, "ppc64_patch_instruction"),  # other types are plain stores
        ((7, 1), R_PPC64_ADDR64, True, None),  # writable data (.toc)
    ],
)
def test_late_hazard(version: tuple[int, int], rtype: int, writable: bool, hazard: str | None) -> None:
    kernel = KernelTarget(version=version)
    row = convert.rules(kernel).late_hazard(rtype, ".text", writable, kernel)
    assert (row.name if row is not None else None) == hazard

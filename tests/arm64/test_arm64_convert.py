"""arm64's ``klpcore convert`` rules (klpcore_arm64.convert): each entry of its list."""

from __future__ import annotations

import pytest
from klpcore_arm64 import convert

from klpcore.kernel import KernelTarget

R_AARCH64_CALL26 = 283
R_AARCH64_ABS64 = 257


def test_nothing_kept_and_type_zero() -> None:
    rules = convert.rules(KernelTarget())
    assert rules.none_type == 0
    assert rules.keep_symbol("hidden_fn") is None
    assert rules.keep_type(R_AARCH64_CALL26, ".text") is None


@pytest.mark.parametrize(
    ("version", "writable", "hazard"),
    [
        ((6, 16), False, "arm64_late_text_poke"),
        ((6, 17), False, None),
        ((6, 16), True, None),
        ((5, 7), False, None),  # livepatch still made module text writable (module_disable_ro)
    ],
)
def test_late_hazard(version: tuple[int, int], writable: bool, hazard: str | None) -> None:
    kernel = KernelTarget(version=version)
    row = convert.rules(kernel).late_hazard(R_AARCH64_CALL26, ".text", writable, kernel)
    assert (row.name if row is not None else None) == hazard

"""x86_64's ``klpcore convert`` rules (klpcore_x86_64.convert): an empty list, type 0 taken."""

from __future__ import annotations

import pytest
from klpcore_x86_64 import convert

from klpcore.kernel import KernelTarget

R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32S = 2, 4, 11


@pytest.mark.parametrize("version", [(4, 7), (5, 7), (5, 8), (7, 1)])
def test_rules(version: tuple[int, int]) -> None:
    kernel = KernelTarget(version=version)
    rules = convert.rules(kernel)
    assert rules.none_type == 0
    for rtype in (R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32S):
        assert rules.keep_type(rtype, ".text") is None
        assert rules.late_hazard(rtype, ".text", False, kernel) is None
    assert rules.keep_symbol("_GLOBAL_OFFSET_TABLE_") is None

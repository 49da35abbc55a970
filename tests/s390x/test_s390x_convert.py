"""s390x's ``klpcore convert`` rules (klpcore_s390x.convert): each entry of its list."""

from __future__ import annotations

from klpcore_s390x import convert
from klpcore_s390x.types import R_390_GOTENT, R_390_PLT32DBL

from klpcore.kernel import KernelTarget


def test_expoline_thunks_stay_ordinary() -> None:
    rules = convert.rules(KernelTarget())
    assert rules.keep_symbol("__s390_indirect_jump_r14") is not None
    assert rules.keep_symbol("__s390_indirect_jump_r1use_r14") is not None
    assert rules.keep_symbol("__s390_indirect_call") is None
    assert rules.keep_symbol("hidden_fn") is None


def test_type_zero_and_no_kept_types_or_hazards() -> None:
    for version in ((4, 7), (5, 7), (5, 8), (7, 1)):
        kernel = KernelTarget(version=version)
        rules = convert.rules(kernel)
        assert rules.none_type == 0
        for rtype in (R_390_PLT32DBL, R_390_GOTENT):
            assert rules.keep_type(rtype, ".text") is None
            assert rules.late_hazard(rtype, ".text", False, kernel) is None

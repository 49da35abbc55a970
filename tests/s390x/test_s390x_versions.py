"""Each s390x row of the version table has a test on both sides of its start
(the tests are in test_s390x.py)."""

from __future__ import annotations

import pytest

from klpcore.testing.conformance import behaviour_tests

s390 = pytest.importorskip("klpcore_s390x")
import test_s390x as S  # noqa: E402  (a module: its tests are collected there, not here)

TestBehaviours = behaviour_tests(
    rows=s390.versions.BEHAVIOURS,
    boundary_tests={
        "s390_kernel_write": S.test_write_method_by_version,
        "s390_gotent_got_offset": S.test_gotent_formula_before_and_after_6_5,
    },
    # the mainline release of the change each row names (not read from the rows)
    releases={
        "s390_kernel_write": ((5, 7), (5, 8)),  # s390/module: Use s390_kernel_write() for late relocations
        "s390_gotent_got_offset": ((6, 4), (6, 5)),  # s390/module: fix rela calculation for R_390_GOTENT
    },
)

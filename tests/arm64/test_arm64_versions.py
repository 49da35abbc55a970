"""Each arm64 row of the version table has a test on both sides of its start
(the tests are in test_arm64.py)."""

from __future__ import annotations

import pytest

from klpcore.testing.conformance import behaviour_tests

a64 = pytest.importorskip("klpcore_arm64")
import test_arm64 as A  # noqa: E402  (a module: its tests are collected there, not here)

TestBehaviours = behaviour_tests(
    rows=a64.versions.BEHAVIOURS,
    boundary_tests={
        "arm64_single_ftrace_plt": A.test_ftrace_trampoline_by_version,
        "arm64_module_plts_always": A.test_plt_slots_exhausted_without_randomize_base,
        "arm64_livepatch": A.test_livepatch_refused_before_6_17,
        "arm64_late_text_poke": A.test_write_method_policy,
        "arm64_init_ftrace_trampoline": A.test_ftrace_trampoline_by_version,
    },
    # the mainline release of the change each row names (not read from the rows)
    releases={
        "arm64_single_ftrace_plt": ((6, 1), (6, 2)),  # arm64: ftrace: move from REGS to ARGS
        "arm64_module_plts_always": ((6, 4), (6, 5)),  # arm64: module: mandate MODULE_PLTS
        "arm64_livepatch": ((6, 16), (6, 17)),  # arm64: Implement HAVE_LIVEPATCH
        "arm64_late_text_poke": ((6, 16), (6, 17)),  # arm64/module: Use text-poke API for late relocations.
        "arm64_init_ftrace_trampoline": ((6, 16), (6, 17)),  # arm64: ftrace: fix unreachable PLT ... init_module
    },
)

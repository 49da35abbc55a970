"""Judge every pair of a :class:`~.inputs.Plan` on an executor and hand the
results over in the plan's order (module by module, each module's targets in
the order given), whatever order the workers finish in.

``on_pair(index, cell)`` is called for each pair as soon as it and every pair
before it are known (so a stream written from it is in the one-process
order and keeps what was done when a run is interrupted);
``on_progress(done, total)`` after each finished pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .executors import Executor
from .inputs import NotApplicable, Plan
from .report import PairResult
from .report import exit_code as report_exit_code

Cell = PairResult | NotApplicable


def run_plan(
    p: Plan,
    executor: Executor,
    options: dict[str, Any],
    on_pair: Callable[[int, Cell], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Cell]:
    cells: list[Cell | None] = [None] * p.size
    for i, na in p.skipped.items():
        cells[i] = na
    total = len(p.jobs)
    emitted = 0

    def flush() -> None:
        nonlocal emitted
        while emitted < len(cells) and cells[emitted] is not None:
            if on_pair is not None:
                on_pair(emitted, cells[emitted])  # type: ignore[arg-type]
            emitted += 1

    flush()
    if on_progress is not None:
        on_progress(0, total)
    targets = p.targets
    for done, (index, result) in enumerate(executor.run(p.jobs, targets, options), 1):
        cells[index] = result
        flush()
        if on_progress is not None:
            on_progress(done, total)
    missing = [i for i, c in enumerate(cells) if c is None]
    if missing:  # an executor that lost pairs without saying so: a bug, never a silent "loads"
        raise RuntimeError(f"executor {executor.description!r} returned no result for {len(missing)} pair(s)")
    return cells  # type: ignore[return-value]


def by_module(p: Plan, cells: list[Cell]) -> list[list[Cell]]:
    n = len(p.targets)
    return [cells[k : k + n] for k in range(0, len(cells), n)]


def exit_code(cells: list[Cell]) -> int:
    """The worst judged pair's exit code (:func:`.report.exit_code`); not-applicable pairs count as none."""
    return report_exit_code([c.verdict for c in cells if not isinstance(c, NotApplicable)])

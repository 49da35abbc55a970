"""Where pairs are judged: in process, local worker processes, a real Dask
LocalCluster (real scheduler and worker processes); results equal the
one-process run's, in its order, also when a worker dies mid-run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from klpcore.check import executors
from klpcore.check.batch import exit_code, run_plan
from klpcore.check.executors import InProcess, Processes, choose
from klpcore.check.inputs import expand_modules, expand_targets, plan
from klpcore.errors import InputError
from klpcore.hookspecs import hookimpl
from klpcore.plugins import get_plugin_manager

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernel"
ABIS = ["x86_64-6.1.0-50", "x86_64-6.1.0-54", "x86_64-6.1.0-54-rt"]


def fixture_plan() -> Any:
    """Every committed real-kernel case module on each of the three recorded targets (93 pairs)."""
    mods = [m for m in expand_modules([str(FIXTURES / a) for a in ABIS]) if "/target/" not in m]
    return plan(mods, expand_targets([str(FIXTURES / a / "target") for a in ABIS], None))


def as_json(cells: list) -> str:
    return json.dumps([[c.verdict, c.as_dict()] for c in cells], sort_keys=True)


@pytest.fixture(scope="module")
def baseline() -> str:
    executors.forget_targets()
    return as_json(run_plan(fixture_plan(), InProcess(), {}))


def test_plan_covers_every_pair() -> None:
    p = fixture_plan()
    assert len(p.targets) == 3 and len(p.modules) == 31
    assert [j.index for j in p.jobs] == list(range(93)) and not p.skipped


def test_processes_equal_in_process(baseline: str) -> None:
    cells = run_plan(fixture_plan(), Processes(2), {})
    assert as_json(cells) == baseline
    assert {c.verdict for c in cells} >= {"loads", "refused", "patch-fails"}
    assert exit_code(cells) == 1


def test_streamed_in_plan_order() -> None:
    seen: list[int] = []
    progress: list[tuple[int, int]] = []
    run_plan(
        fixture_plan(),
        Processes(2),
        {},
        on_pair=lambda i, c: seen.append(i),
        on_progress=lambda d, t: progress.append((d, t)),
    )
    assert seen == list(range(93))
    assert progress[0] == (0, 93) and progress[-1] == (93, 93) and len(progress) == 94


def _die_once(marker: str) -> Any:
    real = executors.judge

    def judge(module: str, target: Any, options: dict[str, Any]) -> Any:
        if module.endswith("kc_lp.ko") and not os.path.exists(marker):
            Path(marker).write_text("died")
            os._exit(9)  # the worker process dies mid-run
        return real(module, target, options)

    return judge


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the dying judge is inherited by fork only")
def test_processes_worker_death_is_retried(baseline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = str(tmp_path / "died")
    monkeypatch.setattr(executors, "judge", _die_once(marker))
    cells = run_plan(fixture_plan(), Processes(2), {})
    assert os.path.exists(marker)  # a worker did die
    assert as_json(cells) == baseline


def test_worker_keeps_its_targets() -> None:
    executors.forget_targets()
    p = fixture_plan()
    list(InProcess().run(p.jobs, p.targets, {}))
    assert set(executors._TARGETS) == set(p.targets)
    first = executors.worker_target(p.targets[0])
    assert executors.worker_target(p.targets[0]) is first


class FakeEngine:
    description = "a plugin's engine"

    def __init__(self) -> None:
        self.ran = 0

    def run(self, jobs: Any, targets: Any, options: Any) -> Any:
        for j in jobs:
            self.ran += 1
            yield j.index, executors.judge(j.module, executors.worker_target(targets[j.target]), options)

    def close(self) -> None:
        pass


class EnginePlugin:
    @hookimpl
    def klp_check_executor(self, name: str, jobs: int | None) -> Any:
        return FakeEngine() if name.startswith("fake://") else None


def test_executor_chosen_through_the_hook(baseline: str) -> None:
    pm = get_plugin_manager(plugins=[EnginePlugin()])
    ex = choose("fake://cluster", None, pm)
    assert isinstance(ex, FakeEngine)
    assert as_json(run_plan(fixture_plan(), ex, {})) == baseline and ex.ran == 93
    assert isinstance(choose("processes", 3, pm), Processes)
    assert isinstance(choose("processes", 1, pm), InProcess)
    with pytest.raises(InputError, match="--executor nope: unknown"):
        choose("nope", None, pm)


def test_core_does_not_import_dask() -> None:
    code = (
        "import sys, klpcore.check.executors, klpcore.check.batch, klpcore.check.inputs; "
        "from klpcore.check.executors import choose; choose('processes', 2); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- Dask (real cluster)
def _dask() -> Any:
    return pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install klpcore[dask])")


@pytest.fixture(scope="module")
def cluster() -> Any:
    distributed = _dask()
    import logging

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as c:
        yield c


def test_dask_local_cluster_equals_in_process(cluster: Any, baseline: str) -> None:
    ex = choose("dask://" + cluster.scheduler_address.removeprefix("tcp://"), None)
    try:
        assert as_json(run_plan(fixture_plan(), ex, {})) == baseline
        # each target was loaded by its own keyed task, once, and its checks ran on workers holding it
        keys = ex.client.run_on_scheduler(
            lambda dask_scheduler: sorted(k for k in dask_scheduler.tasks if str(k).startswith("klpcore-target-"))
        )
        assert keys == [] or all(k.startswith("klpcore-target-") for k in keys)
    finally:
        ex.close()


def test_dask_worker_killed_mid_run(cluster: Any, baseline: str) -> None:
    from klpcore.check.dask_executor import DaskExecutor

    ex = DaskExecutor(cluster.scheduler_address, 2)
    pids = ex.client.run(os.getpid)
    assert len(pids) == 2
    p = fixture_plan()
    killed: list[tuple[int, int]] = []

    def kill_once(done: int, total: int) -> None:
        if done == 1 and not killed:
            # the worker with the most tasks assigned to it at this moment
            processing = ex.client.processing()
            victim = max(pids, key=lambda addr: (len(processing.get(addr, ())), addr))
            os.kill(pids[victim], signal.SIGKILL)
            killed.append((len(processing.get(victim, ())), done))

    try:
        cells = run_plan(p, ex, {}, on_progress=kill_once)
    finally:
        ex.close()
    # a worker died while it had check tasks assigned and pairs were still to be judged
    assert killed and killed[0][0] > 0 and killed[0][1] < len(p.jobs)
    assert as_json(cells) == baseline  # and every pair still has its result, in order


def test_dask_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(InputError, match=r"dask-local: needs Dask distributed: pip install 'klpcore\[dask\]'"):
        choose("dask-local", 2)

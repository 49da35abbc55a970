"""Where the pairs of a ``klpcore check`` run are judged: in this process, in
local worker processes, or on a Dask cluster (:mod:`.dask_executor`).

The unit of work is one (module, target) pair, judged by
:func:`klpcore.check.check_pair`; an executor only decides where that call
runs.  Every worker keeps the targets it has read (:func:`worker_target`), so
a target is read once per worker and reused for every module.  Before its
first pair a target is *primed* (every lazily found file located, its symbols
read, its vermagic worked out), so what a result says about its target (files,
missing inputs, notes) does not depend on which module a worker judged first:
the results of any executor equal the one-process run's.

Executors are chosen by name through the ``klp_check_executor`` hook
(:mod:`klpcore.hookspecs`); the built-ins (this module) answer to
``inprocess``, ``processes`` (the default; ``--jobs N`` workers),
``dask://HOST:PORT`` and ``dask-local`` (both need ``pip install klpcore[dask]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    import pluggy

    from .report import PairResult
    from .target import Target


@dataclass(frozen=True)
class TargetSpec:
    """What a worker needs to open a target: ``Target(roots, release, distribution)``
    (one kernel, its packages extracted into one root or several)."""

    roots: tuple[str, ...]
    release: str | None = None
    distribution: str | None = None

    @property
    def key(self) -> str:
        """A stable name for this target's loading task (the same on every client and run)."""
        where = tuple(os.path.abspath(r) for r in self.roots)
        digest = hashlib.sha256(repr((where, self.release, self.distribution)).encode())
        return f"klpcore-target-{digest.hexdigest()[:20]}"


@dataclass(frozen=True)
class PairJob:
    """Pair number ``index`` of a run: ``module`` on target number ``target``."""

    index: int
    module: str
    target: int


# ------------------------------------------------------------------ worker side
#: the targets this process has read, by spec (a worker's cache; never shared between processes)
_TARGETS: dict[TargetSpec, Target] = {}


def prime(target: Target) -> Target:
    """Touch every lazily read part of ``target`` in one fixed order, so its files,
    ``missing`` and ``notes`` are the same whichever module is judged first."""
    target.describe()
    _ = target.symbols
    _ = target.vermagic
    return target


def open_target(spec: TargetSpec) -> Target:
    from .target import Target

    return prime(Target(list(spec.roots), spec.release, spec.distribution))


def worker_target(spec: TargetSpec) -> Target:
    """This process's ``Target`` for ``spec``, read on first use."""
    t = _TARGETS.get(spec)
    if t is None:
        t = _TARGETS[spec] = open_target(spec)
    return t


def forget_targets() -> None:
    """Drop this process's targets (tests; a long-lived embedding process)."""
    _TARGETS.clear()


def judge(module: str, target: Target, options: dict[str, Any]) -> PairResult:
    from . import check_pair

    return check_pair(module, target, options)


def judge_chunk(
    chunk: Sequence[tuple[int, str]], spec: TargetSpec, options: dict[str, Any]
) -> list[tuple[int, PairResult]]:
    """Judge ``(index, module)`` pairs on one target in this process (a worker's task)."""
    target = worker_target(spec)
    return [(i, judge(m, target, options)) for i, m in chunk]


# ------------------------------------------------------------------ executors
class Executor(Protocol):
    """Runs pairs somewhere; ``run`` yields ``(job index, result)`` as pairs finish, in any order."""

    description: str

    def run(
        self, jobs: Sequence[PairJob], targets: Sequence[TargetSpec], options: dict[str, Any]
    ) -> Iterator[tuple[int, PairResult]]: ...

    def close(self) -> None: ...


def chunks(jobs: Sequence[PairJob], workers: int, most: int = 16) -> list[tuple[int, list[tuple[int, str]]]]:
    """Jobs grouped by target into tasks of at most ``most`` pairs (fewer when
    there are few jobs, so that every worker gets some): ``[(target, [(index, module)])]``."""
    size = max(1, min(most, len(jobs) // max(1, workers * 8)))
    by_target: dict[int, list[tuple[int, str]]] = {}
    for j in jobs:
        by_target.setdefault(j.target, []).append((j.index, j.module))
    out = []
    for t, items in by_target.items():
        for k in range(0, len(items), size):
            out.append((t, items[k : k + size]))
    out.sort(key=lambda c: c[1][0][0])  # in the order of the run
    return out


class InProcess:
    """Every pair in this process, one after another."""

    description = "in process"

    def run(
        self, jobs: Sequence[PairJob], targets: Sequence[TargetSpec], options: dict[str, Any]
    ) -> Iterator[tuple[int, PairResult]]:
        for j in jobs:
            yield j.index, judge(j.module, worker_target(targets[j.target]), options)

    def close(self) -> None:
        pass


def _worker_init(inherit: bool) -> None:
    import signal

    if not inherit:
        forget_targets()  # a forked worker starts with none of the parent's targets
    # ^C is the parent's to handle (it stops the run and keeps what was written); a worker
    # that took it too would print its own traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Processes:
    """Local worker processes (``concurrent.futures.ProcessPoolExecutor``).

    Each worker keeps the targets it has read.  When a worker dies (killed,
    out of memory) the pool is started again and the unfinished tasks are sent
    again, at most ``restarts`` times.
    """

    def __init__(self, workers: int, restarts: int = 2) -> None:
        self.workers = max(1, workers)
        self.restarts = restarts
        self.description = f"{self.workers} local process{'es' if self.workers != 1 else ''}"

    def run(
        self, jobs: Sequence[PairJob], targets: Sequence[TargetSpec], options: dict[str, Any]
    ) -> Iterator[tuple[int, PairResult]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        todo = chunks(jobs, self.workers)
        used = sorted({j.target for j in jobs})
        # fewer targets than workers (a module tree against its own kernel): read them here, once,
        # and let the forked workers share them, instead of each worker reading them again
        inherit = multiprocessing.get_start_method() == "fork" and len(used) < self.workers
        if inherit:
            for t in used:
                worker_target(targets[t])
        attempt = 0
        while todo:
            pending: dict[Future[list[tuple[int, PairResult]]], tuple[int, list[tuple[int, str]]]] = {}
            broken = False
            pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_init, initargs=(inherit,))
            try:
                for t, items in todo:
                    pending[pool.submit(judge_chunk, items, targets[t], options)] = (t, items)
                while pending and not broken:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=lambda f: pending[f][1][0][0]):
                        try:
                            results = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        del pending[fut]
                        yield from results
            finally:
                # an interrupted run (the consumer stopped, ^C) does not wait for the queued work
                pool.shutdown(wait=not pending, cancel_futures=True)
            todo = list(pending.values())
            if todo:
                attempt += 1
                if attempt > self.restarts:
                    raise InputError(
                        f"a check worker died {attempt} times; {sum(len(c[1]) for c in todo)} pair(s) not judged"
                    )

    def close(self) -> None:
        pass


def default_jobs() -> int:
    """The machine's cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------ the hook
@hookimpl(trylast=True)
def klp_check_executor(name: str, jobs: int | None) -> Executor | None:
    """The built-in executors: ``inprocess``, ``processes``, ``dask-local``, ``dask://HOST:PORT``
    (also ``tcp://``, ``tls://``)."""
    n = jobs if jobs is not None else default_jobs()
    if name in ("inprocess", "in-process"):
        return InProcess()
    if name in ("processes", "local", ""):
        return InProcess() if n <= 1 else Processes(n)
    if name == "dask-local" or name.startswith(("dask://", "tcp://", "tls://")):
        from .dask_executor import DaskExecutor

        return DaskExecutor(None if name == "dask-local" else name.removeprefix("dask://"), n)
    return None


def choose(name: str, jobs: int | None, pm: pluggy.PluginManager | None = None) -> Executor:
    """The executor called ``name`` (the ``--executor`` value): asked of every plugin's
    ``klp_check_executor``, then of the built-ins; an unknown name is an input error."""
    if pm is None:
        from ..plugins import get_plugin_manager

        pm = get_plugin_manager()
    if pm.get_plugin(__name__) is None:
        import sys

        pm.register(sys.modules[__name__], name=__name__)
    ex: Executor | None = pm.hook.klp_check_executor(name=name, jobs=jobs)
    if ex is None:
        raise InputError(
            f"--executor {name}: unknown (built-in: processes, inprocess, dask-local, dask://HOST:PORT; "
            "others come from plugins implementing klp_check_executor)"
        )
    return ex

"""``--executor dask://HOST:PORT`` and ``--executor dask-local``: the pairs of a
check on a Dask distributed cluster (``pip install klpcore[dask]``).

Only this module imports Dask, and only when one of these executors is chosen.

Each target's loading is a task of its own with a stable key
(:attr:`TargetSpec.key`); every task judging modules on that target takes the
loading task's future as an argument, so the scheduler sends it to a worker
that already holds the target.  What a loading task keeps on its worker is a
:class:`TargetHandle`: the ``Target`` read there (the worker's cache), which
travels to another worker as its spec alone and is read there once when work
is moved.  A task whose worker dies is run again elsewhere by the scheduler
(Dask's ``distributed.scheduler.allowed-failures``, default 3, then
``KilledWorker``); a task that raises is retried ``retries`` times.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .executors import PairJob, TargetSpec, chunks, judge, worker_target

if TYPE_CHECKING:
    from .report import PairResult
    from .target import Target

INSTALL_HINT = "needs Dask distributed: pip install 'klpcore[dask]'"


def _distributed() -> Any:
    """``distributed`` (typed as Any: it ships no type information)."""
    import importlib

    return importlib.import_module("distributed")


class TargetHandle:
    """A target read on a worker; pickled, it is its spec alone (the receiving worker reads it once)."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    @property
    def target(self) -> Target:
        return worker_target(self.spec)

    def __reduce__(self) -> tuple[Any, tuple[TargetSpec]]:
        return (TargetHandle, (self.spec,))

    def __sizeof__(self) -> int:
        return 256


def load_target(spec: TargetSpec) -> TargetHandle:
    """The loading task: read (and prime) the target on this worker."""
    handle = TargetHandle(spec)
    _ = handle.target
    return handle


def judge_on(
    items: Sequence[tuple[int, str]], handle: TargetHandle, options: dict[str, Any]
) -> list[tuple[int, PairResult]]:
    target = handle.target
    return [(i, judge(m, target, options)) for i, m in items]


class DaskExecutor:
    """A Dask scheduler at ``address`` (``HOST:PORT``, ``tcp://HOST:PORT``), or with
    ``address=None`` a ``LocalCluster`` of ``workers`` single-threaded worker processes."""

    def __init__(self, address: str | None, workers: int, retries: int = 2) -> None:
        try:
            distributed = _distributed()
        except ImportError:
            name = "dask-local" if address is None else "dask://" + address
            raise InputError(f"--executor {name}: {INSTALL_HINT}") from None
        self.retries = retries
        self.cluster: Any = None
        if address is None:
            self.cluster = distributed.LocalCluster(
                n_workers=max(1, workers),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: never a clash with another cluster
                silence_logs=logging.CRITICAL,
            )
            self.client: Any = distributed.Client(self.cluster)
            self.description = f"Dask LocalCluster, {max(1, workers)} worker process(es)"
        else:
            if "://" not in address:
                address = "tcp://" + address
            try:
                self.client = distributed.Client(address, timeout="20s")
            except OSError as exc:
                where = address.split("://", 1)[1]
                raise InputError(f"--executor dask://{where}: cannot reach the scheduler: {exc}") from None
            self.description = f"Dask scheduler {address}"
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})) or workers)

    def run(
        self, jobs: Sequence[PairJob], targets: Sequence[TargetSpec], options: dict[str, Any]
    ) -> Iterator[tuple[int, PairResult]]:
        distributed = _distributed()
        as_completed = distributed.as_completed
        FutureCancelledError = distributed.client.FutureCancelledError
        KilledWorker = distributed.scheduler.KilledWorker

        client = self.client
        loaded = {
            t: client.submit(load_target, targets[t], key=targets[t].key, retries=self.retries)
            for t in {j.target for j in jobs}
        }
        futures = [
            client.submit(judge_on, items, loaded[t], options, pure=False, retries=self.retries)
            for t, items in chunks(jobs, self.workers)
        ]
        try:
            for fut in as_completed(futures):
                try:
                    results = fut.result()
                except KilledWorker as exc:
                    why = f"Dask: workers running a check task kept dying ({exc}); no result for it"
                    raise InputError(why) from None
                yield from results
        except FutureCancelledError as exc:
            raise InputError(f"Dask: a check task was cancelled ({exc})") from None
        finally:
            client.cancel(futures)
            del loaded

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

"""Parallelism inside one shard job: threads, processes or a dask ``distributed`` cluster.

Results come back in input order whatever the backend, so a shard's outputs do not
depend on scheduling. Memory is bounded by running at most ``workers`` fields at once
(and, with ``distributed``, by the per-worker memory limit).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("serial", "threads", "processes", "distributed")


def default_backend() -> str:
    """The backend named by ``LOCATLAS_BACKEND`` (a site setting), else threads."""
    backend = os.environ.get("LOCATLAS_BACKEND", "threads")
    if backend not in BACKENDS:
        raise ValueError(f"LOCATLAS_BACKEND={backend!r}: expected one of {BACKENDS}")
    return backend


def map_ordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int = 1,
    backend: str | None = None,
    memory_limit: str | None = None,
) -> list[R]:
    """Apply ``fn`` to every item, ``workers`` at a time; results in input order.

    Parameters
    ----------
    fn : callable
        Must be picklable for the ``processes`` and ``distributed`` backends.
    workers : int
        Concurrent items. 1 runs serially in this process.
    backend : {"serial", "threads", "processes", "distributed"}, optional
        Default from ``LOCATLAS_BACKEND`` (threads).
    memory_limit : str, optional
        Per-worker memory limit for ``distributed`` (e.g. "4GB"); a worker that
        exceeds it is restarted by dask and its task retried.
    """
    return list(
        imap_ordered(fn, items, workers=workers, backend=backend, memory_limit=memory_limit)
    )


def imap_ordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int = 1,
    backend: str | None = None,
    memory_limit: str | None = None,
    ahead: int | None = None,
) -> Iterator[R]:
    """:func:`map_ordered` as a generator: results are yielded in input order as they
    are ready, with at most ``workers + ahead`` items submitted and not yet taken
    (default ``ahead = workers``), so a caller that writes each result out holds a
    bounded number of them, however many items there are."""
    items = list(items)
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    if workers <= 1 or len(items) <= 1 or backend == "serial":
        yield from map(fn, items)
        return
    window = workers + (workers if ahead is None else max(0, ahead))
    if backend == "threads":
        with single_threaded_kernels(), ThreadPoolExecutor(max_workers=workers) as pool:
            yield from _windowed(pool.submit, fn, items, window)
    elif backend == "processes":
        with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_worker) as pool:
            yield from _windowed(pool.submit, fn, items, window)
    else:
        yield from _imap_distributed(
            fn, items, workers=workers, memory_limit=memory_limit, window=window
        )


def _windowed(submit, fn: Callable[[T], R], items: Sequence[T], window: int) -> Iterator[R]:
    """Submit ``items`` keeping ``window`` in flight; yield their results in order."""
    todo = iter(items)
    pending = deque(submit(fn, item) for item in islice(todo, window))
    while pending:
        yield pending.popleft().result()
        # the next item starts once the caller is done with this result
        pending.extend(submit(fn, item) for item in islice(todo, 1))


#: Thread-pool sizes a job inherits (Snakemake exports each as ``{threads}``). OpenMP's
#: sets torch's intra-op threads; MKL's separately sizes torch's CPU FFT and BLAS.
KERNEL_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """One thread per torch kernel (OpenMP and MKL) while fields run in parallel threads.

    Snakemake exports ``OMP_NUM_THREADS={threads}`` and ``MKL_NUM_THREADS={threads}``
    to a job; with ``threads`` fields in flight, each torch kernel would also start
    that many threads: threads² busy threads on ``threads`` cores, and the spin-waiting
    burns the excess (measured: the clear job used 1.7-1.9x the CPU time, and ran
    slower, at 2 threads). A torch already loaded is set to one thread and restored
    after; one that a field loads reads the environment, set to one thread for the
    duration, and keeps it.
    """
    saved = {name: os.environ.get(name) for name in KERNEL_THREAD_VARS}
    os.environ.update(dict.fromkeys(KERNEL_THREAD_VARS, "1"))
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)  # OpenMP and MKL both
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch is not None:
            torch.set_num_threads(before)


def _single_threaded_worker() -> None:
    # a worker process runs one field at a time: its kernels get one thread each
    from .allocator import keep_freed_memory

    keep_freed_memory()  # a spawn/forkserver worker starts with glibc's defaults
    os.environ.update(dict.fromkeys(KERNEL_THREAD_VARS, "1"))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _imap_distributed(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int,
    memory_limit: str | None,
    window: int,
) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit or "auto",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield from _windowed(partial(client.submit, pure=False), fn, items, window)

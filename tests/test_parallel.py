"""Parallelism inside a shard job: order of results, and one kernel thread per field."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from locatlas.parallel import imap_ordered, map_ordered


def _square(x: int) -> int:
    return x * x


def _kernel_threads(_: int) -> int:
    return torch.get_num_threads()


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_results_come_back_in_input_order(backend):
    assert map_ordered(_square, range(20), workers=3, backend=backend) == [x * x for x in range(20)]


def test_distributed_backend_keeps_input_order():
    # a dask LocalCluster of worker processes, one thread each
    got = list(imap_ordered(_square, range(7), workers=2, backend="distributed", ahead=1))
    assert got == [x * x for x in range(7)]


def test_imap_ordered_bounds_the_results_in_flight():
    """A caller writing each result out (the segment job's crops) holds at most
    ``workers + ahead`` of them, however many items there are."""
    started = []
    lock = threading.Lock()

    def work(x):
        with lock:
            started.append(x)
        time.sleep(0.002 * (x % 3))  # out-of-order finishing
        return x

    taken = []
    for x in imap_ordered(work, range(40), workers=3, backend="threads", ahead=2):
        with lock:
            assert len(started) - len(taken) <= 5
        taken.append(x)
    assert taken == list(range(40))


def test_parallel_fields_get_one_kernel_thread_each():
    # snakemake exports OMP_NUM_THREADS={threads}: without the limit every field in
    # flight would start that many OpenMP threads too (threads² on threads cores)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert map_ordered(_kernel_threads, range(4), workers=2, backend="threads") == [1] * 4
        assert map_ordered(_kernel_threads, range(4), workers=2, backend="processes") == [1] * 4
        assert torch.get_num_threads() == 2  # restored for the rest of the job
        # one field at a time keeps the job's threads for its kernels
        assert map_ordered(_kernel_threads, range(2), workers=1, backend="threads") == [2] * 2
    finally:
        torch.set_num_threads(before)


def test_torch_loaded_by_a_field_gets_one_thread_too():
    # jobs import torch lazily, inside the per-field function (clearing, cellpose); MKL
    # sizes torch's CPU FFTs on its own (MKL_NUM_THREADS=2 alone cost the clear job 1.7x)
    code = (
        "import re\n"
        "from locatlas.parallel import map_ordered\n"
        "def threads(_):\n"
        "    import torch\n"
        "    info = torch.__config__.parallel_info()\n"
        "    mkl = re.search(r'mkl_get_max_threads\\(\\) : (\\d+)', info)\n"
        "    return f'{torch.get_num_threads()}/{mkl.group(1) if mkl else 1}'\n"
        "print(*map_ordered(threads, range(4), workers=2, backend='threads'))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1/1"] * 4


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        map_ordered(_square, range(3), workers=2, backend="mpi")

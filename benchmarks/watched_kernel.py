"""A real Jupyter kernel for the benchmarks that watch a job from a notebook.

``watched_kernel()`` starts one (the repository and this folder on its
path, so cells import ``elastic_nb`` and ``workloads``), yields its client
and its process, and shuts it down; ``cpu_seconds`` is what the process has
used so far, for a kernel's share of a core over a window.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@contextlib.contextmanager
def watched_kernel() -> Iterator[tuple[BlockingKernelClient, psutil.Process]]:
    paths = [ROOT, HERE, os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    manager, client = start_new_kernel(kernel_name="python3", env=env, cwd=ROOT)
    try:
        yield client, psutil.Process(manager.provisioner.process.pid)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system

"""Shared pytest fixtures: leftover-process checks and the rendezvous backends."""

from __future__ import annotations

import pytest
from util import job_processes, wait_until


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must leave no agent, forkserver or worker behind."""
    yield
    try:
        wait_until(lambda: not job_processes(), timeout=15, what="job processes to exit")
    except AssertionError:
        leftovers = [(p.pid, " ".join(p.cmdline())[:120]) for p in job_processes()]
        for proc in job_processes():
            proc.kill()
        pytest.fail(f"processes left behind: {leftovers}")


@pytest.fixture(params=["c10d"])
def rdzv(request) -> dict:
    """launch() keyword arguments selecting each rendezvous backend in turn."""
    return {"backend": request.param}

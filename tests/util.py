"""Test helpers: wait for a condition (never sleep and hope), find a job's processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) is not alive."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def job_processes(run_id: str | None = None) -> list[psutil.Process]:
    """Live processes started for an elastic_nb job (agents, forkservers, workers)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            value = proc.environ().get("ELASTIC_NB_RUN_ID")
            if value and (run_id is None or value == run_id) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found

"""Waiting for a condition: poll it, with a deadline that names what was awaited.

The one waiting loop of the package: ``Job.wait_until`` uses it (pausing on
the job's condition variable, so a change wakes it early), and so do the
tests. Never sleep and hope: wait for the thing itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(predicate: Callable[[], T], timeout: float, what: str,
               pause: Callable[[float], object] = time.sleep, interval: float = 0.05,
               ended: Callable[[], str | None] | None = None) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    ``TimeoutError`` naming ``what`` after ``timeout`` seconds; when
    ``ended()`` returns a reason (the thing waited on is over), a
    ``RuntimeError`` with it as soon as the predicate still fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        over = ended() if ended is not None else None
        value = predicate()
        if value:
            return value
        if over:
            raise RuntimeError(f"{over} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        pause(interval)

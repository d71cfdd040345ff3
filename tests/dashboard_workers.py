"""Worker functions for the dashboard, magics and browser tests.

An importable module, so cloudpickle sends them by reference and the workers
import this file through the sys.path the Job propagates.
"""

from __future__ import annotations

import os
import sys
import time


def rank() -> int:
    return int(os.environ["RANK"])


def chatty(lines: int) -> int:
    """Print ``lines`` numbered lines on stdout and one on stderr; return the rank."""
    for i in range(lines):
        print(f"rank {rank()} line {i}", flush=True)
    print(f"rank {rank()} says goodbye", file=sys.stderr, flush=True)
    return rank()


def flood(lines: int) -> int:
    """Print as fast as possible (a flood of output); return how many lines."""
    out = sys.stdout
    for i in range(lines):
        out.write(f"flood {rank()} {i}\n")
    out.write(f"flood {rank()} done\n")
    out.flush()
    return lines


def one_rank_silent(seconds: float) -> int:
    """Rank 0 prints every 0.1 s; every other rank prints once, then says nothing."""
    print(f"rank {rank()} started", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rank() == 0:
            print("tick", flush=True)
        time.sleep(0.1)
    return rank()


def wait_for_kill(seconds: float) -> int:
    """Attempt 0 prints and waits (to be killed); later attempts return the rank at once."""
    restarts = os.environ["TORCHELASTIC_RESTART_COUNT"]
    print(f"rank {rank()} attempt with restart count {restarts}", flush=True)
    if restarts == "0":
        time.sleep(seconds)
    return rank()


def wait_forever() -> None:
    """Print once, then wait until stopped (for restart, stacks and stop)."""
    print(f"rank {rank()} waiting", flush=True)
    time.sleep(600)


def raise_on_rank(failing: int) -> int:
    """``failing`` raises a Python exception (a traceback for the timeline)."""
    if rank() == failing:
        raise ValueError(f"rank {failing} refuses")
    return rank()

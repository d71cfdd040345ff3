"""Live stack dumps of running ranks.

Each worker arms faulthandler on ``STACK_DUMP_SIGNAL`` once it runs the
user's call, appending every thread's stack to ``stacks.txt`` in its rank
directory. ``dump`` signals the ranks whose node handle gave a target and
reads what each appended; a rank its node cannot reach from here (its node
handle says why), or one still starting, gets a line saying so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from elastic_nb.kernel.supervisor import send_signal
from elastic_nb.wire.rank_files import STACK_DUMP_SIGNAL, STACKS_FILE


@dataclass(frozen=True)
class StackTarget:
    """A running rank whose stacks are wanted."""

    rank: int
    pid: int
    rank_dir: str


def dump(targets: dict[int, StackTarget | str], timeout: float) -> dict[int, str]:
    """Every thread's stack of each target, by rank; a line of why where there is none."""
    dumps: dict[int, str] = {}
    waiting: dict[int, tuple[StackTarget, str, int]] = {}
    for rank, target in targets.items():
        if isinstance(target, str):
            dumps[rank] = target
            continue
        path = os.path.join(target.rank_dir, STACKS_FILE)
        if os.path.exists(path):
            waiting[target.rank] = (target, path, os.path.getsize(path))
        else:  # the worker has not reached the user's function yet
            dumps[target.rank] = (f"rank {target.rank} (pid {target.pid}) is still starting: "
                                  "no stack yet")
    for target, _, _ in waiting.values():
        send_signal(target.pid, STACK_DUMP_SIGNAL)
    deadline = time.monotonic() + timeout
    sizes = {rank: -1 for rank in waiting}
    while any(rank not in dumps for rank in waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
        for rank, (_, path, start) in waiting.items():
            size = os.path.getsize(path)
            if rank not in dumps and size > start and size == sizes[rank]:
                with open(path, "rb") as f:
                    f.seek(start)
                    dumps[rank] = f.read().decode("utf-8", errors="replace")
            sizes[rank] = size
    for rank, (target, _, _) in waiting.items():
        dumps.setdefault(rank, f"rank {rank} (pid {target.pid}) did not dump its stacks "
                               f"within {timeout} s")
    return dict(sorted(dumps.items()))

"""Asking the ranks of this machine where they are: a signal, then the file each one writes.

A rank answers two signals beside its logs (``rank_files``): it appends
every thread's stack to ``stacks.txt`` on ``STACK_DUMP_SIGNAL``
(faulthandler), and replaces ``hang.json`` with its flight recorder and
frames on ``HANG_SIGNAL`` (``worker.hang_answer``). Those files are a
process boundary, as a channel is, and only a process on the rank's machine
can signal the rank and read them: the kernel for the ranks of its local
nodes (``kernel.stacks``, ``kernel.hang_map``), and a node host for its own
when the Job asks through the node's channel (``DumpStacks``, ``AskHang``).
Both run this one module, so a rank is asked the same way wherever it runs;
it is in ``wire`` because that is the folder both may import, and, with
``channel``, the one module there that touches processes.

``dump_stacks`` and ``ask_hang`` give every rank asked an answer within
``timeout``, or a line (a ``RankAnswer`` status) saying why there is none:
a rank still starting, stopped (SIGSTOP), gone, or silent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable

import psutil

from elastic_nb.wire.rank_files import (
    HANG_FILE,
    HANG_SIGNAL,
    STACK_DUMP_SIGNAL,
    STACKS_FILE,
    RankAnswer,
    RankTarget,
)


def dump_stacks(targets: Iterable[RankTarget], timeout: float) -> dict[int, str]:
    """Every thread's stack of each target, by rank; a line of why where there is none."""
    dumps: dict[int, str] = {}
    waiting: dict[int, tuple[RankTarget, str, int]] = {}
    for target in targets:
        path = os.path.join(target.rank_dir, STACKS_FILE)
        if os.path.exists(path):
            waiting[target.rank] = (target, path, os.path.getsize(path))
        else:  # the worker has not reached the user's function yet
            dumps[target.rank] = (f"rank {target.rank} (pid {target.pid}) is still starting: "
                                  "no stack yet")
    for target, _, _ in waiting.values():
        _signal(target.pid, STACK_DUMP_SIGNAL)
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
                               f"within {timeout:g} s")
    return dict(sorted(dumps.items()))


def ask_hang(targets: Iterable[RankTarget], timeout: float) -> dict[int, RankAnswer]:
    """Each target's flight recorder and stacks (``hang.json``), or why it gave none, by rank."""
    answers: dict[int, RankAnswer] = {}
    waiting: dict[int, tuple[RankTarget, str, int]] = {}
    for target in targets:
        status = _status(target.pid)
        if status is None:
            answers[target.rank] = RankAnswer(target.rank, "gone", note=f"pid {target.pid} exited")
        elif status == psutil.STATUS_STOPPED:
            answers[target.rank] = RankAnswer(target.rank, "stopped",
                                              note=f"pid {target.pid}, SIGSTOP")
        else:
            path = os.path.join(target.rank_dir, HANG_FILE)
            waiting[target.rank] = (target, path, _mtime(path))
            _signal(target.pid, HANG_SIGNAL)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for rank, (_, path, before) in list(waiting.items()):
            if _mtime(path) != before:
                try:
                    with open(path) as source:
                        answer = json.load(source)
                except (OSError, ValueError):
                    continue  # being replaced: read it next time round
                answers[rank] = RankAnswer(rank, "answered", answer)
                del waiting[rank]
        time.sleep(0.02)
    for rank, (target, _, _) in waiting.items():
        answers[rank] = RankAnswer(rank, "silent", note=f"pid {target.pid} did not answer within "
                                                       f"{timeout:g} s")
    return dict(sorted(answers.items()))


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # gone: it does not answer, and says so by its silence


def _status(pid: int) -> str | None:
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return None if status == psutil.STATUS_ZOMBIE else status


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0

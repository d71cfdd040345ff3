"""What a rank leaves beside its logs for its node host and the kernel to read.

A rank's directory (``attempt_N/<local_rank>/``, torch's layout) holds its
stdout/stderr and error file, and these: ``stacks.txt`` (every thread's
stack, appended on ``STACK_DUMP_SIGNAL``), the debugger's socket and, while
the rank waits in its debugger, ``paused.json``: a ``PauseNotice`` that the
node's agent reads back and reports to the Job; ``hang.json``, a rank's
answer to ``HANG_SIGNAL`` (its flight recorder's entries and its stacks);
``metrics.txt``, the records ``enb.report`` appends (``worker.metrics``).
A ``RankTarget`` names a running rank by its pid and directory, for
whoever signals it and reads those files (``rank_probe``); a
``RankAnswer`` is what that reader makes of a rank's ``hang.json`` (or why
there is none), a record because a node host sends it to the Job, whose
hang map analyzes it (``model.hangs``). ``TORCH_VARS_KEY``
names the variables torch set for a rank, so the worker can rebuild its
environment.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass
from typing import Any

from elastic_nb.wire.records import FlatRecord, ProtocolError
from elastic_nb.wire.whole_files import write_whole

STACK_DUMP_SIGNAL = signal.SIGUSR1
STACKS_FILE = "stacks.txt"
HANG_SIGNAL = signal.SIGUSR2  # asks a rank for its flight recorder and stacks
HANG_FILE = "hang.json"  # ... which it writes here, whole (``worker.hang_answer``)
FLIGHT_RECORDER_ENTRIES = 2000  # the bounded buffer every rank's flight recorder keeps
SOCKET_NAME = "debug.sock"
NOTICE_NAME = "paused.json"
PROMPT = "(Pdb) "  # the debugger's socket speaks pdb's own text; each answer ends with this
TORCH_VARS_KEY = "ELASTIC_NB_TORCH_VARS"
ANSWER_STATUSES = ("answered", "stopped", "gone", "silent")
METRICS_FILE = "metrics.txt"  # what enb.report appends (worker.metrics), tailed by the kernel


@dataclass(frozen=True)
class RankTarget(FlatRecord):
    """A running rank to ask: its process and its directory, on its node's machine."""

    rank: int
    pid: int
    rank_dir: str


@dataclass(frozen=True)
class RankAnswer(FlatRecord):
    """What one rank said (``answer``, its ``hang.json``), or why it said nothing: a plain
    record (``asdict`` out, ``from_message`` back, checked)."""

    rank: int
    status: str  # answered, stopped, gone, silent (no answer in time, or none from its node)
    answer: dict[str, Any] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.status not in ANSWER_STATUSES:
            raise ProtocolError(f"a rank's answer status must be one of {ANSWER_STATUSES}, "
                                f"not {self.status!r}")


@dataclass(frozen=True)
class PauseNotice(FlatRecord):
    """Where a rank stopped in its debugger, and where its debugger listens."""

    rank: int
    pid: int
    reason: str  # breakpoint or post_mortem
    file: str
    line: int
    function: str
    source: str  # the source line it stopped at
    cell: int | None  # the notebook cell (execution count) that file is
    exception: str | None  # post-mortem: the error, in one line
    socket: str

    def write(self, path: str) -> None:
        """Replace the notice at ``path`` at once (a reader never sees half of it)."""
        write_whole(path, json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: str) -> PauseNotice:
        """The notice at ``path``; OSError if there is none, ProtocolError if it is not one."""
        with open(path) as source:
            return cls.from_json(source.read(), f"the pause notice {path}")

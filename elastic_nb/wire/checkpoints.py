"""A checkpoint directory's layout: what the ranks write there and the kernel reads back.

``checkpoint_dir`` (a launch option; every rank finds it in
``CHECKPOINT_DIR_ENV``) holds one directory a checkpoint, ``step_<N>``,
written by ``torch.distributed.checkpoint`` (a file a rank, and DCP's
``.metadata``, written by its coordinator once every rank wrote). A checkpoint
is complete only once rank 0 wrote its ``Marker`` there, last
(``worker.checkpoint``); a directory without one is never loaded. Rank 0 also
appends each marker, and a ``Restored`` record for each resume, to the
directory's ``JOURNAL`` (one JSON line each, with the job's run id): the
kernel tails it for the timeline (``kernel.checkpoints``), so that even a
checkpoint removed before the kernel looked is told. Every record is checked
when read.

Which directories go is a rule of the layout (``to_remove``, after a save:
all but the newest ``keep`` complete ones and every incomplete one older than
the newest complete one, a save that a kill, a lost node or an interrupted
kernel cut short; ``leftovers``, at a restore, when no save is in flight:
every incomplete one).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from elastic_nb.wire.records import FlatRecord, ProtocolError

CHECKPOINT_DIR_ENV = "ELASTIC_NB_CHECKPOINT_DIR"
MARKER = "complete.json"  # written last, by rank 0, once every rank of the world wrote
METADATA = ".metadata"  # DCP's own, written by its coordinator after every rank's files
DEFAULT_KEEP = 2  # complete checkpoints kept after a save
_STEP_DIR = re.compile(r"^step_(\d+)$")
JOURNAL = "journal.jsonl"  # appended by rank 0: a line a complete checkpoint or a resume


def step_dir(step: int) -> str:
    """The directory name of the checkpoint of ``step``."""
    return f"step_{step}"


def step_of(name: str) -> int | None:
    """The step a directory name holds the checkpoint of, or None for another name."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Marker(FlatRecord):
    """A complete checkpoint: written by the world of ``world`` ranks in ``seconds``."""

    step: int
    world: int
    bytes: int
    seconds: float  # from the save's call to every rank's data and the metadata written
    time: float  # when it became complete (the marker's writing)
    run_id: str = ""


@dataclass(frozen=True)
class Restored(FlatRecord):
    """An attempt resumed from the checkpoint of ``step`` (saved by ``world_from`` ranks) in a
    world of ``world_to``, after ``seconds`` of loading; training goes on at ``next``."""

    step: int
    next: int
    world_from: int
    world_to: int
    seconds: float
    time: float  # when the load ended
    run_id: str = ""


def scan(root: str) -> dict[int, str]:
    """The step directories under ``root``, by step; none for a directory not there (yet)."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {step: entry.path for entry in entries if (step := step_of(entry.name)) is not None}


def read_marker(path: str) -> Marker | None:
    """The marker of the checkpoint in directory ``path`` if it is complete (its marker and
    DCP's metadata are there, the marker whole), else None."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            text = f.read()
        if not os.path.exists(os.path.join(path, METADATA)):
            return None
        return Marker.from_json(text, "a checkpoint's marker")
    except (OSError, ProtocolError, TypeError):
        return None


def newest_complete(complete: Iterable[int]) -> int | None:
    return max(complete, default=None)


def to_remove(complete: Iterable[int], incomplete: Iterable[int], keep: int) -> list[int]:
    """The steps whose directories go after a save: complete ones beyond the newest ``keep``,
    incomplete ones older than the newest complete one (newer ones may be a save in flight)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    done = sorted(complete)
    newest = done[-1] if done else None
    stale = [s for s in incomplete if newest is not None and s < newest]
    return sorted(done[:-keep] + stale)


def leftovers(complete: Iterable[int], incomplete: Iterable[int]) -> list[int]:
    """At a restore no save is in flight: every incomplete directory is a leftover (one with
    the step of a complete one cannot be: a marker makes it complete)."""
    done = set(complete)
    return sorted(s for s in incomplete if s not in done)


def to_json(record: Marker | Restored) -> str:
    return json.dumps(asdict(record))


def journal_line(record: Marker | Restored) -> str:
    kind = "checkpoint" if isinstance(record, Marker) else "restored"
    return json.dumps({"kind": kind, **asdict(record)}) + "\n"


def read_journal_line(line: str) -> Marker | Restored | None:
    """The record a journal line holds, or None for a damaged or unknown one."""
    try:
        message = json.loads(line)
        kinds: dict[str, Any] = {"checkpoint": Marker, "restored": Restored}
        record: Marker | Restored = kinds[message.pop("kind")].from_message(message)
    except (ValueError, KeyError, TypeError, AttributeError, ProtocolError):
        return None
    return record


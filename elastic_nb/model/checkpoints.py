"""Checkpoints as the job sees them, and how the timeline says what happened to them.

``Checkpoint`` is one complete checkpoint (``job.checkpoints``, oldest
first). The texts are the timeline's sentences for the ``checkpoint`` and
``restored`` events (``SENTENCES``). Which directories are complete and which
go is the directory's own rule (``wire.checkpoints``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elastic_nb.wire.checkpoints import Marker


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint: its step, the world that wrote it, its size, how long the save
    took (from the call to the last byte) and when it was complete."""

    step: int
    world_size: int
    bytes: int
    seconds: float
    time: float

    @classmethod
    def of(cls, marker: Marker) -> Checkpoint:
        return cls(marker.step, marker.world, marker.bytes, marker.seconds, marker.time)

    def detail(self) -> dict[str, Any]:
        """The ``checkpoint`` event's detail."""
        return {"step": self.step, "world": self.world_size, "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------ texts

def size_text(size: int) -> str:
    if size >= 10 * 2**20:
        return f"{size / 2**20:.0f} MB"
    if size >= 2**20:
        return f"{size / 2**20:.1f} MB"
    return f"{size / 2**10:.0f} kB"


def checkpoint_text(detail: dict[str, Any]) -> str:
    """``checkpoint step 300 (4 ranks, 12 MB, 0.4 s)``."""
    world = detail.get("world", "?")
    return (f"checkpoint step {detail.get('step', '?')} ({world} rank{'' if world == 1 else 's'}, "
            f"{size_text(int(detail.get('bytes', 0)))}, {float(detail.get('seconds', 0)):.1f} s)")


def restored_text(detail: dict[str, Any]) -> str:
    """``resumed at step 301 from the checkpoint of step 300 (world 4 → 3), loaded in 0.2 s``."""
    return (f"resumed at step {detail.get('next', '?')} from the checkpoint of step "
            f"{detail.get('step', '?')} (world {detail.get('world_from', '?')} → "
            f"{detail.get('world_to', '?')}), loaded in {float(detail.get('seconds', 0)):.1f} s")


SENTENCES = {"checkpoint": checkpoint_text, "restored": restored_text}
"""The events the timeline tells as a sentence of their own, by kind."""

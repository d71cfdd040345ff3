"""The kernel's look at the job's checkpoint directory: the complete checkpoints, and what happened.

The pump calls ``poll`` between reads (``due`` keeps it to a few times a
second): one listing of the directory (a marker is read only when it is new
or changed) gives ``job.checkpoints``, those there now; the new lines of the
directory's journal give the events, each complete checkpoint and each
resume of this job (by its run id), told even when a later save removed the
checkpoint before the kernel looked. What the journal held when the job
started (an earlier launch's) makes no event; what the directory held is
listed, since the job may resume from it.
"""

from __future__ import annotations

import os
import time

from elastic_nb.model.checkpoints import Checkpoint
from elastic_nb.wire import checkpoints as layout

POLL_EVERY = 0.25  # seconds between two looks at the directory
MAX_READ = 1 << 20  # journal bytes read at one look at most (the rest at the next)


class CheckpointWatch:
    """What one job's checkpoint directory holds, read cheaply and incrementally."""

    def __init__(self, root: str | None, run_id: str) -> None:
        self.root = root
        self._run_id = run_id
        self._markers: dict[str, tuple[int, layout.Marker | None]] = {}  # dir -> (mtime, marker)
        self._offset = 0
        self._partial = b""
        self._last = 0.0
        self._journal = os.path.join(root, layout.JOURNAL) if root is not None else None
        if self._journal is not None:
            try:
                self._offset = os.path.getsize(self._journal)  # an earlier launch's lines
            except OSError:
                self._offset = 0

    def due(self, now: float) -> bool:
        return self.root is not None and now - self._last >= POLL_EVERY

    def poll(self) -> tuple[list[Checkpoint], list[Checkpoint], list[layout.Restored]]:
        """The complete checkpoints there now (oldest first), and the checkpoints completed and
        the resumes this job recorded since the last poll."""
        self._last = time.monotonic()
        if self.root is None:
            return [], [], []
        steps = layout.scan(self.root)
        present = []
        for _, path in sorted(steps.items()):
            marker = self._marker(path)
            if marker is not None:
                present.append(Checkpoint.of(marker))
        self._markers = {p: self._markers[p] for p in steps.values() if p in self._markers}
        new: list[Checkpoint] = []
        restores: list[layout.Restored] = []
        for record in self._new_records():
            if record.run_id != self._run_id:
                continue
            if isinstance(record, layout.Marker):
                new.append(Checkpoint.of(record))
            else:
                restores.append(record)
        return present, new, restores

    def _marker(self, path: str) -> layout.Marker | None:
        """The directory's marker (read again only when the marker file changed)."""
        try:
            stamp = os.stat(os.path.join(path, layout.MARKER)).st_mtime_ns
        except OSError:
            stamp = 0
        cached = self._markers.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        marker = layout.read_marker(path) if stamp else None
        self._markers[path] = (stamp, marker)
        return marker

    def _new_records(self) -> list[layout.Marker | layout.Restored]:
        """The journal's whole lines written since the last look."""
        assert self._journal is not None
        try:
            with open(self._journal, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:  # a new journal
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read(MAX_READ)
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = [layout.read_journal_line(line.decode(errors="replace")) for line in lines]
        return [r for r in records if r is not None]

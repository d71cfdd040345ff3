"""Files one process writes and another reads while it may be writing: whole or not at all.

``write_whole`` writes beside the file and renames over it, so a reader sees
the old file or the new one, never half of it (a pause notice, a hang answer,
a checkpoint's marker). ``durable`` also syncs it to disk first, for what must
survive the machine (a checkpoint's marker on shared storage).
"""

from __future__ import annotations

import os


def write_whole(path: str, text: str, durable: bool = False) -> None:
    """Replace ``path`` by ``text`` at once."""
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as out:
        out.write(text)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    os.replace(partial, path)

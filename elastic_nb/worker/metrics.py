"""``enb.report(step, **metrics)``: a rank's training numbers, appended to its own file.

A call formats one line and appends it to ``metrics.txt`` in the rank's
directory (beside its stdout, stderr and error file; ``wire.rank_files``),
through a buffered file: no collective, no lock, no syscall on most calls.
The buffer is written when it fills, when a call finds it older than
``FLUSH_EVERY`` seconds (a live view lags by that much at most), and when the
rank ends (the trampoline's ``flush``, and ``atexit``). A rank killed, or
ended by its agent's SIGTERM, loses what its buffer held: at most the last
``FLUSH_EVERY`` seconds of records. The kernel tails the
file like the logs (``kernel.metrics_book``). Outside a job (no rank
directory) a call checks its numbers and keeps nothing.

The file: a header line ``# world W`` then ``TIME STEP name=value ...``,
values as ``repr`` writes them.
"""

from __future__ import annotations

import atexit
import numbers
import os
import time
from typing import IO

from elastic_nb.wire.rank_files import METRICS_FILE

RESERVED = frozenset(("time", "rank", "attempt", "world", "step"))  # job.metrics' own columns
FLUSH_EVERY = 0.1  # seconds a record may wait in the buffer before a call writes it

_file: IO[str] | None = None
_opened = False
_next_flush = 0.0


def _open() -> IO[str] | None:
    global _file, _opened
    _opened = True
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return None
    _file = open(os.path.join(os.path.dirname(error_file), METRICS_FILE), "a",  # noqa: SIM115
                 buffering=1 << 16, encoding="utf-8")
    _file.write(f"# world {os.environ.get('WORLD_SIZE', '0')}\n")
    atexit.register(flush)
    return _file


def _number(name: str, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = type(value).__name__
        hint = " (a tensor: pass loss.item())" if hasattr(value, "item") else ""
        raise TypeError(f"enb.report: {name}={value!r:.60} is a {kind}, not a number{hint}")
    return value if isinstance(value, int) else float(value)


def report(step: int, **metrics: float) -> None:
    """Record ``metrics`` (numbers: int or float) of training ``step`` on this rank.

    Costs a few microseconds: it appends to the rank's own file, which the
    kernel reads into ``job.metrics`` and the dashboard's metrics tab.
    """
    global _next_flush
    if type(step) is not int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"enb.report: step={step!r:.60} is a {type(step).__name__}, "
                            f"not an int")
        step = int(step)
    parts = []
    for name, value in metrics.items():
        if type(value) is not float and type(value) is not int:
            value = _number(name, value)
        if name in RESERVED:
            raise TypeError(f"enb.report: {name!r} names a column job.metrics fills itself; "
                            f"call the metric something else")
        parts.append(f"{name}={value!r}")
    f = _file if _opened else _open()
    if f is None:
        return
    now = time.time()
    f.write(f"{now:.6f} {step} {' '.join(parts)}\n")
    if now >= _next_flush:
        _next_flush = now + FLUSH_EVERY
        f.flush()


def flush() -> None:
    """Write what the buffer holds (the rank ends, or a reader wants it now)."""
    if _file is not None and not _file.closed:
        _file.flush()

"""What a kernel submitted to Slurm, cancelled when the kernel dies without ending it.

A job's ``SchedulerWatch`` cancels its Slurm jobs when the job ends, but a
kernel that is SIGKILLed (Jupyter's restart of a busy kernel, the OOM
killer) ends nothing: a node still queued would start later on a freed
compute node and hold it for a job that no longer exists. The reaper is a
small process beside the kernel, in a session of its own, started with the
first submission. It reads lines on its standard input, ``+ID`` (a Slurm job
to cancel if the kernel goes) and ``-ID`` (ended or cancelled by the job); the
kernel holds the pipe's other end, so the pipe's end is the kernel's, however
it died. Then it cancels what is left with one ``scancel`` and exits.

``Reaper`` is the kernel's side (one per process); ``main`` the reaper's,
which imports nothing but the standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

CANCEL_TIMEOUT = 30.0


class Reaper:
    """The kernel's end of the reaper: ``watch`` a submission, ``forget`` it once over."""

    _lock = threading.Lock()
    _process: subprocess.Popen[bytes] | None = None

    @classmethod
    def watch(cls, job_id: str) -> None:
        cls._tell(f"+{job_id}")

    @classmethod
    def forget(cls, job_id: str) -> None:
        cls._tell(f"-{job_id}")

    @classmethod
    def _tell(cls, line: str) -> None:
        with cls._lock:
            if cls._process is None or cls._process.poll() is not None:
                cls._process = subprocess.Popen(  # by path: the package (torch) is not imported
                    [sys.executable, os.path.abspath(__file__)],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
            assert cls._process.stdin is not None
            try:
                cls._process.stdin.write(line.encode() + b"\n")
                cls._process.stdin.flush()
            except BrokenPipeError:  # it died: the next line starts another
                cls._process = None


def main() -> None:
    """Read ``+ID``/``-ID`` until the kernel's end, then cancel the IDs still outstanding."""
    outstanding: dict[str, None] = {}
    for line in sys.stdin:
        job_id = line.strip()[1:]
        if line.startswith("+"):
            outstanding[job_id] = None
        elif line.startswith("-"):
            outstanding.pop(job_id, None)
    if outstanding:
        try:
            subprocess.run(["scancel", *outstanding], timeout=CANCEL_TIMEOUT, check=False,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"elastic_nb reaper: could not cancel Slurm jobs {' '.join(outstanding)} "
                  f"of a kernel that died: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()

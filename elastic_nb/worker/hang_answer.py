"""A rank's answer to "where are you?": its flight recorder and its stacks, on request.

Every rank runs torch's flight recorder (a bounded buffer of its collectives,
with a sequence number per process group) unless the job turned it off. The
kernel asks through the rank's private files, as for stack dumps: it sends
``HANG_SIGNAL`` and the rank writes ``hang.json`` beside its logs. The main
thread may be blocked inside a collective (C++, the GIL released), where no
Python signal handler would run, so the signal is blocked in every thread
but one that waits for it (``sigwait``) and answers: the flight recorder's
JSON, the ranks of every process group the rank created, and each thread's
Python frames (file, line, function, source, and the notebook cell a file is).
"""

from __future__ import annotations

import json
import linecache
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from elastic_nb.compat import torch_compat
from elastic_nb.wire.rank_files import FLIGHT_RECORDER_ENTRIES, HANG_FILE, HANG_SIGNAL
from elastic_nb.wire.whole_files import write_whole
from elastic_nb.worker import rank_debugger

# the frames between the trampoline and a script: the runner and runpy (frozen or not)
_SCRIPT_START = (os.sep + "script_runner.py", os.sep + "runpy.py", "<frozen runpy>")
GROUPS: dict[str, list[int]] = {}  # process group name -> its global ranks, as created


def record_group(group: Any) -> None:
    """Remember a process group's ranks (``init_process_group`` and ``new_group`` call it)."""
    import torch.distributed as dist

    try:
        GROUPS[str(group.group_name)] = list(dist.get_process_group_ranks(group))
    except (AttributeError, RuntimeError, ValueError):
        pass  # not a member of that group


def turn_on_flight_recorder() -> None:
    """A bounded flight recorder for every process group this rank creates (torch reads the
    variable when it creates one); a size the user set is kept."""
    os.environ.setdefault("TORCH_FR_BUFFER_SIZE", str(FLIGHT_RECORDER_ENTRIES))


def arm(rank_dir: str) -> None:
    """Answer ``HANG_SIGNAL`` from a thread of its own, whatever the main thread is doing."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {HANG_SIGNAL})
    threading.Thread(target=_serve, args=(os.path.join(rank_dir, HANG_FILE),), daemon=True,
                     name="elastic_nb-hang-answer").start()


def _serve(path: str) -> None:
    while True:
        signal.sigwait({HANG_SIGNAL})
        try:
            answer = json.dumps(_answer())
        except Exception as exc:  # an answer that says why beats none
            answer = json.dumps({"time": time.time(), "pid": os.getpid(),
                                 "error": f"{type(exc).__name__}: {exc}"})
        write_whole(path, answer)


def _answer() -> dict[str, Any]:
    recorder = None
    if "torch.distributed" in sys.modules:
        try:
            recorder = json.loads(torch_compat.flight_recorder_json())
        except (RuntimeError, ValueError):
            recorder = None  # no process group yet
    main = threading.main_thread()
    threads = {thread.ident: thread.name for thread in threading.enumerate()}
    stacks: dict[str, list[list[Any]]] = {}
    for ident, top in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        frames = []
        frame: FrameType | None = top
        while frame is not None:
            code = frame.f_code
            frames.append([code.co_filename, frame.f_lineno, code.co_name,
                           linecache.getline(code.co_filename, frame.f_lineno).strip(),
                           rank_debugger.cell_numbers.get(code.co_filename)])
            frame = frame.f_back
        name = "main" if ident == main.ident else threads.get(ident, str(ident))
        stacks[name] = _from_the_call(frames[::-1])
    return {"time": time.time(), "pid": os.getpid(), "flight_recorder": recorder,
            "groups": GROUPS, "stacks": stacks}


def _from_the_call(frames: list[list[Any]]) -> list[list[Any]]:
    """The frames from the user's function or script on (the trampoline, torch's start and,
    for a script, ``runpy`` cut off)."""
    for index, (filename, _, function, _, _) in enumerate(frames):
        if function == "run_worker" and filename.endswith("trampoline.py"):
            rest = frames[index + 1:]
            while rest and rest[0][0].endswith(_SCRIPT_START):
                rest = rest[1:]
            return rest
    return frames

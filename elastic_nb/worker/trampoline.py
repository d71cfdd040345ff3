"""The trampoline every worker process runs.

The kernel packs a function call, or a script or module to run as
``__main__`` (``worker.script_runner``), with cloudpickle (``kernel.packing``);
torch's agent starts each worker with ``run_worker(payload, context)``. The worker
first takes on its job's environment, ``sys.path`` and cwd (``JobContext``:
a worker forked from a warm host's forkserver inherits those of an older
job) with torch's per-rank variables on top, then installs the
notebook's source lines into linecache (so tracebacks show notebook code),
arms a stack-dump signal and the rank's debugger (``rank_debugger``: ``breakpoint()``,
post-mortem), dies with its parent, runs the call, waits for its last
asynchronous checkpoint (``worker.checkpoint``) and returns the
result cloudpickled (rank 0 first starts the store ``init_process_group``
will use, listening on ``MASTER_ADDR`` only). An exception propagates to
torch's ``record`` wrapper, which writes it to the rank's error file.
"""

from __future__ import annotations

import bdb
import ctypes
import faulthandler
import importlib
import ipaddress
import linecache
import os
import signal
import sys
import traceback
from typing import Any

import cloudpickle

from elastic_nb.wire.config import JobContext
from elastic_nb.wire.rank_files import STACK_DUMP_SIGNAL, STACKS_FILE, TORCH_VARS_KEY
from elastic_nb.worker import checkpoint, hang_answer, metrics, rank_debugger, script_runner

_PR_SET_PDEATHSIG = 1
_workers_store: Any = None  # rank 0's store for init_process_group, alive as long as the worker


def _enter_job(context: JobContext) -> None:
    """Replace the inherited environment with the job's, keeping what torch set for this rank."""
    names = os.environ.get(TORCH_VARS_KEY, "").split(",")
    torch_vars = {name: os.environ[name] for name in names if name in os.environ}
    os.environ.clear()
    os.environ.update(context.env)
    os.environ.update(torch_vars)
    sys.path[:] = context.sys_path
    os.chdir(context.cwd)
    importlib.invalidate_caches()  # modules written since the forkserver started are found


def _install_sources(sources: dict[str, list[str]]) -> None:
    for filename, lines in sources.items():
        # mtime None: linecache.checkcache never evicts the entry.
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if its parent (agent) dies first."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _arm_stack_dumps() -> None:
    """SIGUSR1 appends every thread's Python stack to the rank's stacks file."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return
    path = os.path.join(os.path.dirname(error_file), STACKS_FILE)
    stacks = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    faulthandler.register(STACK_DUMP_SIGNAL, file=stacks, all_threads=True)


def _arm_hang_answers() -> None:
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        hang_answer.arm(os.path.dirname(error_file))


def _host_workers_store() -> None:
    """Rank 0 hosts the workers' store (``init_process_group``'s ``env://``) on MASTER_ADDR only.

    torch starts that store as a multi-tenant TCPStore server on MASTER_PORT,
    which listens on every interface; one started here first, on a socket
    bound to MASTER_ADDR, is the one ``init_process_group`` then uses. A
    MASTER_ADDR that is a name, not an address (no ``listen_addr`` or
    ``--local-addr`` was given), is left to torch.
    """
    global _workers_store
    env = os.environ
    if env.get("RANK") != "0" or env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return
    try:
        ipaddress.ip_address(env.get("MASTER_ADDR", ""))
        port = int(env["MASTER_PORT"])
    except (KeyError, ValueError):
        return
    from elastic_nb.rendezvous import embedded

    _workers_store = embedded.host_store(env["MASTER_ADDR"], port, multi_tenant=True)


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the job's ``collective_timeout``."""


def _wrap_group_creation(seconds: float | None) -> None:
    """Every process group the rank creates is remembered for the hang map and, with a
    ``collective_timeout``, times out after ``seconds`` unless the call gives its own
    ``timeout=`` (``init_process_group``, ``new_group``)."""
    import inspect
    from datetime import timedelta

    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    timeout = None if seconds is None else timedelta(seconds=seconds)
    for name in ("init_process_group", "new_group"):
        original = getattr(c10d, name)
        signature = inspect.signature(original)

        def wrapped(*args: Any, _original: Any = original, _signature: Any = signature,
                    _name: str = name, **kwargs: Any) -> Any:
            call = _signature.bind_partial(*args, **kwargs)
            if timeout is not None and call.arguments.get("timeout") is None:
                call.arguments["timeout"] = timeout
            made = _original(*call.args, **call.kwargs)
            hang_answer.record_group(made if _name == "new_group" else dist.group.WORLD)
            return made

        wrapped.__doc__, wrapped.__name__ = original.__doc__, name
        setattr(c10d, name, wrapped)
        setattr(dist, name, wrapped)


def _collective_timeout(error: BaseException, seconds: float) -> CollectiveTimeout | None:
    """``error`` as the collective timeout it is (naming the collective), or None."""
    if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
        return None
    collective = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        name = frame.f_code.co_name
        if frame.f_code.co_filename.endswith("distributed_c10d.py") and not name.startswith("_") \
                and name != "wrapper":
            collective = name
    if collective is None:
        return None
    rank = os.environ.get("RANK", "?")
    return CollectiveTimeout(f"collective timeout: rank {rank}'s {collective} did not complete "
                             f"within collective_timeout={seconds:g} s ({type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0]})")


def run_worker(payload: bytes, context: JobContext) -> bytes:
    """Entry point of a worker process: run the packed call, return its result pickled."""
    _enter_job(context)
    _arm_hang_answers()  # first: before any thread starts, so that none takes its signal
    _die_with_parent()
    _arm_stack_dumps()
    _host_workers_store()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    rank_debugger.install()
    if context.flight_recorder:
        hang_answer.turn_on_flight_recorder()
    _wrap_group_creation(context.collective_timeout)
    checkpoint.finish_before_teardown()
    call = cloudpickle.loads(payload)
    _install_sources(call["sources"])
    rank_debugger.cell_numbers.update(call["cells"])
    try:
        result = (script_runner.run(call["script"]) if "script" in call
                  else call["fn"](*call["args"], **call["kwargs"]))
        checkpoint.finish()  # the rank's last asynchronous save is complete before it returns
    except bdb.BdbQuit:
        raise rank_debugger.quit_error(os.environ.get("RANK", "?")) from None
    except Exception as exc:
        if context.post_mortem:
            rank_debugger.post_mortem(exc, context.post_mortem_timeout)
        timed_out = (_collective_timeout(exc, context.collective_timeout)
                     if context.collective_timeout is not None else None)
        if timed_out is not None:
            raise timed_out from exc
        raise
    finally:
        metrics.flush()
    try:
        return cloudpickle.dumps(result)
    except Exception as exc:
        rank = os.environ.get("RANK", "?")
        raise TypeError(
            f"rank {rank} returned a {type(result).__name__} that cannot be sent back "
            f"to the notebook: {exc}. Return plain data (numbers, lists, dicts, tensors)."
        ) from exc

"""What training code calls to go on where it stopped: ``save_checkpoint`` and ``restore_checkpoint``.

    state = {"model": model, "optim": opt}      # modules, optimizers, Stateful objects, values
    start = enb.restore_checkpoint(state)       # 0, or the step after the newest complete one
    for step in range(start, steps):
        ...
        if step % 50 == 0:
            enb.save_checkpoint(step, state)    # asynchronous: the next steps run while it writes

Both go through ``torch.distributed.checkpoint`` (DCP): modules and
optimizers through ``get_state_dict``/``set_state_dict`` (plain modules, DDP,
FSDP2), so a checkpoint that a world of 4 saved loads into a world of 3 or 6
(DCP reshards); other values as DCP takes them (tensors loaded in place,
``Stateful`` objects through their own methods, anything else picklable
replaced in ``state``). Saves and restores use a gloo process group of their
own, so that an asynchronous save's collectives never mix with the
training's. One save is in flight at a time; ``destroy_process_group`` and
the rank's end wait for it (``finish``, from the trampoline).

A checkpoint is complete once every rank of its world wrote it: DCP's
coordinator writes its metadata after every rank's files, then rank 0 writes
the marker, last (``wire.checkpoints``). A restore loads only a complete one,
and first checks that every rank sees what rank 0 sees in the directory
(a node on another machine needs it on shared storage): one that does not
fails with ``CheckpointError`` saying so.

DCP is imported at the first call (a second in the kernel, which imports this
module for ``enb.save_checkpoint``); a host's forkserver preloads it, so a
worker forked from it does not wait for it (``wire.config``).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from elastic_nb.wire import checkpoints as layout
from elastic_nb.wire.whole_files import write_whole


class CheckpointError(RuntimeError):
    """No checkpoint directory, one that not every rank sees, or a save that failed."""


class _Save:
    """One save in flight on this rank: DCP's future, then (rank 0) the marker and the cleanup."""

    def __init__(self, step: int, future: Future, commit: Callable[[], None] | None) -> None:
        self.step = step
        self._future = future
        self._commit = commit
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"elastic_nb-checkpoint-{step}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._future.result()
            if self._commit is not None:
                self._commit()
        except BaseException as exc:
            self._error = exc

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise CheckpointError(f"the checkpoint of step {self.step} failed: "
                                  f"{type(self._error).__name__}: {self._error}") from self._error


_pending: _Save | None = None
_groups: dict[int, Any] = {}  # the default group's id -> the checkpoints' own group beside it
_restored_world: int | None = None


def checkpoint_dir() -> str:
    """Where this job's checkpoints live (``launch(checkpoint_dir=...)``)."""
    root = os.environ.get(layout.CHECKPOINT_DIR_ENV)
    if not root:
        raise CheckpointError(f"no checkpoint directory: run under elastic_nb.launch (its "
                              f"checkpoint_dir option), or set {layout.CHECKPOINT_DIR_ENV}")
    return root


def checkpoint_world() -> int | None:
    """The world size of the checkpoint ``restore_checkpoint`` loaded (None: none was): state
    that depends on the world (a sampler's per-rank position, random generators) may need it."""
    return _restored_world


def save_checkpoint(step: int, state: dict[str, Any], *, keep: int = layout.DEFAULT_KEEP,
                    blocking: bool = False) -> None:
    """Save ``state`` as the checkpoint of ``step``, on every rank (a collective).

    Asynchronous unless ``blocking``: it returns once the state is copied, the
    write goes on beside the next steps; a save waits for the one before it.
    Once complete, all but the newest ``keep`` complete checkpoints are removed,
    and so is what an interrupted save left.
    """
    global _pending
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    finish()
    root = checkpoint_dir()
    rank, world = _rank_world()
    path = os.path.join(root, layout.step_dir(step))
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        _uncommit(path)  # a checkpoint of this step from before is not one any more
    started = time.time()
    group = _group()
    state_dict = _state_dict(state)

    def commit() -> None:
        _commit(root, path, step, world, started, keep)

    import torch.distributed.checkpoint as dcp

    if blocking:
        dcp.save(state_dict, checkpoint_id=path, process_group=group, no_dist=group is None)
        if rank == 0:
            commit()
        return
    saving = dcp.async_save(state_dict, checkpoint_id=path, process_group=group,
                            no_dist=group is None)
    future = saving if isinstance(saving, Future) else saving.upload_completion
    _pending = _Save(step, future, commit if rank == 0 else None)


def restore_checkpoint(state: dict[str, Any]) -> int:
    """Load the newest complete checkpoint into ``state``, in place, resharded to this world;
    the step to run next (0 when there is none). Every rank calls it (a collective)."""
    global _restored_world
    finish()
    started = time.time()
    root = checkpoint_dir()
    rank, world = _rank_world()
    group = _group()
    choice: dict[str, Any] = {}
    if rank == 0:
        choice = _choose(root)
    choice = _broadcast(choice, group)
    _check_shared(root, choice, group)
    if rank == 0:
        os.remove(os.path.join(root, choice["probe"]))
    step = choice["step"]
    if step is None:
        _restored_world = None
        return 0
    path = os.path.join(root, layout.step_dir(step))
    state_dict = _state_dict(state)
    import torch.distributed.checkpoint as dcp

    dcp.load(state_dict, checkpoint_id=path, process_group=group, no_dist=group is None)
    _load_into(state, state_dict)
    _restored_world = choice["world"]
    if rank == 0:
        now = time.time()
        record = layout.Restored(step=step, next=step + 1, world_from=choice["world"],
                                 world_to=world, seconds=now - started, time=now,
                                 run_id=_run_id())
        _append(os.path.join(root, layout.JOURNAL), layout.journal_line(record))
    return step + 1


def finish() -> None:
    """Wait for this rank's save in flight, if any, to be complete (raising what it raised)."""
    global _pending
    save, _pending = _pending, None
    if save is not None:
        save.wait()


def finish_before_teardown() -> None:
    """Make ``destroy_process_group`` wait for the save in flight first: it ends the group the
    save writes through (the trampoline installs this in every rank)."""
    import torch.distributed.distributed_c10d as c10d

    original = c10d.destroy_process_group

    def destroy_process_group(group: Any = None) -> None:
        finish()
        if group is None:
            _groups.clear()
        original(group)

    destroy_process_group.__doc__ = original.__doc__
    c10d.destroy_process_group = destroy_process_group
    dist.destroy_process_group = destroy_process_group


# ------------------------------------------------------------------ rank 0's part

def _choose(root: str) -> dict[str, Any]:
    """Rank 0 picks the newest complete checkpoint, removes what interrupted saves left
    (nothing is in flight now) and leaves a probe that every rank must see."""
    os.makedirs(root, exist_ok=True)
    steps = layout.scan(root)
    complete = {s: m for s, p in steps.items() if (m := layout.read_marker(p)) is not None}
    for step in layout.leftovers(complete, steps):
        shutil.rmtree(steps[step], ignore_errors=True)
    newest = layout.newest_complete(complete)
    probe = f".probe-{uuid.uuid4().hex}"
    write_whole(os.path.join(root, probe), socket.gethostname(), durable=True)
    return {"step": newest, "world": complete[newest].world if newest is not None else None,
            "probe": probe}


def _commit(root: str, path: str, step: int, world: int, started: float, keep: int) -> None:
    """Every rank wrote and DCP's metadata is there: the marker, then the cleanup."""
    now = time.time()
    marker = layout.Marker(step=step, world=world, bytes=_size(path), seconds=now - started,
                           time=now, run_id=_run_id())
    write_whole(os.path.join(path, layout.MARKER), layout.to_json(marker), durable=True)
    _append(os.path.join(root, layout.JOURNAL), layout.journal_line(marker))
    steps = layout.scan(root)
    complete = [s for s, p in steps.items() if layout.read_marker(p) is not None]
    for gone in layout.to_remove(complete, [s for s in steps if s not in complete], keep):
        _uncommit(steps[gone])  # the marker first: a half-removed one is never loaded
        shutil.rmtree(steps[gone], ignore_errors=True)


def _uncommit(path: str) -> None:
    for name in (layout.MARKER, layout.METADATA):
        _remove(os.path.join(path, name))


def _check_shared(root: str, choice: dict[str, Any], group: Any) -> None:
    """Every rank sees rank 0's probe and chosen checkpoint, or every rank fails saying who
    does not (a node whose checkpoint_dir is not the shared one)."""
    sees = os.path.exists(os.path.join(root, choice["probe"])) and (
        choice["step"] is None
        or layout.read_marker(os.path.join(root, layout.step_dir(choice["step"]))) is not None)
    views = _all_gather((socket.gethostname(), sees), group)
    blind = [f"rank {r} on {host}" for r, (host, saw) in enumerate(views) if not saw]
    if blind:
        raise CheckpointError(
            f"checkpoint_dir {root} is not shared: {', '.join(blind)} cannot see what rank 0 on "
            f"{views[0][0]} wrote there. Every node must see the same directory (shared storage "
            "such as NFS, mounted at the same path): launch(checkpoint_dir=...)")


# ------------------------------------------------------------------ state dicts

def _owner(state: dict[str, Any]) -> nn.Module | None:
    """The model the optimizers of ``state`` belong to: its one module, or all of them."""
    modules = {k: v for k, v in state.items() if isinstance(v, nn.Module)}
    if len(modules) == 1:
        return next(iter(modules.values()))
    return nn.ModuleDict(modules) if modules else None


def _state_dict(state: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise TypeError("state must be a dict with str keys, e.g. {'model': model, 'optim': opt}")
    owner = _owner(state)
    result: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, nn.Module):
            result[key] = get_model_state_dict(value)
        elif isinstance(value, torch.optim.Optimizer):
            if owner is None:
                raise TypeError(f"state[{key!r}] is an optimizer without its model: put the "
                                "model in the same state, {'model': model, 'optim': opt}")
            result[key] = get_optimizer_state_dict(owner, value)
        else:
            result[key] = value
    return result


def _load_into(state: dict[str, Any], loaded: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.checkpoint.stateful import Stateful

    owner = _owner(state)
    for key, value in state.items():
        if isinstance(value, nn.Module):
            set_model_state_dict(value, loaded[key])
        elif isinstance(value, torch.optim.Optimizer):
            assert owner is not None
            set_optimizer_state_dict(owner, value, loaded[key])
        elif not isinstance(value, Stateful):  # DCP gave a Stateful its own state already
            state[key] = loaded[key]


# ------------------------------------------------------------------ the world

def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _group() -> Any:
    """The checkpoints' own gloo group (every rank makes it, at its first save or restore), or
    None outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    default = dist.group.WORLD
    key = id(default)
    if key not in _groups:
        _groups.clear()
        _groups[key] = dist.new_group(backend="gloo")
    return _groups[key]


def _broadcast(value: dict[str, Any], group: Any) -> dict[str, Any]:
    if group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _all_gather(value: Any, group: Any) -> list[Any]:
    if group is None:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


# ------------------------------------------------------------------ files

def _run_id() -> str:
    return os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("ELASTIC_NB_RUN_ID", "")


def _append(path: str, line: str) -> None:
    """One line at the end of the journal, in one write (a reader sees it whole or not yet)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _size(path: str) -> int:
    total = 0
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat().st_size
    return total

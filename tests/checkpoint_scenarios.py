"""Worker functions for the checkpoint tests, the benchmark and notebook 08: a small deterministic
training loop that saves and restores with ``enb.save_checkpoint``/``enb.restore_checkpoint``.

Deterministic on gloo: the model starts from a fixed seed, each step's global batch comes from a
generator seeded by the step (each rank takes its share of it), gradients are averaged with
all_reduce. Run uninterrupted or resumed from a checkpoint, the same world ends with the same
weights, bit for bit.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

GLOBAL_BATCH = 8


class Tripwire:
    """A value of the state whose pickling (a save's write) kills its rank when armed: a kill in
    the middle of a save, after the rank's file was opened, before the save could complete."""

    def __init__(self, armed: bool = False) -> None:
        self.armed = armed

    def __reduce__(self) -> tuple[Any, ...]:
        if self.armed:
            os.kill(os.getpid(), signal.SIGKILL)
        return (Tripwire, ())


def told_directory() -> str | None:
    """The checkpoint directory a rank is told."""
    return os.environ.get("ELASTIC_NB_CHECKPOINT_DIR")


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _batch(step: int, rank: int, world: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 32, generator=generator)
    y = torch.randn(GLOBAL_BATCH, 4, generator=generator)
    return x[rank::world], y[rank::world]


def train(steps: int, every: int, kill_at: int | None = None, trip_at: int | None = None,
          pace: float = 0.0) -> dict[str, Any]:
    """Train ``steps`` steps, saving every ``every``; in the first attempt rank 1 SIGKILLs itself at
    step ``kill_at``, or dies inside the save of step ``trip_at``. ``pace``: seconds a step until
    it resumed from a checkpoint (time for a fault to land)."""
    import torch
    import torch.distributed as dist

    import elastic_nb as enb

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state: dict[str, Any] = {"model": model, "optim": optimizer}
    start = enb.restore_checkpoint(state)
    after_restore = sorted(os.listdir(os.environ["ELASTIC_NB_CHECKPOINT_DIR"]))
    print(f"rank {rank}: starting at step {start} in a world of {world}", flush=True)
    for step in range(start, steps):
        if step == kill_at and rank == 1 and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = _batch(step, rank, world)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.grad is not None
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
        print(f"rank {rank}: step {step} loss {loss.item():.6f}", flush=True)
        if pace and not start:
            time.sleep(pace)
        if step % every == 0:
            armed = step == trip_at and rank == 1 and first_attempt
            state[f"trip_{rank}"] = Tripwire(armed)
            enb.save_checkpoint(step, state, blocking=armed)
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    dist.destroy_process_group()
    return {"weights": weights, "start": start, "world": world,
            "world_from": enb.checkpoint_world(), "after_restore": after_restore}


def train_elsewhere(steps: int, every: int) -> dict[str, Any]:
    """``train`` on a node whose checkpoint directory is not the others' (a node on another machine
    where the path is not the shared storage the others write to)."""
    import tempfile

    os.environ["ELASTIC_NB_CHECKPOINT_DIR"] = tempfile.mkdtemp(prefix="enb-not-shared-")
    return train(steps, every)

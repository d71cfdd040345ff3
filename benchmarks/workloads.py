"""The function every benchmark runs, the same under elastic_nb and under torchrun."""

from __future__ import annotations

import torch
import torch.distributed as dist


def allreduce_once() -> float:
    """Join a gloo group, all-reduce one tensor, leave: the cost of a trivial job."""
    dist.init_process_group(backend="gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    dist.destroy_process_group()
    return t.item()




def elastic_steps(steps: int, step_time: float, min_world: int = 0) -> int:
    """One all-reduce per step, each line stamped with the wall clock; keeps going while
    the world is smaller than ``min_world``. Returns the final world size."""
    import os
    import time

    dist.init_process_group(backend="gloo")
    world = dist.get_world_size()
    step = 0
    while step < steps or world < min_world:
        t = torch.ones(1)
        dist.all_reduce(t)
        print(f"step {step} world {world} rank {os.environ['RANK']} t={time.time():.3f}", flush=True)
        time.sleep(step_time)
        step += 1
    dist.destroy_process_group()
    return world


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        elastic_steps(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
    else:
        allreduce_once()

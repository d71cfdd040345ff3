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


if __name__ == "__main__":
    allreduce_once()

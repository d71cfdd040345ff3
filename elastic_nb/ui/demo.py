"""The terminal demo: 4 ranks all-reduce, rank 3 is killed, the group restarts.

Run with ``python -m elastic_nb demo``. It uses only the public API, so it is
also a short example of driving a job from a script.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

import elastic_nb as enb

PREFIX = "[${role_name}-${local_rank}:${rank}]:"


def train(steps: int, step_time: float) -> float:
    """A toy training loop: one gloo all-reduce per step; returns the sum of all steps."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    print(f"attempt {attempt}: rank {rank} of {world} ready", flush=True)
    total = 0.0
    for step in range(steps):
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        total += value.item()
        print(f"step {step}: all-reduce gave {value.item():.0f}", flush=True)
        time.sleep(step_time)
    dist.destroy_process_group()
    return total


def run_demo(nproc: int = 4, victim: int = 3, out: TextIO = sys.stdout) -> dict[int, float]:
    """Launch, stream prefixed logs, kill ``victim`` mid-run, print the results."""
    job = enb.launch(train, 8, 0.3, nodes=[enb.Node(nproc, role="trainer")],
                     max_restarts=1, log_line_prefix_template=PREFIX)
    print(f"launched {job.run_id}: {nproc} ranks on {job.backend} at {job.endpoint}; "
          f"logs in {job.log_dir}", file=out, flush=True)
    job.add_listener(lambda event: print(f"== {event}", file=out, flush=True))
    follower = threading.Thread(
        target=lambda: [print(line, file=out, flush=True) for line in job.follow()], daemon=True)
    follower.start()
    try:
        job.wait_until(lambda: f"[trainer-{victim}:{victim}]:step 2:" in job.logs(rank=victim),
                       timeout=120, what=f"rank {victim} at step 2")
        print(f">>> killing rank {victim} with SIGKILL", file=out, flush=True)
        job.kill(victim)
        results = job.result(timeout=180)
    finally:
        job.stop()
        follower.join(timeout=5)
    print(f">>> results: {results}", file=out, flush=True)
    print(job.summary(), file=out, flush=True)
    return results

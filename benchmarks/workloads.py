"""The function every benchmark runs, the same under elastic_nb and under torchrun."""

from __future__ import annotations

import torch
import torch.distributed as dist


def allreduce_once() -> float:
    """Join a gloo group, all-reduce one tensor, leave: the cost of a trivial job.
    Stamps entering user code and having joined the group (for the launch breakdown)."""
    import os
    import time

    rank = os.environ["RANK"]
    print(f"entered rank {rank} t={time.time():.4f}", flush=True)
    dist.init_process_group(backend="gloo")
    print(f"joined rank {rank} t={time.time():.4f}", flush=True)
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


def flood(seconds: float) -> int:
    """Print numbered lines as fast as possible for ``seconds``; returns how many."""
    import os
    import sys
    import time

    rank, end, count = os.environ["RANK"], time.monotonic() + seconds, 0
    while time.monotonic() < end:
        sys.stdout.write(f"flood {rank} {count}\n")
        count += 1
    sys.stdout.flush()
    return count


def restart_probe() -> int:
    """Stamp entering user code; attempt 0 joins the group, all-reduces, then waits to be
    killed; later attempts return at once. Returns the restart count."""
    import os
    import time

    entered = time.time()
    restarts = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    print(f"entered rank {os.environ['RANK']} pid {os.getpid()} restarts {restarts} "
          f"t={entered:.3f}", flush=True)
    if restarts == 0:
        dist.init_process_group(backend="gloo")
        t = torch.ones(1)
        dist.all_reduce(t)
        print(f"ready rank {os.environ['RANK']} pid {os.getpid()}", flush=True)
        time.sleep(600)
    return restarts


def tight_allreduces(steps: int) -> float:
    """All-reduce one float ``steps`` times as fast as possible: steps per second (what a
    recorder of every collective could slow down most)."""
    import time

    dist.init_process_group(backend="gloo")
    t = torch.ones(1)
    for _ in range(50):  # warm up the pairs
        dist.all_reduce(t)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(t)
    rate = steps / (time.perf_counter() - start)
    dist.destroy_process_group()
    return rate


def skip_allreduce(victim: int) -> None:
    """All-reduce three times; then every rank but ``victim`` all-reduces once more, which
    ``victim`` never enters (it sleeps): a hang for the hang map to explain."""
    import os
    import time

    dist.init_process_group(backend="gloo")
    t = torch.ones(4)
    for _ in range(3):
        dist.all_reduce(t)
    print("hanging", flush=True)
    if int(os.environ["RANK"]) == victim:
        time.sleep(600)
    dist.all_reduce(t)


def all_reduced_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     data: torch.Tensor) -> torch.Tensor:
    """One step of the benchmarks' training: the mean square of the output as the loss, its
    gradients summed over the ranks, the optimizer's step; the loss."""
    optimizer.zero_grad()
    loss = model(data).pow(2).mean()
    loss.backward()
    for parameter in model.parameters():
        assert parameter.grad is not None
        dist.all_reduce(parameter.grad)
    optimizer.step()
    return loss


def train_steps(steps: int) -> float:
    """A small training loop: a linear model's step, its gradients all-reduced, one printed
    line per step; steps per second."""
    import time

    dist.init_process_group(backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.randn(32, 64)
    rank = dist.get_rank()
    start = time.perf_counter()
    for step in range(steps):
        loss = all_reduced_step(model, optimizer, data)
        print(f"rank {rank} step {step} loss {loss.item():.4f}", flush=True)
    rate = steps / (time.perf_counter() - start)
    print(f"steps/s {rate:.1f}", flush=True)
    dist.destroy_process_group()
    return rate


def report_rate(seconds: float, rate: float) -> int:
    """Call ``enb.report`` ``rate`` times a second for ``seconds``; how many calls."""
    import time

    import elastic_nb as enb

    every, calls = 1.0 / rate, 0
    start = next_at = time.monotonic()
    while next_at - start < seconds:
        enb.report(calls, loss=1.0 / (calls + 1), lr=0.1)
        calls += 1
        next_at += every
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return calls


def ddp_checkpointed(steps: int, step_time: float, directory: str, every: int) -> int:
    """A small DDP model trained ``steps`` steps of at least ``step_time`` s, saved with DCP
    every ``every`` steps into ``directory`` (one folder a step, a marker written last) and
    resumed from the newest complete one; each step printed as ``STEP wall attempt step`` and
    reported with ``enb.report`` (under torchrun too). Returns the step it started from."""
    import os
    import time

    import torch.distributed.checkpoint as dcp

    dist.init_process_group(backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.randn(32, 64)
    done = sorted((int(name) for name in os.listdir(directory) if name.isdigit()
                   and os.path.exists(os.path.join(directory, name, "complete"))), reverse=True)
    start = 0
    if done:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        dcp.load(state, checkpoint_id=os.path.join(directory, str(done[0])))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = done[0] + 1
    import elastic_nb as enb  # under torchrun too: the same work on both sides
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank = dist.get_rank()
    for step in range(start, steps):
        began = time.monotonic()
        optimizer.zero_grad()
        loss = model(data).pow(2).mean()
        loss.backward()
        optimizer.step()
        pause = step_time - (time.monotonic() - began)
        if pause > 0:
            time.sleep(pause)
        if rank == 0:
            print(f"STEP {time.time():.6f} {attempt} {step}", flush=True)
        enb.report(step, loss=loss.item())
        if every and step % every == every - 1:
            folder = os.path.join(directory, str(step))
            dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                     checkpoint_id=folder)
            dist.barrier()
            if rank == 0:
                open(os.path.join(folder, "complete"), "w").close()
    dist.destroy_process_group()
    return start


def checkpointed_steps(size: int, every: int, pace: float, after: int) -> int:
    """Train a model of about ``size`` float32 parameters (SGD with momentum: as much again of
    optimizer state), with ``enb.save_checkpoint`` every ``every`` steps (asynchronous) and
    ``enb.restore_checkpoint`` at the start, under elastic_nb or torchrun alike (there, the
    directory is in ``ELASTIC_NB_CHECKPOINT_DIR``). The first attempt runs until it is killed;
    a later one runs ``after`` steps from where it resumed. Each rank prints its pid; rank 0
    stamps the end of the restore (``RESUMED wall attempt start``) and each step (``STEP wall
    attempt step``). Returns the step it started from."""
    import os
    import time

    entered = time.time()
    import elastic_nb as enb

    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    print(f"PID rank {rank} pid {os.getpid()} attempt {attempt} entered {entered:.6f} "
          f"joined {time.time():.6f}", flush=True)
    width = max(1, int(size ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    state = {"model": model, "optim": optimizer}
    start = enb.restore_checkpoint(state)
    if rank == 0:
        print(f"RESUMED {time.time():.6f} {attempt} {start}", flush=True)
    data = torch.randn(16, width, generator=torch.Generator().manual_seed(rank))
    last = start + after if attempt else 100_000
    step = start
    for step in range(start, last):
        began = time.monotonic()
        all_reduced_step(model, optimizer, data)
        if rank == 0:
            print(f"STEP {time.time():.6f} {attempt} {step}", flush=True)
        if step % every == 0:
            enb.save_checkpoint(step, state)
        pause = pace - (time.monotonic() - began)
        if pause > 0:
            time.sleep(pause)
    enb.save_checkpoint(step, state, blocking=True)  # waits for the one in flight (torchrun too)
    dist.destroy_process_group()
    return start


def save_cost(layers: int, width: int, steps: int, every: int, mode: str) -> dict[str, object]:
    """``layers`` square linear layers of ``width`` (float32, no bias, plain SGD: the model is
    the whole checkpoint), gradients all-reduced, saved with ``enb.save_checkpoint`` every
    ``every`` steps: ``mode`` "async" (the default), "blocking" or "none". Each step's seconds
    (the save's call included), and the seconds the last save still took after the loop."""
    import time

    import elastic_nb as enb
    from elastic_nb.worker.checkpoint import finish

    dist.init_process_group(backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width, bias=False)
                                  for _ in range(layers)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    state = {"model": model, "optim": optimizer}
    data = torch.randn(8, width)
    times, saved = [], []
    for step in range(steps):
        began = time.perf_counter()
        all_reduced_step(model, optimizer, data)
        if mode != "none" and step % every == every - 1:
            enb.save_checkpoint(step, state, blocking=mode == "blocking")
            saved.append(step)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    finish()
    drain = time.perf_counter() - began
    dist.destroy_process_group()
    return {"times": times, "saved": saved, "drain": drain,
            "bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


WORKLOADS = {"allreduce_once": allreduce_once, "elastic_steps": elastic_steps, "flood": flood,
             "restart_probe": restart_probe, "tight_allreduces": tight_allreduces,
             "skip_allreduce": skip_allreduce, "train_steps": train_steps,
             "report_rate": report_rate, "ddp_checkpointed": ddp_checkpointed,
             "checkpointed_steps": checkpointed_steps, "save_cost": save_cost}

if __name__ == "__main__":
    import ast
    import sys

    WORKLOADS[sys.argv[1]](*(ast.literal_eval(a) for a in sys.argv[2:]))

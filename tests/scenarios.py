"""Worker functions for the tests: the seed scenarios (torch's local_elastic_agent_test,
rewritten) and the workers of the dashboard, magics and browser tests.

They live in an importable module so cloudpickle sends them by reference:
the workers import this file through the sys.path the Job propagates.
torch is imported inside the functions that use it, so a worker that needs
no torch does not pay for importing it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TORCHRUN_ENV = (
    "RANK", "LOCAL_RANK", "ROLE_RANK", "ROLE_NAME", "GROUP_RANK", "LOCAL_WORLD_SIZE",
    "ROLE_WORLD_SIZE", "WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


def rank() -> int:
    return int(os.environ["RANK"])


def happy() -> None:
    return None


def sad() -> None:
    raise RuntimeError("sad because i throw")


def raises_while_its_peer_waits_in_a_collective() -> None:
    """Rank 1 raises after a first all-reduce; rank 0's second all-reduce breaks for it."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    tensor = torch.ones(1)
    dist.all_reduce(tensor)
    if dist.get_rank() == 1:
        raise ValueError("rank 1 gives up")
    dist.all_reduce(tensor)


def echo(message: str) -> str:
    return message


def dummy_compute() -> torch.Tensor:
    import torch

    return torch.rand(100, 100)


def dummy_compute_fail_rank_one_once() -> torch.Tensor:
    import torch

    if rank() == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.rand(100, 100)


def fatal_signal(failing_rank: int, sig: int) -> None:
    if rank() == failing_rank:
        os.kill(os.getpid(), sig)


def master_addr_port() -> tuple[str, int]:
    return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])


def torchrun_env() -> dict[str, str]:
    return {key: os.environ[key] for key in TORCHRUN_ENV}


def env_value(key: str) -> str | None:
    return os.environ.get(key)


def bipolar() -> None:
    if rank() % 2:
        sad()


def bipolar_sleep(seconds: float) -> int:
    if rank() % 2:
        sad()
    return sleep(seconds)


def dist_sum(wait: float = 0) -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    try:
        t = torch.tensor(rank())
        time.sleep(wait)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        expected = sum(range(int(os.environ["WORLD_SIZE"])))
        if t.item() != expected:
            raise RuntimeError(f"expected rank sum {expected}, got {t.item()}")
        print(f"rank {rank()} sum {t.item()}", flush=True)
        return int(t.item())
    finally:
        dist.destroy_process_group()


def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return rank()


@dataclass(frozen=True)
class RankInfo:
    rank: int
    role_rank: int
    group_rank: int
    role_world_size: int
    world_size: int
    role: str


def role_info() -> RankInfo:
    env = os.environ
    return RankInfo(int(env["RANK"]), int(env["ROLE_RANK"]), int(env["GROUP_RANK"]),
                    int(env["ROLE_WORLD_SIZE"]), int(env["WORLD_SIZE"]), env["ROLE_NAME"])


def _echo(message: str) -> str:
    return message


def rpc_master(message: str) -> str:
    from torch.distributed import rpc

    rpc.init_rpc("master", rank=rank(), world_size=int(os.environ["WORLD_SIZE"]))
    reply = rpc.rpc_sync(to="worker", func=_echo, args=(message,))
    rpc.shutdown()
    return f"{reply} from worker"


def rpc_worker() -> None:
    from torch.distributed import rpc

    rpc.init_rpc("worker", rank=rank(), world_size=int(os.environ["WORLD_SIZE"]))
    rpc.shutdown()


def sleep_unless_restarted(seconds: float) -> int:
    """Attempt 0 sleeps (to be killed); later attempts return the rank at once."""
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        time.sleep(seconds)
    return rank()


def tick_forever(prefix: str = "tick") -> None:
    for i in range(100_000):
        print(f"{prefix} {i}", flush=True)
        time.sleep(0.2)


def ignore_sigterm_and_sleep(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    time.sleep(seconds)


def exit_without_report(code: int) -> None:
    os._exit(code)


def stuck_before_all_reduce(stuck_rank: int) -> int:
    """Every rank but ``stuck_rank`` waits in an all-reduce that never completes."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    if rank() == stuck_rank:
        time.sleep(600)
    t = torch.tensor(1)
    dist.all_reduce(t)
    return int(t.item())


def restart_counter() -> int:
    """Sleeps on attempt 0 and 1 (waiting for a user restart); returns the restart count after."""
    count = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    print(f"attempt with restart count {count}", flush=True)
    time.sleep(600)
    return count


def elastic_steps(steps: int, step_time: float, min_world: int = 0) -> dict[str, int]:
    """All-reduce once per step; keep going while the world is smaller than ``min_world``."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    world = dist.get_world_size()
    step = 0
    while step < steps or world < min_world:
        t = torch.ones(1)
        dist.all_reduce(t)
        if t.item() != world:
            raise RuntimeError(f"all-reduce gave {t.item()} in a world of {world}")
        print(f"step {step} world {world}", flush=True)
        time.sleep(step_time)
        step += 1
    dist.destroy_process_group()
    return {"world_size": int(os.environ["WORLD_SIZE"]),
            "restart_count": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}


# Workers of the dashboard, magics and browser tests.


def chatty(lines: int) -> int:
    """Print ``lines`` numbered lines on stdout and one on stderr; return the rank."""
    for i in range(lines):
        print(f"rank {rank()} line {i}", flush=True)
    print(f"rank {rank()} says goodbye", file=sys.stderr, flush=True)
    return rank()


def flood(lines: int) -> int:
    """Print as fast as possible (a flood of output); return how many lines."""
    out = sys.stdout
    for i in range(lines):
        out.write(f"flood {rank()} {i}\n")
    out.write(f"flood {rank()} done\n")
    out.flush()
    return lines


def one_rank_silent(seconds: float) -> int:
    """Rank 0 prints every 0.1 s; every other rank prints once, then says nothing."""
    print(f"rank {rank()} started", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rank() == 0:
            print("tick", flush=True)
        time.sleep(0.1)
    return rank()


def wait_for_kill(seconds: float) -> int:
    """Attempt 0 prints and waits (to be killed); later attempts return the rank at once."""
    restarts = os.environ["TORCHELASTIC_RESTART_COUNT"]
    print(f"rank {rank()} attempt with restart count {restarts}", flush=True)
    if restarts == "0":
        time.sleep(seconds)
    return rank()


def wait_forever() -> None:
    """Print once, then wait until stopped (for restart, stacks and stop)."""
    print(f"rank {rank()} waiting", flush=True)
    time.sleep(600)


def raise_on_rank(failing: int) -> int:
    """``failing`` raises a Python exception (a traceback for the timeline)."""
    if rank() == failing:
        raise ValueError(f"rank {failing} refuses")
    return rank()


# ---------------------------------------------------------------- fault moments

HELD_MOMENTS = ("init_process_group", "in_collective", "between_collectives", "exit_barrier")


def held_at(moment: str, marks: str, steps: int = 3) -> dict[str, int]:
    """All-reduce ``steps`` times; the first time, node 1's ranks hold the others at ``moment``.

    "The first time" is per rank, remembered by a file in the directory
    ``marks`` (a user restart keeps the restart count, so that cannot tell).

    Each rank prints ``phase <name>`` as it gets there, so a test knows where
    every rank is before it strikes:

    * ``init_process_group``: node 1 sleeps before joining the group; the
      others wait inside ``init_process_group``.
    * ``in_collective``: node 1 sleeps after joining; the others wait inside
      the first ``all_reduce``.
    * ``between_collectives``: every rank computes (sleeps 5 s) between the
      first two all-reduces; nobody is in a collective.
    * ``exit_barrier``: node 1 sleeps after its last all-reduce; node 0's
      ranks return, and their agent waits in torch's exit barrier.

    Returns the world size and restart count it finished with.
    """
    import torch
    import torch.distributed as dist

    mark = os.path.join(marks, f"rank-{rank()}")
    first_attempt = not os.path.exists(mark) and int(os.environ["GROUP_WORLD_SIZE"]) > 1
    open(mark, "w").close()
    holder = first_attempt and int(os.environ["GROUP_RANK"]) == 1

    def phase(name: str, hold: bool = False, pause: float = 600) -> None:
        print(f"phase {name}", flush=True)
        if hold:
            time.sleep(pause)

    phase("started", hold=holder and moment == "init_process_group")
    dist.init_process_group(backend="gloo")
    phase("joined", hold=holder and moment == "in_collective")
    world = dist.get_world_size()
    for step in range(steps):
        t = torch.ones(1)
        phase(f"collective {step}")
        dist.all_reduce(t)
        if t.item() != world:
            raise RuntimeError(f"all-reduce gave {t.item()} in a world of {world}")
        phase(f"between {step}", hold=first_attempt and moment == "between_collectives" and step == 0,
              pause=5)
    phase("returning", hold=holder and moment == "exit_barrier")
    dist.destroy_process_group()
    return {"world_size": world, "restart_count": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}


def compute_once_grown(mark: str) -> dict[str, int]:
    """Step alone until a peer joins; then all-reduce once and compute (sleep) for ten minutes.

    A peer lost while this rank computes is noticed by no collective: only the
    rendezvous heartbeat tells. Once a world of 1 follows the bigger one
    (``mark`` remembers it), return.
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    world = dist.get_world_size()
    t = torch.ones(1)
    dist.all_reduce(t)
    if world > 1:
        open(mark, "w").close()
        print(f"phase computing world {world}", flush=True)
        time.sleep(600)
    step = 0
    while not os.path.exists(mark):
        dist.all_reduce(t)
        print(f"step {step} world {world}", flush=True)
        time.sleep(0.2)
        step += 1
    dist.destroy_process_group()
    return {"world_size": world, "restart_count": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}


# ---------------------------------------------------------------- debugging

def pause_on_rank(paused: int) -> int:
    """Rank ``paused`` stops at breakpoint(); every rank returns rank * 10 (+ 1 if paused)."""
    value = rank() * 10
    if rank() == paused:
        breakpoint()
        value += 1  # where it stops
    return value


def fail_first_attempt_with_locals(failing: int) -> int:
    """Rank ``failing`` raises on the first attempt, with a local worth inspecting."""
    batch = [rank(), 42]
    if rank() == failing and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        raise ValueError(f"bad batch {batch}")
    return rank()


def same_warning() -> int:
    """Every rank prints the same warning, then a line of its own."""
    print("warning: the same on every rank", flush=True)
    print(f"rank {rank()} own line", flush=True)
    return rank()


def torch_breakpoint(paused: int) -> int:
    """torch.distributed.breakpoint(paused): that rank stops, the others wait in a barrier."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    marker = 100 + rank()
    dist.breakpoint(paused)
    dist.destroy_process_group()
    return marker


def pdb_set_trace() -> int:
    import pdb

    marker = 7
    pdb.set_trace()
    return marker


def hang_at(kind: str, step: int = 5, victim: int = 2) -> int:
    """All-reduce in a loop; at ``step`` rank ``victim`` goes wrong, the way ``kind`` says.

    * ``skip``: it sleeps instead of entering the all-reduce the others wait in;
    * ``desync``: it calls all_gather where the others all-reduce;
    * ``subgroup``: in a group of ranks 0 and 1 (``victim`` is 1), it sleeps instead;
    * ``compute``: nobody goes wrong: every rank computes (sleeps) without collectives.
    Prints ``at step N`` before each step, and ``hanging`` when the step that hangs begins.
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    me = dist.get_rank()
    pair = dist.new_group([0, 1])
    t = torch.ones(4)
    for i in range(step + 1):
        print(f"at step {i}", flush=True)
        if i < step:
            dist.all_reduce(t)
            continue
        print("hanging", flush=True)
        if kind == "compute" or (me == victim and kind in ("skip", "subgroup")):
            time.sleep(600)
        elif kind == "desync" and me == victim:
            dist.all_gather([torch.ones(4) for _ in range(dist.get_world_size())], t)
        elif kind == "subgroup":
            if me in (0, 1):
                dist.all_reduce(t, group=pair)
            time.sleep(600)
        else:
            dist.all_reduce(t)
    return me


def collective_until(release: str) -> int:
    """Every rank in a broadcast every 0.1 s until rank 0 sees the file ``release``: a job that
    runs until the test lets it finish. Returns rank * 10."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    print(f"rank {rank()} in world {dist.get_world_size()}", flush=True)
    while True:
        done = torch.tensor([float(rank() == 0 and os.path.exists(release))])
        dist.broadcast(done, 0)
        if done.item():
            break
        time.sleep(0.1)
    dist.destroy_process_group()
    return rank() * 10


def reporting_steps(steps: int, step_time: float, checkpoint: str = "", every: int = 0) -> int:
    """A training loop that reports its loss each step; with ``checkpoint`` (a file) rank 0
    saves its step there every ``every`` steps, and every attempt resumes after it."""
    import elastic_nb as enb

    start = 0
    if checkpoint and os.path.exists(checkpoint):
        with open(checkpoint) as f:
            start = int(f.read()) + 1
    for step in range(start, steps):
        time.sleep(step_time)
        enb.report(step, loss=1.0 / (step + 1) + rank() / 100, lr=0.1)
        print(f"step {step}", flush=True)
        if checkpoint and every and rank() == 0 and step % every == every - 1:
            with open(checkpoint + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(checkpoint + ".tmp", checkpoint)
    return steps - start

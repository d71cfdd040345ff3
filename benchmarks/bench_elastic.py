"""Membership changes, timed: a node lost, a node added. elastic_nb beside torchrun.

    python benchmarks/bench_elastic.py [--repeats 3] [--backends c10d etcd etcd-v2 etcd3]

Two measurements, each the median of --repeats runs, on one machine:
  node loss   two nodes of 2 (min 1, max 2) all-reduce once per 0.1 s; node 1 is
              SIGKILLed; time from the kill to the first all-reduce of the re-formed
              world of 2 (worker-side timestamps).
  scale-up    one node of 2 (min 1, max 2) running; a second node is started; time
              from its start to the first all-reduce of the world of 4.
torchrun runs the same worker script as two `torchrun --nnodes 1:2` processes on
c10d (node 0 hosting the store); its scale-up is measured with torch's default
TCP store sharing (which deadlocks in torch 2.13: reported as such) and with
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import elastic_nb as enb  # noqa: E402
from elastic_nb.rendezvous.embedded import free_port  # noqa: E402
from workloads import elastic_steps  # noqa: E402

STEP = re.compile(r"step \d+ world (\d+) rank \d+ t=([\d.]+)")


def first_step(text: str, world: int, after: float) -> float | None:
    times = [float(t) for w, t in STEP.findall(text) if int(w) == world and float(t) > after]
    return min(times) if times else None


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def time_membership_change(job: enb.Job, world_before: int, change, world_after: int) -> float:
    """Seconds from ``change()`` to the first step of the re-formed world; stops the job."""
    try:
        if not wait_for(lambda: first_step(job.logs(), world_before, 0), 120):
            raise RuntimeError(f"no world of {world_before}: {job.summary()}")
        changed = time.time()
        change()
        reformed = wait_for(lambda: first_step(job.logs(), world_after, changed), 120)
        if reformed is None:
            raise RuntimeError(f"no re-formed world of {world_after}: {job.summary()}")
        return reformed - changed
    finally:
        job.stop()


def enb_node_loss(rdzv: dict) -> float:
    job = enb.launch(elastic_steps, 100, 0.1, nodes=[enb.Node(2), enb.Node(2)], min_nodes=1,
                     max_nodes=2, max_restarts=3, **rdzv)
    return time_membership_change(job, 4, lambda: job.kill_node(1), 2)


def enb_scale_up(rdzv: dict) -> float:
    job = enb.launch(elastic_steps, 20, 0.1, 4, nproc=2, min_nodes=1, max_nodes=2, **rdzv)
    return time_membership_change(job, 2, lambda: job.add_node(enb.Node(2)), 4)


class Torchrun:
    """One torchrun node in its own process group, output to a file."""

    def __init__(self, endpoint: str, run_id: str, is_host: bool, min_world: int, env=None):
        self.out = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        conf = f"is_host={str(is_host).lower()},last_call_timeout=3,keep_alive_interval=1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=2",
             "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
             f"--rdzv-conf={conf}", "--max-restarts=3", "--tee=3",
             os.path.join(HERE, "workloads.py"), "elastic_steps", "100", "0.1", str(min_world)],
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})

    def text(self) -> str:
        with open(self.out.name) as f:
            return f.read()

    def kill(self) -> None:
        """A machine lost: the agent and its workers (torchrun starts script workers in
        sessions of their own, so killing the agent's process group is not enough)."""
        try:
            family = [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def torchrun_node_loss() -> float | None:
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    nodes = [Torchrun(endpoint, run_id, True, 0), Torchrun(endpoint, run_id, False, 0)]
    try:
        if not wait_for(lambda: first_step(nodes[0].text(), 4, 0), 120):
            raise RuntimeError("torchrun formed no world of 4")
        killed = time.time()
        nodes[1].kill()
        reformed = wait_for(lambda: first_step(nodes[0].text(), 2, killed), 120)
        if reformed is None:  # reported as such: what torchrun does is the measurement
            print(f"torchrun did not re-form a world of 2 within 120 s; node 0 printed:\n"
                  f"{nodes[0].text()[-2000:]}", file=sys.stderr, flush=True)
            return None
        return reformed - killed
    finally:
        for node in nodes:
            node.kill()


def torchrun_scale_up(share_store: bool, timeout: float = 90) -> float | None:
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    env = {} if share_store else {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    nodes = [Torchrun(endpoint, run_id, True, 4, env)]
    try:
        if not wait_for(lambda: first_step(nodes[0].text(), 2, 0), 120):
            raise RuntimeError("torchrun formed no world of 2")
        added = time.time()
        nodes.append(Torchrun(endpoint, run_id, False, 4, env))
        grown = wait_for(lambda: first_step(nodes[0].text(), 4, added), timeout)
        return None if grown is None else grown - added
    finally:
        for node in nodes:
            node.kill()


def median(samples: list[float | None]) -> str:
    done = [s for s in samples if s is not None]
    if not done:
        return f"never ({len(samples)}/{len(samples)} did not re-form within the timeout)"
    text = f"{statistics.median(done):.2f}"
    missing = len(samples) - len(done)
    return text if not missing else f"{text} ({missing} of {len(samples)} did not re-form)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["c10d", "etcd", "etcd-v2", "etcd3"])
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, medians of {args.repeats} runs, seconds", flush=True)
    losses = [torchrun_node_loss() for _ in range(args.repeats)]
    loss_base = statistics.median([s for s in losses if s is not None] or [float("nan")])
    print(f"torchrun c10d  node loss {median(losses)}", flush=True)
    up_shared = [torchrun_scale_up(True)]
    if up_shared[0] is not None:  # a deadlock repeats every time: one 90 s wait tells it
        up_shared += [torchrun_scale_up(True) for _ in range(args.repeats - 1)]
    up_unshared = [torchrun_scale_up(False) for _ in range(args.repeats)]
    up_base = statistics.median([s for s in up_unshared if s is not None] or [float("nan")])
    print(f"torchrun c10d  scale-up  {median(up_shared)} (store sharing on, torch default); "
          f"{median(up_unshared)} (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)", flush=True)
    servers = {}
    try:
        for backend in args.backends:
            rdzv = {"backend": backend}
            if backend != "c10d":
                v2 = backend != "etcd3"
                if v2 not in servers:
                    servers[v2] = enb.EtcdServer(enable_v2=v2)
                    servers[v2].start()
                rdzv["endpoint"] = servers[v2].endpoint
            loss = statistics.median(enb_node_loss(rdzv) for _ in range(args.repeats))
            up = statistics.median(enb_scale_up(rdzv) for _ in range(args.repeats))
            print(f"elastic_nb {backend:<7} node loss {loss:6.2f} ({loss / loss_base:.2f}x torchrun)"
                  f"   scale-up {up:6.2f} ({up / up_base:.2f}x torchrun without store sharing)",
                  flush=True)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()

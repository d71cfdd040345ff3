"""Kernel CPU and widget message rate while 8 ranks flood their logs for 30 s.

    python benchmarks/bench_flood.py [--ranks 8] [--seconds 30]
    python benchmarks/bench_flood.py --train [--ranks 4] [--steps 3000]

A real ipykernel (jupyter_client) launches a job whose ranks print as fast as
they can for --seconds (``workloads.flood``), displays its dashboard, and this
script counts the widget messages (comm_msg on iopub) the frontend would
receive and the kernel's own CPU time over the flood. It also checks the
kernel stays free: a trivial cell sent mid-flood must answer.

The same flood under ``torchrun --tee 3`` (its agent tails the files to its
terminal) runs first, in the same run: the ratios say whether watching from a
notebook slows the ranks down, and what the kernel spends beside torchrun's agent.

``--train`` runs a training loop instead (``workloads.train_steps``: a small
gloo model step per printed line, ``--steps`` of them): the steps per second
watched from the kernel beside the same loop under torchrun.
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import subprocess
import sys
import tempfile
import time

import psutil
from watched_kernel import cpu_seconds, watched_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SETUP = """
import time, elastic_nb as enb
from workloads import flood
job = enb.launch(flood, {seconds}, nproc={ranks})
while job.state != "running":
    time.sleep(0.05)
job
"""


def run_torchrun(ranks: int, workload: str, arg: float) -> tuple[int, float, float, str]:
    """Lines printed, wall seconds, the agent's CPU seconds and rank 0's output, under torchrun."""
    with tempfile.TemporaryDirectory(prefix="bench_flood-") as log_dir:
        start = time.monotonic()
        agent = psutil.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc-per-node={ranks}", f"--log-dir={log_dir}", "--redirects=3", "--tee=3",
             os.path.join(HERE, "workloads.py"), workload, str(arg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        used = 0.0
        while agent.poll() is None:
            try:
                used = cpu_seconds(agent)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        if agent.returncode != 0:
            raise RuntimeError(f"torchrun exited {agent.returncode}")
        lines = 0
        rank0 = ""
        for path in sorted(glob.glob(os.path.join(log_dir, "**", "stdout.log"), recursive=True)):
            with open(path, "rb") as log:
                data = log.read()
            lines += data.count(b"\n")
            if f"{os.sep}0{os.sep}stdout.log" in path:
                rank0 = data[-200:].decode(errors="replace")
    return lines, elapsed, used, rank0


def run_train(ranks: int, steps: int) -> None:
    """Steps per second of the training loop under torchrun and watched from a kernel."""
    _, _, _, tail = run_torchrun(ranks, "train_steps", steps)
    torchrun_rate = float(tail.rsplit("steps/s", 1)[1].split()[0])
    code = (f"import elastic_nb as enb\nfrom workloads import train_steps\n"
            f"job = enb.launch(train_steps, {steps}, nproc={ranks})\njob")
    with watched_kernel() as (client, _):
        client.execute(code)
        client.execute("print('rate', min(job.result(timeout=600).values())); job.stop()")
        rate = None
        while rate is None:
            msg = client.get_iopub_msg(timeout=600)
            if msg["msg_type"] == "stream" and msg["content"]["text"].startswith("rate"):
                rate = float(msg["content"]["text"].split()[1])
            if msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
    print(f"training loop, {ranks} ranks x {steps} steps: torchrun {torchrun_rate:.1f} steps/s, "
          f"watched from a kernel {rate:.1f} steps/s ({rate / torchrun_rate:.2f}x)")


def run(ranks: int, seconds: float) -> None:
    torchrun_lines, torchrun_elapsed, torchrun_cpu, _ = run_torchrun(ranks, "flood", seconds)
    print(f"torchrun --tee 3, {ranks} ranks for {seconds:.0f} s: {torchrun_lines:,} lines "
          f"({torchrun_lines / seconds:,.0f}/s); its agent used "
          f"{torchrun_cpu / torchrun_elapsed * 100:.1f}% of one core")
    with watched_kernel() as (client, kernel):
        client.execute(SETUP.format(seconds=seconds, ranks=ranks))
        comm_msgs = 0
        busy_until_idle = True
        start_cpu = start = None
        probe_sent = probe_answered = None
        deadline = time.monotonic() + seconds + 120
        while time.monotonic() < deadline:
            try:
                msg = client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                msg = None
            if msg is not None:
                kind = msg["msg_type"]
                if kind == "comm_msg" and start is not None:
                    comm_msgs += 1
                if kind == "status" and msg["content"]["execution_state"] == "idle" and busy_until_idle:
                    busy_until_idle = False
                    start, start_cpu = time.monotonic(), cpu_seconds(kernel)
                if kind == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
            if start is not None and probe_sent is None and time.monotonic() - start > seconds / 2:
                probe_sent = time.monotonic()
                probe_id = client.execute("1 + 1")
            if probe_sent is not None and probe_answered is None:
                try:
                    reply = client.get_shell_msg(timeout=0.01)
                    if reply["parent_header"].get("msg_id") == probe_id:
                        probe_answered = time.monotonic() - probe_sent
                except queue.Empty:
                    pass
            if start is not None and time.monotonic() - start >= seconds:
                break
        elapsed = time.monotonic() - start
        used = cpu_seconds(kernel) - start_cpu
        client.execute("print(sum(job.result(timeout=120).values()), 'lines printed'); job.stop()")
        lines = None
        while lines is None:
            msg = client.get_iopub_msg(timeout=120)
            if msg["msg_type"] == "stream" and "lines printed" in msg["content"]["text"]:
                lines = int(msg["content"]["text"].split()[0])
        print(f"elastic_nb in a kernel, {ranks} ranks for {seconds:.0f} s: {lines:,} lines "
              f"({lines / seconds:,.0f}/s), {lines / torchrun_lines:.2f}x torchrun's")
        print(f"kernel CPU over {elapsed:.1f} s of flood: {used / elapsed * 100:.1f}% of one core "
              f"({used / elapsed / (torchrun_cpu / torchrun_elapsed):.2f}x torchrun's agent)")
        print(f"widget messages: {comm_msgs} ({comm_msgs / elapsed:.1f}/s)")
        print(f"a cell sent mid-flood answered in "
              f"{'never' if probe_answered is None else f'{probe_answered:.2f} s'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--train", action="store_true", help="the training loop, not the flood")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    if args.train:
        run_train(args.ranks, args.steps)
    else:
        run(args.ranks, args.seconds)


if __name__ == "__main__":
    sys.exit(main())

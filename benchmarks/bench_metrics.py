"""What watching training costs, and what faults cost: enb.report, the kernel, goodput.

    python benchmarks/bench_metrics.py [--calls 200000] [--seconds 10] [--rate 1000]
        [--train-seconds 40] [--kill-every 8] [--every 20] [--skip-flood] [--skip-goodput]

1. ``enb.report`` in a tight loop (a rank's file, buffered): the median cost per
   call over 7 rounds of ``--calls`` (the bound is 5 µs).
2. 8 then 64 ranks each reporting ``--rate`` times a second for ``--seconds``,
   launched from a real ipykernel (jupyter_client) with the dashboard shown
   (its metrics tab drawing): the kernel's CPU share and the widget messages a
   second (comm_msg on iopub), and how many records reached ``job.metrics``.
3. Goodput under faults: a small DDP model (gloo, 2 ranks) with its own DCP
   checkpoints every ``--every`` steps, rank 1 SIGKILLed every ``--kill-every``
   seconds, run for about ``--train-seconds``: under elastic_nb (warm restart,
   ``job.goodput()``) and the same script under ``torchrun`` (it restarts
   every worker cold), billed by the same rule (``model.goodput``) from the
   steps rank 0 printed and the kill times.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from watched_kernel import cpu_seconds, watched_kernel  # noqa: E402

from elastic_nb.model.goodput import StepMark, goodput  # noqa: E402
from elastic_nb.model.state import Event, EventKind  # noqa: E402

SETUP = """
import time, elastic_nb as enb
from workloads import report_rate
job = enb.launch(report_rate, {seconds}, {rate}, nproc={ranks})
while job.state != "running":
    time.sleep(0.05)
job
"""


def report_cost(calls: int) -> float:
    """Median µs per enb.report call, into a real rank file."""
    directory = tempfile.mkdtemp(prefix="bench_metrics-")
    os.environ["TORCHELASTIC_ERROR_FILE"] = os.path.join(directory, "error.json")
    from elastic_nb.worker.metrics import flush, report

    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for step in range(calls):
            report(step, loss=0.25, lr=1e-3)
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    flush()
    shutil.rmtree(directory)
    del os.environ["TORCHELASTIC_ERROR_FILE"]
    return statistics.median(rounds)


def kernel_under_reports(ranks: int, seconds: float, rate: float) -> tuple[float, float, int]:
    """The kernel's CPU share, widget messages a second and records kept, ``ranks`` reporting."""
    with watched_kernel() as (client, kernel):
        setup = client.execute(SETUP.format(seconds=seconds, rate=rate, ranks=ranks))
        comm_msgs, start, start_cpu = 0, None, 0.0
        deadline = time.monotonic() + seconds + 180
        while time.monotonic() < deadline:
            try:
                msg = client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg["msg_type"] == "comm_msg" and start is not None:
                    comm_msgs += 1
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" \
                        and msg["parent_header"].get("msg_id") == setup and start is None:
                    start, start_cpu = time.monotonic(), cpu_seconds(kernel)
                if msg["msg_type"] == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
            if start is not None and time.monotonic() - start >= seconds * 0.8:
                break
        assert start is not None
        elapsed = time.monotonic() - start
        used = cpu_seconds(kernel) - start_cpu
        client.execute("job.wait(timeout=120); print(len(job.metrics), 'records')")
        records = None
        while records is None:
            msg = client.get_iopub_msg(timeout=180)
            if msg["msg_type"] == "stream" and "records" in msg["content"]["text"]:
                records = int(msg["content"]["text"].split()[0])
        return used / elapsed, comm_msgs / elapsed, records


def _killer(pids: Callable[[], int | None], every: float, stop: threading.Event, kills: list[float]) -> None:
    while not stop.wait(every):
        pid = pids()
        if pid is not None:
            try:
                psutil.Process(pid).kill()
                kills.append(time.time())
            except psutil.NoSuchProcess:
                pass


def _bill(start: float, end: float, kills: list[float], marks: list[StepMark]) -> object:
    events = [Event(start, EventKind.LAUNCHED)]
    events += [Event(t, EventKind.KILLED, rank=1) for t in kills]
    events.append(Event(end, EventKind.SUCCEEDED))
    return goodput(events, marks, end)


def goodput_torchrun(steps: int, step_time: float, every: int, kill_every: float) -> object:
    directory = tempfile.mkdtemp(prefix="bench_metrics-dcp-")
    logs = tempfile.mkdtemp(prefix="bench_metrics-logs-")
    start = time.time()
    agent = psutil.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "--max-restarts=100", f"--log-dir={logs}", "--redirects=3", "--tee=3",
         os.path.join(HERE, "workloads.py"), "ddp_checkpointed", str(steps), str(step_time),
         repr(directory), str(every)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env={**os.environ, "PYTHONPATH": ROOT})

    def rank_one() -> int | None:
        for child in agent.children(recursive=True):
            try:
                if "ddp_checkpointed" in " ".join(child.cmdline()) and \
                        child.environ().get("RANK") == "1":
                    return child.pid
            except psutil.Error:
                continue
        return None

    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_killer, args=(rank_one, kill_every, stop, kills), daemon=True)
    killer.start()
    marks = []
    assert agent.stdout is not None
    for line in agent.stdout:
        if "STEP " in line:
            wall, attempt, step = line.split("STEP ", 1)[1].split()[:3]
            marks.append(StepMark(float(wall), int(attempt), int(step)))
            if int(step) >= steps - 1:
                stop.set()
    agent.wait()
    stop.set()
    end = time.time()
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    return _bill(start, end, [k for k in kills if k < end], marks)


def goodput_enb(steps: int, step_time: float, every: int, kill_every: float) -> object:
    from workloads import ddp_checkpointed

    import elastic_nb as enb

    directory = tempfile.mkdtemp(prefix="bench_metrics-dcp-")
    job = enb.launch(ddp_checkpointed, steps, step_time, directory, every, nproc=2,
                     max_restarts=100)

    def rank_one() -> int | None:
        live = [w for w in job.workers if w.rank == 1 and w.state == "running"]
        return live[0].pid if live else None

    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_killer, args=(rank_one, kill_every, stop, kills), daemon=True)
    killer.start()
    job.wait()
    stop.set()
    bill = job.goodput()
    shutil.rmtree(directory, ignore_errors=True)
    return bill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--train-seconds", type=float, default=40)
    parser.add_argument("--step-time", type=float, default=0.05)
    parser.add_argument("--kill-every", type=float, default=8)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument("--skip-goodput", action="store_true")
    args = parser.parse_args()
    print(f"enb.report: {report_cost(args.calls):.2f} µs a call (median of 7 rounds of "
          f"{args.calls:,})")
    if not args.skip_flood:
        figures = {}
        for ranks in (8, 64):
            figures[ranks] = kernel_under_reports(ranks, args.seconds, args.rate)
            cpu, msgs, records = figures[ranks]
            print(f"{ranks} ranks x {args.rate:.0f} reports/s for {args.seconds:.0f} s: kernel "
                  f"CPU {cpu * 100:.1f}% of one core, {msgs:.1f} widget messages/s, "
                  f"{records:,} records in job.metrics")
        print(f"64 vs 8 ranks: kernel CPU {figures[64][0] / figures[8][0]:.2f}x, widget messages "
              f"{figures[64][1] / max(figures[8][1], 1e-9):.2f}x")
    if not args.skip_goodput:
        steps = int(args.train_seconds / args.step_time)
        print(f"goodput: DDP 2 ranks, {steps} steps of {args.step_time} s, DCP every "
              f"{args.every} steps, rank 1 killed every {args.kill_every:.0f} s")
        torchrun = goodput_torchrun(steps, args.step_time, args.every, args.kill_every)
        print(f"  torchrun:   {torchrun}")
        ours = goodput_enb(steps, args.step_time, args.every, args.kill_every)
        print(f"  elastic_nb: {ours}")
        print(f"  ratio: elastic_nb {ours.ratio:.0%} vs torchrun {torchrun.ratio:.0%}")


if __name__ == "__main__":
    sys.exit(main())

"""Where a restart's time goes: SIGKILL of one rank to every rank back in user code.

    python benchmarks/bench_restart.py [--sizes 2 4 8] [--repeats 3]

Each run starts N ranks of ``workloads.restart_probe`` (attempt 0 joins a gloo
group, all-reduces and waits), SIGKILLs rank 1 once every rank is ready, and
takes the time until every rank of the next attempt has entered user code
(worker-side timestamps). Side by side, same run, alternating:

  torchrun        `torchrun --standalone --nproc-per-node N --max-restarts 1
                  --monitor-interval 0.1 workloads.py restart_probe`
  enb spawn       `elastic_nb.launch(restart_probe, nproc=N, max_restarts=1)`
  enb forkserver  the same with start_method="forkserver"
  enb script      `elastic_nb.launch("workloads.py", "restart_probe", nproc=N, max_restarts=1)`:
                  the very script torchrun runs, as __main__ on every rank (forkserver)
  enb 2 nodes     the function on two nodes of N/2 ranks (``nodes=[Node(N/2), Node(N/2)]``):
                  both agents leave the old round and meet in a new one (torchrun's row
                  stays the one-node figure)

For elastic_nb it also splits the time by the Job's events (the Job's clock at
each report): kill -> worker_failed (detection), -> restarting (the agent
decided), -> started (stopping the group, the rendezvous round, starting
workers), -> the last rank in user code (interpreter, imports, unpickling).
Prints medians and ratios to torchrun.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workloads import restart_probe  # noqa: E402

import elastic_nb as enb  # noqa: E402

ENTERED = re.compile(r"entered rank (\d+) pid (\d+) restarts (\d+) t=([\d.]+)")
READY = re.compile(r"ready rank (\d+) pid (\d+)")
PHASES = ("detect", "decide", "restart", "user code")


def back_in_user_code(text: str, n: int, killed: float) -> float | None:
    """When the last of the ``n`` ranks entered user code again after the kill, or None (by
    time, not restart count: a node that restarts for its peer spends no budget)."""
    times = {int(r): float(t) for r, _, _, t in ENTERED.findall(text) if float(t) > killed}
    return max(times.values()) if len(times) == n else None


def time_torchrun(n: int, timeout: float = 120) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n}", "--max-restarts=1", "--monitor-interval=0.1",
               os.path.join(HERE, "workloads.py"), "restart_probe"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        ready: dict[int, int] = {}
        while len(ready) < n and time.monotonic() < deadline:
            ready = {int(r): int(p) for r, p in READY.findall("".join(lines))}
            time.sleep(0.02)
        killed = time.time()
        os.kill(ready[1], signal.SIGKILL)
        back = None
        while back is None and time.monotonic() < deadline:
            back = back_in_user_code("".join(lines), n, killed)
            time.sleep(0.02)
        assert back is not None, "torchrun did not restart in time"
        return back - killed
    finally:
        proc.wait(timeout=60)
        reader.join()


def time_enb(n: int, start_method: str, script: bool = False, nodes: int = 1,
             timeout: float = 120) -> tuple[float, dict[str, float]]:
    """Kill to every rank back in user code, for the function or (``script``) the script, on
    one node or ``nodes`` nodes sharing the ``n`` ranks."""
    if script:
        job = enb.launch(os.path.join(HERE, "workloads.py"), "restart_probe", nproc=n,
                         max_restarts=1, start_method=start_method)
    elif nodes > 1:
        job = enb.launch(restart_probe, nodes=[enb.Node(n // nodes) for _ in range(nodes)],
                         max_restarts=1, start_method=start_method)
    else:
        job = enb.launch(restart_probe, nproc=n, max_restarts=1, start_method=start_method)
    try:
        job.wait_until(lambda: job.logs().count("ready rank") == n, timeout=timeout,
                       what="every rank ready")
        killed = time.time()
        job.kill(1)
        back = job.wait_until(lambda: back_in_user_code(job.logs(), n, killed), timeout=timeout,
                              what="every rank back in user code")
        if nodes == 1:  # the peer node's ranks count no restart: they wait again, stopped below
            assert job.result(timeout=timeout) == dict.fromkeys(range(n), 0 if script else 1)
        events = {kind: next(e.time for e in job.events if e.kind == kind and e.time >= killed)
                  for kind in ("worker_failed", "restarting")}
        started = max(e.time for e in job.events if e.kind == "started" and e.time >= killed)
        marks = [killed, events["worker_failed"], events["restarting"], started, back]
        return back - killed, {p: b - a for p, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    finally:
        job.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, medians of {args.repeats} runs, seconds from the kill to "
          "every rank back in user code")
    for n in args.sizes:
        rows = (("enb spawn", "spawn", False, 1), ("enb forkserver", "forkserver", False, 1),
                ("enb script", "forkserver", True, 1), ("enb 2 nodes", "forkserver", False, 2))
        totals: dict[str, list[float]] = {"torchrun": [], **{row[0]: [] for row in rows}}
        phases: dict[str, dict[str, list[float]]] = {row[0]: {} for row in rows}
        for _ in range(args.repeats):
            totals["torchrun"].append(time_torchrun(n))
            for name, method, script, nodes in rows:
                total, split = time_enb(n, method, script, nodes)
                totals[name].append(total)
                for phase, seconds in split.items():
                    phases[name].setdefault(phase, []).append(seconds)
        base = statistics.median(totals["torchrun"])
        print(f"N={n}: torchrun {base:.2f}", flush=True)
        for name, *_ in rows:
            median = statistics.median(totals[name])
            split = "  ".join(f"{p} {statistics.median(phases[name][p]):.2f}" for p in PHASES)
            print(f"      {name:<15} {median:.2f} ({median / base:.2f}x torchrun)   {split}",
                  flush=True)


if __name__ == "__main__":
    main()

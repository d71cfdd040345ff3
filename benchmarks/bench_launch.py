"""Launch time of a trivial gloo all-reduce job: elastic_nb beside torchrun, same run.

    python benchmarks/bench_launch.py [--sizes 2 4 8] [--repeats 3]

For each world size N, alternating so machine noise hits all alike:
  torchrun   `python -m torch.distributed.run --standalone --nproc-per-node N
             workloads.py allreduce_once`, the whole command
  enb first  a fresh interpreter imports elastic_nb, then `elastic_nb.run(allreduce_once,
             nproc=N, keep_warm=0)`: the call to every rank's result, no warm host
             (the interpreter's whole life is printed beside it)
  enb repeat `elastic_nb.run(allreduce_once, nproc=N)` again in this process: the call
             to every rank's result on the warm host the last run left
  enb script `elastic_nb.launch("workloads.py", "allreduce_once", nproc=N)`: the very
             script torchrun runs, as __main__ on every rank, on a warm host
Prints medians, ratios to torchrun, and where a repeat launch's time goes (by the
Job's events and the ranks' own timestamps): planning, handing the node to its
host and the rendezvous round, forking the workers, unpickling to user code,
init_process_group, and the all-reduce and results coming back.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import elastic_nb as enb  # noqa: E402
from workloads import allreduce_once  # noqa: E402

STAMP = re.compile(r"(entered|joined) rank (\d+) t=([\d.]+)")
PHASES = ("plan", "rendezvous", "fork", "to user code", "init_process_group", "results")


def time_torchrun(n: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={n}", os.path.join(HERE, "workloads.py"), "allreduce_once"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def time_first(n: int) -> tuple[float, float]:
    """The call in a fresh interpreter, and that interpreter's whole life."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--first-launch-child", str(n)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1]), time.perf_counter() - start


def first_launch_child(n: int) -> None:
    start = time.perf_counter()
    results = enb.run(allreduce_once, nproc=n, keep_warm=0)
    elapsed = time.perf_counter() - start
    assert results == {r: float(n) for r in range(n)}, results
    print(f"{elapsed:.4f}")


def time_repeat(n: int) -> tuple[float, dict[str, float]]:
    called = time.time()
    job = enb.launch(allreduce_once, nproc=n)
    results = job.result(timeout=120)
    returned = time.time()
    assert results == {r: float(n) for r in range(n)}, results
    assert all(node.warm for node in job.snapshot().nodes), "no warm host was used"
    stamps: dict[str, list[float]] = {"entered": [], "joined": []}
    for what, _, t in STAMP.findall(job.logs()):
        stamps[what].append(float(t))
    first = {kind: next(e.time for e in job.events if e.kind == kind)
             for kind in ("launched", "rendezvous", "started")}
    marks = [called, first["launched"], first["rendezvous"], first["started"],
             max(stamps["entered"]), max(stamps["joined"]), returned]
    # plan: make_plan and the Job until it starts ("launched"); rendezvous: handing the node
    # to its host and the round; fork: torch starting the workers; the rest, the ranks' stamps
    return returned - called, dict(zip(PHASES, (b - a for a, b in zip(marks, marks[1:])),
                                       strict=True))


def time_script(n: int) -> float:
    """The script torchrun runs, launched as a script on the warm host; call to results."""
    start = time.perf_counter()
    results = enb.launch(os.path.join(HERE, "workloads.py"), "allreduce_once", nproc=n) \
        .result(timeout=120)
    elapsed = time.perf_counter() - start
    assert results == dict.fromkeys(range(n), 0), results
    return elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-launch-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_launch_child:
        first_launch_child(args.first_launch_child)
        return
    print(f"{os.cpu_count()} cores, medians of {args.repeats} runs, seconds")
    enb.run(allreduce_once, nproc=1)  # leaves a warm host for the repeats
    for n in args.sizes:
        torchrun, first, life, repeat, script = [], [], [], [], []
        phases: dict[str, list[float]] = {p: [] for p in PHASES}
        for i in range(args.repeats):
            torchrun.append(time_torchrun(n))
            call, whole = time_first(n)
            first.append(call)
            life.append(whole)
            if i % 2:  # the script first every other time: neither always follows the other
                script.append(time_script(n))
            total, split = time_repeat(n)
            repeat.append(total)
            if not i % 2:
                script.append(time_script(n))
            for phase, seconds in split.items():
                phases[phase].append(seconds)
        base = median(torchrun)
        print(f"N={n}: torchrun {base:.2f}   enb first {median(first):.2f} "
              f"({median(first) / base:.2f}x; whole interpreter {median(life):.2f}, "
              f"{median(life) / base:.2f}x)   enb repeat {median(repeat):.3f} "
              f"({median(repeat) / base:.3f}x)   enb script {median(script):.3f} "
              f"({median(script) / base:.3f}x)", flush=True)
        print("      repeat: " + "  ".join(f"{p} {median(phases[p]):.3f}" for p in PHASES),
              flush=True)
    enb.shutdown()


if __name__ == "__main__":
    main()

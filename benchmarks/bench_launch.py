"""Wall time of a trivial gloo all-reduce job: elastic_nb beside torchrun, same run.

    python benchmarks/bench_launch.py [--sizes 2 4 8] [--repeats 3]

For each world size N it times, alternating so machine noise hits all alike:
  torchrun    `python -m torch.distributed.run --standalone --nproc-per-node N workloads.py allreduce_once`
  enb spawn   `elastic_nb.run(allreduce_once, nproc=N)` from this process
  enb fork    the same with start_method="forkserver" (torch preloaded once per node)
and prints medians and the ratio to torchrun.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import elastic_nb as enb  # noqa: E402
from workloads import allreduce_once  # noqa: E402


def time_torchrun(n: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={n}", os.path.join(HERE, "workloads.py"), "allreduce_once"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def time_enb(n: int, start_method: str) -> float:
    start = time.perf_counter()
    results = enb.run(allreduce_once, nproc=n, start_method=start_method)
    elapsed = time.perf_counter() - start
    assert results == {r: float(n) for r in range(n)}, results
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "torchrun": time_torchrun,
        "enb spawn": lambda n: time_enb(n, "spawn"),
        "enb forkserver": lambda n: time_enb(n, "forkserver"),
    }
    print(f"{os.cpu_count()} cores, medians of {args.repeats} runs, seconds")
    print(f"{'N':>3} " + " ".join(f"{name:>15}" for name in variants)
          + "   ratio spawn/torchrun  forkserver/torchrun")
    for n in args.sizes:
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, measure in variants.items():
                samples[name].append(measure(n))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        base = medians["torchrun"]
        print(f"{n:>3} " + " ".join(f"{medians[name]:>15.2f}" for name in variants)
              + f"   {medians['enb spawn'] / base:>20.2f}  {medians['enb forkserver'] / base:>19.2f}",
              flush=True)


if __name__ == "__main__":
    main()

"""What the hang map costs: the flight recorder's overhead, and how fast a report answers.

    python benchmarks/bench_hang.py [--repeats 5] [--steps 20000] [--sizes 4 16]

* Flight recorder cost: 2 ranks all-reduce one float ``--steps`` times as fast
  as they can (``workloads.tight_allreduces``), with the recorder on (the
  default) and off (``flight_recorder=False``), alternating in the same run;
  prints steps per second (median over the runs and ranks) and the ratio.
* Report latency: N ranks where one never enters the fourth all-reduce
  (``workloads.skip_allreduce``); once every rank hangs, ``job.hang_report()``
  is timed ``--repeats`` times; prints the median and whether the first
  sentence names the rank.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import elastic_nb as enb  # noqa: E402
from workloads import skip_allreduce, tight_allreduces  # noqa: E402


def recorder_cost(repeats: int, steps: int) -> None:
    rates: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for _ in range(repeats):
        pair = {}
        for on in (True, False):
            values = enb.run(tight_allreduces, steps, nproc=2, flight_recorder=on)
            pair[on] = statistics.median(values.values())
            rates[on].append(pair[on])
        ratios.append(pair[True] / pair[False])
    print(f"flight recorder on : {statistics.median(rates[True]):10.0f} all-reduces/s per rank")
    print(f"flight recorder off: {statistics.median(rates[False]):10.0f} all-reduces/s per rank")
    print(f"on / off           : {statistics.median(ratios):10.3f}  (pairs: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")


def report_latency(n: int, repeats: int) -> None:
    victim = n - 2
    job = enb.launch(skip_allreduce, victim, nproc=n, hang_after=0)
    try:
        job.wait_until(lambda: job.logs().count("hanging") == n, timeout=300, what="every rank hanging")
        report = job.wait_until(lambda: (r := job.hang_report()).suspects and r, timeout=60,
                                what="the suspect named")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            report = job.hang_report()
            times.append(time.perf_counter() - start)
    finally:
        job.stop()
    named = report.answer.startswith(f"rank {victim} never entered all_reduce #4")
    print(f"N={n:<3} hang_report median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}); first sentence names rank {victim}: {named}")
    print(f"      {report.answer}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    recorder_cost(args.repeats, args.steps)
    for n in args.sizes:
        report_latency(n, max(args.repeats, 5))
    enb.shutdown()


if __name__ == "__main__":
    main()

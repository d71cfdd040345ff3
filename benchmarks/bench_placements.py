"""Launch to every rank's result with nodes elsewhere: two Slurm nodes, one SSH node, this machine.

    sudo .venv/bin/python benchmarks/bench_placements.py [--repeats 5]

Needs root (it builds the test cluster of tests/cluster.py: slurmctld, two
slurmd and an sshd in network namespaces; ``make test`` installs them). Each
repeat runs, alternating so machine noise hits all alike, one gloo
all-reduce of a world of 2 (one rank per node) from a notebook side in the
cluster's login namespace (tests/cluster_notebook.py):

  torchrun  ``torchrun --standalone --nproc-per-node 2`` on the login host, the whole command
            (the baseline: one agent, as torchrun runs a world of 2 on one machine)
  local     ``launch(where, nodes=[Node(1), Node(1)])`` on this machine
  slurm     ``nodes=[Node(1, on=Slurm()), Node(1, on=Slurm())]``: sbatch, Slurm's
            scheduling, a node host importing torch on each compute node
  ssh       ``nodes=[Node(1), Node(1, on=SSH(...))]``: one node through ssh

The enb figures are ``launch()`` to ``result()`` inside the notebook process
(its interpreter's start is not in them); torchrun's is its whole command.
Prints medians and ratios to torchrun and to local.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

from cluster import Cluster  # noqa: E402

DRIVER = os.path.join(TESTS, "cluster_notebook.py")
SCENARIOS = {"local": "local_results", "slurm": "slurm_results", "ssh": "ssh_results"}
ALLREDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
"""


def time_enb(cluster: Cluster, scenario: str) -> float:
    done = subprocess.run(cluster.login.command(sys.executable, DRIVER, scenario,
                                                str(cluster.ssh_config)),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **cluster.slurm_env}, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return float(json.loads(line[len("RESULT "):])["took"])


def time_torchrun(cluster: Cluster, script: str) -> float:
    """``torchrun --standalone --nproc-per-node 2`` on the login host, the whole command; its
    interface named for gloo, as elastic_nb derives it from the address."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", script]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": cluster.login.interface}
    start = time.perf_counter()
    done = subprocess.run(cluster.login.command(*argv), capture_output=True, text=True, env=env,
                          timeout=120)
    if done.returncode:
        raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in ("torchrun", *SCENARIOS)}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script, Cluster() as cluster:
        script.write(ALLREDUCE)
        script.flush()
        for repeat in range(args.repeats):
            times["torchrun"].append(time_torchrun(cluster, script.name))
            for name, scenario in SCENARIOS.items():
                times[name].append(time_enb(cluster, scenario))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s"
                                                      for k, v in times.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nmedians over {args.repeats} repeats (world of 2, one rank per node):")
    for name, median in medians.items():
        print(f"  {name:<9} {median:6.2f} s   x{median / medians['torchrun']:.2f} torchrun   "
              f"x{median / medians['local']:.2f} local   (min {min(times[name]):.2f}, "
              f"max {max(times[name]):.2f})")


if __name__ == "__main__":
    main()

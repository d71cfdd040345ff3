"""What every fault-matrix test shares: the job under test, striking at a moment, the outcome.

Two nodes of one rank each (min 1, max 2 nodes, one restart allowed) run
``scenarios.held_at``, whose node-1 rank holds the others at the moment under
test; ``at_moment`` strikes there; ``outcome_time`` is how long the job took
to its final state; ``report`` prints a ``FAULT-MATRIX`` line (``-s``) that
the README's reliability section quotes.
"""

from __future__ import annotations

import threading
import time

import scenarios
from util import wait_until

import elastic_nb as enb

MOMENTS = ("launch", "rendezvous", "worker_start", "init_process_group", "in_collective",
           "between_collectives", "exit_barrier")
BOUND = 45.0  # seconds from the fault to the job's final state, on a loaded 2-core machine


def launch(tmp_path, moment: str, **rdzv) -> enb.Job:
    return enb.launch(scenarios.held_at, moment, str(tmp_path),
                      nodes=[enb.Node(1), enb.Node(1)], min_nodes=1, max_nodes=2, max_restarts=1,
                      **{**rdzv, "start_method": "forkserver"})


def at_moment(job: enb.Job, moment: str, strike) -> float:
    """Run ``strike()`` when the job is at ``moment``; when it struck (time.time())."""
    if moment == "launch":
        strike()
        return time.time()
    if moment in ("rendezvous", "worker_start"):
        kind = "rendezvous" if moment == "rendezvous" else "started"
        struck = threading.Event()
        once = threading.Lock()
        when: list[float] = []

        def listener(event: enb.Event) -> None:  # on the pump thread, as the report arrives
            if event.kind != kind or event.node != 1:
                return
            with once:
                if struck.is_set():
                    return
                struck.set()
            when.append(time.time())
            strike()

        job.add_listener(listener)
        for event in job.events:  # on warm hosts the report may come before the listener
            listener(event)
        wait_until(struck.is_set, timeout=90, what=f"node 1's {kind} report")
        job.remove_listener(listener)
        return when[0]
    node0 = {"init_process_group": "phase started", "in_collective": "phase collective 0",
             "between_collectives": "phase between 0", "exit_barrier": "phase returning"}[moment]
    node1 = {"init_process_group": "phase started", "in_collective": "phase joined",
             "between_collectives": "phase between 0", "exit_barrier": "phase returning"}[moment]
    wait_until(lambda: node0 in job.logs(rank=0) and node1 in job.logs(rank=1), timeout=90,
               what=f"both ranks at {moment}")
    if moment == "exit_barrier":
        wait_until(lambda: job.nodes[0] == "succeeded", timeout=30, what="node 0 in the exit barrier")
    strike()
    return time.time()


def outcome_time(job: enb.Job, struck: float) -> float:
    job.wait(timeout=BOUND + 30)
    took = job.snapshot().finished_at - struck
    return took


def report(fault: str, moment: str, backend: str, took: float, outcome: str) -> None:
    print(f"FAULT-MATRIX {backend:<8} {fault:<12} {moment:<20} {took:6.2f} s  {outcome}")


def kinds(job: enb.Job) -> list[str]:
    return [e.kind for e in job.events]

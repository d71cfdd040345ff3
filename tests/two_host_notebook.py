"""The notebook side of the two-host test, run inside host A's namespace.

``python two_host_notebook.py SCENARIO BACKEND LISTEN_ADDR`` launches a job
that takes one node from another host, prints one ``JOIN {...}`` line with
what ``python -m elastic_nb join`` needs, drives the scenario, and prints one
``RESULT {...}`` line with what the Job saw. The functions are defined here,
in ``__main__``, so cloudpickle sends them by value: the joined node needs no
copy of this file.

Scenarios:

* ``results``: a world of 2 (min = max = 2 nodes) all-reduces once; every
  rank's return value comes back.
* ``kill_node``: min 1, max 2 nodes; once the remote node runs, it is killed;
  the local node re-forms a world of 1 and returns.
* ``stop``: a world of 2 ticks until ``job.stop()``.
* ``link_down``: as ``kill_node``, but the other host's link goes down (no FIN,
  no RST: ``ip link set ... down`` on host B's end of the veth pair); once the
  local node re-formed alone, the link comes back up.
* ``controls``: a world of 2 whose ranks stop at ``breakpoint()``; the remote
  rank is debugged from here (``p``, ``c``), the local one continued; once
  both tick, the remote rank's stacks are dumped and it is killed with
  SIGTERM: every control reaches it through its node's channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import elastic_nb as enb


def where() -> dict:
    """Which interface and address this rank's traffic uses, and the all-reduced sum."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor(int(os.environ["RANK"]) + 1)
    dist.all_reduce(t)
    print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} sum {t.item()}", flush=True)
    dist.destroy_process_group()
    return {"sum": int(t.item()), "world_size": int(os.environ["WORLD_SIZE"]),
            "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
            "master_addr": os.environ["MASTER_ADDR"]}


def grow_then_shrink(mark: str) -> dict:
    """Step while the world is 1 (until the remote node joins) or 2 (until it is lost);
    return once a world of 1 follows a world of 2 on this host."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if world == 2 and os.environ["LOCAL_WORLD_SIZE"] == "1" and os.environ["GROUP_RANK"] == "0":
        open(mark, "w").close()
    step = 0
    while world > 1 or not os.path.exists(mark):
        t = torch.ones(1)
        dist.all_reduce(t)
        print(f"step {step} world {world}", flush=True)
        time.sleep(0.2)
        step += 1
    dist.destroy_process_group()
    return {"world_size": world, "restart_count": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}


def tick() -> None:
    for i in range(100_000):
        print(f"tick {i}", flush=True)
        time.sleep(0.2)


def pause_then_tick() -> None:
    marker = 40 + int(os.environ["RANK"])
    breakpoint()
    for i in range(100_000):
        print(f"marker {marker} tick {i}", flush=True)
        time.sleep(0.2)


def emit(kind: str, payload: dict) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def remote_node(job: enb.Job) -> int:
    return next(n.index for n in job.snapshot().nodes if not n.local)


def remote_ranks(job: enb.Job) -> list[int]:
    return sorted(w.rank for w in job.snapshot().workers if not w.local)


def set_link(namespace: str, interface: str, state: str) -> None:
    subprocess.run(["ip", "-n", namespace, "link", "set", interface, state], check=True)


FAR_SIDE_BOUND = 15.0  # seconds from a cut to the far side's exit (README, fault matrix)


def main(scenario: str, backend: str, listen_addr: str, *link: str) -> None:
    server = None
    keyless = scenario.endswith("_keyless")  # the far side joins with the store's token alone
    scenario = scenario.removesuffix("_keyless")
    options: dict = {"backend": backend, "listen_addr": listen_addr, "start_method": "forkserver",
                     "rdzv_timeout": 90, "trust_store": keyless}
    if backend == "etcd3":  # an etcd on this host that the other one reaches
        server = enb.EtcdServer(host=listen_addr).start()
        options["endpoint"] = server.endpoint
    try:
        if scenario == "results":
            job = enb.launch(where, nproc=1, min_nodes=2, max_nodes=2, **options)
        elif scenario in ("kill_node", "link_down"):
            mark = os.path.join(tempfile.mkdtemp(), "saw-two")
            job = enb.launch(grow_then_shrink, mark, nproc=1, min_nodes=1, max_nodes=2,
                             max_restarts=0, **options)
        elif scenario == "controls":
            job = enb.launch(pause_then_tick, nproc=1, min_nodes=2, max_nodes=2, max_restarts=0,
                             **options)
        else:
            job = enb.launch(tick, nproc=1, min_nodes=2, max_nodes=2, **options)
        emit("JOIN", {"backend": job.backend, "endpoint": job.endpoint, "run_id": job.run_id,
                      "key_file": None if keyless else job.key_file})
        try:
            facts = drive(job, scenario, link)
        finally:
            job.stop()
        facts.update(state=str(job.state), nodes={i: str(s) for i, s in job.nodes.items()},
                     events=[[e.kind, e.node, e.detail.get("reason")] for e in job.events],
                     run_id=job.run_id)
        emit("RESULT", facts)
    finally:
        if server is not None:
            server.stop()


def drive(job: enb.Job, scenario: str, link: tuple[str, ...] = ()) -> dict:
    job.wait_until(lambda: remote_ranks(job), timeout=120, what="the remote node's ranks")
    ranks = remote_ranks(job)
    facts: dict = {"remote_ranks": ranks}
    if scenario == "results":
        facts["results"] = job.result(timeout=120)
        facts["remote_logs"] = job.logs(rank=ranks[0])
    elif scenario == "kill_node":
        job.wait_until(lambda: "world 2" in job.logs(rank=ranks[0]), timeout=120,
                       what="the remote rank stepping in a world of 2")
        facts["remote_logs"] = job.logs(rank=ranks[0])
        struck = time.time()
        job.kill_node(remote_node(job))
        facts["results"] = job.result(timeout=120)
        facts["took"] = job.snapshot().finished_at - struck
    elif scenario == "link_down":
        job.wait_until(lambda: "world 2" in job.logs(rank=ranks[0]), timeout=120,
                       what="the remote rank stepping in a world of 2")
        facts["cut_at"] = struck = time.time()
        set_link(*link, "down")
        local = next(n.index for n in job.snapshot().nodes if n.local)
        job.wait_until(lambda: any(e.kind == "membership_changed" and e.detail["nodes"] == 1
                                   for e in job.events), timeout=60, what="a world of 1 on this host")
        facts["reformed_after"] = time.time() - struck
        facts["results"] = job.result(timeout=120)
        # the far side must leave with its link still down, its store unreachable
        time.sleep(max(0.0, struck + FAR_SIDE_BOUND - time.time()))
        facts["link_up_at"] = time.time()
        set_link(*link, "up")
        facts["took"] = job.snapshot().finished_at - struck
        facts["lost"] = [e.node for e in job.events if e.kind == "node_lost"]
        facts["local"] = local
    elif scenario == "controls":
        facts.update(controls(job, ranks[0]))
    else:
        job.wait_until(lambda: "tick 3" in job.logs(rank=ranks[0]), timeout=120,
                       what="the remote rank ticking")
        facts["remote_logs"] = job.logs(rank=ranks[0])
        struck = time.time()
        job.stop()
        facts["took"] = time.time() - struck
    return facts


def controls(job: enb.Job, remote: int) -> dict:
    """Debug the remote rank (p, c), continue the local one, dump the remote one's stacks
    once it ticks, then kill it with SIGTERM."""
    job.wait_until(lambda: [w.state for w in job.workers] == ["paused", "paused"], timeout=120,
                   what="both ranks paused")
    commands = iter(["p marker", "c"])
    written: list[str] = []
    job.debug(remote, read=lambda prompt: next(commands), write=written.append)
    local = 1 - remote
    job.debug_session(local).send("c")
    job.wait_until(lambda: "tick 1" in job.logs(rank=remote), timeout=60,
                   what="the remote rank ticking")
    stacks = job.stacks(timeout=10)[remote]
    job.kill(remote, "SIGTERM")
    job.wait(timeout=60)
    return {"debug": written, "stacks": stacks,
            "failures": [[f.rank, f.signal, f.node] for f in job.failures.values()]}


if __name__ == "__main__":
    main(*sys.argv[1:])

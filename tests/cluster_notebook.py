"""The notebook side of the cluster tests, run inside the cluster's login namespace.

``python cluster_notebook.py SCENARIO SSH_CONFIG`` launches a job whose nodes
Slurm (``enb.Slurm``) or sshd (``enb.SSH``) start on the cluster's other
namespaces (tests/cluster.py), drives the scenario and prints one ``RESULT
{...}`` line with what the Job saw. Slurm's commands find the test's
cluster through ``SLURM_CONF`` in this process's environment. The functions
are defined here, in ``__main__``, so cloudpickle sends them by value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import attack

import elastic_nb as enb

LISTEN = "192.0.2.1"  # the login namespace's address: the compute nodes reach the Job there
SSH_HOST = "sshhost"
OPTIONS = {"listen_addr": LISTEN, "start_method": "forkserver", "rdzv_timeout": 90}


def where() -> dict:
    """The all-reduced sum, the world, and which host and address this rank ran on."""
    import socket

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor(int(os.environ["RANK"]) + 1)
    dist.all_reduce(t)
    print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} sum {t.item()}", flush=True)
    dist.destroy_process_group()
    return {"sum": int(t.item()), "world_size": int(os.environ["WORLD_SIZE"]),
            "host": socket.gethostname(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME")}


def steps_until(world_wanted: int, steps: int) -> dict:
    """All-reduce step after step; return after ``steps`` steps in a world of ``world_wanted``
    (a larger or smaller world keeps stepping: it is waiting to grow or to be re-formed)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    step = 0
    while world != world_wanted or step < steps:
        t = torch.ones(1)
        dist.all_reduce(t)
        print(f"step {step} world {world}", flush=True)
        time.sleep(0.2)
        step += 1
    dist.destroy_process_group()
    return {"world_size": world, "restart_count": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}


def train_checkpointed(steps: int, every: int) -> dict:
    """A small training loop, 0.1 s a step, with ``enb.save_checkpoint`` every ``every`` steps and
    ``enb.restore_checkpoint`` at its start; where it started, in which world, on which host."""
    import socket

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = {"model": model, "optim": optimizer}
    start = enb.restore_checkpoint(state)
    print(f"starting at step {start} in a world of {world}", flush=True)
    for step in range(start, steps):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step * 100 + rank))
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        for p in model.parameters():
            assert p.grad is not None
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
        print(f"step {step} world {world}", flush=True)
        if step % every == 0:
            enb.save_checkpoint(step, state)
        time.sleep(0.1)
    dist.destroy_process_group()
    return {"start": start, "world": world, "world_from": enb.checkpoint_world(),
            "host": socket.gethostname()}


def tick() -> None:
    for i in range(100_000):
        print(f"tick {i}", flush=True)
        time.sleep(0.2)


def slurm_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def submission(job: enb.Job, index: int) -> str:
    """The Slurm job id of node ``index`` (from its ``submitted`` event)."""
    event = next(e for e in job.events if e.kind == "submitted" and e.node == index)
    return event.detail["submission"].rsplit(" ", 1)[1]


def ranks_of(job: enb.Job, index: int) -> list[int]:
    return sorted(w.rank for w in job.snapshot().workers if w.node == index)


def stepping_in(job: enb.Job, world: int, nodes: int) -> None:
    job.wait_until(lambda: len(job.snapshot().workers) == nodes and all(
        f"world {world}" in job.logs(rank=w.rank) for w in job.snapshot().workers),
        timeout=120, what=f"every rank stepping in a world of {world}")


def published(job: enb.Job):
    """The descriptor the job's store holds, unchecked (waits until the Job published it)."""
    from elastic_nb.rendezvous import discovery

    store = discovery.open_store(job.backend, job.endpoint, job.run_id, {}, 60)
    return discovery.lookup(store, job.run_id)


def run(scenario: str, ssh_config: str) -> dict:
    ssh = enb.SSH(SSH_HOST, options=("-F", ssh_config))
    facts: dict = {}
    started = time.time()
    if scenario == "slurm_results":
        job = enb.launch(where, nodes=[enb.Node(1, on=enb.Slurm()), enb.Node(1, on=enb.Slurm())],
                         **OPTIONS)
        facts["results"] = job.result(timeout=180)
        facts["took"] = time.time() - started
    elif scenario == "ssh_results":
        job = enb.launch(where, nodes=[enb.Node(1), enb.Node(1, on=ssh)], **OPTIONS)
        facts["results"] = job.result(timeout=180)
        facts["took"] = time.time() - started
        facts["remote_logs"] = job.logs(rank=ranks_of(job, 1)[0])
    elif scenario == "slurm_in_allocation":  # run under salloc: the node is a step of it
        job = enb.launch(where, nodes=[enb.Node(1), enb.Node(1, on=enb.Slurm(in_allocation=True))],
                         **OPTIONS)
        facts["results"] = job.result(timeout=180)
        facts["allocation"] = os.environ["SLURM_JOB_ID"]
    elif scenario == "local_results":
        job = enb.launch(where, nodes=[enb.Node(1), enb.Node(1)], **OPTIONS)
        facts["results"] = job.result(timeout=180)
        facts["took"] = time.time() - started
    elif scenario == "slurm_scale_up":
        job = enb.launch(steps_until, 2, 5, nproc=1, min_nodes=1, max_nodes=2, **OPTIONS)
        stepping_in(job, 1, 1)
        facts["added"] = job.add_node(enb.Node(1, on=enb.Slurm()))
        facts["results"] = job.result(timeout=180)
    elif scenario in ("slurm_scancel", "slurm_preempt"):
        # a node scancel-led mid-collective is a lost machine (its peers' broken collectives
        # follow from it) and the warning's leave a departure: neither spends budget
        job = enb.launch(steps_until, 1, 5, nodes=[enb.Node(1, on=enb.Slurm()),
                                                   enb.Node(1, on=enb.Slurm())],
                         min_nodes=1, max_nodes=2, max_restarts=0, **OPTIONS)
        stepping_in(job, 2, 2)
        if scenario == "slurm_scancel":
            subprocess.run(["scancel", submission(job, 1)], check=True)
        else:  # the warning Slurm sends before a time limit or a preemption (--signal=B:USR1)
            subprocess.run(["scancel", "--signal=USR1", "--batch", submission(job, 1)], check=True)
        facts["results"] = job.result(timeout=180)
        facts["restart_count"] = job.restart_count
    elif scenario == "slurm_checkpoint":
        # the compute nodes' namespaces share this machine's files: a directory both nodes see
        directory = tempfile.mkdtemp(prefix="enb-shared-checkpoints-")
        job = enb.launch(train_checkpointed, 150, 5, nodes=[enb.Node(1, on=enb.Slurm()),
                                                            enb.Node(1, on=enb.Slurm())],
                         min_nodes=1, max_nodes=2, max_restarts=1, checkpoint_dir=directory,
                         **OPTIONS)
        job.wait_until(lambda: job.checkpoints and job.checkpoints[-1].step >= 10, timeout=120,
                       what="a checkpoint of step 10 by both Slurm nodes")
        job.kill(1)  # SIGKILL, on its compute node: the group restarts from the checkpoint
        resumed = job.wait_until(lambda: [e for e in job.events if e.kind == "restored"],
                                 timeout=120, what="the resume after the kill")[0]
        job.wait_until(lambda: job.checkpoints[-1].step >= resumed.detail["step"] + 10,
                       timeout=120, what="a checkpoint after the resume")
        subprocess.run(["scancel", submission(job, 1)], check=True)  # its machine gone
        facts["results"] = job.result(timeout=180)
        facts["checkpoints"] = [[c.step, c.world_size] for c in job.checkpoints]
        facts["directory"] = directory
    elif scenario == "slurm_time_limit":  # a real time limit: Slurm's own warning, unprompted
        limited = enb.Slurm(time="1", signal="USR1@55")  # one minute; warned 55 s before its end
        job = enb.launch(steps_until, 1, 5, nodes=[enb.Node(1, on=enb.Slurm()),
                                                   enb.Node(1, on=limited)],
                         min_nodes=1, max_nodes=2, max_restarts=0, **OPTIONS)
        facts["results"] = job.result(timeout=180)
        facts["took"] = time.time() - started
    elif scenario == "slurm_pending":
        job = enb.launch(where, nodes=[enb.Node(1, on=enb.Slurm()) for _ in range(3)],
                         min_nodes=2, max_nodes=3, rdzv_configs={"last_call_timeout": 2},
                         **{**OPTIONS, "rdzv_timeout": 120})
        job.wait_until(lambda: len(job.snapshot().workers) == 2, timeout=120,
                       what="two ranks running while the third node queues")
        facts["while_running"] = {n.index: [str(n.status), n.scheduler] for n in job.snapshot().nodes}
        facts["results"] = job.result(timeout=180)
        # no stop(): the job's end alone cancels the node still queued
        deadline = time.monotonic() + 30
        while slurm_jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        facts["queue_after_result"] = slurm_jobs()
    elif scenario in ("slurm_stop", "ssh_stop"):
        on = enb.Slurm() if scenario == "slurm_stop" else ssh
        job = enb.launch(tick, nodes=[enb.Node(1, on=on), enb.Node(1, on=on)], **OPTIONS)
        job.wait_until(lambda: len(job.snapshot().workers) == 2 and all(
            "tick 3" in job.logs(rank=w.rank) for w in job.snapshot().workers),
            timeout=120, what="both remote ranks ticking")
        job.stop()
        facts["queue_after_stop"] = slurm_jobs()
    elif scenario == "ssh_kill_node":
        job = enb.launch(steps_until, 1, 5, nodes=[enb.Node(1), enb.Node(1, on=ssh)],
                         min_nodes=1, max_nodes=2, max_restarts=0, **OPTIONS)
        stepping_in(job, 2, 2)
        job.kill_node(1)
        facts["results"] = job.result(timeout=180)
    elif scenario == "ssh_unreachable":
        lost = enb.SSH("root@192.0.2.99", options=("-F", ssh_config, "-o", "ConnectTimeout=2"))
        job = enb.launch(where, nodes=[enb.Node(1, on=lost)], **OPTIONS)
        try:
            job.result(timeout=120)
        except enb.JobFailed as exc:
            facts["error"] = str(exc)
    elif scenario == "forged_descriptor":
        job = enb.launch(tick, nproc=1, max_nodes=3, **OPTIONS)
        job.wait_until(lambda: "tick 1" in job.logs(), timeout=120, what="the local rank ticking")
        published(job)
        attack_dir = os.environ["ENB_ATTACK_DIR"]
        marker = os.path.join(attack_dir, "pwned")
        with open(os.path.join(attack_dir, "descriptor.json"), "w") as out:
            out.write(attack.forged(job.endpoint, marker))
        forging = subprocess.run(
            ["runuser", "-u", os.environ["ENB_ATTACKER"], "--", "/usr/bin/python3",
             attack.__file__, "store-set", job.endpoint, f"/elastic_nb/{job.run_id}/job",
             out.name],
            capture_output=True, text=True, timeout=60)
        facts["attack"] = [forging.returncode, forging.stdout + forging.stderr]
        facts["store_holds_forged"] = b"ran code the job did not send" in published(job).payload
        if not facts["store_holds_forged"]:
            job.stop()
            return facts  # the attack did not land: nothing below would mean anything
        index = job.add_node(enb.Node(1, on=enb.Slurm()))
        job.wait_until(lambda: job.nodes[index] != "queued", timeout=120,
                       what="the Slurm node to refuse the forged descriptor")
        by_hand = subprocess.run(
            [sys.executable, "-m", "elastic_nb", "join", "--backend", job.backend, "--endpoint",
             job.endpoint, "--run-id", job.run_id, "--nproc", "1", "--local-addr", LISTEN,
             "--key-file", job.key_file], capture_output=True, text=True, timeout=120)
        facts["by_hand"] = [by_hand.returncode, by_hand.stderr[-2000:]]
        facts["pwned"] = os.path.exists(marker)
        facts["still"] = str(job.state)
    elif scenario == "secrets_private":  # the key and an etcd-like password, while nodes run
        secret = "s3cret-" + os.urandom(8).hex()
        job = enb.launch(tick, nodes=[enb.Node(1), enb.Node(1, on=enb.Slurm()), enb.Node(1, on=ssh)],
                         rdzv_configs={"password": secret}, **OPTIONS)
        job.wait_until(lambda: len(job.snapshot().workers) == 3 and all(
            "tick 2" in job.logs(rank=w.rank) for w in job.snapshot().workers),
            timeout=120, what="every rank ticking")
        with open(job.key_file) as source:
            key = source.read().strip()
        shown = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as source:
                    line = source.read()
            except OSError:
                continue
            if key.encode() in line or secret.encode() in line:
                shown.append(line.replace(b"\0", b" ").decode(errors="replace"))
        facts["on_command_lines"] = shown
        from elastic_nb.rendezvous import discovery

        store = discovery.open_store(job.backend, job.endpoint, job.run_id, {}, 60)
        held = store.get(f"elastic_nb/{job.run_id}/job")
        facts["in_store"] = [word for word, value in (("key", key), ("secret", secret))
                             if value.encode() in held]
        facts["in_repr"] = [word for word, value in (("key", key), ("secret", secret))
                            if value in repr(job) + repr(job.snapshot())]
    elif scenario == "slurm_kernel_killed":  # the test SIGKILLs this process once READY
        job = enb.launch(tick, nodes=[enb.Node(1, on=enb.Slurm()) for _ in range(3)],
                         min_nodes=2, max_nodes=3, rdzv_configs={"last_call_timeout": 2},
                         **OPTIONS)
        job.wait_until(lambda: len(job.snapshot().workers) == 2 and all(
            "tick 3" in job.logs(rank=w.rank) for w in job.snapshot().workers),
            timeout=120, what="two ranks ticking while the third node queues")
        queued = [n.index for n in job.snapshot().nodes if str(n.status) == "queued"]
        print("READY " + json.dumps({"run_id": job.run_id,
                                     "queued": [submission(job, i) for i in queued],
                                     "slurm_jobs": slurm_jobs()}), flush=True)
        time.sleep(600)
    elif scenario == "slurm_fifty_queued":  # held in the queue: how often is slurmctld asked?
        held, began = enb.Slurm(extra=("--hold",)), time.monotonic()
        job = enb.launch(tick, nodes=[enb.Node(1)] + [enb.Node(1, on=held) for _ in range(50)],
                         min_nodes=1, max_nodes=51, rdzv_configs={"last_call_timeout": 1},
                         **OPTIONS)
        job.wait_until(lambda: "tick 3" in job.logs(rank=0), timeout=120, what="rank 0 ticking")
        time.sleep(5)
        facts["scheduler"] = sorted({n.scheduler for n in job.snapshot().nodes if n.scheduler})
        job.stop()
        facts["seconds"] = time.monotonic() - began  # the job's whole life
        facts["queue_after_stop"] = slurm_jobs()
    elif scenario == "slurm_busy":  # squeue fails ("Socket timed out") while the flag exists
        flag = os.environ["SQUEUE_FAILS_WHILE"]
        job = enb.launch(tick, nodes=[enb.Node(1), enb.Node(1, on=enb.Slurm(extra=("--hold",)))],
                         min_nodes=1, max_nodes=2, rdzv_configs={"last_call_timeout": 1},
                         **OPTIONS)
        job.wait_until(lambda: "tick 3" in job.logs(rank=0), timeout=120, what="rank 0 ticking")
        open(flag, "w").close()
        time.sleep(4)  # a few looks at the queue, each one failing
        facts["while_busy"] = str(job.nodes[1])
        os.remove(flag)
        job.wait_until(lambda: "JobHeldUser" in (job.snapshot().nodes[1].scheduler or ""),
                       timeout=60, what="the queue looked at again")
    elif scenario == "sbatch_refused":
        try:
            enb.launch(where, nodes=[enb.Node(1, on=enb.Slurm(partition="nosuch"))], **OPTIONS)
        except enb.LaunchError as exc:
            facts["error"] = str(exc)
        facts["queue"] = slurm_jobs()
        return facts
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    job.stop()
    facts.setdefault("queue_after_stop", slurm_jobs())
    facts.update(state=str(job.state), nodes={i: str(s) for i, s in job.nodes.items()},
                 events=[[e.kind, e.node, e.detail] for e in job.events], run_id=job.run_id)
    return facts


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(*sys.argv[1:]), default=str), flush=True)

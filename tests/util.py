"""Test helpers: wait for a condition (never sleep and hope), find a job's processes, join one."""

from __future__ import annotations

import ipaddress
import os
import sys

import psutil

import elastic_nb as enb
from elastic_nb.kernel.waiting import poll_until as wait_until

__all__ = ["alive", "is_loopback", "job_processes", "job_tree", "join_command", "leftover_processes",
           "running_workers", "wait_until"]


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) is not alive."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def job_processes(run_id: str | None = None, kernel_pid: int | None = None) -> list[psutil.Process]:
    """Live processes of elastic_nb jobs (agents, forkservers, workers).

    By default those launched by this process; with ``run_id``, that job's
    wherever it was launched; with ``kernel_pid``, those another process launched.
    """
    if run_id is None and kernel_pid is None:
        kernel_pid = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
            if "ELASTIC_NB_RUN_ID" not in env or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if run_id is not None and env["ELASTIC_NB_RUN_ID"] != run_id:
                continue
            if kernel_pid is not None and env.get("ELASTIC_NB_KERNEL_PID") != str(kernel_pid):
                continue
            found.append(proc)
        except psutil.Error:
            continue
    return found


def leftover_processes() -> list[psutil.Process]:
    """This process's job processes but its idle warm hosts and what those keep (forkserver,
    resource tracker: their direct children); a worker is a grandchild and never kept."""
    kept: set[int] = set()
    for host in enb.hosts():
        if host.state != "idle":
            continue
        kept.add(host.pid)
        try:
            kept.update(child.pid for child in psutil.Process(host.pid).children())
        except psutil.Error:
            continue
    return [p for p in job_processes() if p.pid not in kept]


def job_tree(job: enb.Job) -> list[psutil.Process]:
    """The hosts of a job's local nodes and everything under them (forkserver, workers).

    A warm host's processes carry the run id of the job the host started
    for, so a job's processes are found from its hosts, not by its run id.
    """
    found = []
    for node in job.snapshot().nodes:
        if node.host_pid is None:
            continue
        try:
            host = psutil.Process(node.host_pid)
            found += [host, *host.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def is_loopback(ip: str) -> bool:
    """Loopback, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) included."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def running_workers(job: enb.Job, count: int, attempt: int | None = None,
                    timeout: float = 90) -> list[enb.WorkerInfo]:
    """Wait until ``count`` workers run (in ``attempt``, if given); those workers."""
    def ready() -> list[enb.WorkerInfo] | None:
        workers = [w for w in job.workers
                   if w.state == "running" and (attempt is None or w.attempt == attempt)]
        return workers if len(workers) == count else None

    where = "" if attempt is None else f" in attempt {attempt}"
    return job.wait_until(ready, timeout=timeout, what=f"{count} running workers{where}")


def join_command(job: enb.Job, nproc: int, *extra: str) -> list[str]:
    """``python -m elastic_nb join`` for ``job``, from this machine, as role ``remote``, with the
    job's key file (a job admits only nodes that hold its key, unless it trusts its store)."""
    return [sys.executable, "-m", "elastic_nb", "join", "--backend", job.backend,
            "--endpoint", job.endpoint, "--run-id", job.run_id, "--nproc", str(nproc),
            "--local-addr", "127.0.0.1", "--role", "remote", "--key-file", job.key_file, *extra]

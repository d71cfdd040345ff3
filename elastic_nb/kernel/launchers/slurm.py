"""Slurm nodes: one ``sbatch`` job per node, or one ``srun`` step of the kernel's allocation.

The batch script ``exec``-s the join command, so the node host is the job's
process: Slurm's warning signal (``--signal=B:USR1@60``) reaches it and it
leaves gracefully, and ``scancel`` ends it as a lost machine. The job's key
travels in the submitted job's environment (sbatch exports the caller's),
which only its user and Slurm's administrators can read. ``poll`` reads
``scontrol show job`` (which knows a job for a while after it ended, with
its reason); every Slurm command honours the caller's ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from elastic_nb.kernel.launchers.api import Launch, Launcher, NodeCommand, end_process
from elastic_nb.model.errors import LaunchError
from elastic_nb.model.placement import Slurm
from elastic_nb.model.scheduling import SchedulerStatus

COMMAND_TIMEOUT = 30.0
GONE_TIMEOUT = 20.0  # how long a cancel waits for the job to leave the queue
_WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                   "SUSPENDED"}
# over for good: Slurm will not run it again (COMPLETING is not: Slurm is still ending it)
_FINAL_STATES = {"CANCELLED", "COMPLETED", "FAILED", "NODE_FAIL", "PREEMPTED", "TIMEOUT",
                 "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
_FIELD = re.compile(r"(\w+)=(\S*)")


def _slurm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]} is not installed here: a Slurm node needs the kernel to run "
                          "where Slurm's commands are (a login node)") from None


class SlurmLauncher(Launcher):
    def __init__(self, placement: Slurm) -> None:
        self.placement = placement

    def start(self, command: NodeCommand) -> Launch:
        if self.placement.in_allocation:
            return SrunStep.start(self.placement, command)
        return SbatchJob.start(self.placement, command)


def job_status(scontrol: str) -> SchedulerStatus:
    """What one line of ``scontrol show job -o`` says of a job's state."""
    fields = dict(_FIELD.findall(scontrol))
    state = fields.get("JobState", "UNKNOWN")
    reason = fields.get("Reason", "")
    reason = "" if reason in ("None", "(null)") else reason
    if state in _WAITING_STATES:
        return SchedulerStatus(state, reason)
    where = fields.get("BatchHost") or fields.get("NodeList", "")
    return SchedulerStatus(state, reason, "" if where == "(null)" else where,
                           ended=state in _FINAL_STATES)


class SbatchJob(Launch):
    """One node as one batch job."""

    def __init__(self, job_id: str, output_pattern: str) -> None:
        self.job_id = job_id
        self.name = f"Slurm job {job_id}"
        self._output = output_pattern.replace("%j", job_id)

    @classmethod
    def start(cls, placement: Slurm, command: NodeCommand) -> SbatchJob:
        script = command.output_path("slurm.sh")
        leave_on = placement.signal_name
        with open(script, "w") as out:
            out.write("#!/bin/sh\n" + command.shell(placement.python, "--leave-on", leave_on) + "\n")
        os.chmod(script, 0o700)
        output = command.output_path("slurm-%j.out")
        warning = placement.signal if placement.signal.startswith("B:") else f"B:{placement.signal}"
        argv = ["sbatch", "--parsable", f"--job-name=enb-{command.run_id}-{command.index}",
                "--nodes=1", "--ntasks=1", f"--output={output}", f"--signal={warning}"]
        for flag, value in (("partition", placement.partition), ("time", placement.time),
                            ("account", placement.account)):
            if value:
                argv.append(f"--{flag}={value}")
        result = _slurm(*argv, *placement.extra, script, env={**os.environ, **command.private_env()})
        job_id = result.stdout.strip().split(";", 1)[0]
        if result.returncode != 0 or not job_id.isdigit():
            raise LaunchError(f"sbatch refused node {command.index}: "
                              f"{result.stderr.strip() or result.stdout.strip()}. Check the "
                              f"Slurm(...) arguments against `sinfo` (partitions) and "
                              f"`sacctmgr show assoc user=$USER` (accounts)")
        return cls(job_id, output)

    def poll(self) -> SchedulerStatus:
        result = _slurm("scontrol", "show", "job", "-o", self.job_id)
        if result.returncode != 0:  # Slurm forgot it: long over
            return SchedulerStatus("GONE", "no longer known to Slurm", ended=True)
        return job_status(result.stdout)

    def kill(self, remote_pid: int, reached: bool) -> None:
        _slurm("scancel", self.job_id)

    def cancel(self, remote_pid: int) -> None:
        _slurm("scancel", self.job_id)
        deadline = time.monotonic() + GONE_TIMEOUT
        while time.monotonic() < deadline:
            listed = _slurm("squeue", "-h", "-j", self.job_id, "-o", "%T")
            if listed.returncode != 0 or not listed.stdout.strip():
                return
            time.sleep(0.2)

    def output(self) -> str:
        return self._output


class SrunStep(Launch):
    """One node as one step of the allocation the kernel runs in (``salloc``, a batch job)."""

    def __init__(self, process: subprocess.Popen[bytes], allocation: str, output: str) -> None:
        self._process = process
        self.name = f"srun step of Slurm job {allocation}"
        self._output = output

    @classmethod
    def start(cls, placement: Slurm, command: NodeCommand) -> SrunStep:
        allocation = os.environ.get("SLURM_JOB_ID")
        if not allocation:
            raise LaunchError("Slurm(in_allocation=True) needs the kernel to run inside a Slurm "
                              "allocation ($SLURM_JOB_ID is not set): start it under salloc or "
                              "sbatch, or use Slurm(...) without in_allocation")
        output = command.output_path("srun.out")
        argv = ["srun", "--nodes=1", "--ntasks=1", "--overlap",
                f"--job-name=enb-{command.run_id}-{command.index}", *placement.extra,
                *command.argv(placement.python)]
        with open(output, "ab") as out:
            try:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True,
                                           env={**os.environ, **command.private_env()})
            except FileNotFoundError:
                raise LaunchError("srun is not installed here") from None
        return cls(process, allocation, output)

    def poll(self) -> SchedulerStatus:
        code = self._process.poll()
        if code is None:
            return SchedulerStatus("RUNNING")
        return SchedulerStatus("EXITED", f"srun exited {code}", ended=True)

    def kill(self, remote_pid: int, reached: bool) -> None:
        self._process.terminate()  # srun passes it to the step's task

    def cancel(self, remote_pid: int) -> None:
        end_process(self._process, GONE_TIMEOUT)

    def output(self) -> str:
        return self._output

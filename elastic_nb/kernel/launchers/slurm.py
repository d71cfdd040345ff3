"""Slurm nodes: one ``sbatch`` job per node, or one ``srun`` step of the kernel's allocation.

The batch script ``exec``-s the join command, so the node host is the job's
process: Slurm's warning signal (``--signal=B:USR1@60``) reaches it and it
leaves gracefully, and ``scancel`` ends it as a lost machine. The job's key
travels in the submitted job's environment (sbatch exports the caller's),
which only its user and Slurm's administrators can read. Every Slurm command
honours the caller's ``SLURM_CONF``.

A busy cluster is the normal case: a command that times out or that
slurmctld does not answer ("Socket timed out") is transient, never the end
of a node. A job is over only when Slurm says so: ``squeue`` shows it ended,
or, once ``squeue`` forgot it, ``sacct`` (or nothing, without accounting).
The jobs of one Job are looked at with one ``squeue -j a,b,...`` and
cancelled with one ``scancel``; an ``sbatch`` that timed out may have
submitted its job, which is found again by its name. Each submission is also
handed to the ``Reaper``, which cancels it if the kernel dies first.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from elastic_nb.kernel.launchers.api import Launch, Launcher, NodeCommand, end_process
from elastic_nb.kernel.launchers.reaper import Reaper
from elastic_nb.model.errors import LaunchError
from elastic_nb.model.placement import Slurm
from elastic_nb.model.scheduling import SchedulerStatus

COMMAND_TIMEOUT = 30.0
GONE_TIMEOUT = 20.0  # how long a cancel waits for the jobs to leave the queue
_WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                   "SUSPENDED"}
# over for good: Slurm will not run it again (COMPLETING is not: Slurm is still ending it)
_FINAL_STATES = {"CANCELLED", "COMPLETED", "FAILED", "NODE_FAIL", "PREEMPTED", "TIMEOUT",
                 "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
_QUEUE_FORMAT = "%i|%T|%r|%B"  # id, state, reason, batch host
_UNKNOWN_JOB = "Invalid job id"  # squeue's answer when it knows none of the ids
DEFAULT_OUTPUT_DIR = "~/elastic_nb-slurm"


def _slurm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str] | None:
    """Run one Slurm command; None if it timed out (slurmctld busy: try again later)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None
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


def queue_status(line: str) -> tuple[str, SchedulerStatus]:
    """What one line of ``squeue -o '%i|%T|%r|%B'`` says: the job's id and its state."""
    job_id, state, reason, where = [*line.split("|"), "", "", ""][:4]
    reason = "" if reason in ("None", "(null)") else reason
    if state in _WAITING_STATES:
        return job_id, SchedulerStatus(state, reason)
    where = "" if where in ("n/a", "(null)") else where
    return job_id, SchedulerStatus(state, reason, where, ended=state in _FINAL_STATES)


def output_dir(placement: Slurm, run_id: str) -> str:
    """Where Slurm writes the nodes' output (created here); LaunchError if this user cannot."""
    path = os.path.join(os.path.expanduser(placement.output_dir or DEFAULT_OUTPUT_DIR), run_id)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create Slurm's output directory {path} ({exc}): pass "
                          "Slurm(output_dir=...) a directory on storage the compute nodes "
                          "share") from None
    if not os.access(path, os.W_OK):
        raise LaunchError(f"Slurm's output directory {path} is not writable: pass "
                          "Slurm(output_dir=...) a directory on shared storage you can write")
    return path


class SbatchJob(Launch):
    """One node as one batch job, named ``enb-<run_id>-<node>``."""

    def __init__(self, job_id: str, output_pattern: str) -> None:
        self.job_id = job_id
        self.name = f"Slurm job {job_id}"
        self._output = output_pattern.replace("%j", job_id)
        Reaper.watch(job_id)

    @classmethod
    def start(cls, placement: Slurm, command: NodeCommand) -> SbatchJob:
        script = command.output_path("slurm.sh")
        leave_on = placement.signal_name
        with open(script, "w") as out:
            out.write("#!/bin/sh\n" + command.shell(placement.python, "--leave-on", leave_on) + "\n")
        os.chmod(script, 0o700)
        output = os.path.join(output_dir(placement, command.run_id), f"node_{command.index}-%j.out")
        warning = placement.signal if placement.signal.startswith("B:") else f"B:{placement.signal}"
        name = f"enb-{command.run_id}-{command.index}"
        argv = ["sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--ntasks=1",
                f"--output={output}", f"--signal={warning}"]
        for flag, value in (("partition", placement.partition), ("time", placement.time),
                            ("account", placement.account)):
            if value:
                argv.append(f"--{flag}={value}")
        result = _slurm(*argv, *placement.extra, script, env={**os.environ, **command.private_env()})
        if result is None:  # it may have been submitted all the same
            found = cls._named(name)
            if found is None:
                raise LaunchError(f"sbatch did not answer within {COMMAND_TIMEOUT:.0f} s and no "
                                  f"job named {name} is in the queue: slurmctld is busy or "
                                  "down (`sinfo` tells); try again")
            return cls(found, output)
        job_id = result.stdout.strip().split(";", 1)[0]
        if result.returncode != 0 or not job_id.isdigit():
            raise LaunchError(f"sbatch refused node {command.index}: "
                              f"{result.stderr.strip() or result.stdout.strip()}. Check the "
                              f"Slurm(...) arguments against `sinfo` (partitions) and "
                              f"`sacctmgr show assoc user=$USER` (accounts)")
        return cls(job_id, output)

    @staticmethod
    def _named(name: str) -> str | None:
        """The id of this user's job named ``name``, if Slurm lists one (it keeps trying)."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while time.monotonic() < deadline:
            listed = _slurm("squeue", "-h", "--me", f"--name={name}", "-o", "%i")
            if listed is not None and listed.returncode == 0:
                ids = listed.stdout.split()
                return ids[-1] if ids else None
            time.sleep(1)
        return None

    def poll(self) -> SchedulerStatus | None:
        return self.poll_all([self])[0]

    @classmethod
    def poll_all(cls, launches: Sequence[Launch]) -> list[SchedulerStatus | None]:
        """One ``squeue -j a,b,...`` for all of them; a job it no longer lists is asked of
        ``sacct``; None for each while slurmctld does not answer."""
        jobs = [launch for launch in launches if isinstance(launch, SbatchJob)]
        listed = _slurm("squeue", "-h", "--states=all", "-j", ",".join(j.job_id for j in jobs),
                        "-o", _QUEUE_FORMAT)
        if listed is None or (listed.returncode != 0 and _UNKNOWN_JOB not in listed.stderr):
            return [None] * len(jobs)
        known = dict(queue_status(line) for line in listed.stdout.splitlines() if line.strip())
        return [known.get(job.job_id) or _accounted(job.job_id) for job in jobs]

    def kill(self, remote_pid: int, reached: bool) -> None:
        self._scancel([self.job_id])

    def cancel(self, remote_pid: int) -> None:
        self.cancel_all([(self, remote_pid)])

    @classmethod
    def cancel_all(cls, launches: Sequence[tuple[Launch, int]]) -> None:
        """One ``scancel`` for all of them, then wait (``GONE_TIMEOUT`` at most) until Slurm
        lists none of them still running."""
        jobs = [launch for launch, _ in launches if isinstance(launch, SbatchJob)]
        ids = [job.job_id for job in jobs]
        deadline = time.monotonic() + GONE_TIMEOUT
        while ids and time.monotonic() < deadline:
            if cls._scancel(ids):
                break
            time.sleep(1)
        while ids and time.monotonic() < deadline:
            listed = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i")
            if listed is not None and (listed.returncode != 0 or not listed.stdout.strip()):
                break
            time.sleep(0.2)
        for job_id in ids:
            Reaper.forget(job_id)

    @staticmethod
    def _scancel(ids: list[str]) -> bool:
        """Whether slurmctld took the cancel (an unknown id is one already over)."""
        result = _slurm("scancel", *ids)
        return result is not None and (result.returncode == 0 or _UNKNOWN_JOB in result.stderr)

    def settled(self) -> None:
        Reaper.forget(self.job_id)

    def output(self) -> str:
        return self._output


def _accounted(job_id: str) -> SchedulerStatus | None:
    """A job ``squeue`` no longer lists: how it ended as ``sacct`` recorded it; without
    accounting, gone (Slurm lists a job for ``MinJobAge`` after its end); None while
    ``sacct`` does not answer."""
    result = _slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,Reason")
    if result is None:
        return None
    line = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    if not line:
        return SchedulerStatus("GONE", "no longer known to Slurm", ended=True)
    state, _, reason = line[0].partition("|")
    state = state.split()[0]  # "CANCELLED by 0"
    return SchedulerStatus(state, "" if reason == "None" else reason, ended=state in _FINAL_STATES)


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
                f"--job-name=enb-{command.run_id}-{command.index}",
                f"--signal={placement.signal.removeprefix('B:')}", *placement.extra,
                *command.argv(placement.python, "--leave-on", placement.signal_name)]
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

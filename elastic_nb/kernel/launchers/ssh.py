"""SSH nodes: the join command run on another host through the system's ``ssh`` client.

The client is the user's own: their ``~/.ssh/config``, keys and agent
(``BatchMode``: it never prompts). The job's key goes through ssh's standard
input (``--key-stdin``), never the command line. The remote command ``exec``-s
the node host, which leads its own process group there (sshd starts each
session's command in a session of its own); ``kill`` goes through the
node's channel, and through ``ssh HOST kill -KILL -- -PGID`` when that is gone.
"""

from __future__ import annotations

import subprocess

from elastic_nb.kernel.launchers.api import Launch, Launcher, NodeCommand, end_process
from elastic_nb.model.errors import LaunchError
from elastic_nb.model.placement import SSH
from elastic_nb.model.scheduling import SchedulerStatus

SSH_EXIT_UNREACHABLE = 255
GONE_TIMEOUT = 10.0
STOP_GRACE = 3.0


class SSHLauncher(Launcher):
    def __init__(self, placement: SSH) -> None:
        self.placement = placement

    def start(self, command: NodeCommand) -> Launch:
        return SSHProcess.start(self.placement, command)


class SSHProcess(Launch):
    """One node as one ``ssh`` process of this machine."""

    def __init__(self, placement: SSH, process: subprocess.Popen[bytes], output: str) -> None:
        self._placement = placement
        self._process = process
        self._output = output
        self.name = f"ssh {placement.target}"

    @classmethod
    def start(cls, placement: SSH, command: NodeCommand) -> SSHProcess:
        output = command.output_path("ssh.out")
        remote = command.shell(placement.python, "--key-stdin")
        with open(output, "ab") as out:
            try:
                process = subprocess.Popen(cls._ssh(placement, remote), stdin=subprocess.PIPE,
                                           stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            except FileNotFoundError:
                raise LaunchError("ssh is not installed here: an SSH node needs the system's "
                                  "OpenSSH client") from None
        assert process.stdin is not None
        try:
            process.stdin.write(command.private_input())
            process.stdin.close()
        except OSError:
            pass  # ssh already gave up: poll says why
        return cls(placement, process, output)

    @staticmethod
    def _ssh(placement: SSH, remote: str) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", *placement.options, placement.target, remote]

    def poll(self) -> SchedulerStatus:
        code = self._process.poll()
        if code is None:
            return SchedulerStatus("RUNNING", where=self._placement.target)
        last = _last_line(self._output)
        if code == SSH_EXIT_UNREACHABLE:
            return SchedulerStatus(
                "EXITED", f"ssh could not run the node on {self._placement.target} ({last}): "
                f"check that `ssh {self._placement.target} true` works from this machine "
                "without a prompt (keys, known_hosts, ~/.ssh/config)", ended=True)
        return SchedulerStatus("EXITED", f"exit code {code}" + (f": {last}" if last else ""),
                               ended=True)

    def kill(self, remote_pid: int, reached: bool) -> None:
        if not reached and remote_pid:
            self._kill_remote(remote_pid)
        self._process.terminate()

    def cancel(self, remote_pid: int) -> None:
        try:
            self._process.wait(STOP_GRACE)  # a node that was told to stop ends on its own
            return
        except subprocess.TimeoutExpired:
            pass
        if remote_pid:
            self._kill_remote(remote_pid)
        end_process(self._process, GONE_TIMEOUT)

    def _kill_remote(self, pid: int) -> None:
        try:
            subprocess.run(self._ssh(self._placement, f"kill -KILL -- -{pid}"),
                           capture_output=True, timeout=GONE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pass

    def output(self) -> str:
        return self._output


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as source:
            lines = [line.strip() for line in source if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""

"""The contract of a launcher: how a node that runs elsewhere is started, watched and ended.

Each kind of placement (``model.placement``: Slurm, SSH) has a ``Launcher``
that ``start``-s a ``NodeCommand`` (the ``python -m elastic_nb join`` of
one node, and the job's key, which it passes only through a private path)
and returns a ``Launch``: ``poll`` its scheduler's state, ``kill`` it (the
machine lost), ``cancel`` it (whatever its state: nothing of it is left
afterwards), ``settled`` (its scheduler said it is over), ``output`` (where
its own messages go). ``poll_all`` and ``cancel_all`` do the same for several
launches of one kind at once (one ``squeue``, one ``scancel``). As
ipyparallel's launchers and dask's clusters, the caller never asks which kind
it has.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from elastic_nb.model.scheduling import SchedulerStatus
from elastic_nb.wire import auth


@dataclass(frozen=True)
class NodeCommand:
    """One node to start elsewhere: the join command's arguments, and the secrets to pass
    privately (never on a command line: ``ps`` shows those to every user; never in a repr):
    the job's key and its rendezvous configs (an etcd password), as ``private_env`` (the
    environment of a Slurm job) or ``private_input`` (ssh's standard input)."""

    index: int
    run_id: str
    join_args: tuple[str, ...]  # after ``python -m elastic_nb join``
    key: str = field(repr=False)
    node_dir: str = ""  # this machine's directory for the launcher's own files (scripts, output)
    rdzv_configs: dict[str, str] = field(default_factory=dict, repr=False)

    def private_env(self) -> dict[str, str]:
        return {auth.KEY_ENV: self.key, auth.RDZV_CONF_ENV: json.dumps(self.rdzv_configs)}

    def private_input(self) -> bytes:
        return f"{self.key}\n{json.dumps(self.rdzv_configs)}\n".encode()

    def argv(self, python: str | None, *secret_from: str) -> list[str]:
        return [python or sys.executable, "-m", "elastic_nb", "join", *self.join_args,
                *secret_from]

    def shell(self, python: str | None, *secret_from: str) -> str:
        """The command as one line for a shell (``exec``: the node host is the process)."""
        return "exec " + shlex.join(self.argv(python, *secret_from))

    def output_path(self, name: str) -> str:
        os.makedirs(self.node_dir, exist_ok=True)
        return os.path.join(self.node_dir, name)


class Launch(ABC):
    """One started node as its launcher sees it; ``name`` is how the timeline names it."""

    name: str

    @abstractmethod
    def poll(self) -> SchedulerStatus | None:
        """Its scheduler's state now (``ended`` once it is over); None: no answer now (a busy
        scheduler), ask again later."""

    @classmethod
    def poll_all(cls, launches: Sequence[Launch]) -> list[SchedulerStatus | None]:
        """``poll`` each of these launches of this kind (one call where the scheduler can)."""
        return [launch.poll() for launch in launches]

    @abstractmethod
    def kill(self, remote_pid: int, reached: bool) -> None:
        """End it as a machine that is lost; ``reached``: its channel already carried a kill to
        ``remote_pid`` (the node's host on its machine)."""

    @abstractmethod
    def cancel(self, remote_pid: int) -> None:
        """End it, whatever its state, and wait (briefly) until nothing of it is left."""

    @classmethod
    def cancel_all(cls, launches: Sequence[tuple[Launch, int]]) -> None:
        """``cancel`` each of these launches of this kind (with its node host's remote pid)."""
        for launch, remote_pid in launches:
            launch.cancel(remote_pid)

    def settled(self) -> None:  # noqa: B027 (most kinds keep nothing to let go of)
        """Its scheduler said it is over for good: nothing of it is left to end."""

    @abstractmethod
    def output(self) -> str:
        """Where its messages are (what to read when it ended unexpectedly)."""


def end_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate a launcher's local process (srun, ssh) and reap it; SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Launcher(ABC):
    """Starts nodes of one kind of placement; ``start`` raises LaunchError naming the fix."""

    @abstractmethod
    def start(self, command: NodeCommand) -> Launch: ...

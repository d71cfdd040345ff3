"""Where a node runs: this machine (the default), a Slurm job, or a host reached over SSH.

A ``Placement`` is part of a ``Node`` (``Node(4, on=Slurm(partition="gpu"))``):
a plain description, checked by ``check`` before anything is submitted. The
kernel's launchers (``kernel.launchers``) turn one into a running node host
that joins the job; nothing here starts a process. ``describe`` is how the
dashboard and the timeline name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SIGNAL = re.compile(r"^(B:)?(SIG)?[A-Z0-9]+(@\d+)?$")


@dataclass(frozen=True)
class Placement:
    """Where a node's host runs; ``check`` returns why it cannot be used, or None."""

    def check(self) -> str | None:
        return None

    def describe(self) -> str:
        return "this machine"


@dataclass(frozen=True)
class Slurm(Placement):
    """One Slurm job per node: ``sbatch`` (or, with ``in_allocation``, one ``srun`` step of
    the allocation the kernel runs in).

    ``signal``: Slurm's warning before a time limit or a preemption
    (``sbatch --signal``), on which the node leaves the job gracefully;
    ``python``: the interpreter on the compute node (default: the kernel's,
    which a shared filesystem makes the same); ``extra``: more sbatch/srun
    arguments as they would be typed; ``output_dir``: where Slurm writes each
    node's own output, a directory the compute nodes can write (default
    ``~/elastic_nb-slurm``: a home directory is shared storage on most clusters,
    a login node's ``/tmp`` is not).
    """

    partition: str | None = None
    time: str | None = None
    account: str | None = None
    extra: tuple[str, ...] = ()
    in_allocation: bool = False
    signal: str = "USR1@60"
    python: str | None = None
    output_dir: str | None = None

    def check(self) -> str | None:
        if not _SIGNAL.match(self.signal):
            return (f"Slurm(signal={self.signal!r}) must be like 'USR1@60' (the signal and the "
                    "seconds before the end Slurm sends it)")
        if isinstance(self.extra, str):
            return "Slurm(extra=...) takes a list of arguments, e.g. ['--gres=gpu:1']"
        return None

    @property
    def signal_name(self) -> str:
        """The warning signal's name, as ``signal.Signals`` spells it (``SIGUSR1``)."""
        name = self.signal.removeprefix("B:").split("@", 1)[0]
        return name if name.startswith("SIG") else f"SIG{name}"

    def describe(self) -> str:
        if self.in_allocation:
            return "Slurm (this allocation)"
        return f"Slurm ({self.partition})" if self.partition else "Slurm"


@dataclass(frozen=True)
class SSH(Placement):
    """A node on ``target`` (``user@host`` or a ``Host`` of ssh's config), started through the
    system's ``ssh`` client (its config, keys and agent); ``python`` is the interpreter there
    with torch and elastic_nb (default: the kernel's path); ``options`` more ssh arguments."""

    target: str = ""
    python: str | None = None
    options: tuple[str, ...] = field(default=())

    def check(self) -> str | None:
        if not self.target or self.target.startswith("-") or " " in self.target:
            return f"SSH(target={self.target!r}) must be 'user@host' or a host of your ssh config"
        if isinstance(self.options, str):
            return "SSH(options=...) takes a list of arguments, e.g. ['-p', '2222']"
        return None

    def describe(self) -> str:
        return f"ssh {self.target}"

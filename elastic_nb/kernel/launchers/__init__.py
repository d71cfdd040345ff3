"""Launchers: starting a node's host elsewhere, one module per kind of placement.

``launcher_for(placement)`` is the one table from a ``model.placement`` kind
to its launcher (``slurm.SlurmLauncher``, ``ssh.SSHLauncher``); ``api`` is
their contract.
"""

from __future__ import annotations

from elastic_nb.kernel.launchers.api import Launch, Launcher, NodeCommand
from elastic_nb.kernel.launchers.slurm import SlurmLauncher
from elastic_nb.kernel.launchers.ssh import SSHLauncher
from elastic_nb.model.placement import SSH, Placement, Slurm

__all__ = ["Launch", "Launcher", "NodeCommand", "launcher_for"]


def launcher_for(placement: Placement) -> Launcher:
    if isinstance(placement, Slurm):
        return SlurmLauncher(placement)
    if isinstance(placement, SSH):
        return SSHLauncher(placement)
    raise TypeError(f"no launcher for {type(placement).__name__}")

"""A script or a module as what every rank runs: torchrun's entrypoints, as data.

``launch("train.py", "--lr", "0.1")`` and ``launch("pkg.train", ..., module=True)``
pack a ``ScriptCall`` instead of a function (``kernel.packing``); the rank's
trampoline hands it to ``worker.script_runner``, which runs it as
``__main__`` with ``sys.argv`` as torchrun sets it. It crosses from the
kernel to every rank, so it lives here, beside the other messages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptCall:
    """Run ``target`` as ``__main__`` with ``args`` on the command line.

    ``target`` is a script's path as the user gave it (resolved against the
    rank's working directory, as ``python train.py`` does) or, with
    ``module``, a module's dotted name (``python -m pkg.train``).
    ``resolved`` is the script's absolute path on the kernel's machine: what
    a rank whose working directory does not hold ``target`` (a node started
    over SSH, in its home) runs instead, from a shared file system.
    """

    target: str
    args: tuple[str, ...] = ()
    module: bool = False
    resolved: str = ""

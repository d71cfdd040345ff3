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
    job's working directory on each rank, as ``python train.py`` does) or,
    with ``module``, a module's dotted name (``python -m pkg.train``).
    """

    target: str
    args: tuple[str, ...] = ()
    module: bool = False

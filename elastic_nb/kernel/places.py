"""The ways to start a node that this kernel knows: what the dashboard's add-node chooser offers.

``register(name, placement)`` adds one (``elastic_nb.register_place("gpu",
Slurm(partition="gpu"))``); ``of_job`` lists this machine, the registered
ones and those the job's own nodes were started with, by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from elastic_nb.model.placement import Placement

THIS_MACHINE = "this machine"
_REGISTERED: dict[str, Placement] = {}


def register(name: str, placement: Placement) -> None:
    """Offer ``placement`` as ``name`` in every dashboard's add-node chooser of this kernel."""
    if not isinstance(placement, Placement):
        raise TypeError(f"register_place takes an elastic_nb.Slurm(...) or SSH(...), "
                        f"got {type(placement).__name__}")
    reason = placement.check()
    if reason:
        raise ValueError(reason)
    _REGISTERED[name] = placement


def of_job(used: Iterable[Placement | None]) -> dict[str, Placement | None]:
    places: dict[str, Placement | None] = {THIS_MACHINE: None, **_REGISTERED}
    for placement in used:
        if placement is not None and placement not in places.values():
            places.setdefault(placement.describe(), placement)
    return places

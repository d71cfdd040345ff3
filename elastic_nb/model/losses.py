"""One rule for a lost machine: a worker failure that follows from a peer's loss is the loss's.

When a node is lost (its host killed, its Slurm job cancelled, its machine
gone), the survivors' ranks often fail before the Job hears of the loss:
their collective breaks on the lost peer's closed connection. torch's agent
would spend a restart on that failure (and with ``max_restarts=0`` end the
job), whereas the same loss noticed first by the Job (``kill_node``, a
silent node) is a membership restart. So an agent whose ranks all failed
with a broken connection to a peer (``may_follow_a_peer_loss``), in a world
of several nodes, reports the failure as *held* and waits up to the
liveness timeout (``hold_window``) for the Job's verdict:

- a node of its world is lost: the Job's membership restart (sent to every
  survivor at the loss) restarts it without spending budget, and the
  timeline says whose loss the failure followed from;
- a node of its world failed on its own (an exception, a signal the user
  sent: ``failed_on_its_own``): the Job releases it (``releases``) and
  torch's restart policy applies, as without the hold;
- neither within the window: the policy applies.

States of a held failure, per node: *held* (reported, waiting) →
*excused* (a membership restart came) or *released* (the policy applies).
"""

from __future__ import annotations

from collections.abc import Iterable

from elastic_nb.model.errors import broke_with_a_peer
from elastic_nb.wire.options import heartbeat_interval


def hold_window(liveness_timeout: float) -> float:
    """How long a held failure waits: long enough for the Job to find a silent node lost (its
    liveness timeout, one heartbeat late, and a second for the verdict to travel)."""
    return liveness_timeout + heartbeat_interval(liveness_timeout) + 1.0


def may_follow_a_peer_loss(messages: Iterable[str]) -> bool:
    """Whether every one of these failures is a broken connection to a peer."""
    messages = list(messages)
    return bool(messages) and all(broke_with_a_peer(m) for m in messages)


def failed_on_its_own(held: bool, signals: Iterable[str | None],
                      by_user: Iterable[bool]) -> bool:
    """A failure that is its node's own, not a sign of a lost machine: not held, and each rank
    raised (no signal) or died of the user's signal. A rank killed by a signal from outside
    (the scheduler ending the machine) may be the loss itself: it releases nobody."""
    return not held and all(sig is None or user for sig, user in zip(signals, by_user, strict=True))


def releases(holding: dict[int, int | None], world: int | None, failing: int) -> list[int]:
    """The nodes holding a failure in ``world`` (``holding``: node -> world it held in) that a
    failure of node ``failing``'s own releases."""
    return sorted(n for n, w in holding.items() if w == world and n != failing)

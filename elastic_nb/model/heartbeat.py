"""Whether a peer of this node's rendezvous round stopped heartbeating: a pure rule.

torch's dynamic rendezvous (c10d, etcd-v2, etcd3) keeps each node's last
heartbeat in the shared state and, on every sync, drops the nodes whose
heartbeat is older than ``keep_alive_interval * keep_alive_max_attempt``
from the participants. torch acts on that only at the next round: a node
that dies while the others compute, or wait in ``init_process_group``,
leaves them waiting for it. A node that joined with plain ``torchrun`` has
no channel to the Job, so its loss reaches the survivors only this way.

Each agent reads the state torch already syncs every monitor tick
(``num_nodes_waiting``) and asks ``silent_peers``. A node that finished
(its workers returned and it reached torch's exit barrier) may stop
heartbeating too, legitimately: after an exit barrier that timed out its
store connection is broken and it cannot even close the rendezvous. So the
agent counts the nodes of its round that reached the barrier, and only
silent peers beyond those are lost (``peers_lost``): a membership restart,
as when the Job reports a lost node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundSeen:
    """What this node's last rendezvous round was: its number and how many nodes it had."""

    round: int
    nodes: int


def silent_peers(mine: RoundSeen | None, round_now: int, complete: bool, closed: bool,
                 participants: int) -> int:
    """How many nodes of the round this node runs in no longer heartbeat.

    None counts when there is no round yet, a newer one (the others already
    re-form, and torch's own waiting-node check takes this node there), a
    closed rendezvous (the job is ending) or an incomplete round.
    """
    if mine is None or closed or not complete or round_now != mine.round:
        return 0
    return max(mine.nodes - participants, 0)


def peers_lost(silent: int, finished: int) -> bool:
    """Silent peers beyond those that finished (reached the exit barrier) are lost."""
    return silent > finished

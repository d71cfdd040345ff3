"""Whether a peer of this node's rendezvous round stopped heartbeating: a pure rule.

torch's dynamic rendezvous (c10d, etcd-v2, etcd3) keeps each node's last
heartbeat in the shared state and, on every sync, drops the nodes whose
heartbeat is older than ``keep_alive_interval * keep_alive_max_attempt``
from the participants. torch acts on that only at the next round: a node
that dies while the others compute, or wait in ``init_process_group``,
leaves them waiting for it. A node that joined with plain ``torchrun`` has
no channel to the Job, so its loss reaches the survivors only this way.

Each agent reads the state torch already syncs every monitor tick
(``num_nodes_waiting``) and asks ``peer_lapsed``; a lapse is a membership
restart, as when the Job reports a lost node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundSeen:
    """What this node's last rendezvous round was: its number and how many nodes it had."""

    round: int
    nodes: int


def peer_lapsed(mine: RoundSeen | None, round_now: int, complete: bool, closed: bool,
                participants: int) -> bool:
    """True when the round this node runs in has lost a participant to a lapsed heartbeat.

    Not a lapse: no round yet, a newer round (the others already re-form, and
    torch's own waiting-node check takes this node there), a closed
    rendezvous (the job is ending), an incomplete round.
    """
    if mine is None or closed or not complete or round_now != mine.round:
        return False
    return participants < mine.nodes

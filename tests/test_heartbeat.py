"""The heartbeat rule: which rendezvous states mean a peer of this node's round is gone."""

from __future__ import annotations

import pytest

from elastic_nb.heartbeat import RoundSeen, peer_lapsed

MINE = RoundSeen(round=3, nodes=2)


@pytest.mark.parametrize(("mine", "round_now", "complete", "closed", "participants", "lapsed"), [
    (MINE, 3, True, False, 2, False),   # everyone still heartbeats
    (MINE, 3, True, False, 1, True),    # a participant's heartbeat lapsed
    (MINE, 3, True, False, 0, True),
    (MINE, 4, False, False, 1, False),  # a newer round: the others re-form already
    (MINE, 3, True, True, 1, False),    # closed: the job is ending
    (MINE, 3, False, False, 1, False),  # not a complete round
    (None, 0, True, False, 1, False),   # no round yet
])
def test_peer_lapsed(mine, round_now, complete, closed, participants, lapsed):
    assert peer_lapsed(mine, round_now, complete, closed, participants) is lapsed

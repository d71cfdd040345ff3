"""The heartbeat rules: which rendezvous states mean a peer of this node's round is gone."""

from __future__ import annotations

import pytest

from elastic_nb.model.heartbeat import RoundSeen, peers_lost, silent_peers

MINE = RoundSeen(round=3, nodes=2)


@pytest.mark.parametrize(("mine", "round_now", "complete", "closed", "participants", "silent"), [
    (MINE, 3, True, False, 2, 0),   # everyone still heartbeats
    (MINE, 3, True, False, 1, 1),   # a participant's heartbeat lapsed
    (RoundSeen(3, 4), 3, True, False, 1, 3),
    (MINE, 4, False, False, 1, 0),  # a newer round: the others re-form already
    (MINE, 3, True, True, 1, 0),    # closed: the job is ending
    (MINE, 3, False, False, 1, 0),  # not a complete round
    (None, 0, True, False, 1, 0),   # no round yet
])
def test_silent_peers(mine, round_now, complete, closed, participants, silent):
    assert silent_peers(mine, round_now, complete, closed, participants) == silent


@pytest.mark.parametrize(("silent", "finished", "lost"), [
    (0, 0, False),
    (1, 0, True),   # silent and never reached the exit barrier: lost
    (1, 1, False),  # it finished; its shutdown may have failed (a timed-out exit barrier)
    (2, 1, True),
])
def test_peers_lost(silent, finished, lost):
    assert peers_lost(silent, finished) is lost

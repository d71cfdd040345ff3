"""The wire protocol: typed reports round-trip, and anything else is a ProtocolError."""

from __future__ import annotations

import json
import socket

import pytest

from elastic_nb.wire import reports as protocol
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.rank_files import RankAnswer
from elastic_nb.wire.records import ProtocolError
from elastic_nb.wire.reports import ReportKind, parse_report

FAILURE = protocol.FailureReport(rank=1, local_rank=1, pid=7, exitcode=1, signal=None,
                                 message="boom", traceback="Traceback ...", timestamp=3.5,
                                 restart_count=0)
WORKER = protocol.StartedWorker(rank=0, local_rank=0, role_rank=0, world_size=2,
                                role_world_size=2, pid=11, stdout="/o", stderr="/e",
                                error_file="/err")
EVERY_REPORT = [
    protocol.Rendezvous(group_rank=0, group_world_size=2, world_size=4, master_addr="h",
                        master_port=29500),
    protocol.Started(role="r", attempt=1, restart_count=1, group_rank=0, group_world_size=1,
                     observed_at=5.5, workers=(WORKER,)),
    protocol.WorkerFailed(restart_count=0, remaining_restarts=2, observed_at=6, failures=(FAILURE,)),
    protocol.Restarting(reason="failure", remaining_restarts=1, max_restarts=2, observed_at=7.0),
    protocol.Succeeded(restart_count=0, return_values={0: b"\x80\x05K\x01.", 3: b""}),
    protocol.Failed(failures=(FAILURE,)),
    protocol.AgentError(message="no", traceback=None),
    protocol.Log(rank=0, stream="stdout", attempt=0, lines=("a", "b")),
    protocol.NodeDone(exitcode=0, reusable=True),
    protocol.HostReady(pid=12),
    protocol.StateForged(where="the c10d store at 127.0.0.1:29400"),
    protocol.Paused(rank=1, reason="breakpoint", file="/tmp/ipykernel_1/2.py", line=4,
                    function="train", source="x += 1", cell=7, exception=None,
                    socket="/logs/1/debug.sock", observed_at=3.5),
    protocol.Resumed(rank=1, observed_at=4.0),
    protocol.Heartbeat(),
    protocol.Leaving(reason="SIGUSR1: its scheduler ends it soon"),
    protocol.Stacks(request=3, stacks={0: "Thread 0x1 (most recent call first):\n  File ...", 5: "no"}),
    protocol.HangAnswers(request=4, answers=(
        RankAnswer(2, "answered", {"pid": 9, "stacks": {"main": [["f.py", 1, "g", "x", None]]}}),
        RankAnswer(3, "stopped", note="pid 10, SIGSTOP"))),
    protocol.DebugOutput(session=1, data=b"-> x = 1\n(Pdb) \xe2"),
    protocol.DebugEnded(session=1, error=None),
]


def test_the_dispatch_table_covers_every_report_kind():
    assert set(protocol.REPORTS) == set(ReportKind)
    assert {type(r) for r in EVERY_REPORT} == set(protocol.REPORTS.values())


@pytest.mark.parametrize("report", EVERY_REPORT, ids=lambda r: r.kind.value)
def test_every_report_round_trips_through_json(report):
    wire = json.loads(json.dumps(report.to_message()))
    assert wire["kind"] == report.kind.value
    assert parse_report(wire) == report


@pytest.mark.parametrize("message, complaint", [
    ({"kind": "reboot"}, "unknown report kind 'reboot'"),
    ({}, "unknown report kind None"),
    (["started"], "must be a JSON object"),
    ({"kind": "restarting", "reason": "failure", "max_restarts": 2}, "no field 'remaining_restarts'"),
    ({"kind": "restarting", "reason": "failure", "remaining_restarts": "1", "max_restarts": 2},
     "remaining_restarts must be int"),
    ({"kind": "restarting", "reason": "failure", "remaining_restarts": True, "max_restarts": 2},
     "remaining_restarts must be int"),
    ({"kind": "worker_failed", "restart_count": 0, "remaining_restarts": 0, "observed_at": 1,
      "failures": [1]},
     "'failures' must be a list of objects"),
    ({"kind": "failed", "failures": [{"rank": 0}]}, "FailureReport message has no field"),
    ({"kind": "succeeded", "restart_count": 0, "return_values": {"x": "AA=="}}, "bad return_values"),
    ({"kind": "log", "rank": 0, "stream": "stdin", "attempt": 0, "lines": []}, "'stream'"),
    ({"kind": "log", "rank": 0, "stream": "stdout", "attempt": 0, "lines": [1]}, "list of strings"),
    ({"kind": "node_done", "exitcode": 0, "reusable": 1}, "reusable must be bool"),
    ({"kind": "node_done", "exitcode": False, "reusable": True}, "exitcode must be int"),
    ({"kind": "stacks", "request": 1, "stacks": {"zero": "x"}}, "bad stacks"),
    ({"kind": "stacks", "request": 1, "stacks": {"0": 1}}, "'stacks' must be an object of strings"),
    ({"kind": "stacks", "stacks": {}}, "no field 'request'"),
    ({"kind": "hang_answers", "request": 1, "answers": [{"rank": 0, "status": "asleep"}]},
     "status must be one of"),
    ({"kind": "hang_answers", "request": 1, "answers": [{"rank": 0, "status": "answered",
                                                         "answer": []}]}, "answer must be dict"),
    ({"kind": "debug_output", "session": 1, "data": 7}, "expected base64 text"),
    ({"kind": "debug_ended", "session": 1, "error": 3}, "error must be str | None"),
])
def test_malformed_reports_are_protocol_errors(message, complaint):
    with pytest.raises(ProtocolError, match=complaint.replace("(", r"\(").replace("[", r"\[")):
        parse_report(message)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_channel_refuses_a_frame_over_its_limit(pair):
    ours, theirs = pair
    channel = Channel(ours, max_frame=1024)
    theirs.sendall(b"x" * 2000)
    with pytest.raises(ProtocolError, match="longer than 1024 bytes"):
        channel.receive_ready()


def test_a_channel_refuses_garbage_and_non_objects(pair):
    ours, theirs = pair
    channel = Channel(ours)
    theirs.sendall(b"\x00\xffnot json\n")
    with pytest.raises(ProtocolError, match="not a JSON message"):
        channel.receive_ready()
    theirs.sendall(b"[1, 2]\n")
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        channel.receive_ready()


def test_a_channel_delivers_whole_messages_and_the_end(pair):
    ours, theirs = pair
    channel = Channel(ours)
    Channel(theirs).send(EVERY_REPORT[3])
    theirs.sendall(b'{"kind": "log", "rank"')
    messages, ended = channel.receive_ready()
    assert [parse_report(m) for m in messages] == [EVERY_REPORT[3]] and not ended
    theirs.shutdown(socket.SHUT_WR)
    assert channel.receive_ready() == ([], True)

"""Peers cannot wedge or steer the Job: slow, garbage, huge, unauthorised, replayed, forged
and nonsense-speaking peers.

One real job (a rank printing a line every 0.2 s) faces each kind of bad peer
in turn; after each, the job's pump must still be reading the rank's lines,
and at the end the job stops cleanly. The job trusts its store (keyless
joins are what most of these peers try); a job that does not refuses them.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import scenarios
from util import wait_until

import elastic_nb as enb
from elastic_nb.kernel import join_server
from elastic_nb.rendezvous import discovery
from elastic_nb.wire import auth


@pytest.fixture
def job(monkeypatch):
    monkeypatch.setattr(join_server, "HANDSHAKE_TIMEOUT", 2.0)
    job = enb.launch(scenarios.tick_forever, nproc=1, min_nodes=1, max_nodes=3, trust_store=True)
    wait_until(lambda: "tick 1" in job.logs(), timeout=60, what="the rank to tick")
    yield job
    job.stop()
    assert job.state == "stopped"


def pump_is_alive(job: enb.Job, within: float = 5) -> None:
    """The pump still reads the rank's output: new lines arrive (one comes every 0.2 s)."""
    seen = job.logs().count("tick")
    wait_until(lambda: job.logs().count("tick") >= seen + 3, timeout=within,
               what="new lines while a bad peer is connected")


def connect(job: enb.Job) -> socket.socket:
    host, port = job.join_address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def closed_by_the_job(peer: socket.socket) -> bool:
    """Read until the job closes the connection; True if it did within the socket timeout."""
    try:
        while peer.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def reply(peer: socket.socket) -> dict:
    """The job's answer, after its challenge (``challenge`` reads that one alone)."""
    first = challenge(peer)
    return first if first["kind"] != "challenge" else next_line(peer)


def challenge(peer: socket.socket) -> dict:
    return next_line(peer)


def next_line(peer: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = peer.recv(1)
        assert chunk, "the job closed the connection without a reply"
        data += chunk
    return json.loads(data)


def token_of(job: enb.Job) -> str:
    store = discovery.open_store(job.backend, job.endpoint, job.run_id, {}, 10)
    return discovery.lookup(store, job.run_id).token


def test_a_slow_peer_does_not_stall_the_pump_and_is_cut_off(job):
    def trickle(peer: socket.socket) -> None:
        """One byte every 0.3 s, never a whole line, until the job hangs up."""
        try:
            for byte in b'{"kind": "join", "token": "' + b"0" * 30:
                peer.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            pass

    with connect(job) as peer:
        started = time.monotonic()
        trickler = threading.Thread(target=trickle, args=(peer,))
        trickler.start()
        pump_is_alive(job, within=1.5)  # while the peer trickles
        assert closed_by_the_job(peer)
        assert time.monotonic() - started < join_server.HANDSHAKE_TIMEOUT + 3
        trickler.join()
    pump_is_alive(job)


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage\n", b"x" * (200 << 10), b"[1, 2]\n"],
                         ids=["binary", "huge", "not-an-object"])
def test_garbage_is_dropped_without_a_word(job, garbage):
    with connect(job) as peer:
        peer.sendall(garbage)
        assert closed_by_the_job(peer)
    pump_is_alive(job)
    assert job.nodes == {0: "running"}


def test_a_wrong_token_is_refused_with_a_reason(job):
    with connect(job) as peer:
        peer.sendall(json.dumps({"kind": "join", "token": "guess", "nproc": 1,
                                 "role": "default"}).encode() + b"\n")
        answer = reply(peer)
    assert answer["kind"] == "rejected" and "wrong join token" in answer["reason"]
    assert job.nodes == {0: "running"}


def test_a_request_signed_with_another_key_a_replayed_one_or_a_ticket_without_a_signature_is_refused(
        job):
    token, key = token_of(job), auth.read_key_file(job.key_file)
    request = {"kind": "join", "token": token, "nproc": 1, "role": "default", "nonce": "n1"}
    with connect(job) as peer:  # a request the job's key signed, for another connection
        captured = auth.seal(key, {**request, "challenge": challenge(peer)["nonce"]})
    for message, complaint in ((auth.seal(auth.new_key(), request), "not signed with this job"),
                               (captured, "replayed from another connection"),
                               ({**request, "ticket": 0}, "must sign its request"),
                               ({**request, "mac": "\u2603" * 64}, "not signed with this job"),
                               ({**request, "host": "\u00e9" * 9}, "printable ASCII")):
        with connect(job) as peer:
            peer.sendall(json.dumps(message).encode() + b"\n")
            answer = reply(peer)
        assert answer["kind"] == "rejected" and complaint in answer["reason"], answer
    assert job.nodes == {0: "running"}


def test_a_keyless_join_is_refused_unless_the_job_trusts_its_store():
    job = enb.launch(scenarios.tick_forever, nproc=1, min_nodes=1, max_nodes=2)
    try:
        wait_until(lambda: "tick 1" in job.logs(), timeout=60, what="the rank to tick")
        with connect(job) as peer:
            peer.sendall(json.dumps({"kind": "join", "token": token_of(job), "nproc": 1,
                                     "role": "default"}).encode() + b"\n")
            answer = reply(peer)
        assert answer["kind"] == "rejected"
        assert "--key-file" in answer["reason"] and "trust_store=True" in answer["reason"]
        assert job.nodes == {0: "running"} and "trust_store" not in job.summary()
    finally:
        job.stop()


def test_a_hundred_junk_handshakes_at_once_leave_the_join_port_working(job):
    junk = [b"", b"\xff\xfe\n", b'{"kind": "join", "mac": "\xe2\x98\x83", "nproc": 1}\n',
            b'{"kind": "join", "token": 5, "nproc": 1e99, "role": []}\n', b"[" * 5000 + b"\n"]
    peers = []
    for i in range(100):
        try:
            peer = connect(job)
            peer.sendall(junk[i % len(junk)])
        except OSError:  # closed at once: more than the job's bound of handshakes at a time
            continue
        peers.append(peer)
    for peer in peers:
        peer.settimeout(join_server.HANDSHAKE_TIMEOUT + 5)
        assert closed_by_the_job(peer)
        peer.close()
    pump_is_alive(job)
    with connect(job) as peer:
        peer.sendall(json.dumps({"kind": "join", "token": "guess", "nproc": 1,
                                 "role": "default"}).encode() + b"\n")
        assert "wrong join token" in reply(peer)["reason"]


def test_a_frame_with_a_bad_mac_closes_a_signed_node_s_channel(job):
    """A node admitted with the key talks through sealed frames: one that is not the
    session's next is the end of its channel, and the job goes on without it."""
    key = auth.read_key_file(job.key_file)
    with connect(job) as peer:
        nonce = challenge(peer)["nonce"]
        peer.sendall(json.dumps(auth.seal(key, {
            "kind": "join", "token": "", "nproc": 1, "role": "default", "host": "eve",
            "nonce": "n2", "challenge": nonce})).encode() + b"\n")
        answer = next_line(peer)
        assert answer["kind"] == "accepted" and auth.unseal(key, answer, "answer")["node"] == 1
        seal = auth.FrameSeal(auth.session_key(key, nonce, "n2"), sends="node")
        peer.sendall(seal.seal(b'{"kind": "heartbeat"}') + b"\n")
        wait_until(lambda: 1 in job.nodes, timeout=10, what="node 1 admitted")
        forged = seal.seal(b'{"kind": "heartbeat"}')
        peer.sendall(forged[:-2] + b'} \n')
        assert closed_by_the_job(peer)
    errors = wait_until(lambda: [e for e in job.events if e.kind == "agent_error"], timeout=10,
                        what="an agent_error for the peer")
    assert "not sealed with this session's key" in errors[0].detail["message"]
    wait_until(lambda: job.nodes == {0: "running", 1: "dropped"}, timeout=10,
               what="the peer dropped, node 0 running")
    pump_is_alive(job)


@pytest.mark.parametrize("nonsense", [b"\x00not json\n", b'{"kind": "reboot"}\n',
                                      b'{"kind": "started", "role": "x"}\n'],
                         ids=["garbage", "unknown-kind", "missing-fields"])
def test_a_joined_peer_that_talks_nonsense_is_dropped_and_the_job_goes_on(job, nonsense):
    token = token_of(job)
    with connect(job) as peer:
        peer.sendall(json.dumps({"kind": "join", "token": token, "nproc": 1,
                                 "role": "default", "host": "mallory"}).encode() + b"\n")
        answer = reply(peer)
        assert (answer["kind"], answer["node"], answer["mac"]) == ("accepted", 1, "")
        peer.sendall(nonsense)
        assert closed_by_the_job(peer)
    errors = wait_until(lambda: [e for e in job.events if e.kind == "agent_error"], timeout=10,
                        what="an agent_error for the peer")
    assert errors[0].node == 1 and errors[0].detail["dropped"] is True
    assert "node 1 sent a bad message" in errors[0].detail["message"]
    wait_until(lambda: job.nodes == {0: "running", 1: "dropped"}, timeout=10,
               what="the peer dropped, node 0 running")
    pump_is_alive(job)
    assert job.state == "running"

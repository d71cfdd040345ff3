"""Everything else that crosses a process boundary is typed and checked at the edge:
commands, the agent's configuration, the join descriptor and handshake, the pause notice."""

from __future__ import annotations

import json

import pytest

from elastic_nb.wire import auth, commands
from elastic_nb.wire.commands import CommandKind, parse_command
from elastic_nb.wire.config import AgentConfig
from elastic_nb.wire.join import (
    JoinAccepted,
    JoinChallenge,
    JoinDescriptor,
    JoinRejected,
    JoinRequest,
    parse_challenge,
    parse_reply,
    parse_request,
)
from elastic_nb.wire.options import JobOptions
from elastic_nb.wire.rank_files import PauseNotice, RankTarget
from elastic_nb.wire.records import ProtocolError, encode_bytes

OPTIONS = JobOptions(min_nodes=1, max_nodes=2, max_restarts=0, monitor_interval=0.1,
                     exit_barrier_timeout=30.0, rdzv_timeout=120.0, start_method="spawn",
                     log_line_prefix_template="[${rank}]:", master_addr=None, master_port=None,
                     rdzv_configs={}, shutdown_timeout=5)
CONFIG = AgentConfig(node=1, role="trainer", nproc=2, payload=b"\x80\x05N.", run_id="r1",
                     backend="c10d", endpoint="127.0.0.1:1234", options=OPTIONS, log_dir="/tmp/x",
                     local_addr=None, env={"A": "1"}, sys_path=["/p"], cwd="/")
EVERY_COMMAND = [commands.Configure(CONFIG), commands.Restart(reason="user"),
                 commands.Signal(pid=12, signal="SIGTERM"), commands.Kill(), commands.Stop(run_id="r1"),
                 commands.Heartbeat(), commands.Slow(pid=12, fraction=0.25), commands.Freeze(frozen=True),
                 commands.DumpStacks(request=3, ranks=(RankTarget(rank=2, pid=12, rank_dir="/l/0"),),
                                     timeout=5.0),
                 commands.AskHang(request=4, ranks=(RankTarget(rank=2, pid=12, rank_dir="/l/0"),
                                                    RankTarget(rank=3, pid=13, rank_dir="/l/1")), timeout=2.5),
                 commands.DebugOpen(session=1, rank=2, socket="/l/0/debug.sock"),
                 commands.DebugInput(session=1, data=b"p x\n"),
                 commands.DebugClose(session=1)]


def wire(record) -> dict:
    return json.loads(json.dumps(record.to_message()))


def test_the_command_table_covers_every_command_kind():
    assert set(commands.COMMANDS) == set(CommandKind)
    assert {type(c) for c in EVERY_COMMAND} == set(commands.COMMANDS.values())


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: c.kind.value)
def test_every_command_round_trips_through_json(command):
    assert parse_command(wire(command)) == command


@pytest.mark.parametrize("message, complaint", [
    ({"kind": "reboot"}, "unknown command kind 'reboot'"),
    ({"kind": "restart", "reason": "because"}, "restart reason must be one of"),
    ({"kind": "signal", "pid": 3, "signal": "SIGNOPE"}, "unknown signal 'SIGNOPE'"),
    ({"kind": "signal", "pid": "3", "signal": "SIGTERM"}, "pid must be int"),
    ({"kind": "stop"}, "no field 'run_id'"),
    ({"kind": "configure", "config": []}, "'config' must be an object"),
    ({"kind": "slow", "pid": 3, "fraction": 0}, "must be in \\(0, 1\\]"),
    ({"kind": "freeze", "frozen": "yes"}, "frozen must be bool"),
    ({"kind": "dump_stacks", "request": 1, "ranks": [{"rank": 0, "pid": 3}], "timeout": 5},
     "RankTarget message has no field 'rank_dir'"),
    ({"kind": "dump_stacks", "request": 1, "ranks": {}, "timeout": 5}, "'ranks' must be a list"),
    ({"kind": "ask_hang", "request": "1", "ranks": [], "timeout": 5}, "request must be int"),
    ({"kind": "ask_hang", "request": 1, "ranks": [], "timeout": 0}, "timeout must be > 0"),
    ({"kind": "debug_open", "session": 1, "rank": 0}, "no field 'socket'"),
    ({"kind": "debug_input", "session": 1, "data": "not base64!"}, "not base64"),
    ({"kind": "debug_input", "session": 1}, "expected base64 text"),
    ({"kind": "debug_close", "session": None}, "session must be int"),
])
def test_malformed_commands_are_protocol_errors(message, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        parse_command(message)


@pytest.mark.parametrize("change, complaint", [
    ({"nproc": 0}, "nproc 0"),
    ({"nproc": "2"}, "nproc must be int"),
    ({"backend": "zookeeper"}, "unknown backend"),
    ({"env": {"A": 1}}, "env must be dict"),
    ({"payload": "not base64!"}, "not base64"),
    ({"options": {**OPTIONS.to_message(), "max_restarts": -1}}, "max_restarts must be >= 0"),
    ({"options": {**OPTIONS.to_message(), "start_method": "fork"}}, "start_method must be one of"),
])
def test_an_agent_config_is_checked_before_a_host_runs_it(change, complaint):
    message = {**CONFIG.to_message(), **change}
    with pytest.raises(ProtocolError, match=complaint):
        AgentConfig.from_message(message)


def test_the_join_descriptor_and_handshake_round_trip_and_are_checked():
    descriptor = JoinDescriptor(b"payload", "127.0.0.1:4000", "t0k3n", OPTIONS)
    key = auth.new_key()
    assert JoinDescriptor.from_json(descriptor.to_json(key), key) == descriptor
    assert JoinDescriptor.from_json(descriptor.to_json(key)) == descriptor  # no key: trusted
    with pytest.raises(ProtocolError, match="job_address"):
        JoinDescriptor.from_json(descriptor.to_json(key).replace("127.0.0.1:4000", "nowhere"))
    with pytest.raises(ProtocolError, match="not JSON"):
        JoinDescriptor.from_json("{")
    request = JoinRequest(token="t", nproc=2, role="trainer", host="b")
    assert parse_request(wire(request)) == request
    for absurd in ({"nproc": 0}, {"nproc": 10**9}, {"host": "h\u00e9"}, {"role": "r" * 10_000},
                   {"mac": "\u2603" * 64}, {"token": "t\n"}):
        with pytest.raises(ProtocolError, match="nproc must be an int between|printable ASCII"):
            parse_request({**wire(request), **absurd})
    challenge = JoinChallenge(nonce="abc")
    assert parse_challenge(wire(challenge)) == challenge
    with pytest.raises(ProtocolError, match="expected the job's challenge"):
        parse_challenge(wire(request))
    with pytest.raises(ProtocolError, match="expected a join request"):
        parse_request(wire(JoinAccepted(node=1)))
    assert parse_reply(wire(JoinAccepted(node=1))) == JoinAccepted(node=1)
    accepted = JoinAccepted(node=2, nonce="n", payload=b"\x80call", mac="m")
    assert parse_reply(wire(accepted)) == accepted
    assert parse_reply(wire(JoinRejected(reason="full"))) == JoinRejected(reason="full")


def test_a_descriptor_someone_else_wrote_or_changed_is_refused_by_a_node_with_the_key():
    key, other = auth.new_key(), auth.new_key()
    signed = JoinDescriptor(b"payload", "127.0.0.1:4000", "t0k3n", OPTIONS).to_json(key)
    forged = JoinDescriptor(b"evil", "127.0.0.1:4000", "t0k3n", OPTIONS).to_json(other)
    changed = json.dumps({**json.loads(signed), "payload": encode_bytes(b"evil")})
    unsigned = json.dumps({k: v for k, v in json.loads(signed).items() if k != "mac"})
    for text in (forged, changed, unsigned):
        with pytest.raises(ProtocolError, match="not signed with this job's key.*nothing of it"):
            JoinDescriptor.from_json(text, key)


def test_the_descriptor_never_carries_the_rendezvous_configs_and_the_answer_does():
    options = JobOptions(**{**OPTIONS.to_message(), "rdzv_configs": {"user": "root",
                                                                      "password": "s3cret"}})
    text = JoinDescriptor(b"payload", "127.0.0.1:4000", "t0k3n", options).to_json(auth.new_key())
    assert "s3cret" not in text and JoinDescriptor.from_json(text).options.rdzv_configs == {}
    accepted = JoinAccepted(node=1, rdzv_configs={"password": "s3cret"})
    assert parse_reply(wire(accepted)).rdzv_configs == {"password": "s3cret"}
    assert "s3cret" not in repr(accepted)


def test_a_peer_value_of_any_kind_compares_without_raising():
    assert auth.equal("abc", "abc")
    for given in ("ab\u00e9", "\udcff", None, 7, b"abc", ""):
        assert not auth.equal("abc", given)


def test_sealed_frames_refuse_a_change_a_replay_a_reorder_and_a_reflection():
    key = auth.session_key(auth.new_key(), "job-nonce", "node-nonce")
    node = auth.FrameSeal(key, sends="node")
    first, second = node.seal(b'{"a":1}'), node.seal(b'{"a":2}')
    job = auth.FrameSeal(key, sends="job")
    assert job.open(first) == b'{"a":1}' and job.open(second) == b'{"a":2}'

    def opener():
        return auth.FrameSeal(key, sends="job")

    replayed = opener()
    replayed.open(first)
    other_key = auth.session_key(auth.new_key(), "job-nonce", "node-nonce")
    for where, frame in ((replayed, first), (opener(), first[:-1] + b"3"), (opener(), second),
                         (opener(), opener().seal(b'{"a":1}')),
                         (auth.FrameSeal(other_key, sends="job"), first)):
        with pytest.raises(ProtocolError, match="not sealed with this session's key"):
            where.open(frame)


def test_the_key_file_goes_only_into_a_private_directory_never_through_a_link(tmp_path):
    key = auth.new_key()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ValueError, match="chmod 700"):
        auth.write_key_file(str(shared / "job.key"), key)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    (private / "job.key").symlink_to(target)
    with pytest.raises(FileExistsError):
        auth.write_key_file(str(private / "job.key"), key)
    assert not target.exists()
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(ValueError, match="a link"):
        auth.write_key_file(str(link / "other.key"), key)


def test_no_key_in_a_repr():
    from elastic_nb.kernel.launchers import NodeCommand

    key = auth.new_key()
    command = NodeCommand(0, "run", ("--nproc", "1"), key, "/tmp/x", {"password": "s3cret"})
    config = AgentConfig(**{**CONFIG.__dict__, "key": key})
    for text in (repr(command), repr(config)):
        assert key not in text and "s3cret" not in text
    assert "s3cret" in command.private_input().decode() and key in command.private_env().values()


def test_a_sealed_message_checks_every_field_and_a_key_file_must_be_private(tmp_path):
    key = auth.new_key()
    sealed = auth.seal(key, {"node": 1, "nonce": "abc"})
    assert auth.unseal(key, sealed, "it") == {"node": 1, "nonce": "abc"}
    for changed in ({**sealed, "node": 2}, {**sealed, "mac": "0" * 64}, {"node": 1}):
        with pytest.raises(ProtocolError, match="not signed"):
            auth.unseal(key, changed, "it")
    path = tmp_path / "job.key"
    auth.write_key_file(str(path), key)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and auth.read_key_file(str(path)) == key
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        auth.read_key_file(str(path))


def test_a_pause_notice_is_written_whole_and_read_back_checked(tmp_path):
    notice = PauseNotice(rank=1, pid=9, reason="breakpoint", file="cell.py", line=3, function="f",
                         source="x = 1", cell=7, exception=None, socket="/tmp/s")
    path = str(tmp_path / "paused.json")
    notice.write(path)
    assert PauseNotice.read(path) == notice
    (tmp_path / "paused.json").write_text('{"rank": 1}')
    with pytest.raises(ProtocolError, match="no field"):
        PauseNotice.read(path)

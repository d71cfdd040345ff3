"""EtcdServer: a real local etcd starts healthy, stops without leftovers, serves
the v2 API only when asked, fails with clear errors, and never outlives the
process that started it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from util import alive, wait_until

from elastic_nb.rendezvous import etcd_server
from elastic_nb.rendezvous.etcd_server import ETCD_BINARY_ENV, EtcdServer, EtcdServerError

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str) -> int:
    try:
        with _HTTP.open(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_start_serves_and_stop_leaves_nothing() -> None:
    server = EtcdServer()
    with server:
        host, port = server.endpoint.split(":")
        assert host == "127.0.0.1" and int(port) == server.port
        assert server.client_url == f"http://{server.endpoint}"
        with _HTTP.open(f"{server.client_url}/health", timeout=5) as response:
            assert json.load(response)["health"] == "true"
        pid, data_dir, base_dir = server.pid, server.data_dir, server.data_dir.parent
        assert pid is not None and alive(pid)
        assert data_dir.is_dir()
        assert server.is_running and "127.0.0.1" in repr(server)
    assert not alive(pid)
    assert not base_dir.exists()
    assert not server.is_running and server.pid is None
    with pytest.raises(EtcdServerError, match="not running"):
        _ = server.endpoint
    server.stop()  # idempotent


def test_stop_after_etcd_died_on_its_own() -> None:
    server = EtcdServer().start()
    base_dir = server.data_dir.parent
    os.kill(server.pid, signal.SIGKILL)
    wait_until(lambda: not server.is_running, timeout=5, what="etcd to die")
    server.stop()
    assert not base_dir.exists()


def test_restart_gets_a_fresh_server() -> None:
    with EtcdServer() as server:
        first = server.pid
        server.stop()
        server.start()
        assert server.pid != first and server.is_running
    assert not alive(first)


def test_v2_api_only_when_enabled(etcd_v3_server: EtcdServer, etcd_v2_server: EtcdServer) -> None:
    assert http_status(f"{etcd_v3_server.client_url}/v2/keys") == 404
    assert http_status(f"{etcd_v2_server.client_url}/v2/keys") == 200


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-etcd"
    with pytest.raises(EtcdServerError, match="no-such-etcd.*does not exist"):
        EtcdServer(binary=missing).start()


def test_non_executable_binary_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "etcd"
    fake.write_text("not a program")
    with pytest.raises(EtcdServerError, match="not executable"):
        EtcdServer(binary=fake).start()


def test_binary_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ETCD_BINARY_ENV, str(tmp_path / "env-etcd"))
    with pytest.raises(EtcdServerError, match=f"env-etcd.*{ETCD_BINARY_ENV}"):
        EtcdServer().start()


def record_temp_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []
    real_mkdtemp = etcd_server.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs) -> str:
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(etcd_server.tempfile, "mkdtemp", mkdtemp)
    return made


def test_etcd_that_exits_at_start_reports_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    made = record_temp_dirs(monkeypatch)
    server = EtcdServer(extra_args=["--no-such-flag"])
    with pytest.raises(EtcdServerError, match=r"(?s)exited with code.*no-such-flag"):
        server.start()
    assert made and not any(d.exists() for d in made)
    assert server.pid is None and server.data_dir is None


def test_etcd_that_never_gets_healthy_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = record_temp_dirs(monkeypatch)
    sleeper = tmp_path / "etcd"
    sleeper.write_text("#!/bin/sh\necho pretending to be etcd\nexec sleep 60\n")
    sleeper.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(EtcdServerError, match=r"(?s)not healthy within 1 s.*pretending to be etcd"):
        EtcdServer(binary=sleeper, start_timeout=1).start()
    assert time.monotonic() - started < 10
    assert not any(d.exists() for d in made)
    assert not [p for p in psutil.Process().children() if p.name() == "sleep"]


# A child interpreter loads etcd_server.py by path (not the package, so no
# torch import), starts a server and reports its pid and directory.
_CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    spec = importlib.util.spec_from_file_location("etcd_server", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.EtcdServer().start()
    print(json.dumps({"pid": server.pid, "dir": str(server.data_dir.parent)}), flush=True)
    if sys.argv[2] == "hang":
        time.sleep(60)
    """
)


def run_child(mode: str) -> tuple[subprocess.Popen[str], dict]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, etcd_server.__file__, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    info = json.loads(child.stdout.readline())
    return child, info


def test_server_does_not_outlive_a_normal_exit() -> None:
    child, info = run_child("exit")
    assert child.wait(30) == 0
    assert not alive(info["pid"])
    assert not Path(info["dir"]).exists()


def test_server_does_not_outlive_a_killed_owner() -> None:
    child, info = run_child("hang")
    assert alive(info["pid"])
    child.kill()
    child.wait()
    wait_until(lambda: not alive(info["pid"]), timeout=15, what="the watchdog to stop etcd")
    wait_until(lambda: not Path(info["dir"]).exists(), timeout=5,
               what="the watchdog to remove etcd's directory")

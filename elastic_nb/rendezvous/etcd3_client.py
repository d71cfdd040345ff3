"""The etcd v3 client side of the ``etcd3`` backend: its settings and one connection.

``Etcd3Config`` reads the rdzv configs (endpoint, TLS, auth, timeouts, ttl);
``Etcd3Connection`` owns one ``pyetcd`` client, checks that etcd answers
within the connect timeout, re-authenticates an expired token and turns
gRPC errors into torch's ``RendezvousConnectionError`` with the endpoint
named. The backend (``etcd3``) and the store (``etcd3_store``) share it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError, RendezvousParameters
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

log = logging.getLogger(__name__)

BACKEND_NAME = "etcd3"
DEFAULT_PORT = 2379
KEY_PREFIX = "/torchelastic/elastic_nb"
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_STATE_TTL = 7200

# A blocking store read re-checks its keys at least this often, even when no
# watch event arrives.
WATCH_SLICE = 2.0

T = TypeVar("T")


def _first(params: RendezvousParameters, *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if value:
            return str(value).strip()
    return None


def _seconds(params: RendezvousParameters, name: str, default: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"The rendezvous config '{name}' must be a number of seconds, got {raw!r}.") from None
    if value <= 0:
        raise ValueError(f"The rendezvous config '{name}' must be positive, got {raw!r}.")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Etcd3Config:
    """Where and how to reach etcd.

    ``secure`` selects TLS; ``cacert`` (default: system roots), ``cert`` and
    ``key`` are PEM file paths; ``user``/``password`` enable etcd auth.
    """

    host: str
    port: int = DEFAULT_PORT
    secure: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    read_timeout: float = DEFAULT_READ_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("etcd3: a client certificate needs both 'cert' and 'key'.")
        if (self.cacert or self.cert) and not self.secure:
            raise ValueError("etcd3: TLS files were given for a plain-http endpoint; use https.")
        if bool(self.user) != bool(self.password):
            raise ValueError("etcd3: authentication needs both 'user' and 'password'.")

    @property
    def endpoint(self) -> str:
        """``scheme://host:port``, as shown in messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}"

    @classmethod
    def from_endpoint(cls, endpoint: str | None, **options: Any) -> Etcd3Config:
        """Parse ``host[:port]`` or ``http(s)://host[:port]`` (default port 2379).

        ``options`` are the other fields; an explicit ``secure`` must agree
        with the URL scheme. Without a scheme or ``secure``, TLS is used when
        TLS files are given.
        """
        text = (endpoint or "").strip().rstrip("/")
        secure = options.pop("secure", None)
        scheme, sep, rest = text.partition("://")
        if sep:
            if scheme.lower() not in ("http", "https"):
                raise ValueError(f"etcd3: unsupported scheme in endpoint {endpoint!r}; use http or https.")
            scheme_secure = scheme.lower() == "https"
            if secure is not None and secure != scheme_secure:
                raise ValueError(f"etcd3: endpoint {endpoint!r} contradicts protocol={'https' if secure else 'http'}.")
            secure = scheme_secure
            text = rest
        if secure is None:
            secure = bool(options.get("cacert") or options.get("cert"))
        host, port = parse_rendezvous_endpoint(text, default_port=DEFAULT_PORT)
        return cls(host=host, port=port, secure=secure, **options)

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> Etcd3Config:
        """Build from torch rendezvous parameters (endpoint plus rdzv configs)."""
        protocol = _first(params, "protocol")
        secure: bool | None = None
        if protocol is not None:
            if protocol.lower() not in ("http", "https"):
                raise ValueError(f"etcd3: protocol must be http or https, got {protocol!r}.")
            secure = protocol.lower() == "https"
        return cls.from_endpoint(
            params.endpoint,
            secure=secure,
            cacert=_first(params, "cacert", "ca_cert"),
            cert=_first(params, "cert", "ssl_cert"),
            key=_first(params, "key", "ssl_cert_key"),
            user=_first(params, "user"),
            password=_first(params, "password"),
            read_timeout=_seconds(params, "read_timeout", DEFAULT_READ_TIMEOUT),
            connect_timeout=_seconds(params, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        )


def _describe(exc: BaseException) -> str:
    """A one-line cause, digging out the gRPC detail pyetcd's exceptions hide."""
    import grpc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.RpcError) and error_code(seen) is not None:
            return f"{error_code(seen).name}: {seen.details()}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class Etcd3Connection:
    """One gRPC connection to etcd shared by a backend and its store.

    `open` checks that etcd answers within ``connect_timeout``. Every call
    goes through `call`, which turns client failures into ``error_type`` with
    a message naming the endpoint, and re-authenticates once when an auth
    token has expired.
    """

    def __init__(self, config: Etcd3Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._client: Any = None

    @classmethod
    def open(cls, config: Etcd3Config) -> Etcd3Connection:
        """Connect and check that etcd answers.

        Raises:
            RendezvousConnectionError: etcd did not answer within
                ``connect_timeout``, or refused the credentials.
        """
        import grpc

        connection = cls(config)
        try:
            connection._client = connection._new_client(config.connect_timeout)
            try:
                connection._client.get(KEY_PREFIX)
            except grpc.RpcError as exc:
                # A user whose role does not cover this key still reached etcd.
                if error_code(exc) != grpc.StatusCode.PERMISSION_DENIED:
                    raise
        except Exception as exc:
            connection.close()
            raise RendezvousConnectionError(
                f"The {BACKEND_NAME} rendezvous backend cannot reach etcd at {config.endpoint} "
                f"(connect timeout {config.connect_timeout:g} s): {_describe(exc)}"
            ) from exc
        connection._client.timeout = config.read_timeout
        return connection

    def _new_client(self, timeout: float) -> Any:
        import grpc
        import pyetcd

        config = self.config
        options = [
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if _is_loopback(config.host):
            options.append(("grpc.enable_http_proxy", 0))
        credentials = None
        if config.secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(config.cacert),
                private_key=_read(config.key),
                certificate_chain=_read(config.cert),
            )
        # time_retry=0: pyetcd would otherwise refuse every call for 300 s
        # after one failed request on a single endpoint.
        endpoint = pyetcd.Endpoint(
            config.host, config.port, secure=config.secure, creds=credentials,
            time_retry=0, opts=options,
        )
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[endpoint], timeout=timeout, user=config.user, password=config.password
        )
        if not config.secure:
            # gRPC refuses call credentials on a plain channel; the auth token
            # also travels as request metadata, which is all etcd reads.
            client.call_credentials = None
        return client

    @property
    def client(self) -> Any:
        """The ``pyetcd`` client (for callers that need raw etcd access)."""
        if self._client is None:
            raise RuntimeError("The etcd3 connection is closed.")
        return self._client

    def call(self, what: str, fn: Callable[[Any], T], error_type: type[Exception]) -> T:
        """Run ``fn(client)``; failures become ``error_type`` naming ``what`` and the endpoint."""
        import grpc

        client = self.client
        try:
            try:
                return fn(client)
            except grpc.RpcError as exc:
                if not (self.config.user and error_code(exc) == grpc.StatusCode.UNAUTHENTICATED):
                    raise
                return fn(self._reauthenticate(client))
        except Exception as exc:
            if isinstance(exc, error_type) or not _is_client_error(exc):
                raise
            raise error_type(
                f"{BACKEND_NAME}: {what} failed on etcd at {self.config.endpoint}: {_describe(exc)}"
            ) from exc

    def _reauthenticate(self, stale: Any) -> Any:
        """A client with a fresh auth token (etcd's simple tokens expire when idle)."""
        with self._lock:
            if self._client is stale:
                log.info("etcd auth token expired, authenticating again at %s", self.config.endpoint)
                self._client = self._new_client(self.config.read_timeout)
                stale.close()
            return self._client

    def close(self) -> None:
        """Close the gRPC channel. Idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def error_code(exc: BaseException) -> Any:
    """The gRPC status code of ``exc``, if it has one."""
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _is_client_error(exc: Exception) -> bool:
    import grpc
    import pyetcd.exceptions

    return isinstance(exc, (grpc.RpcError, pyetcd.exceptions.Etcd3Exception))


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()

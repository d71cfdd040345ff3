"""The ``etcd3`` rendezvous backend: torch elastic rendezvous on the etcd v3 API.

torch's own ``etcd`` and ``etcd-v2`` backends speak etcd's v2 API, which etcd
3.5 serves only with ``--enable-v2`` and etcd 3.6 no longer serves at all.
This module provides the same thing on the v3 API:

- `Etcd3RendezvousBackend`, a `RendezvousBackend` for torch's
  `DynamicRendezvousHandler`: the rendezvous state is one etcd key, set with
  v3 transactions whose fencing token is the key's ``mod_revision``;
- `Etcd3Store`, a `torch.distributed.Store` over etcd keys (blocking reads
  wait on etcd watches), which the handler hands to the agents. It passes
  torch's own check for Python stores (``torch.distributed._test_python_store``),
  ``clone()`` included, and times out with c10d's ``DistStoreError``;
- `create_etcd3_handler`, the registry creator, and `register`, which adds it
  to torch's rendezvous registry as ``etcd3``. The package also declares it
  under the ``torchrun.handlers`` entry point group, so a plain
  ``torchrun --rdzv-backend etcd3 --rdzv-endpoint HOST:PORT`` finds it.

Keys live under ``/torchelastic/elastic_nb/<run_id>/``: ``state`` for the
rendezvous state (on a lease, so an abandoned run's state expires after
``ttl`` seconds, 2 h by default) and ``store/<key>`` for store keys (no
expiry, like torch's etcd store).

rdzv configs read here: ``protocol`` (http/https), ``cacert``, ``cert``,
``key`` (also spelled ``ca_cert``, ``ssl_cert``, ``ssl_cert_key`` as torch's
``etcd-v2`` does), ``user``, ``password``, ``read_timeout`` (per request and
store timeout, 60 s), ``connect_timeout`` (first contact, 10 s) and ``ttl``;
the join/last-call/close/heartbeat ones are torch's (`create_handler`).

Client library: ``etcd-sdk-python`` (module ``pyetcd``). It is the maintained
fork of ``python-etcd3`` with gRPC stubs regenerated for protobuf 5+, so it
installs next to current protobuf, whereas ``etcd3`` 0.12 (last release 2020)
fails to import on protobuf >= 4 and would pin the whole environment to
protobuf 3. Its API is the one ``etcd3`` users know. It does not declare its
protobuf dependency, so the project does.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

# torch's rendezvous package loads the ``torchrun.handlers`` entry point (this
# module's `torchrun_handler`) and calls it while the package initializes. If
# this module is what first imports that package, the entry point meets this
# module half-imported, so what it needs is defined before that import.


def create_etcd3_handler(params: RendezvousParameters) -> RendezvousHandler:
    """The rendezvous handler creator registered as ``etcd3``."""
    backend, store = create_etcd3_backend(params)
    return create_handler(store, backend, params)


def torchrun_handler() -> RendezvousHandlerCreator:
    """The ``torchrun.handlers`` entry point: torch calls it and registers the
    creator it returns under the entry point's name (``etcd3``)."""
    return create_etcd3_handler


import torch.distributed as dist  # noqa: E402
from torch.distributed.elastic.rendezvous.api import (  # noqa: E402
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousHandlerCreator,
    RendezvousParameters,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (  # noqa: E402
    RendezvousBackend,
    Token,
    create_handler,
)
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint  # noqa: E402

__all__ = [
    "BACKEND_NAME",
    "DEFAULT_PORT",
    "KEY_PREFIX",
    "Etcd3Config",
    "Etcd3Connection",
    "Etcd3RendezvousBackend",
    "Etcd3Store",
    "create_etcd3_backend",
    "create_etcd3_handler",
    "register",
    "torchrun_handler",
]

log = logging.getLogger(__name__)

BACKEND_NAME = "etcd3"
DEFAULT_PORT = 2379
KEY_PREFIX = "/torchelastic/elastic_nb"
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_STATE_TTL = 7200

# A blocking store read re-checks its keys at least this often, even when no
# watch event arrives.
_WATCH_SLICE = 2.0

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
        if isinstance(seen, grpc.RpcError) and _code(seen) is not None:
            return f"{_code(seen).name}: {seen.details()}"
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
                if _code(exc) != grpc.StatusCode.PERMISSION_DENIED:
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
                if not (self.config.user and _code(exc) == grpc.StatusCode.UNAUTHENTICATED):
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


def _code(exc: BaseException) -> Any:
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


class Etcd3RendezvousBackend(RendezvousBackend):
    """Holds torch's rendezvous state in one etcd v3 key.

    The fencing token is the key's ``mod_revision``: `set_state` writes only if
    the key was not modified since (or, with no token, does not exist yet), in
    one transaction that otherwise returns the current state.

    Args:
        connection: the etcd connection.
        run_id: the rendezvous run id.
        key_prefix: keys go under ``<key_prefix>/<run_id>/``.
        ttl: seconds the state outlives its last write (0 or None: forever).
    """

    def __init__(
        self,
        connection: Etcd3Connection,
        run_id: str,
        key_prefix: str = KEY_PREFIX,
        ttl: int | None = DEFAULT_STATE_TTL,
    ) -> None:
        if not run_id:
            raise ValueError("The run id must be a non-empty string.")
        self._connection = connection
        self.key = f"{key_prefix.rstrip('/')}/{run_id}/state"
        self._ttl = ttl if ttl and ttl > 0 else None
        self._lease_id: int | None = None
        self._lease_renew_at = 0.0
        self._lease_lock = threading.Lock()

    @property
    def name(self) -> str:
        """See base class."""
        return BACKEND_NAME

    def get_state(self) -> tuple[bytes, Token] | None:
        """See base class."""

        def read(client: Any) -> tuple[bytes, Token] | None:
            value, meta = client.get(self.key)
            return None if meta is None else (value, meta.mod_revision)

        return self._connection.call(f"reading {self.key}", read, RendezvousConnectionError)

    def set_state(
        self, state: bytes, token: Token | None = None
    ) -> tuple[bytes, Token, bool] | None:
        """See base class."""
        if token is not None and not isinstance(token, int):
            current = self.get_state()
            return None if current is None else (*current, False)

        def write(client: Any) -> tuple[bytes, Token, bool] | None:
            import grpc

            txn = client.transactions
            guard = txn.create(self.key) == 0 if token is None else txn.mod(self.key) == token
            for attempt in (1, 2):
                try:
                    ok, responses = client.transaction(
                        compare=[guard],
                        success=[txn.put(self.key, state, lease=self._lease(client)), txn.get(self.key)],
                        failure=[txn.get(self.key)],
                    )
                except grpc.RpcError as exc:
                    if attempt == 1 and _code(exc) == grpc.StatusCode.NOT_FOUND:
                        self._forget_lease()  # the lease expired or etcd lost it
                        continue
                    raise
                break
            kvs = responses[-1]
            if not kvs:
                return None
            value, meta = kvs[0]
            return value, meta.mod_revision, ok

        return self._connection.call(f"writing {self.key}", write, RendezvousConnectionError)

    def _lease(self, client: Any) -> int | None:
        """A lease of ``ttl`` seconds, granted anew once half of it has passed."""
        if self._ttl is None:
            return None
        with self._lease_lock:
            now = time.monotonic()
            if self._lease_id is None or now >= self._lease_renew_at:
                self._lease_id = client.lease(self._ttl).id
                self._lease_renew_at = now + self._ttl / 2
            return self._lease_id

    def _forget_lease(self) -> None:
        with self._lease_lock:
            self._lease_id = None


def _key_text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _value_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class Etcd3Store(dist.Store):
    """A ``torch.distributed.Store`` kept in etcd under ``prefix``.

    Values are bytes. `get`, `multi_get` and `wait` block until the keys exist
    (woken by etcd watches) or the timeout passes, then raise
    ``DistStoreError`` ("Timeout waiting for key(s) ...", as c10d's stores
    word it) naming the missing keys; a zero timeout waits forever, as in
    c10d. Connection failures raise ``DistNetworkError``.

    `clone` gives another store on the same etcd connection and prefix, for
    use from another thread (the gRPC connection is thread-safe).
    """

    def __init__(
        self,
        connection: Etcd3Connection,
        prefix: str,
        timeout: timedelta | None = None,
    ) -> None:
        super().__init__()
        self._connection = connection
        self.prefix = prefix.rstrip("/") + "/"
        self._clones: list[Etcd3Store] = []
        if timeout is not None:
            self.set_timeout(timeout)

    def _key(self, key: str | bytes) -> str:
        return self.prefix + _key_text(key)

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        return self._connection.call(what, fn, dist.DistNetworkError)

    def _timeout(self) -> timedelta:
        """The store's timeout (``Store.timeout``, a pybind property torch's stubs lack)."""
        return self.timeout  # type: ignore[attr-defined]

    def set(self, key: str, value: str | bytes) -> None:
        """Set ``key`` to ``value``."""
        self._call(f"set {key!r}", lambda c: c.put(self._key(key), _value_bytes(value)))

    def get(self, key: str) -> bytes:
        """The value of ``key``, waiting up to the store timeout for it to exist."""
        return self._wait_for([key], self._timeout())[0]

    def multi_get(self, keys: list[str]) -> list[bytes]:
        """The values of ``keys``, waiting up to the store timeout for all of them."""
        return self._wait_for(keys, self._timeout())

    def multi_set(self, keys: list[str], values: list[str | bytes]) -> None:
        """Set all ``keys`` to ``values`` in one transaction."""
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values.")

        def write(client: Any) -> None:
            puts = [client.transactions.put(self._key(k), _value_bytes(v)) for k, v in zip(keys, values, strict=True)]
            client.transaction(compare=[], success=puts, failure=[])

        self._call(f"multi_set {list(keys)!r}", write)

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        """Wait until all ``keys`` exist (``timeout`` defaults to the store's)."""
        self._wait_for(keys, self._timeout() if timeout is None else timeout)

    def check(self, keys: list[str]) -> bool:
        """Whether all ``keys`` exist now."""
        return all(value is not None for value in self._read(keys)[0])

    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the integer at ``key`` (absent counts as 0); return the sum."""
        full = self._key(key)

        def increment(client: Any) -> int:
            txn = client.transactions
            ok, responses = client.transaction(
                compare=[txn.create(full) == 0],
                success=[txn.put(full, str(amount))],
                failure=[txn.get(full)],
            )
            while not ok:
                if not responses[0]:
                    guard, total = txn.create(full) == 0, amount
                else:
                    value, meta = responses[0][0]
                    total = _as_int(key, value) + amount
                    guard = txn.mod(full) == meta.mod_revision
                ok, responses = client.transaction(
                    compare=[guard], success=[txn.put(full, str(total))], failure=[txn.get(full)]
                )
                if ok:
                    return total
            return amount

        return self._call(f"add to {key!r}", increment)

    def compare_set(self, key: str, expected_value: str | bytes, desired_value: str | bytes) -> bytes:
        """c10d compare-and-set: write ``desired_value`` if the current value is
        ``expected_value`` (or the key is absent and ``expected_value`` is empty).
        Returns the value now stored, or ``expected_value`` if the key is absent
        and was not created."""
        full = self._key(key)
        expected, desired = _value_bytes(expected_value), _value_bytes(desired_value)

        def swap(client: Any) -> bytes:
            txn = client.transactions
            ok, responses = client.transaction(
                compare=[txn.value(full) == expected],
                success=[txn.put(full, desired)],
                failure=[txn.get(full)],
            )
            if ok:
                return desired
            if responses[0]:
                return responses[0][0][0]
            if expected:
                return expected
            ok, responses = client.transaction(
                compare=[txn.create(full) == 0],
                success=[txn.put(full, desired)],
                failure=[txn.get(full)],
            )
            return desired if ok else responses[0][0][0]

        return self._call(f"compare_set {key!r}", swap)

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; whether it existed."""
        return self._call(f"delete {key!r}", lambda c: c.delete(self._key(key)))

    def num_keys(self) -> int:
        """How many keys the store holds."""
        return self._call("num_keys", lambda c: c.get_prefix_response(self.prefix, count_only=True).count)

    def clone(self) -> Etcd3Store:
        """A new store on the same etcd connection and prefix, with this store's
        timeout, safe to use from another thread.

        This store keeps a reference to each clone, so a clone lives at least
        as long as this store. torch needs that when C++ code clones (as
        ``PrefixStore.clone()`` and c10d's own checks do): its trampoline
        keeps only the C++ half of the returned store, and once the Python
        object is gone every call on the clone fails with "Not implemented"
        (pytorch issue #106633).
        """
        clone = Etcd3Store(self._connection, self.prefix, timeout=self._timeout())
        self._clones.append(clone)
        return clone

    # torch's C++ trampoline for Python stores forwards these two under their
    # C++ names, so a PrefixStore over this store needs these aliases.
    deleteKey = delete_key
    getNumKeys = num_keys

    def _read(self, keys: Sequence[str]) -> tuple[list[bytes | None], int]:
        """Current values of ``keys`` (None where absent) and the etcd revision read."""

        def read(client: Any) -> tuple[list[bytes | None], int]:
            from pyetcd import etcdrpc

            request = etcdrpc.TxnRequest(
                success=[
                    etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=self._key(k).encode()))
                    for k in keys
                ]
            )
            response = client.kvstub.Txn(
                request, client.timeout, credentials=client.call_credentials, metadata=client.metadata
            )
            values = [
                op.response_range.kvs[0].value if op.response_range.kvs else None
                for op in response.responses
            ]
            return values, response.header.revision

        return self._call(f"read {list(keys)!r}", read)

    def _wait_for(self, keys: Sequence[str], timeout: timedelta) -> list[bytes]:
        seconds = timeout.total_seconds()
        deadline = None if seconds == 0 else time.monotonic() + seconds
        while True:
            values, revision = self._read(keys)
            missing = [k for k, v in zip(keys, values, strict=True) if v is None]
            if not missing:
                return values  # type: ignore[return-value]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise dist.DistStoreError(
                    f"{BACKEND_NAME} store: Timeout waiting for key(s) {missing} after "
                    f"{seconds * 1000:.0f} ms under {self.prefix!r} on etcd at "
                    f"{self._connection.config.endpoint}."
                )
            slice_ = _WATCH_SLICE if remaining is None else min(remaining, _WATCH_SLICE)
            self._watch(self._key(missing[0]), revision, slice_)

    def _watch(self, key: str, revision: int, seconds: float) -> None:
        """Return when ``key`` changes after ``revision``, or after ``seconds``."""
        import pyetcd.exceptions

        def watch(client: Any) -> object:
            try:
                return client.watch_once_response(key, timeout=seconds, start_revision=revision + 1)
            except (pyetcd.exceptions.WatchTimedOut, pyetcd.exceptions.RevisionCompactedError):
                return None  # nothing happened, or history is gone: read again

        outcome = self._call(f"watch {key!r}", watch)
        if isinstance(outcome, Exception):
            # The watch stream broke; the next read reports a dead connection.
            time.sleep(min(seconds, 0.1))


def _as_int(key: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{BACKEND_NAME} store: add() on {key!r} whose value {value!r} is not an integer.") from None


def create_etcd3_backend(params: RendezvousParameters) -> tuple[Etcd3RendezvousBackend, Etcd3Store]:
    """The backend and store for ``params``, sharing one checked connection.

    Raises:
        RendezvousConnectionError: etcd did not answer within ``connect_timeout``.
        ValueError: a malformed endpoint or rdzv config.
    """
    config = Etcd3Config.from_params(params)
    ttl = params.get_as_int("ttl", DEFAULT_STATE_TTL)
    connection = Etcd3Connection.open(config)
    backend = Etcd3RendezvousBackend(connection, params.run_id, ttl=ttl)
    store = Etcd3Store(
        connection,
        f"{KEY_PREFIX}/{params.run_id}/store",
        timeout=timedelta(seconds=config.read_timeout),
    )
    return backend, store


def register() -> None:
    """Register ``etcd3`` in torch's rendezvous handler registry. Idempotent."""
    rendezvous_handler_registry.register(BACKEND_NAME, create_etcd3_handler)

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

import threading
import time
from datetime import timedelta
from typing import Any

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

from elastic_nb.rendezvous.etcd3_client import (  # noqa: E402
    BACKEND_NAME,
    DEFAULT_PORT,
    DEFAULT_STATE_TTL,
    KEY_PREFIX,
    Etcd3Config,
    Etcd3Connection,
    error_code,
)
from elastic_nb.rendezvous.etcd3_store import Etcd3Store  # noqa: E402

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
                    if attempt == 1 and error_code(exc) == grpc.StatusCode.NOT_FOUND:
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

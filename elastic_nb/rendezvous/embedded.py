"""The embedded c10d default: a TCPStore hosted in the kernel, on a free port.

Hosting the rendezvous store on the Job's side (not in node 0's agent, as
``torchrun --standalone`` does) means killing any node, node 0 included,
never takes the rendezvous down.

The store holds the job's pickled code and its join token, so it listens only
on the address it is given (loopback by default). TCPStore itself binds its
server to every interface whatever its host argument, so `host_store` binds
the listening socket and hands it over (``master_listen_fd``).
"""

from __future__ import annotations

import socket
import sys
from datetime import timedelta

from torch.distributed import DistNetworkError, TCPStore


def host_store(host: str = "127.0.0.1", port: int = 0, multi_tenant: bool = False) -> TCPStore:
    """Start a TCPStore server in this process, listening on ``host`` only;
    its ``.port`` is the one bound (a free one for ``port=0``). A
    ``multi_tenant`` server is the one later multi-tenant TCPStores of this
    process on that port use (as ``init_process_group``'s does).

    Raises:
        DistNetworkError: ``host:port`` cannot be bound (in use, or not an
            address of this machine).
    """
    listener = _bind(host, port)
    bound_port = listener.getsockname()[1]
    # TCPStore owns the descriptor from here on and closes it with the server.
    return TCPStore(host, bound_port, is_master=True, wait_for_workers=False,
                    timeout=timedelta(seconds=60), master_listen_fd=listener.detach(),
                    multi_tenant=multi_tenant)


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to the first address of ``host`` that binds."""
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DistNetworkError(f"The embedded c10d store cannot resolve {host!r}: {exc}") from exc
    error: OSError | None = None
    for family, kind, proto, _, address in candidates:
        sock = socket.socket(family, kind, proto)
        try:
            if sys.platform != "win32":
                # As TCPStore does for its own server socket: a fixed port can
                # be reused while an earlier store's connections are in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise DistNetworkError(f"The embedded c10d store cannot listen on {host}:{port}: {error}") from error


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for overrides such as ``master_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]

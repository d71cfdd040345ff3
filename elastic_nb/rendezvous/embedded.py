"""The embedded c10d default: a TCPStore hosted in the kernel, on a free port.

Hosting the rendezvous store on the Job's side (not in node 0's agent, as
``torchrun --standalone`` does) means killing any node, node 0 included,
never takes the rendezvous down.
"""

from __future__ import annotations

import socket
from datetime import timedelta

from torch.distributed import TCPStore


def host_store(host: str = "127.0.0.1", port: int = 0) -> TCPStore:
    """Start a TCPStore server in this process; its ``.port`` is the one bound."""
    return TCPStore(host, port, is_master=True, wait_for_workers=False,
                    timeout=timedelta(seconds=60))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for overrides such as ``master_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]

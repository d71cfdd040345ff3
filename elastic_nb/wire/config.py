"""What a node host is given to run one node of a job, and what each worker is given.

``AgentConfig`` travels from the Job to a local host (``commands.Configure``)
or is built by a node that joins from the join descriptor; ``from_message``
checks every field, so a host never starts a job from a malformed
configuration. ``JobContext`` is what the host hands each worker (through
torch's process start) so that a worker forked from a warm forkserver takes
on this job's environment, path and cwd, not an earlier job's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from elastic_nb.wire.checkpoints import CHECKPOINT_DIR_ENV
from elastic_nb.wire.options import BACKENDS, JobOptions
from elastic_nb.wire.records import ProtocolError, checked_fields, decode_bytes, encode_bytes

FORKSERVER_PRELOAD = ("torch", "torch.distributed", "torch.distributed.checkpoint", "torch._dynamo",
                      "torch.distributed.checkpoint._fsspec_filesystem", "torch.utils.serialization",
                      "torch.profiler._cupti_monitor", "elastic_nb.worker.trampoline")
"""What a host's forkserver imports before it forks workers (the host starts it first):
``torch._dynamo`` too, which building any optimizer imports (0.9 s a worker otherwise, at
every restart; README, bench_checkpoint), and what DCP's first load or save imports
(fsspec, serialization, the profiler's monitor: 20 ms of every restart's restore). A
name a later torch drops is skipped: the forkserver ignores an ImportError."""


@dataclass(frozen=True)
class AgentConfig:
    """Everything a node host needs to run one node of a job.

    ``payload`` is the cloudpickled function call the workers run.
    """

    node: int
    role: str
    nproc: int
    payload: bytes
    run_id: str
    backend: str
    endpoint: str
    options: JobOptions
    log_dir: str
    local_addr: str | None
    tee: bool = False
    # a local host takes on the kernel's environment, sys.path and cwd for each job
    env: dict[str, str] | None = None
    sys_path: list[str] | None = None
    cwd: str | None = None
    # the job's key: the host signs and checks the rendezvous state with it (None: the node
    # joined without it, under trust_store). Never printed, never given to a worker.
    key: str | None = field(default=None, repr=False)

    def to_message(self) -> dict[str, Any]:
        return {**asdict(self), "payload": encode_bytes(self.payload)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> AgentConfig:
        body = checked_fields(cls, message, "payload", "options")
        if "payload" not in message or "options" not in message:
            raise ProtocolError("AgentConfig message needs 'payload' and 'options'")
        config = cls(**body, payload=decode_bytes(message["payload"]),
                     options=JobOptions.from_message(message["options"]))
        if config.nproc < 1 or config.node < 0:
            raise ProtocolError(f"AgentConfig: node {config.node} with nproc {config.nproc}")
        if config.backend not in BACKENDS:
            raise ProtocolError(f"AgentConfig: unknown backend {config.backend!r}")
        return config


@dataclass(frozen=True)
class JobContext:
    """What a worker takes from its agent at start: the job's environment, path and cwd."""

    env: dict[str, str]
    sys_path: list[str]
    cwd: str
    post_mortem: bool = False  # a rank whose function raises waits for a debugger first
    post_mortem_timeout: float = 600.0
    collective_timeout: float | None = None  # the default timeout of the rank's process groups
    flight_recorder: bool = True  # torch's flight recorder on, for the hang map

    @classmethod
    def of_this_process(cls, options: JobOptions) -> JobContext:
        """This host's environment, path and cwd, with the job's checkpoint directory."""
        env = dict(os.environ)
        if options.checkpoint_dir is not None:
            env[CHECKPOINT_DIR_ENV] = options.checkpoint_dir
        return cls(env, list(sys.path), os.getcwd(), options.post_mortem,
                   options.post_mortem_timeout, options.collective_timeout,
                   options.flight_recorder)

"""Where a node's ranks write: torch's log layout, with a fresh attempt directory per start.

``NodeLogsSpecs`` lays each node's logs out as torch does
(``attempt_N/<local_rank>/{stdout,stderr}.log`` plus ``error.json``), except
that an attempt directory is never reused, so a restart caused by a
membership change cannot wipe the lines printed before it (torch's
``DefaultLogsSpecs`` reuses ``attempt_<restart_count>``).
"""

from __future__ import annotations

import os

from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs, Std

from elastic_nb.wire.rank_files import TORCH_VARS_KEY


class NodeLogsSpecs(LogsSpecs):
    """torch's log layout under one node's directory, a fresh attempt dir per start."""

    def __init__(self, node_dir: str, tee: bool = False) -> None:
        os.makedirs(node_dir, exist_ok=True)
        super().__init__(log_dir=node_dir, redirects=Std.ALL, tee=Std.ALL if tee else Std.NONE)
        self._node_dir = node_dir
        self._tees = tee
        self._next_attempt = 0
        self.last_attempt = -1

    @property
    def root_log_dir(self) -> str:
        return self._node_dir

    def stderr_of(self, local_rank: int) -> str:
        """The stderr file of a local rank of the last start."""
        return os.path.join(self._attempt_dir(self.last_attempt), str(local_rank), "stderr.log")

    def _attempt_dir(self, attempt: int) -> str:
        return os.path.join(self.root_log_dir, f"attempt_{attempt}")

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        self.last_attempt = self._next_attempt
        self._next_attempt += 1
        attempt_dir = self._attempt_dir(self.last_attempt)
        dest = LogsDest(
            filtered_stdout=os.path.join(attempt_dir, "filtered_stdout.log"),
            filtered_stderr=os.path.join(attempt_dir, "filtered_stderr.log"),
        )
        for local_rank, env in envs.items():
            rank_dir = os.path.join(attempt_dir, str(local_rank))
            os.makedirs(rank_dir)
            dest.stdouts[local_rank] = os.path.join(rank_dir, "stdout.log")
            dest.stderrs[local_rank] = os.path.join(rank_dir, "stderr.log")
            dest.error_files[local_rank] = os.path.join(rank_dir, "error.json")
            env["TORCHELASTIC_ERROR_FILE"] = dest.error_files[local_rank]
            # what torch set for this rank, so the worker can rebuild its environment on
            # top of the job's (a forkserver's children inherit an older job's)
            env[TORCH_VARS_KEY] = ",".join(sorted(env))
            if self._tees:
                dest.tee_stdouts[local_rank] = dest.stdouts[local_rank]
                dest.tee_stderrs[local_rank] = dest.stderrs[local_rank]
        return dest

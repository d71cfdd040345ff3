"""What can go wrong, as types: bad input, and a job whose ranks failed."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

PEER_LOSS_SIGNS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote process exited",  # NCCL
    "DistNetworkError",
    "recvValue failed",
    "Socket closed",
)
"""What a rank's error says when a peer it talked to went away (gloo, NCCL, the c10d store)."""


def broke_with_a_peer(message: str) -> bool:
    """Whether a rank's failure is a broken connection to a peer (a consequence, mostly)."""
    return any(sign in message for sign in PEER_LOSS_SIGNS)


class LaunchError(ValueError):
    """Bad input to ``launch``/``run``, raised before any process starts."""


@dataclass(frozen=True)
class RankFailure:
    """How one rank failed: torch's error file, or the signal or exit code that ended it."""

    rank: int
    local_rank: int
    role: str
    node: int
    exitcode: int
    signal: str | None
    message: str
    traceback: str | None
    restart_count: int
    time: float = field(default_factory=time.time)
    pid: int | None = None
    by_user: bool = False  # it died of the signal job.kill sent it (the cause, not a casualty)

    def summary(self) -> str:
        return f"rank {self.rank} (node {self.node}, {self.role}) failed: {self.message}"


def ordered_failures(failures: Iterable[RankFailure]) -> tuple[RankFailure, ...]:
    """Failures in the order they happened (by time, then rank): the first is the cause.

    torch stamps failures in whole seconds, so within one second a rank the
    user killed comes before the peers its death took down, and a rank that
    raised or died on its own before a rank whose connection to a peer broke.
    """
    return tuple(sorted(failures, key=lambda f: (
        f.time, not f.by_user, f.signal is None and broke_with_a_peer(f.message), f.rank)))


def first_failure(failures: Iterable[RankFailure]) -> RankFailure | None:
    ordered = ordered_failures(failures)
    return ordered[0] if ordered else None


class JobFailed(RuntimeError):
    """A job ended in failure (or was stopped) before all ranks succeeded.

    ``failures`` maps global rank to ``RankFailure``; it is empty when no rank
    failed (a node could not join the rendezvous, or the job was stopped).
    """

    def __init__(self, message: str, failures: dict[int, RankFailure] | None = None) -> None:
        super().__init__(message)
        self.failures: dict[int, RankFailure] = dict(failures or {})

    @classmethod
    def from_failures(cls, failures: dict[int, RankFailure]) -> JobFailed:
        first = ordered_failures(failures.values())[0]
        text = first.summary()
        if len(failures) > 1:
            others = sorted(r for r in failures if r != first.rank)
            text += f" (ranks {others} failed too)"
        if first.traceback:
            text += "\n\n" + first.traceback.rstrip()
        return cls(text, failures)

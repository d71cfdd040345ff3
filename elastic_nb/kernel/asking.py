"""Asking the ranks of every node at once, and waiting for the answers, wherever they run.

``Asked`` is one node's answer to one request (stacks, hang answers), by
rank. A local node's ranks are asked here, on a thread of its own
(``Asked.in_background``); a joined node's by its host, whose answer comes
back as a report that the pump hands to the node's handle, which finds the
request it answers among its ``Requests``. Every rank asked ends with an
answer or with what its node puts in its place (``missing``): the node
answered without it, did not answer in time, or its channel closed first.

``ask_nodes`` asks each node about its running ranks (the caller holds the
job's lock); ``gather`` waits for every answer against one deadline, off the
lock. Nothing here runs on the pump or waits for it: the pump only hands an
answer over.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from elastic_nb.model.state import WorkerInfo
from elastic_nb.wire.rank_files import RankTarget

T = TypeVar("T")
REPLY_GRACE = 1.0  # seconds a node's answer may take to travel, beyond the ranks' timeout

Missing = Callable[[int, str], T]
"""What stands for rank ``r``'s answer when its node gives none: ``missing(r, why)``."""


class Asked(Generic[T]):
    """One node's answer to one request, by rank: ``answer`` or ``fail`` it once (the first
    word counts); ``wait`` for it; ``in_background`` asks on a thread of its own."""

    def __init__(self, ranks: Iterable[int], missing: Missing[T],
                 forget: Callable[[], None] = lambda: None) -> None:
        self.ranks = sorted(ranks)
        self._missing = missing
        self._forget = forget  # the request is over: whoever keeps it lets go
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._answers: dict[int, T] = {}

    @classmethod
    def in_background(cls, ranks: Iterable[int], missing: Missing[T],
                      work: Callable[[], dict[int, T]], name: str) -> Asked[T]:
        """Ask on a thread of its own: ``work()``'s answers, or why it gave none."""
        asked = cls(ranks, missing)

        def run() -> None:
            try:
                asked.answer(work())
            except Exception as exc:  # an answer that says why beats a wait for nothing
                asked.fail(f"asking failed: {type(exc).__name__}: {exc}")

        threading.Thread(target=run, name=name, daemon=True).start()
        return asked

    def answer(self, answers: dict[int, T], why_not: str = "its answer left this rank out") -> None:
        """The answers came (only the ranks asked are kept; one left out gets ``why_not``)."""
        with self._lock:
            if self._done.is_set():
                return  # already answered, or given up on
            self._answers = {r: answers[r] if r in answers else self._missing(r, why_not)
                             for r in self.ranks}
            self._done.set()
        self._forget()

    def fail(self, why: str) -> None:
        """No answer will come: every rank asked gets ``why``."""
        self.answer({}, why)

    def wait(self, deadline: float, late: str) -> dict[int, T]:
        """The answers once they came; ``late`` for each rank if they did not by ``deadline``."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            self.fail(late)
        return self._answers


class Requests:
    """A joined node's requests waiting for their answers, by request number.

    ``add`` numbers a new one (one asked after ``close`` fails at once);
    ``answered`` hands a report's answers to its request (a late or unknown
    number is dropped); ``close`` fails every request still waiting: the
    node's channel closed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._waiting: dict[int, Asked] = {}
        self._closed: str | None = None

    def add(self, ranks: Iterable[int], missing: Missing[T]) -> tuple[int, Asked[T]]:
        with self._lock:
            number = next(self._numbers)
            asked: Asked[T] = Asked(ranks, missing, forget=lambda: self._forget(number))
            closed = self._closed
            if closed is None:
                self._waiting[number] = asked
        if closed is not None:
            asked.fail(closed)
        return number, asked

    def answered(self, number: int, answers: dict) -> None:
        with self._lock:
            asked = self._waiting.get(number)
        if asked is not None:
            asked.answer(answers)

    def close(self, why: str) -> None:
        with self._lock:
            self._closed = why
            waiting = list(self._waiting.values())
        for asked in waiting:
            asked.fail(why)

    def __len__(self) -> int:
        """How many requests wait for their answers."""
        with self._lock:
            return len(self._waiting)

    def _forget(self, number: int) -> None:
        with self._lock:
            self._waiting.pop(number, None)


def ask_nodes(workers: Iterable[WorkerInfo],
              ask: Callable[[int, list[RankTarget]], Asked[T]]) -> list[Asked[T]]:
    """``ask(node, targets)`` for each node with running ranks, about those ranks."""
    by_node: dict[int, list[RankTarget]] = {}
    for worker in sorted(workers, key=lambda w: w.rank):
        if worker.state.alive:
            by_node.setdefault(worker.node, []).append(
                RankTarget(rank=worker.rank, pid=worker.pid, rank_dir=worker.rank_dir))
    return [ask(node, targets) for node, targets in sorted(by_node.items())]


def gather(asked: list[Asked[T]], timeout: float) -> dict[int, T]:
    """Every node's answers, by rank, waiting at most ``timeout`` (and the reply's travel)."""
    deadline = time.monotonic() + timeout + REPLY_GRACE
    answers: dict[int, T] = {}
    for one in asked:
        answers.update(one.wait(deadline, f"it did not answer within {timeout:g} s"))
    return dict(sorted(answers.items()))

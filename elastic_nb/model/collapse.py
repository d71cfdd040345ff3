"""Identical lines from many ranks, shown once: ``[ranks 0-7]: line``.

When N ranks print the same text at about the same time (a warning, each
line of the same traceback), the merged view shows it once, naming the
ranks that printed it (the idea of pytorch RFC #162999). Per-rank views and
the files on disk keep every line. Pure functions: they test without a job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from elastic_nb.model import terminal
from elastic_nb.wire.logfiles import LogLine


def rank_ranges(ranks: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2,5,7-8``."""
    ordered = sorted(set(ranks))
    spans: list[str] = []
    start = previous = None
    for rank in ordered:
        if previous is not None and rank == previous + 1:
            previous = rank
            continue
        if start is not None:
            spans.append(f"{start}-{previous}" if previous != start else f"{start}")
        start = previous = rank
    if start is not None:
        spans.append(f"{start}-{previous}" if previous != start else f"{start}")
    return ",".join(spans)


@dataclass
class CollapsedLine:
    """One line of the merged view: a text and every rank that printed it there."""

    first: LogLine  # the earliest of the lines (its prefix, when one rank printed it)
    ranks: list[int] = field(default_factory=list)

    def render(self, template: str) -> str:
        if len(self.ranks) == 1:
            return self.first.render(template)
        return f"[ranks {rank_ranges(self.ranks)}]: {terminal.plain(self.first.text)}"

    def render_html(self, template: str) -> str:
        if len(self.ranks) == 1:
            return self.first.render_html(template)
        return f"[ranks {rank_ranges(self.ranks)}]: {terminal.to_html(self.first.text)}"


def collapse(lines: Sequence[LogLine], window: int = 256) -> list[CollapsedLine]:
    """Group each line with the same text printed by other ranks near it, in order.

    A group holds one line per rank: a line joins the latest group of its
    text unless its rank is in it already or more than ``window`` lines came
    since that group began (then it begins a new group). Groups keep the
    order in which they began, so a traceback printed by every rank reads as
    one traceback.
    """
    out: list[CollapsedLine] = []
    latest: dict[str, tuple[int, int]] = {}  # text -> (index in out, position it began at)
    for position, line in enumerate(lines):
        found = latest.get(line.text)
        if found is not None:
            index, began = found
            group = out[index]
            if line.source.rank not in group.ranks and position - began <= window:
                group.ranks.append(line.source.rank)
                continue
        latest[line.text] = (len(out), position)
        out.append(CollapsedLine(line, [line.source.rank]))
    return out

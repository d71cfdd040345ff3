"""The hang map: which rank is missing from which collective, and where it is instead.

Pure functions over what the ranks answered (``RankAnswer``: their flight
recorders, process groups and stacks, or why there is no answer; a record
of ``wire.rank_files``, since a joined node's host sends its ranks' answers
to the Job) give a ``HangReport``. For each process group, each member's last collective
entered and completed (sequence numbers per group, torch's flight
recorder's); the collective the waiting ranks are in; the suspects:

* ranks that never entered it (``rank 2 never entered all_reduce #7 of the
  default group; ranks 0, 1, 3 have waited in it for 14 s``), with where
  they are instead, the frame in the user's code (``cell 5, line 12``);
* ranks in a different collective at the same sequence number (a desync:
  ``ranks 0, 1, 3 in all_reduce #42 float[4]; rank 2 in all_gather #42``);
* ranks whose process is stopped, gone, or did not answer.

With no collective waiting anywhere it accuses nobody: ``no collective for
N s on any rank (computing?)``. ``str(report)`` is the short answer first,
then each group's state and the stacks, identical ones shown once.

torch ships an analyzer (``torch.distributed.flight_recorder``), built for
NCCL's dump files and their fields; gloo's in-memory entries carry no
completion states and group membership, so the rules here read what gloo
records (entries and ``pg_status``) and the groups the ranks created.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from elastic_nb.model.collapse import rank_ranges
from elastic_nb.model.frames import frame_name
from elastic_nb.wire.rank_files import RankAnswer

_FRAMEWORK = (os.sep + "torch" + os.sep, os.sep + "elastic_nb" + os.sep, "<frozen ", "threading.py")


@dataclass(frozen=True)
class Collective:
    """One collective a rank entered: its group, sequence number, op and shapes."""

    group: str
    seq: int
    op: str
    sizes: tuple
    dtypes: tuple
    entered_at: float  # seconds since the epoch, the rank's clock

    @property
    def signature(self) -> tuple:
        return self.op, self.sizes, self.dtypes

    def text(self) -> str:
        shape = ", ".join(f"{dtype.lower()}{list(size)}" for dtype, size in zip(self.dtypes, self.sizes,
                                                                             strict=False))
        return f"{self.op} #{self.seq}" + (f" {shape}" if shape else "")


@dataclass
class RankPart:
    """One rank's part of the report."""

    rank: int
    status: str
    note: str = ""
    entered: dict[str, Collective] = field(default_factory=dict)  # group -> last entered
    completed: dict[str, int] = field(default_factory=dict)  # group -> last completed seq
    where: str | None = None  # "cell 5, line 12: `time.sleep(600)`"
    # the main thread's frames, outermost first: file, line, function, source, notebook cell
    stack: tuple[tuple[str, int, str, str, int | None], ...] = ()


@dataclass
class GroupState:
    """One process group: its ranks, and the collective its waiting ranks are in."""

    name: str
    label: str  # "the default group", "group 1 (ranks 0, 1)"
    ranks: list[int]
    waiting_in: Collective | None = None
    waiting: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    elsewhere: dict[int, Collective] = field(default_factory=dict)  # a desync: rank -> its op


@dataclass
class HangReport:
    """Which rank is stuck in which collective and why: ``answer`` first, then ``detail``.

    ``suspects`` lists the ranks to look at; ``ranks[r]`` is each rank's part,
    ``groups`` each process group's state.
    """

    taken_at: float
    answer: str
    suspects: list[int]
    ranks: dict[int, RankPart]
    groups: dict[str, GroupState]
    attempt: int = 0

    @property
    def stalled_in_collective(self) -> bool:
        return any(g.waiting_in is not None for g in self.groups.values())

    def __str__(self) -> str:
        return f"{self.answer}\n\n{self.detail()}"

    def detail(self) -> str:
        lines = []
        for group in self.groups.values():
            lines.append(f"{group.label}:")
            for rank in group.ranks:
                lines.append(f"  rank {rank}: {_cell(self.ranks.get(rank), group.name)}")
        for ranks, stack in grouped_stacks(self.ranks.values()):
            lines.append("")
            lines.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}:")
            lines.extend(f"  {frame}" for frame in stack)
        return "\n".join(lines)


def hang_map_html(report: HangReport) -> str:
    """The hang map: a row per process group, a column per rank, what each rank does in each
    group (the suspects in red), then the answer and the stacks, identical ones once."""
    ranks = sorted(report.ranks)
    head = "".join(f"<th>rank {r}</th>" for r in ranks)
    rows = []
    for group in report.groups.values():
        cells = []
        for rank in ranks:
            text = _cell(report.ranks.get(rank), group.name) if rank in group.ranks else ""
            suspect = rank in report.suspects and rank in group.ranks
            style = "background:#f5b7b1;font-weight:bold" if suspect else ""
            cells.append(f"<td style='{style}'>{html.escape(text)}</td>")
        rows.append(f"<tr><th style='text-align:left'>{html.escape(group.label)}</th>"
                    f"{''.join(cells)}</tr>")
    stacks = "\n\n".join(
        f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}:\n" + "\n".join(f"  {f}" for f in s)
        for r, s in grouped_stacks(report.ranks.values()))
    return (f"<div class='enb-hang-answer' style='font-family:monospace;margin:4px 0'>"
            f"<b>{html.escape(report.answer)}</b></div>"
            f"<table class='enb-hang-map' style='font-family:monospace;font-size:12px'>"
            f"<tr><th></th>{head}</tr>{''.join(rows)}</table>"
            f"<pre style='font-size:12px'>{html.escape(stacks)}</pre>")


def _cell(part: RankPart | None, group: str) -> str:
    """What a rank does in a group, in a few words."""
    if part is None:
        return "no answer"
    if part.status != "answered":
        return f"{part.status}" + (f" ({part.note})" if part.note else "")
    entered = part.entered.get(group)
    if entered is None:
        return "no collective yet"
    done = part.completed.get(group, -1)
    state = "done" if done >= entered.seq else "in"
    return f"{state} {entered.text()}"


def grouped_stacks(parts: Iterable[RankPart]) -> list[tuple[list[int], list[str]]]:
    """The main thread's stack of each rank, ranks with identical stacks together."""
    groups: dict[tuple, list[int]] = {}
    for part in sorted(parts, key=lambda p: p.rank):
        if part.stack:
            groups.setdefault(part.stack, []).append(part.rank)
    return [(ranks, [f"{frame_name(f, line, cell)} in {fn}: {src}" for f, line, fn, src, cell in stack])
            for stack, ranks in groups.items()]


def where(frames: list[list[Any]]) -> str | None:
    """The innermost frame in the user's code: a notebook cell if any, else a file of theirs."""
    for _, line, _, source, cell in reversed(frames):
        if cell is not None:
            return f"{frame_name('', line, cell)}: `{source}`"
    for filename, line, function, source, _ in reversed(frames):
        if not any(part in filename for part in _FRAMEWORK):
            return f"{frame_name(filename, line, None)} in {function}: `{source}`"
    return None


def _rank_part(answer: RankAnswer) -> RankPart:
    part = RankPart(answer.rank, answer.status, answer.note)
    body = answer.answer or {}
    frames = body.get("stacks", {}).get("main", [])
    part.where = where(frames)
    part.stack = tuple((f, line, fn, src, cell) for f, line, fn, src, cell in frames
                       if not any(p in f for p in _FRAMEWORK[2:]))
    recorder = body.get("flight_recorder") or {}
    names: dict[str, str] = {}
    for entry in recorder.get("entries", []):
        if entry.get("is_p2p"):
            continue
        group = str(entry["process_group"][0])
        names[str(entry["pg_id"])] = group
        op = str(entry.get("profiling_name", "?")).split(":", 1)[-1]
        collective = Collective(group, int(entry["collective_seq_id"]), op,
                                tuple(tuple(s) for s in entry.get("input_sizes", [])),
                                tuple(entry.get("input_dtypes", [])),
                                int(entry.get("time_created_ns", 0)) / 1e9)
        if collective.seq >= part.entered.get(group, collective).seq:
            part.entered[group] = collective
    for pg_id, status in recorder.get("pg_status", {}).items():
        named = names.get(str(pg_id))
        if named is not None:
            part.completed[named] = int(status.get("last_completed_collective", -1))
    return part


def analyze(answers: list[RankAnswer], now: float, attempt: int = 0) -> HangReport:
    """The report of what the ranks answered at ``now``."""
    parts = {a.rank: _rank_part(a) for a in answers}
    members: dict[str, set[int]] = {}
    for a in answers:
        for name, ranks in ((a.answer or {}).get("groups") or {}).items():
            members.setdefault(str(name), set()).update(int(r) for r in ranks)
    for part in parts.values():
        for name in part.entered:
            members.setdefault(name, set()).add(part.rank)
    world = sorted(parts)
    groups = {}
    for name in sorted(members, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
        ranks = sorted(members[name] | (set(world) if name == "0" else set()))
        label = "the default group" if name == "0" else f"group {name} (ranks {rank_ranges(ranks)})"
        groups[name] = _group_state(name, label, ranks, parts)
    answer, suspects = _answer(groups, parts, now)
    return HangReport(now, answer, suspects, parts, groups, attempt)


def _group_state(name: str, label: str, ranks: list[int], parts: dict[int, RankPart]) -> GroupState:
    state = GroupState(name, label, ranks)
    answered = [parts[r] for r in ranks if r in parts and parts[r].status == "answered"]
    waiting = [p for p in answered if name in p.entered
               and p.completed.get(name, -1) < p.entered[name].seq]
    if not waiting:
        return state
    seq = max(p.entered[name].seq for p in waiting)
    at_seq = [p for p in waiting if p.entered[name].seq == seq]
    state.waiting = [p.rank for p in at_seq]
    state.missing = [p.rank for p in answered if p.entered.get(name) is None
                     or p.entered[name].seq < seq]
    signatures: dict[tuple, list[int]] = {}
    for p in at_seq:
        signatures.setdefault(p.entered[name].signature, []).append(p.rank)
    majority = max(signatures.values(), key=len)
    state.waiting_in = parts[majority[0]].entered[name]
    state.waiting = majority
    state.elsewhere = {r: parts[r].entered[name] for ranks_ in signatures.values()
                       if ranks_ is not majority for r in ranks_}
    return state


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _answer(groups: dict[str, GroupState], parts: dict[int, RankPart],
            now: float) -> tuple[str, list[int]]:
    sentences: list[str] = []
    suspects: list[int] = []
    quiet = [p for p in parts.values() if p.status != "answered"]
    for group in groups.values():
        if group.waiting_in is None:
            continue
        op = group.waiting_in
        waited = max(0.0, now - min(parts[r].entered[group.name].entered_at for r in group.waiting))
        absent = [r for r in group.ranks if parts.get(r) is not None and parts[r].status != "answered"]
        if group.elsewhere:
            others = "; ".join(f"rank {r} in {c.text()}" for r, c in sorted(group.elsewhere.items()))
            sentences.append(f"{_ranks(group.waiting)} in {op.text()}; {others} of {group.label} "
                             "(a desync: the ranks called different collectives)")
            suspects += sorted(group.elsewhere)
        if group.missing:
            sentences.append(f"{_ranks(group.missing)} never entered {op.text()} of {group.label}; "
                             f"{_ranks(group.waiting)} {'has' if len(group.waiting) == 1 else 'have'} "
                             f"waited in it for {waited:.0f} s.")
            suspects += group.missing
        if absent:
            sentences.append(f"{_ranks(group.waiting)} wait{'s' if len(group.waiting) == 1 else ''} "
                             f"in {op.text()} of {group.label} for "
                             + "; ".join(f"rank {r}, {parts[r].status}"
                                         + (f" ({parts[r].note})" if parts[r].note else "")
                                         for r in absent) + ".")
            suspects += absent
    suspects = sorted(set(suspects))
    for rank in suspects:
        part = parts[rank]
        if part.where:
            sentences.append(f"rank {rank} is at {part.where}")
    if not sentences:
        if quiet:
            sentences.append("; ".join(f"rank {p.rank} {p.status}" + (f" ({p.note})" if p.note else "")
                                       for p in quiet) + "; no collective waits on it.")
        else:
            last = max((c.entered_at for p in parts.values() for c in p.entered.values()), default=None)
            since = f"for {now - last:.0f} s " if last else ""
            sentences.append(f"no collective {since}on any rank (computing?): nobody waits for anyone")
    return " ".join(sentences), suspects

"""Identical lines of many ranks collapse in the merged view; nothing else changes."""

from __future__ import annotations

from elastic_nb.model.collapse import collapse, rank_ranges
from elastic_nb.wire.logfiles import LogLine, LogSource

TEMPLATE = "[${role_name}${rank}]:"


def source(rank: int, stream: str = "stdout") -> LogSource:
    return LogSource(path=f"/logs/{rank}/{stream}.log", stream=stream, node=0, rank=rank,
                     local_rank=rank, role="trainer", group_rank=0, attempt=0, restart_count=0)


def lines(*printed: tuple[int, str]) -> list[LogLine]:
    sources: dict[int, LogSource] = {}
    return [LogLine(seq, float(seq), sources.setdefault(rank, source(rank)), text)
            for seq, (rank, text) in enumerate(printed)]


def shown(printed: list[LogLine], window: int = 256) -> list[str]:
    return [line.render(TEMPLATE) for line in collapse(printed, window)]


def test_rank_ranges_are_compact():
    assert rank_ranges([0, 1, 2, 3]) == "0-3"
    assert rank_ranges([7, 0, 2, 1, 5, 8]) == "0-2,5,7-8"
    assert rank_ranges([4]) == "4"


def test_eight_ranks_printing_the_same_traceback_show_it_once_in_order():
    traceback = ["Traceback (most recent call last):", '  File "<cell 7>", line 4, in train',
                 "ValueError: bad batch"]
    # the ranks' lines interleave as they arrive
    printed = lines(*[(rank, text) for text in traceback for rank in range(8)])
    assert shown(printed) == [f"[ranks 0-7]: {text}" for text in traceback]


def test_a_line_only_one_rank_printed_keeps_its_prefix_and_different_lines_stay_apart():
    printed = lines((0, "loss 0.5"), (1, "loss 0.7"), (2, "warning: slow"), (3, "warning: slow"),
                    (0, "loss 0.4"))
    assert shown(printed) == ["[trainer0]:loss 0.5", "[trainer1]:loss 0.7",
                              "[ranks 2-3]: warning: slow", "[trainer0]:loss 0.4"]


def test_a_rank_repeating_a_line_is_two_lines_and_far_apart_lines_do_not_merge():
    printed = lines((0, "tick"), (1, "tick"), (0, "tick"), (1, "tick"))
    assert shown(printed) == ["[ranks 0-1]: tick", "[ranks 0-1]: tick"]
    far = lines((0, "done"), *[(1, f"step {i}") for i in range(5)], (1, "done"))
    assert shown(far, window=3)[-1] == "[trainer1]:done"
    assert shown(far, window=10)[0] == "[ranks 0-1]: done"


def test_nothing_is_lost_count_by_count():
    printed = lines(*[(rank, f"line {i % 3}") for i in range(30) for rank in range(4)])
    assert sum(len(group.ranks) for group in collapse(printed)) == len(printed)

"""The hang map: which rank is missing from which collective, and where it is instead.

The rules first, on answers written by hand (no process); then real gloo
ranks that hang in each way a job hangs: one rank skips an all-reduce, one
calls a different collective, one is missing from a sub-group, one is
stopped, and none at all (every rank computes). The report's first sentence
names the right rank, group, op and sequence number; a stall is noticed
without asking.
"""

from __future__ import annotations

import time

import pytest
import scenarios
from util import wait_until

import elastic_nb as enb
from elastic_nb.model.hangs import RankAnswer, analyze, hang_map_html

SLEEP_LINE = "scenarios.py:{line} in hang_at: `time.sleep(600)`"


def entry(group: str, seq: int, op: str = "all_reduce", pg: int = 0, at: float = 100.0) -> dict:
    return {"collective_seq_id": seq, "pg_id": pg, "process_group": [group, "x"], "is_p2p": False,
            "profiling_name": f"gloo:{op}", "input_sizes": [[4]], "input_dtypes": ["Float"],
            "time_created_ns": int(at * 1e9)}


def answer(rank: int, entries: list[dict], completed: dict[int, int], cell: int | None = None,
           source: str = "dist.all_reduce(t)") -> RankAnswer:
    frames = [["/tmp/ipykernel_1/cell.py", 12, "train", source, cell]]
    return RankAnswer(rank, "answered", {
        "flight_recorder": {"entries": entries, "pg_status": {
            str(pg): {"last_completed_collective": str(seq)} for pg, seq in completed.items()}},
        "groups": {"0": [0, 1, 2, 3]}, "stacks": {"main": frames}})


def test_a_rank_that_never_entered_the_collective_is_named_with_where_it_is():
    done = [entry("0", s) for s in range(1, 7)]
    answers = [answer(r, done + [entry("0", 7)], {0: 6}) for r in (0, 1, 3)]
    answers.append(answer(2, done, {0: 6}, cell=5, source="time.sleep(600)"))
    report = analyze(answers, now=114.0)
    assert report.answer.startswith("rank 2 never entered all_reduce #7 float[4] of the default "
                                    "group; ranks 0, 1, 3 have waited in it for 14 s.")
    assert "rank 2 is at cell 5, line 12: `time.sleep(600)`" in report.answer
    assert report.suspects == [2] and report.groups["0"].waiting == [0, 1, 3]
    assert "background:#f5b7b1" in hang_map_html(report)


def test_a_desync_names_both_collectives():
    done = [entry("0", s) for s in range(1, 42)]
    answers = [answer(r, done + [entry("0", 42)], {0: 41}) for r in (0, 1, 3)]
    answers.append(answer(2, done + [entry("0", 42, op="all_gather")], {0: 41}))
    report = analyze(answers, now=200.0)
    assert report.answer.startswith("ranks 0, 1, 3 in all_reduce #42 float[4]; rank 2 in "
                                    "all_gather #42 float[4] of the default group")
    assert report.suspects == [2]


def test_a_stopped_rank_and_a_computing_job():
    answers = [answer(r, [entry("0", 1), entry("0", 2)], {0: 1}) for r in (0, 1)]
    answers.append(RankAnswer(2, "stopped", note="pid 7, SIGSTOP"))
    report = analyze(answers, now=110.0)
    assert "ranks 0, 1 wait in all_reduce #2 float[4] of the default group for rank 2, stopped" in \
        report.answer and report.suspects == [2]
    computing = analyze([answer(r, [entry("0", 3, at=90.0)], {0: 3}) for r in range(4)], now=100.0)
    assert computing.answer == "no collective for 10 s on any rank (computing?): nobody waits for anyone"
    assert computing.suspects == []


def test_identical_stacks_are_shown_once():
    answers = [answer(r, [entry("0", 1)], {0: 0}) for r in range(3)]
    text = str(analyze(answers, now=101.0))
    assert text.count("ranks 0, 1, 2:") == 1 and "cell.py:12 in train: dist.all_reduce(t)" in text


def report_once_hung(job: enb.Job, ranks: int, ready, timeout: float = 120):
    """Once every rank printed ``hanging`` and a report satisfies ``ready``: a report, and
    how long asking for it took."""
    job.wait_until(lambda: job.logs().count("hanging") == ranks, timeout=timeout,
                   what=f"{ranks} ranks hanging")
    wait_until(lambda: ready(job.hang_report()), timeout=60, what="the ranks where they hang")
    asked = time.monotonic()
    report = job.hang_report()
    return report, time.monotonic() - asked


def line_of(source: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(scenarios.hang_at)
    return first + next(i for i, line in enumerate(lines) if source in line)


@pytest.mark.parametrize("kind, victim, first_sentence", [
    ("skip", 2, "rank 2 never entered all_reduce #6 float[4] of the default group; ranks 0, 1, 3 "
                "have waited in it for"),
    ("desync", 2, "ranks 0, 1, 3 in all_reduce #6 float[4]; rank 2 in all_gather #6 float[4] of "
                  "the default group"),
    ("subgroup", 1, "rank 1 never entered all_reduce #1 float[4] of group 1 (ranks 0-1); rank 0 "
                    "has waited in it for"),
    ("compute", 2, "no collective for"),
])
def test_each_kind_of_hang_is_named_in_the_first_sentence(kind, victim, first_sentence):
    job = enb.launch(scenarios.hang_at, kind, 5, victim, nproc=4, hang_after=0)
    try:
        report, took = report_once_hung(
            job, 4, lambda r: r.stalled_in_collective or kind == "compute")
    finally:
        job.stop()
    assert report.answer.startswith(first_sentence), report.answer
    if kind == "compute":
        assert report.suspects == [] and "(computing?)" in report.answer
    else:
        assert report.suspects == [victim]
        if kind in ("skip", "subgroup"):
            assert f"rank {victim} is at " + SLEEP_LINE.format(line=line_of("time.sleep(600)")) \
                in report.answer
    assert took < 2.0, f"the report took {took:.2f} s"


def test_a_stopped_rank_is_named_as_stopped_and_a_stall_is_noticed_without_asking():
    job = enb.launch(scenarios.hang_at, "skip", 3, 2, nproc=4, hang_after=3)
    try:
        job.wait_until(lambda: job.logs().count("hanging") == 4, timeout=120, what="every rank hanging")
        job.freeze(2)
        stalled = job.wait_until(lambda: next((e for e in job.events if e.kind == "stalled"), None),
                                 timeout=3 + 20, what="a stalled event")
        report = job.hang_report()
    finally:
        job.stop()
    assert "rank 2, stopped" in stalled.detail["answer"] and stalled.detail["suspects"] == [2]
    assert report.suspects == [2] and "rank 2, stopped" in report.answer


def test_the_report_works_after_a_restart():
    job = enb.launch(scenarios.hang_at, "skip", 3, 1, nproc=2, max_restarts=1, hang_after=0)
    try:
        job.wait_until(lambda: job.logs(attempt=0).count("hanging") == 2, timeout=90, what="attempt 0")
        job.restart()
        job.wait_until(lambda: job.logs(attempt=1).count("hanging") == 2, timeout=90, what="attempt 1")
        report = wait_until(lambda: (r := job.hang_report()).suspects and r, timeout=30,
                            what="the suspect of attempt 1")
    finally:
        job.stop()
    assert report.attempt == 1 and report.suspects == [1]
    assert report.answer.startswith("rank 1 never entered all_reduce #4 float[4] of the default group")


@pytest.mark.slow
@pytest.mark.parametrize("kind, victim, first_sentence", [
    ("skip", 11, "rank 11 never entered all_reduce #3 float[4] of the default group"),
    ("desync", 11, "ranks 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15 in all_reduce #3 "
                   "float[4]; rank 11 in all_gather #3"),
    ("subgroup", 1, "rank 1 never entered all_reduce #1 float[4] of group 1 (ranks 0-1)"),
])
def test_sixteen_ranks(kind, victim, first_sentence):
    job = enb.launch(scenarios.hang_at, kind, 2, victim, nproc=16, hang_after=0)
    try:
        report, took = report_once_hung(job, 16, lambda r: r.suspects, timeout=240)
    finally:
        job.stop()
    assert report.answer.startswith(first_sentence), report.answer
    assert report.suspects == [victim] and took < 2.0


def test_every_stack_view_names_a_notebook_frame_as_its_cell():
    """The hang map's sentence said ``cell 1, line 8`` while its grouped stacks said
    ``3376146183.py:9``: one name for a frame everywhere (``model.frames``)."""
    from elastic_nb.model import frames, hangs

    cell_file = "/tmp/ipykernel_42/3376146183.py"
    part = hangs.RankPart(0, "answered", None)
    part.stack = ((cell_file, 9, "train", "dist.all_reduce(t)", 1),
                  ("/work/train.py", 3, "main", "train()", None))
    [(ranks, lines)] = hangs.grouped_stacks([part])
    assert ranks == [0] and lines == ["cell 1, line 9 in train: dist.all_reduce(t)",
                                      "train.py:3 in main: train()"]
    dump = (f'Thread 0x1 (most recent call first):\n  File "{cell_file}", line 9 in train\n'
            '  File "/work/train.py", line 3 in main\n')
    assert frames.name_cells(dump, {cell_file: 1}) == (
        'Thread 0x1 (most recent call first):\n  cell 1, line 9 in train\n'
        '  File "/work/train.py", line 3 in main\n')

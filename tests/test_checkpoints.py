"""Checkpoints (issue 25): a restart goes on from the newest complete checkpoint, never from a partial one.

The jobs are real (torch elastic agents, real DCP on gloo, nproc 2) and the
training deterministic (``checkpoint_scenarios.train``): a run that resumed
ends with the weights of an uninterrupted run, bit for bit. The rules of the
directory (which checkpoints are complete, which go) and the kernel's reading
of it are tested without processes, and save/restore in this process (DCP
without a process group).
"""

from __future__ import annotations

import json
import os
import re

import checkpoint_scenarios
import pytest
import torch
from util import wait_until

import elastic_nb as enb
from elastic_nb.kernel.checkpoints import CheckpointWatch
from elastic_nb.model import checkpoint_events
from elastic_nb.model.checkpoints import Checkpoint, checkpoint_text, restored_text
from elastic_nb.model.render import header_html, summary_text, timeline
from elastic_nb.model.state import Event, EventKind, JobState
from elastic_nb.wire import checkpoints as layout
from elastic_nb.worker import checkpoint as worker_checkpoint

STEPS, EVERY = 30, 5


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _events(job: enb.Job, kind: str) -> list[Event]:
    return [e for e in job.events if e.kind == kind]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The weights of the same training run without a fault."""
    job = enb.launch(checkpoint_scenarios.train, STEPS, EVERY, nproc=2,
                     checkpoint_dir=str(tmp_path_factory.mktemp("reference")))
    return job.result(timeout=120)[0]["weights"]


# ------------------------------------------------------------------ real jobs

def test_a_killed_rank_resumes_from_the_newest_complete_checkpoint_bit_for_bit(tmp_path,
                                                                               uninterrupted):
    job = enb.launch(checkpoint_scenarios.train, STEPS, EVERY, kill_at=13, nproc=2,
                     max_restarts=1, checkpoint_dir=str(tmp_path))
    results = job.result(timeout=120)
    assert job.restart_count == 1
    [restored] = _events(job, "restored")
    saved_before = [e.detail["step"] for e in _events(job, "checkpoint") if e.time < restored.time]
    assert restored.detail["step"] == max(saved_before)  # the newest one complete at the kill
    assert restored.detail["next"] == restored.detail["step"] + 1 == results[0]["start"]
    assert (restored.detail["world_from"], restored.detail["world_to"]) == (2, 2)
    assert all(_same_weights(r["weights"], uninterrupted) for r in results.values())
    text = [entry.label for entry in timeline(job.snapshot())]
    assert any(f"resumed at step {restored.detail['next']} from the checkpoint of step "
               f"{restored.detail['step']} (world 2 → 2)" in label for label in text)
    assert any("checkpoint step 25 (2 ranks, " in label for label in text)
    assert [c.step for c in job.checkpoints] == [20, 25]  # keep=2
    assert job.checkpoints[-1].world_size == 2 and job.checkpoints[-1].bytes > 0


def test_a_kill_in_the_middle_of_a_save_never_loads_it_and_it_is_cleaned_up(tmp_path,
                                                                            uninterrupted):
    job = enb.launch(checkpoint_scenarios.train, STEPS, EVERY, trip_at=15, nproc=2,
                     max_restarts=1, checkpoint_dir=str(tmp_path))
    results = job.result(timeout=120)
    [restored] = _events(job, "restored")
    assert restored.detail["step"] == 10  # not the save of step 15 that rank 1 died in
    assert [e.detail["step"] for e in _events(job, "checkpoint")] == [0, 5, 10, 15, 20, 25]
    listing = results[0]["after_restore"]  # what the directory held once restored
    assert "step_15" not in listing and {"step_5", "step_10"} <= set(listing)
    assert all(_same_weights(r["weights"], uninterrupted) for r in results.values())


def test_a_relaunch_with_the_same_checkpoint_dir_goes_on(tmp_path, uninterrupted):
    first = enb.launch(checkpoint_scenarios.train, 17, EVERY, nproc=2,
                       checkpoint_dir=str(tmp_path))
    assert first.result(timeout=120)[0]["start"] == 0
    second = enb.launch(checkpoint_scenarios.train, STEPS, EVERY, nproc=2,
                        checkpoint_dir=str(tmp_path))
    assert [c.step for c in second.snapshot().checkpoints] == [10, 15]  # listed from the start
    results = second.result(timeout=120)
    assert results[0]["start"] == 16
    [restored] = _events(second, "restored")
    assert restored.detail == {"step": 15, "next": 16, "world_from": 2, "world_to": 2,
                               "seconds": restored.detail["seconds"]}
    assert [e.detail["step"] for e in _events(second, "checkpoint")] == [20, 25]  # its own only
    assert all(_same_weights(r["weights"], uninterrupted) for r in results.values())


def test_a_lost_node_resumes_the_survivor_at_world_1_from_the_world_2_checkpoint(tmp_path):
    job = enb.launch(checkpoint_scenarios.train, 100, EVERY, pace=0.05,
                     nodes=[enb.Node(1), enb.Node(1)], min_nodes=1, checkpoint_dir=str(tmp_path))
    wait_until(lambda: job.checkpoints, timeout=90, what="a first complete checkpoint")
    job.kill_node(1)
    results = job.result(timeout=180)
    assert list(results) == [0]
    assert results[0]["world"] == 1 and results[0]["world_from"] == 2
    [restored] = _events(job, "restored")
    assert (restored.detail["world_from"], restored.detail["world_to"]) == (2, 1)
    assert restored.detail["next"] == results[0]["start"] > 0
    assert job.checkpoints[-1].world_size == 1
    assert "(world 2 → 1)" in str(restored)


def test_a_node_that_cannot_see_the_directory_fails_every_rank_saying_so(tmp_path):
    job = enb.launch(checkpoint_scenarios.train, STEPS, EVERY, checkpoint_dir=str(tmp_path),
                     nodes=[enb.Node(1), enb.Node(1, fn=checkpoint_scenarios.train_elsewhere,
                                                  args=(STEPS, EVERY))])
    with pytest.raises(enb.JobFailed) as failed:
        job.result(timeout=120)
    assert job.restart_count == 0
    for rank in (0, 1):  # not a silent start at step 0 on either
        assert "CheckpointError" in (job.failures[rank].traceback or "")
        assert "starting at step" not in job.logs(rank=rank)
    assert re.search(r"checkpoint_dir .* is not shared: rank [01] on \S+ cannot see what rank 0 "
                     r"on \S+ wrote there", str(failed.value))


def test_the_default_directory_is_in_the_jobs_log_dir_and_the_ranks_are_told():
    job = enb.launch(checkpoint_scenarios.told_directory, nproc=1)
    assert job.result(timeout=60) == {0: os.path.join(job.log_dir, "checkpoints")}
    assert job.checkpoint_dir == os.path.join(job.log_dir, "checkpoints")


# ------------------------------------------------------------------ save and restore here

@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_save_and_restore_in_one_process_keeps_the_newest_two(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.CHECKPOINT_DIR_ENV, str(tmp_path))
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {"model": model, "optim": optimizer, "seen": {"samples": 0}}
    assert worker_checkpoint.restore_checkpoint(state) == 0
    assert worker_checkpoint.checkpoint_world() is None
    for step in range(5):
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        state["seen"]["samples"] += 3
        worker_checkpoint.save_checkpoint(step, state, blocking=step % 2 == 0)
    worker_checkpoint.finish()
    assert sorted(os.listdir(tmp_path)) == [layout.JOURNAL, "step_3", "step_4"]
    weights = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    state["seen"] = {"samples": -1}
    assert worker_checkpoint.restore_checkpoint(state) == 5
    assert torch.equal(model.weight, weights)
    assert state["seen"] == {"samples": 15}
    assert worker_checkpoint.checkpoint_world() == 1
    lines = (tmp_path / layout.JOURNAL).read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["checkpoint"] * 5 + ["restored"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_step_directory_without_its_marker_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.CHECKPOINT_DIR_ENV, str(tmp_path))
    model = torch.nn.Linear(4, 2)
    state = {"model": model}
    worker_checkpoint.save_checkpoint(1, state, blocking=True)
    worker_checkpoint.save_checkpoint(2, state, blocking=True)
    os.remove(tmp_path / "step_2" / layout.MARKER)  # as a save cut short before its marker
    assert worker_checkpoint.restore_checkpoint(state) == 2
    assert not (tmp_path / "step_2").exists()  # and it is gone


def test_without_a_directory_the_calls_say_where_to_set_one(monkeypatch):
    monkeypatch.delenv(layout.CHECKPOINT_DIR_ENV, raising=False)
    with pytest.raises(enb.CheckpointError, match="checkpoint_dir"):
        enb.save_checkpoint(0, {})


# ------------------------------------------------------------------ the rules, pure

def test_after_a_save_the_newest_keep_stay_and_older_incomplete_ones_go():
    assert layout.to_remove([0, 5, 10, 15], [3, 20], keep=2) == [0, 3, 5]
    assert layout.to_remove([10], [5, 12], keep=2) == [5]  # 12 may be a save in flight
    assert layout.to_remove([], [5], keep=1) == []
    with pytest.raises(ValueError):
        layout.to_remove([1], [], keep=0)


def test_at_a_restore_every_incomplete_one_is_a_leftover():
    assert layout.leftovers([5, 10], [5, 10, 12, 3]) == [3, 12]


def test_step_names_and_records_round_trip():
    assert layout.step_of(layout.step_dir(300)) == 300
    assert layout.step_of("step_x") is None and layout.step_of("journal.jsonl") is None
    marker = layout.Marker(step=3, world=4, bytes=10, seconds=0.5, time=1.0, run_id="r")
    assert layout.read_journal_line(layout.journal_line(marker)) == marker
    assert layout.read_journal_line('{"kind": "checkpoint", "step": "x"}') is None
    assert layout.read_journal_line("not json") is None


def test_a_marker_counts_only_beside_dcps_metadata(tmp_path):
    marker = layout.Marker(step=3, world=2, bytes=10, seconds=0.5, time=1.0)
    (tmp_path / layout.MARKER).write_text(layout.to_json(marker))
    assert layout.read_marker(str(tmp_path)) is None
    (tmp_path / layout.METADATA).write_bytes(b"x")
    assert layout.read_marker(str(tmp_path)) == marker
    (tmp_path / layout.MARKER).write_text("{half")
    assert layout.read_marker(str(tmp_path)) is None


def test_the_timeline_tells_checkpoints_and_resumes_in_sentences():
    assert checkpoint_text({"step": 300, "world": 4, "bytes": 12 * 2**20, "seconds": 0.42}) == \
        "checkpoint step 300 (4 ranks, 12 MB, 0.4 s)"
    assert restored_text({"step": 300, "next": 301, "world_from": 4, "world_to": 3,
                          "seconds": 0.2}).startswith(
        "resumed at step 301 from the checkpoint of step 300 (world 4 → 3)")


def test_events_go_in_at_the_time_the_rank_wrote_them():
    state = JobState(started_at=0.0)
    state.record(1.0, EventKind.STARTED)
    state.record(3.0, EventKind.SUCCEEDED)
    checkpoint = Checkpoint(step=5, world_size=2, bytes=100, seconds=0.1, time=2.0)
    restore = layout.Restored(step=5, next=6, world_from=2, world_to=1, seconds=0.3, time=2.5)
    events = checkpoint_events.observed(state, [checkpoint], [checkpoint], [restore])
    assert [e.kind for e in events] == ["checkpoint", "restored"]
    assert [e.kind for e in state.events] == ["started", "checkpoint", "restored", "succeeded"]
    assert state.checkpoints == [checkpoint]


def test_the_watch_lists_what_is_there_and_tells_only_this_jobs_new_lines(tmp_path):
    def complete(step: int, run_id: str) -> layout.Marker:
        marker = layout.Marker(step=step, world=2, bytes=1, seconds=0.1, time=float(step),
                               run_id=run_id)
        path = tmp_path / layout.step_dir(step)
        path.mkdir()
        (path / layout.METADATA).write_bytes(b"m")
        (path / layout.MARKER).write_text(layout.to_json(marker))
        with open(tmp_path / layout.JOURNAL, "a") as f:
            f.write(layout.journal_line(marker))
        return marker

    complete(1, "earlier")
    watch = CheckpointWatch(str(tmp_path), "mine")
    present, new, restores = watch.poll()
    assert [c.step for c in present] == [1] and new == [] and restores == []
    complete(2, "mine")
    (tmp_path / "step_3").mkdir()  # a save in flight
    with open(tmp_path / layout.JOURNAL, "a") as f:
        f.write('{"kind": "checkpoint", "st')  # half a line: read once whole
    present, new, _ = watch.poll()
    assert [c.step for c in present] == [1, 2] and [c.step for c in new] == [2]
    with open(tmp_path / layout.JOURNAL, "a") as f:
        f.write('ep": 9}\n')
    assert watch.poll()[1] == []
    assert CheckpointWatch(None, "mine").poll() == ([], [], [])


def test_the_header_shows_the_newest_checkpoint(tmp_path):
    job = enb.launch(checkpoint_scenarios.train, 6, EVERY, nproc=1, checkpoint_dir=str(tmp_path))
    job.result(timeout=60)
    snap = job.snapshot()
    assert [c.step for c in snap.checkpoints] == [0, 5]
    assert "checkpoint step <b>5</b> (1 rank" in header_html(snap)
    assert "checkpoint=step 5" in summary_text(snap)

"""Log tailing, buffering and prefixes, on plain files (no processes)."""

from __future__ import annotations

from elastic_nb.kernel.log_book import LogBook
from elastic_nb.node.logs_spec import NodeLogsSpecs
from elastic_nb.wire.logfiles import LogSource, LogTailer, render_prefix, template_fields


def source(path, rank=0, stream="stdout", attempt=0) -> LogSource:
    return LogSource(path=str(path), stream=stream, node=1, rank=rank, local_rank=rank,
                     role="trainer", group_rank=1, attempt=attempt, restart_count=attempt)


def test_prefix_templates():
    assert template_fields("[${role_name}-${local_rank}:${rank}]:") == {"role_name", "local_rank", "rank"}
    assert render_prefix("[${role_name}-${local_rank}:${rank}]:", role_name="trainer",
                         local_rank=1, rank=3) == "[trainer-1:3]:"
    line_source = source("unused", rank=3)
    assert line_source.prefix("${node}/${group_rank}/${restart_count} ") == "1/1/0 "


def test_tailer_reads_complete_lines_and_flushes_the_rest_on_retire(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_bytes(b"")
    book = LogBook()
    tailer = LogTailer(book)
    tailer.follow([source(path)])
    with open(path, "ab") as f:
        f.write(b"first\nsec")
    tailer.poll()
    assert [l.text for l in book.lines()] == ["first"]
    with open(path, "ab") as f:
        f.write(b"ond\r\nunterminated")
    tailer.poll()
    assert [l.text for l in book.lines()] == ["first", "second"]
    tailer.retire_all()
    tailer.poll()
    assert [l.text for l in book.lines()] == ["first", "second", "unterminated"]
    with open(path, "ab") as f:
        f.write(b"after retirement\n")
    tailer.poll()
    assert len(book.lines()) == 3


def test_tailer_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "later.log"
    book = LogBook()
    tailer = LogTailer(book)
    tailer.follow([source(path)])
    tailer.poll()
    path.write_bytes("caf\xe9 \u2713\n".encode())
    tailer.poll()
    assert [l.text for l in book.lines()] == ["caf\xe9 \u2713"]


def test_book_is_bounded_per_rank_and_counts_what_it_dropped(tmp_path):
    book = LogBook(max_lines_per_rank=10)
    noisy, quiet = source(tmp_path / "a", rank=0), source(tmp_path / "b", rank=1)
    book.append(quiet, ["traceback line"], when=1.0)
    book.append(noisy, [f"flood {i}" for i in range(25)], when=2.0)
    assert [l.text for l in book.lines(rank=0)] == [f"flood {i}" for i in range(15, 25)]
    assert [l.text for l in book.lines(rank=1)] == ["traceback line"]
    assert book.dropped(0) == 15 and book.dropped(1) == 0 and book.dropped() == 15
    merged = book.lines()
    assert merged[0].text == "traceback line" and len(merged) == 11
    assert book.last_line_time() == {0: 2.0, 1: 1.0}


def test_book_filters_and_notifies(tmp_path):
    book = LogBook()
    batches = []
    book.add_listener(batches.append)
    book.append(source(tmp_path / "o", stream="stdout", attempt=0), ["out0"], when=1.0)
    book.append(source(tmp_path / "e", stream="stderr", attempt=1), ["err1"], when=2.0)
    assert [l.text for l in book.lines(stream="stderr")] == ["err1"]
    assert [l.text for l in book.lines(attempt=0)] == ["out0"]
    assert [[l.text for l in b] for b in batches] == [["out0"], ["err1"]]
    book.remove_listener(batches.append)
    book.append(source(tmp_path / "o"), ["unheard"], when=3.0)
    assert len(batches) == 2


def test_node_logs_specs_never_reuse_an_attempt_directory(tmp_path):
    specs = NodeLogsSpecs(str(tmp_path / "node_0"))
    envs = {0: {"TORCHELASTIC_RESTART_COUNT": "0"}, 1: {"TORCHELASTIC_RESTART_COUNT": "0"}}
    first = specs.reify(envs)
    (tmp_path / "node_0" / "attempt_0" / "0" / "stdout.log").write_text("before the restart\n")
    second = specs.reify(envs)  # same restart count: a membership change
    assert first.stdouts[1].endswith("node_0/attempt_0/1/stdout.log")
    assert second.stdouts[1].endswith("node_0/attempt_1/1/stdout.log")
    assert envs[1]["TORCHELASTIC_ERROR_FILE"].endswith("attempt_1/1/error.json")
    assert (tmp_path / "node_0" / "attempt_0" / "0" / "stdout.log").read_text() == "before the restart\n"
    assert specs.last_attempt == 1

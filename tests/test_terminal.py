"""A rank's output as a terminal shows it: carriage returns, colours, no raw escapes.

Pure rules first (no process), then real tqdm and rich in real ranks: the
views show a 300-step bar as one line in its final state and the colours as
colours, while the files keep every byte the rank wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import elastic_nb as enb
from elastic_nb.model.terminal import overwrite, plain, to_html


@pytest.mark.parametrize("text, shown", [
    ("no carriage return", "no carriage return"),
    ("  0%|   | 0/300\r 50%|## | 150/300\r100%|###| 300/300", "100%|###| 300/300"),
    ("abcdef\rXY", "XYcdef"),  # as a terminal: the shorter segment overwrites the start
    ("done\r", "done"),
    ("\x1b[32m 10%\x1b[0m\r\x1b[32m100%\x1b[0m", "\x1b[32m100%\x1b[0m"),
])
def test_carriage_returns_overwrite_as_in_a_terminal(text, shown):
    assert overwrite(text) == shown


def test_plain_text_has_no_escape_sequence_left():
    assert plain("\x1b[1;31merror\x1b[0m: disk \x1b]0;title\x07full\x1b[K\x1b[2A") == "error: disk full"
    assert plain("tab\tstays") == "tab\tstays"


def test_html_shows_colours_and_styles_and_nothing_raw():
    shown = to_html("\x1b[1;31merror\x1b[0m <b>not markup</b> \x1b[38;5;208morange\x1b[0m "
                    "\x1b[38;2;1;2;3mrgb\x1b[39m \x1b[2Jcleared")
    assert "<span style='color:#cd3131;font-weight:bold'>error</span>" in shown
    assert "&lt;b&gt;not markup&lt;/b&gt;" in shown
    assert "<span style='color:#ff8700'>orange</span>" in shown
    assert "<span style='color:#010203'>rgb</span>" in shown
    assert "\x1b" not in shown and "[2J" not in shown and "cleared" in shown


def progress_and_colours() -> str:
    """A rank that draws a tqdm bar on stderr and prints rich colours on stdout."""
    import sys

    from rich.console import Console
    from tqdm import tqdm

    for _ in tqdm(range(300), file=sys.stderr, mininterval=0, desc="epoch 1"):
        pass
    Console(force_terminal=True, color_system="standard").print("[bold red]loss[/] is [green]down[/]")
    return "done"


def test_a_tqdm_bar_is_one_line_and_rich_colours_show_in_the_dashboard(tmp_path):
    from elastic_nb.ui import dashboard

    job = enb.launch(progress_and_colours, nproc=1, log_dir=str(tmp_path))
    model = dashboard.DashboardModel(job)
    try:
        assert job.result(timeout=120) == {0: "done"}
        errors = job.logs(rank=0, stream="stderr")
        bar_lines = [line for line in errors.splitlines() if "epoch 1" in line]
        assert len(bar_lines) == 1 and "100%" in bar_lines[0] and "300/300" in bar_lines[0]
        assert "\x1b" not in job.logs() and "\r" not in job.logs()
        assert "loss is down" in job.logs(rank=0, stream="stdout")
        page = model.log_html()
        assert "font-weight:bold" in page and "color:#cd3131" in page and "\x1b" not in page
        assert page.count("epoch 1") == 1
        # the file keeps every redraw, byte for byte
        stderr = next(Path(tmp_path).rglob("stderr.log")).read_bytes()
        assert stderr.count(b"\r") >= 300 and b"\x1b" in next(Path(tmp_path).rglob("stdout.log")).read_bytes()
    finally:
        model.close()
        job.stop()


def test_a_bar_being_drawn_shows_as_it_looks_now(tmp_path):
    from elastic_nb.wire.logfiles import LogSource, LogTailer

    class Book:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.now: str | None = None

        def append(self, source, texts, when):
            self.lines += list(texts)

        def pending(self, source, text):
            self.now = text

    path = tmp_path / "stderr.log"
    source = LogSource(path=str(path), stream="stderr", node=0, rank=0, local_rank=0,
                       role="r", group_rank=0, attempt=0, restart_count=0)
    book = Book()
    tailer = LogTailer(book)
    tailer.follow([source])
    with open(path, "wb") as out:
        out.write(b"start\n 10%|#\r 20%|##")
        out.flush()
        tailer.poll()
        assert book.lines == ["start"] and book.now == " 20%|##"
        out.write(b"\r100%|#####|\n")
        out.flush()
        tailer.poll()
    assert book.lines == ["start", "100%|#####|"] and book.now is None
    assert os.path.getsize(path) == len(b"start\n 10%|#\r 20%|##\r100%|#####|\n")

"""The dashboard's "metrics" tab: a live chart of what the ranks report with ``enb.report``.

Drawn with bqplot. Why bqplot: it is an ipywidgets library itself (its marks
are widgets; no second frontend extension or server, unlike Bokeh or
Plotly's FigureWidget, whose updates re-send JSON lists), it sends numpy
arrays as binary buffers and updates a mark's ``x``/``y`` in place (no
redraw of the figure, unlike matplotlib's ipympl, which ships a new PNG), and
it is maintained under the Jupyter organisation (bqplot 0.13). The cost is a
plainer look.

One chart, a chooser for the metric; step on x; a line a rank (the mean and
its min-max band above ``MAX_LINES`` ranks); the faults, restarts,
checkpoints and resumes as vertical lines whose top point shows the event
when hovered. Each series is decimated to ``MAX_POINTS``; ``render`` is called
at the dashboard's tick and pushes only when the book changed, so the rate
of messages follows the refresh rate, not the rate of reports.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import bqplot
import ipywidgets as widgets
import numpy as np

from elastic_nb.model.goodput import event_steps

if TYPE_CHECKING:
    from elastic_nb.ui.dashboard.handle import JobHandle

MAX_LINES = 16
MAX_POINTS = 2000
FAULT_COLOR, MARK_COLOR = "#c0392b", "#7f8c8d"


def decimate(x: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most ``limit`` remain, the last one always kept."""
    if len(x) <= limit:
        return x, y
    every = math.ceil(len(x) / limit)
    keep = np.arange(len(x) - 1, -1, -every)[::-1]
    return x[keep], y[keep]


def _broken(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rank's line with a gap where a new attempt starts over at an earlier step (no
    stroke drawn back from the last step before the fault to the resumed one)."""
    back = np.flatnonzero(np.diff(x) < 0) + 1
    return np.insert(x, back, np.nan), np.insert(y, back, np.nan)


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different lengths as one 2-D array, NaN after each row's end (a gap bqplot
    does not draw)."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


class MetricsView(widgets.VBox):
    """The chart of one metric (the chooser's), redrawn by ``render`` when the book changed."""

    def __init__(self, job: JobHandle) -> None:
        self.job = job
        self._seen = (-1, "", -1)
        self.chooser = widgets.Dropdown(options=[], description="metric",
                                        layout=widgets.Layout(width="260px"))
        self.chooser.observe(lambda _: self.render(), names="value")
        self.note = widgets.HTML("<i>no metrics yet: call <code>enb.report(step, loss=...)"
                                 "</code> in the training loop</i>")
        x, y = bqplot.LinearScale(), bqplot.LinearScale()
        self.lines = bqplot.Lines(x=np.zeros((0,)), y=np.zeros((0,)), scales={"x": x, "y": y},
                                  stroke_width=1.5, display_legend=True)
        self.band = bqplot.Lines(x=np.zeros((0,)), y=np.zeros((0,)), scales={"x": x, "y": y},
                                 fill="between", fill_opacities=[0.25], colors=["#1f77b4"],
                                 stroke_width=0)
        self.marks = bqplot.Lines(x=np.zeros((0,)), y=np.zeros((0,)), scales={"x": x, "y": y},
                                  line_style="dashed", stroke_width=1)
        self.tips = bqplot.Scatter(x=np.zeros((0,)), y=np.zeros((0,)), scales={"x": x, "y": y},
                                   marker="triangle-down", default_size=40, display_names=False,
                                   tooltip=bqplot.Tooltip(fields=["name"]))
        self.figure = bqplot.Figure(
            marks=[self.band, self.lines, self.marks, self.tips],
            axes=[bqplot.Axis(scale=x, label="step"),
                  bqplot.Axis(scale=y, side="left", tick_format=".3g")],
            legend_location="top-right", fig_margin={"top": 20, "bottom": 40, "left": 60,
                                                     "right": 20},
            layout=widgets.Layout(width="100%", height="340px"))
        self.figure.add_class("enb-metrics-figure")
        super().__init__([widgets.HBox([self.chooser, self.note]), self.figure])
        self.add_class("enb-metrics")

    @property
    def seen_version(self) -> int:
        """The book's version the chart shows."""
        return self._seen[0]

    def render(self) -> bool:
        """Push the chosen metric's lines and the events' marks, when something changed."""
        book = self.job.metrics_book
        names = book.names()
        if list(self.chooser.options) != names:
            self.chooser.options = names
            if names and self.chooser.value is None:
                self.chooser.value = names[0]
        name = self.chooser.value
        events = self.job.events
        seen = (book.version, name or "", len(events))
        if seen == self._seen:
            return False
        self._seen = seen
        if name is None:
            return False
        self.note.value = ""
        frame = book.frame()[["rank", "attempt", "step", name]].dropna()
        ranks = sorted(frame["rank"].unique())
        with self.figure.hold_sync():
            if len(ranks) <= MAX_LINES:
                series = [_broken(*decimate(mine["step"].to_numpy(float),
                                            mine[name].to_numpy(float)))
                          for _, mine in ((r, frame[frame["rank"] == r]) for r in ranks)]
                self.lines.x, self.lines.y = _padded([s[0] for s in series]), \
                    _padded([s[1] for s in series])
                self.lines.labels = [f"rank {r}" for r in ranks]
                self.band.x, self.band.y = np.zeros((0,)), np.zeros((0,))
            else:
                by_step = frame.groupby("step")[name]
                steps = by_step.mean().index.to_numpy(float)
                mean, low, high = (by_step.mean().to_numpy(), by_step.min().to_numpy(),
                                   by_step.max().to_numpy())
                xs, mean = decimate(steps, mean)
                _, low = decimate(steps, low)
                _, high = decimate(steps, high)
                self.lines.x, self.lines.y, self.lines.labels = xs, mean, [f"mean of {len(ranks)}"]
                self.band.x, self.band.y = [xs, xs], [low, high]
            self._draw_marks(event_steps(events, book.steps()), frame[name])
        return True

    def _draw_marks(self, marks: list[tuple[float, str, str]], values: object) -> None:
        low, high = float(values.min()), float(values.max())  # type: ignore[attr-defined]
        if not marks:
            self.marks.x = self.marks.y = np.zeros((0,))
            self.tips.x = self.tips.y = np.zeros((0,))
            return
        steps = np.array([m[0] for m in marks])
        self.marks.x = [[s, s] for s in steps]
        self.marks.y = [[low, high]] * len(marks)
        self.marks.colors = [MARK_COLOR if m[1] in ("checkpoint", "resume") else FAULT_COLOR
                             for m in marks]
        self.tips.x, self.tips.y = steps, np.full(len(marks), high)
        self.tips.names = [f"{short}: {text}" for _, short, text in marks]
        self.tips.colors = list(self.marks.colors)

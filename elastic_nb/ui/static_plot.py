"""A static picture of a job's metrics (matplotlib), for where no widget can draw.

``job.plot()`` and the Job's HTML outside a widget frontend (nbconvert, an
HTML export) show this: one panel a metric, step on x, a line a rank (the
mean and its min-max band above ``MAX_LINES`` ranks), the faults, restarts,
checkpoints and resumes as labelled vertical lines.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from elastic_nb.model.goodput import event_steps
from elastic_nb.model.state import Event

if TYPE_CHECKING:
    from elastic_nb.kernel.metrics_book import MetricsBook

MAX_LINES = 16  # ranks drawn one line each; above, the mean and its band


def figure(book: MetricsBook, events: Sequence[Event]) -> Any:
    """A matplotlib Figure of every metric (empty panel with a note when none was reported)."""
    from matplotlib.figure import Figure

    names = book.names()
    fig = Figure(figsize=(7, 2.4 * max(1, len(names))))
    axes = fig.subplots(max(1, len(names)), 1, squeeze=False)[:, 0]
    if not names:
        axes[0].text(0.5, 0.5, "no metrics: call enb.report(step, loss=...) in the ranks",
                     ha="center", va="center")
        axes[0].set_axis_off()
        return fig
    frame = book.frame()
    marks = event_steps(events, book.steps())
    for ax, name in zip(axes, names, strict=False):
        data = frame[["rank", "step", name]].dropna()
        ranks = sorted(data["rank"].unique())
        if len(ranks) <= MAX_LINES:
            for rank in ranks:
                mine = data[data["rank"] == rank]
                ax.plot(mine["step"], mine[name], lw=1, label=f"rank {rank}")
            if len(ranks) > 1:
                ax.legend(fontsize=7, ncol=4)
        else:
            by_step = data.groupby("step")[name]
            ax.plot(by_step.mean().index, by_step.mean(), lw=1, label="mean")
            ax.fill_between(by_step.min().index, by_step.min(), by_step.max(), alpha=0.3)
        for step, short, _ in marks:
            ax.axvline(step, color="red" if short not in ("checkpoint", "resume") else "gray",
                       ls="--", lw=0.8)
            ax.annotate(short, (step, 1), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90, va="top", ha="right")
        ax.set_ylabel(name)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig


def png_html(book: MetricsBook, events: Sequence[Event]) -> str:
    """The figure as an ``<img>`` (the Job's static HTML), or "" when nothing was reported."""
    if not book.names():
        return ""
    buffer = io.BytesIO()
    figure(book, events).savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="metrics" src="data:image/png;base64,{data}"/>'

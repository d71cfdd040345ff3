"""How a Job shows itself: the live widget in a kernel, text and HTML everywhere.

``mimebundle(job)`` is what ``Job._repr_mimebundle_`` returns; ``show(job)``
displays the dashboard (the text summary outside a kernel). One dashboard
per job, shared by every display of it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from elastic_nb.model import render
from elastic_nb.ui import static_plot
from elastic_nb.ui.dashboard.widget import Dashboard

if TYPE_CHECKING:
    from elastic_nb.ui.dashboard.handle import JobHandle


_dashboards: weakref.WeakKeyDictionary[JobHandle, Dashboard] = weakref.WeakKeyDictionary()


def dashboard(job: JobHandle) -> Dashboard:
    """The job's dashboard: one per job, shared by every display of it."""
    existing = _dashboards.get(job)
    if existing is None or existing.closed:
        existing = _dashboards[job] = Dashboard(job)
    return existing


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where a widget frontend may be listening)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(job: JobHandle) -> None:
    """Display the job's live dashboard (or its text summary outside a kernel)."""
    from IPython.display import display

    display(dashboard(job) if in_kernel() else job)


def show_logs_of(job: JobHandle, rank: int) -> None:
    """The job's dashboard shows one rank's logs once it has printed (in a kernel: elsewhere
    a Job shows as a summary, without logs)."""
    if in_kernel():
        dashboard(job).show_logs_of(rank)


def mimebundle(job: JobHandle, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """A Job's rich display: the live widget in a kernel, plus text and HTML fallbacks."""
    bundle: dict[str, Any] = {}
    if in_kernel():
        bundle.update(dashboard(job)._repr_mimebundle_(include=include, exclude=exclude))
    snap = job.snapshot()
    bundle["text/plain"] = render.summary_text(snap)
    bundle["text/html"] = render.job_html(snap, job.goodput().short(),
                                          static_plot.png_html(job.metrics_book, job.events))
    return bundle

"""Views of a ``JobSnapshot`` as text and HTML, and the tiles and timeline they show.

Everything here is a pure function of a snapshot (and the time, for
"silent for"), the way tqdm renders text and widget from one
``format_dict``: ``Job.summary()`` is ``summary_text``, the HTML repr is
``job_html``, and the dashboard builds its header, tiles and timeline from
the same functions. No ipywidgets here.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass

from elastic_nb.model.checkpoints import size_text
from elastic_nb.model.snapshot import JobSnapshot, WorkerView
from elastic_nb.model.state import Event, EventKind, WorkerStatus
from elastic_nb.model.strenum import StrEnum

JOB_COLORS = {
    "pending": "#7f8c8d", "rendezvous": "#8e44ad", "running": "#27ae60",
    "restarting": "#e67e22", "succeeded": "#2471a3", "failed": "#c0392b", "stopped": "#566573",
}


class TileState(StrEnum):
    """A rank as a tile shows it: a worker's state, with a later attempt's run as RESTARTED."""

    PENDING = "pending"  # before the first rendezvous formed its world
    RUNNING = "running"
    RESTARTING = "restarting"
    RESTARTED = "restarted"  # running again, in a later attempt
    PAUSED = "paused"  # waiting in its debugger
    FROZEN = "frozen"  # stopped by job.freeze (or its node's freeze)
    FAILED = "failed"
    DONE = "done"
    STOPPED = "stopped"

    @property
    def killable(self) -> bool:
        return self in (TileState.RUNNING, TileState.RESTARTED, TileState.PAUSED, TileState.FROZEN)


TILE_COLORS = {
    TileState.PENDING: "#95a5a6", TileState.RUNNING: "#27ae60", TileState.RESTARTING: "#e67e22",
    TileState.RESTARTED: "#16a085", TileState.FAILED: "#c0392b", TileState.DONE: "#2471a3",
    TileState.STOPPED: "#566573", TileState.PAUSED: "#8e44ad", TileState.FROZEN: "#2e86c1",
}


@dataclass(frozen=True)
class Tile:
    """One rank as the dashboard shows it."""

    rank: int
    node: int | None
    host: str | None
    role: str
    state: TileState
    color: str
    pid: int | None
    restart_count: int
    attempt: int
    cpu_percent: float | None
    rss: int | None
    silent_for: float | None
    hung: bool
    paused_at: str | None = None  # "cell 7, line 4": it waits for job.debug(rank)
    slowed: float | None = None  # runs at this fraction of its speed (job.slow)


@dataclass(frozen=True)
class TimelineEntry:
    """One event of the job, with what clicking it reveals."""

    event: Event
    offset: float  # seconds since the job was launched
    label: str
    details: str  # the event's fields and, for a failure, the rank's traceback


def tile_state(state: WorkerStatus, attempt: int) -> TileState:
    if state == WorkerStatus.RUNNING:
        return TileState.RESTARTED if attempt > 0 else TileState.RUNNING
    if state == WorkerStatus.SUCCEEDED:
        return TileState.DONE
    return TileState(state.value)


def silences(workers: tuple[WorkerView, ...], now: float) -> dict[int, float]:
    """Seconds since each running rank's last output line (or its start, if later)."""
    return {w.rank: max(0.0, now - max(w.last_output or 0.0, w.started_at))
            for w in workers if w.state == WorkerStatus.RUNNING}


def hung_ranks(silent: dict[int, float], hung_after: float, factor: float) -> set[int]:
    """Ranks silent for ``hung_after`` seconds and ``factor`` times longer than the others."""
    hung = set()
    for rank, seconds in silent.items():
        others = [s for r, s in silent.items() if r != rank]
        if seconds >= hung_after and others and seconds >= factor * max(statistics.median(others), 1.0):
            hung.add(rank)
    return hung


def tiles(snap: JobSnapshot, now: float, hung_after: float = 10.0,
          hung_factor: float = 5.0) -> list[Tile]:
    """One tile per rank; before any worker started, one pending tile per expected rank."""
    if not snap.workers:
        return [Tile(rank, None, None, "", TileState.PENDING, TILE_COLORS[TileState.PENDING],
                     None, 0, 0, None, None, None, False) for rank in range(snap.world_size)]
    silent = silences(snap.workers, now)
    hung = hung_ranks(silent, hung_after, hung_factor)
    result = []
    for w in snap.workers:
        state = TileState.FROZEN if w.frozen and w.state.alive else tile_state(w.state, w.attempt)
        result.append(Tile(
            rank=w.rank, node=w.node, host=None if w.local else w.host, role=w.role, state=state,
            color=TILE_COLORS[state], pid=w.pid, restart_count=w.restart_count,
            attempt=w.attempt, cpu_percent=w.cpu_percent, rss=w.rss,
            silent_for=silent.get(w.rank), hung=w.rank in hung and not w.frozen,
            paused_at=w.paused_at, slowed=w.slowed))
    return result


def timeline(snap: JobSnapshot, costs: dict[float, str] | None = None) -> list[TimelineEntry]:
    """The job's events in time order, each with its details and any traceback; a fault's
    entry ends with its cost (``costs``: by the fault event's time, from goodput)."""
    start = snap.events[0].time if snap.events else 0.0
    costs = costs or {}
    entries = []
    for event in snap.events:
        label = str(event).split(" ", 1)[1].strip()
        cost = costs.get(event.time)
        if cost:
            label += f"  ⟶ cost {cost}"
        entries.append(TimelineEntry(event, event.time - start,
                                     f"+{event.time - start:7.2f}s  {label}",
                                     event_details(event) + (f"\ncost: {cost}" if cost else "")))
    return entries


def event_details(event: Event) -> str:
    lines = [f"{event.kind}" + (f" (node {event.node})" if event.node is not None else "")
             + (f" rank {event.rank}" if event.rank is not None else "")]
    lines += [f"  {key}: {value}" for key, value in event.detail.items()]
    for failure in event.failures:
        lines.append("")
        lines.append(failure.summary())
        lines.append(failure.traceback.rstrip() if failure.traceback
                     else "(no Python traceback: the process was ended by a signal or exit code)")
    return "\n".join(lines)


def failure_events(snap: JobSnapshot) -> list[int]:
    """Indexes of the timeline entries that carry a failure."""
    return [i for i, e in enumerate(snap.events)
            if e.kind in (EventKind.WORKER_FAILED, EventKind.FAILED)]


# ------------------------------------------------------------------ text

def summary_text(snap: JobSnapshot) -> str:
    """A readable text summary (what a terminal or nbconvert shows)."""
    head = (f"Job {snap.run_id} [{snap.status}] backend={snap.backend} "
            f"world={snap.world_size} restarts={snap.restart_count}/{snap.max_restarts} "
            f"elapsed={snap.elapsed:.1f}s")
    warm = [n.index for n in snap.nodes if n.warm]
    if warm:
        head += f" warm hosts: node{'s' if len(warm) > 1 else ''} {', '.join(map(str, warm))}"
    if snap.newest_checkpoint is not None:
        head += f" checkpoint=step {snap.newest_checkpoint.step}"
    if snap.trust_store:
        head += f"\n  {TRUST_STORE_WARNING}"
    rows = [f"  node {n.index} on {n.where}: {n.status}" + (f", {n.scheduler}" if n.scheduler else "")
            for n in snap.nodes if not n.local and n.where != "this machine"]
    rows += [f"  rank {w.rank:>3} node {w.node} {w.role:<10} pid {w.pid:<8} {w.state}"
            + (f" at {w.paused_at} ({w.pause_reason}): job.debug({w.rank})" if w.paused_at else "")
            for w in snap.workers]
    if snap.status == "failed":
        cause = snap.first_failure
        if cause is not None:
            rows.append("  " + cause.summary())
        elif snap.error:
            rows.append("  " + snap.error)
    return "\n".join([head, *rows])


# ------------------------------------------------------------------ html

def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def megabytes_text(rss: int | None) -> str:
    return "-" if rss is None else f"{rss / 2**20:.0f} MB"


TRUST_STORE_WARNING = ("trust_store: nodes join without the job's key and the rendezvous state "
                       "is unsigned; whoever can reach the store can run code in this job")


def header_html(snap: JobSnapshot, goodput: str = "") -> str:
    """The job's header line; ``goodput`` ("goodput 91%") is shown once known."""
    nodes = ", ".join(f"{n.index}: {n.status}" + (" (warm host)" if n.warm else "")
                      + (f" ({n.scheduler})" if n.status == "queued" and n.scheduler else "")
                      for n in snap.nodes)
    if snap.idle_hosts:
        nodes += f" · {snap.idle_hosts} warm host{'s' if snap.idle_hosts > 1 else ''} idle"
    color = JOB_COLORS.get(snap.status, "#000")
    return (
        f"<div class='enb-header' style='font-family:monospace'>"
        f"<b>{html.escape(snap.run_id)}</b> &nbsp; backend <b>{html.escape(snap.backend)}</b> &nbsp; "
        f"<span class='enb-state' style='background:{color};color:white;padding:1px 6px;"
        f"border-radius:3px'>{html.escape(snap.status)}</span> &nbsp; "
        f"elapsed {snap.elapsed:.1f}s &nbsp; attempt {snap.attempt} &nbsp; "
        f"restarts {snap.restart_count}/{snap.max_restarts} &nbsp; world {snap.world_size}"
        + (f" &nbsp; <b class='enb-goodput'>{html.escape(goodput)}</b>" if goodput else "")
        + f"<br><span style='color:#555'>nodes {html.escape(nodes)}</span>"
        + (f"<br><span class='enb-trust-store' style='color:#a04000'>"
           f"{html.escape(TRUST_STORE_WARNING)}</span>" if snap.trust_store else "")
        + checkpoint_html(snap)
        + "</div>"
        + (f"<div class='enb-stalled' style='background:#f9e79f;padding:3px 6px;margin-top:3px;"
           f"font-family:monospace'><b>stalled</b>: {html.escape(snap.stall)} "
           f"<i>(the hang map tab has the detail)</i></div>" if snap.stall else ""))


def checkpoint_html(snap: JobSnapshot) -> str:
    """The header's line on the newest complete checkpoint (nothing before there is one)."""
    newest = snap.newest_checkpoint
    if newest is None:
        return ""
    return (f"<br><span class='enb-checkpoint' style='color:#555'>checkpoint step "
            f"<b>{newest.step}</b> ({newest.world_size} rank{'' if newest.world_size == 1 else 's'}, "
            f"{size_text(newest.bytes)})</span>")


def tile_html(t: Tile) -> str:
    hung = (" <span class='enb-hung' style='background:#f1c40f;color:black;padding:0 3px'>"
            "possibly hung</span>") if t.hung else ""
    if t.node is None:
        where = "waiting for rendezvous"
    else:
        where = f"node {t.node} {html.escape(t.role)}"
        if t.host is not None:
            where += f" on {html.escape(t.host)}"
    cpu = "-" if t.cpu_percent is None else f"{t.cpu_percent:.0f}%"
    if t.paused_at is not None:
        hung = (f"<br><span class='enb-paused-at'>paused at {html.escape(t.paused_at)}</span>"
                f" &nbsp; <code>job.debug({t.rank})</code>")
    if t.slowed is not None:
        hung += f" <span class='enb-slowed'>slowed to {t.slowed:.0%}</span>"
    if t.silent_for is not None:
        last = f"last output {seconds_text(t.silent_for)} ago"
    elif t.state == TileState.PAUSED:
        last = "waiting for its debugger"
    else:
        last = "&nbsp;"
    return (
        f"<div class='enb-tile enb-{t.state}' data-rank='{t.rank}' style='border-left:6px solid {t.color};"
        f"padding:2px 6px;font-family:monospace;font-size:12px;line-height:1.35'>"
        f"<b>rank {t.rank}</b> <span style='color:{t.color};font-weight:bold'>{t.state}</span>{hung}<br>"
        f"{where}<br>pid {t.pid if t.pid is not None else '-'} &nbsp; attempt {t.attempt} "
        f"&nbsp; restarts {t.restart_count}<br>"
        f"cpu {cpu} &nbsp; rss {megabytes_text(t.rss)}<br>"
        f"{last}</div>")


def job_html(snap: JobSnapshot, goodput: str = "", picture: str = "") -> str:
    """A static HTML table of the job: what nbconvert or a non-widget frontend shows, with
    its goodput and the picture of its metrics (an ``<img>``) when there are some."""
    rows = "".join(
        f"<tr><td>{t.rank}</td><td>{'-' if t.node is None else t.node}</td><td>{html.escape(t.role)}</td>"
        f"<td>{t.pid if t.pid is not None else '-'}</td>"
        f"<td style='color:{t.color};font-weight:bold'>{t.state}</td>"
        f"<td>{t.attempt}</td><td>{t.restart_count}</td></tr>"
        for t in tiles(snap, snap.taken_at))
    failures = "".join(
        f"<pre style='color:#c0392b'>{html.escape(f.summary())}\n{html.escape(f.traceback or '')}</pre>"
        for f in snap.failures)
    return (f"{header_html(snap, goodput)}<table class='enb-ranks'><thead><tr><th>rank</th><th>node</th>"
            f"<th>role</th><th>pid</th><th>state</th><th>attempt</th><th>restarts</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{failures}{picture}")

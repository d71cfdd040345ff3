"""The notebook dashboard: a live ipywidgets view over a Job.

Two layers, like tqdm.notebook or dask's cluster widget:

* ``DashboardModel`` computes everything the dashboard shows (header, one
  tile per rank, filtered log text, timeline, stack dumps) from the Job and
  its LogBook. It is plain Python and testable without a frontend.
* ``Dashboard`` is the ipywidgets 8 view of that model. A background thread
  ticks a few times a second and pushes widget updates only when something
  changed, so a flood of output costs a bounded number of messages to the
  browser. Every button is a call to a Job method; the widget never touches
  a process itself.

``mimebundle(job)`` is what a Job returns from ``_repr_mimebundle_``: the live
widget in a Jupyter kernel, and always a text/plain summary and a text/html
table for terminals and nbconvert.
"""

from __future__ import annotations

import collections
import html
import itertools
import statistics
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from elastic_nb import controls, events

if TYPE_CHECKING:
    from elastic_nb.job import Job
    from elastic_nb.logs import LogLine

SIGNALS = ("SIGKILL", "SIGTERM", "SIGSEGV", "SIGINT")
TICK_INTERVAL = 0.25
STATS_INTERVAL = 1.0
MAX_LOG_LINES = 200
KEEP_LINES_PER_RANK = 2000
ALL = -1  # the "all ranks" / "all attempts" choice of the log filters

JOB_COLORS = {
    "pending": "#7f8c8d", "rendezvous": "#8e44ad", "running": "#27ae60",
    "restarting": "#e67e22", "succeeded": "#2471a3", "failed": "#c0392b", "stopped": "#566573",
}
TILE_COLORS = {
    "pending": "#95a5a6", "running": "#27ae60", "restarting": "#e67e22", "restarted": "#16a085",
    "failed": "#c0392b", "done": "#2471a3", "stopped": "#566573",
}


# ------------------------------------------------------------------ the model

@dataclass(frozen=True)
class Header:
    """The dashboard's top line."""

    run_id: str
    backend: str
    state: str
    color: str
    elapsed: float
    attempt: int
    restarts_used: int
    max_restarts: int
    world_size: int
    nodes: dict[int, str]


@dataclass(frozen=True)
class Tile:
    """One rank as the dashboard shows it."""

    rank: int
    node: int | None
    role: str
    state: str  # pending, running, restarting, restarted, failed, done, stopped
    color: str
    pid: int | None
    restart_count: int
    attempt: int
    cpu_percent: float | None
    rss: int | None
    silent_for: float | None
    hung: bool


@dataclass(frozen=True)
class TimelineEntry:
    """One event of the job, with what clicking it reveals."""

    event: events.Event
    offset: float  # seconds since the job was launched
    label: str
    details: str  # the event's fields and, for a failure, the rank's traceback


def header(job: Job) -> Header:
    workers = job.workers
    world = max((w.world_size for w in workers), default=0) or job.planned_world_size
    return Header(
        run_id=job.run_id, backend=job.backend, state=job.state,
        color=JOB_COLORS.get(job.state, "#000"), elapsed=job.elapsed,
        attempt=max((w.attempt for w in workers), default=0),
        restarts_used=job.restart_count, max_restarts=job.max_restarts,
        world_size=world, nodes=job.nodes)


def tile_state(state: str, attempt: int) -> str:
    """A worker's state as a tile shows it: a running rank of a later attempt is 'restarted'."""
    if state == "running":
        return "restarted" if attempt > 0 else "running"
    return {"succeeded": "done"}.get(state, state)


def started_times(job: Job) -> dict[int, float]:
    """When each rank's current worker started (the last ``started`` event naming it)."""
    times = {}
    for event in job.events:
        if event.kind == events.STARTED:
            for rank in event.detail.get("ranks", ()):
                times[rank] = event.time
    return times


def silences(job: Job, now: float) -> dict[int, float]:
    """Seconds since each running rank's last output line (or its start, if later)."""
    last_lines = job.log_book.last_line_time()
    starts = started_times(job)
    found = {}
    for worker in job.workers:
        if worker.state != "running":
            continue
        since = max(last_lines.get(worker.rank, 0.0), starts.get(worker.rank, 0.0))
        if since:
            found[worker.rank] = max(0.0, now - since)
    return found


def hung_ranks(silent: dict[int, float], hung_after: float, factor: float) -> set[int]:
    """Ranks silent for ``hung_after`` seconds and ``factor`` times longer than the others."""
    hung = set()
    for rank, seconds in silent.items():
        others = [s for r, s in silent.items() if r != rank]
        if seconds >= hung_after and others and seconds >= factor * max(statistics.median(others), 1.0):
            hung.add(rank)
    return hung


def tiles(job: Job, now: float | None = None,
          stats: dict[int, tuple[float, int] | None] | None = None,
          hung_after: float = 10.0, hung_factor: float = 5.0) -> list[Tile]:
    """One tile per rank; before any worker started, one pending tile per planned rank."""
    now = time.time() if now is None else now
    stats = stats or {}
    workers = job.workers
    if not workers:
        return [Tile(rank, None, "", "pending", TILE_COLORS["pending"], None, 0, 0,
                     None, None, None, False) for rank in range(job.planned_world_size)]
    silent = silences(job, now)
    hung = hung_ranks(silent, hung_after, hung_factor)
    result = []
    for w in workers:
        state = tile_state(w.state, w.attempt)
        usage = stats.get(w.rank) if w.state == "running" else None
        result.append(Tile(
            rank=w.rank, node=w.node, role=w.role, state=state, color=TILE_COLORS.get(state, "#000"),
            pid=w.pid, restart_count=w.restart_count, attempt=w.attempt,
            cpu_percent=usage[0] if usage else None, rss=usage[1] if usage else None,
            silent_for=silent.get(w.rank), hung=w.rank in hung))
    return result


def timeline(job: Job) -> list[TimelineEntry]:
    """The job's events in time order, each with its details and any traceback."""
    job_events = sorted(job.events, key=lambda e: e.time)
    start = job_events[0].time if job_events else 0.0
    history = job.failure_history
    final = job.failures
    entries = []
    for event in job_events:
        label = str(event).split(" ", 1)[1].strip()
        entries.append(TimelineEntry(event, event.time - start,
                                     f"+{event.time - start:7.2f}s  {label}",
                                     _event_details(event, history, final)))
    return entries


def _event_details(event: events.Event, history: list, final: dict) -> str:
    lines = [f"{event.kind}" + (f" (node {event.node})" if event.node is not None else "")
             + (f" rank {event.rank}" if event.rank is not None else "")]
    lines += [f"  {key}: {value}" for key, value in event.detail.items()]
    failures = []
    if event.kind == events.WORKER_FAILED:
        failures = [f for f in history if f.rank == event.rank
                    and f.restart_count == event.detail.get("restart_count")][-1:]
    elif event.kind == events.FAILED:
        failures = sorted(final.values(), key=lambda f: (f.time, f.rank))
    for failure in failures:
        lines.append("")
        lines.append(failure.summary())
        lines.append(failure.traceback.rstrip() if failure.traceback
                     else "(no Python traceback: the process was ended by a signal or exit code)")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def _megabytes(rss: int | None) -> str:
    return "-" if rss is None else f"{rss / 2**20:.0f} MB"


class LogView:
    """Recent lines of each rank, kept from the LogBook as they arrive, bounded per rank.

    Renders the last ``max_lines`` lines of one rank or of all ranks merged,
    filtered by text and attempt, with the job's prefix template applied and a
    separator wherever a new attempt begins.
    """

    def __init__(self, job: Job, keep_per_rank: int = KEEP_LINES_PER_RANK) -> None:
        self._job = job
        self._keep = keep_per_rank
        self._lock = threading.Lock()
        self._by_rank: dict[int, collections.deque[LogLine]] = {}
        self._last_seq: dict[int, int] = {}
        self._overflow: collections.Counter[int] = collections.Counter()
        self.version = 0
        with self._lock:  # lines arriving meanwhile wait, then skip what the snapshot holds
            job.log_book.add_listener(self._on_lines)
            self._add(job.log_book.lines())

    def close(self) -> None:
        self._job.log_book.remove_listener(self._on_lines)

    def _on_lines(self, lines: list[LogLine]) -> None:
        with self._lock:
            self._add(lines)

    def _add(self, lines: list[LogLine]) -> None:
        for line in lines:
            if line.seq <= self._last_seq.get(line.rank, -1):
                continue
            buffer = self._by_rank.get(line.rank)
            if buffer is None:
                buffer = self._by_rank[line.rank] = collections.deque(maxlen=self._keep)
            if len(buffer) == self._keep:
                self._overflow[line.rank] += 1
            buffer.append(line)
            self._last_seq[line.rank] = line.seq
        if lines:
            self.version += 1

    def ranks(self) -> list[int]:
        with self._lock:
            return sorted(self._by_rank)

    def attempts(self) -> list[int]:
        with self._lock:
            return sorted({line.attempt for buf in self._by_rank.values() for line in buf})

    def select(self, rank: int | None = None, text: str = "", attempt: int | None = None,
               max_lines: int = MAX_LOG_LINES) -> tuple[list[LogLine], int]:
        """The last ``max_lines`` matching lines, and how many older matches are not shown."""
        with self._lock:
            buffers = [self._by_rank.get(rank, ())] if rank is not None else list(self._by_rank.values())
            picked: list[LogLine] = []
            total = 0
            for buffer in buffers:
                if attempt is None and not text:  # the common case: only the tail is needed
                    total += len(buffer)
                    picked.extend(itertools.islice(buffer, max(0, len(buffer) - max_lines), None))
                    continue
                matches = [line for line in buffer
                           if (attempt is None or line.attempt == attempt)
                           and (not text or text in line.text)]
                total += len(matches)
                picked.extend(matches)
        if rank is None:
            picked.sort(key=lambda line: line.seq)
        shown = picked[max(0, len(picked) - max_lines):]
        return shown, total - len(shown)

    def render(self, rank: int | None = None, text: str = "", attempt: int | None = None,
               max_lines: int = MAX_LOG_LINES) -> str:
        lines, hidden = self.select(rank, text, attempt, max_lines)
        template = self._job.log_line_prefix_template
        out = []
        with self._lock:
            overflow = self._overflow[rank] if rank is not None else sum(self._overflow.values())
        if hidden or overflow:
            out.append(f"… {hidden + overflow} earlier lines not shown; every line is on disk "
                       f"under {self._job.log_dir}")
        previous = None
        for line in lines:
            if line.attempt != previous:
                out.append(f"──────── attempt {line.attempt} "
                           f"(restart count {line.source.restart_count}) ────────")
                previous = line.attempt
            out.append(line.render(template))
        return "\n".join(out)


class DashboardModel:
    """Everything the dashboard shows, computed from a Job; no widgets involved."""

    def __init__(self, job: Job, hung_after: float = 10.0, hung_factor: float = 5.0,
                 max_log_lines: int = MAX_LOG_LINES, clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.hung_after = hung_after
        self.hung_factor = hung_factor
        self.max_log_lines = max_log_lines
        self.clock = clock
        self.logs = LogView(job)
        self.stacks: dict[int, str] = {}
        self.status = ""
        self._stats: dict[int, tuple[float, int] | None] = {}

    def close(self) -> None:
        self.logs.close()

    def header(self) -> Header:
        return header(self.job)

    def refresh_stats(self) -> None:
        """Sample CPU% and RSS of every running worker (psutil)."""
        self._stats = {w.rank: controls.process_stats(w.pid)
                       for w in self.job.workers if w.state == "running"}

    def tiles(self) -> list[Tile]:
        return tiles(self.job, self.clock(), self._stats, self.hung_after, self.hung_factor)

    def timeline(self) -> list[TimelineEntry]:
        return timeline(self.job)

    def log_text(self, rank: int | None = None, text: str = "", attempt: int | None = None) -> str:
        return self.logs.render(rank, text, attempt, self.max_log_lines)

    def dump_stacks(self, timeout: float = 5) -> dict[int, str]:
        self.stacks = self.job.stacks(timeout=timeout)
        return self.stacks

    def stacks_text(self) -> str:
        return "\n\n".join(f"════ rank {rank} ════\n{text.rstrip()}" for rank, text in self.stacks.items())


# ---------------------------------------------------------- html rendering

def header_html(h: Header) -> str:
    nodes = ", ".join(f"{i}: {s}" for i, s in sorted(h.nodes.items()))
    return (
        f"<div class='enb-header' style='font-family:monospace'>"
        f"<b>{html.escape(h.run_id)}</b> &nbsp; backend <b>{html.escape(h.backend)}</b> &nbsp; "
        f"<span class='enb-state' style='background:{h.color};color:white;padding:1px 6px;"
        f"border-radius:3px'>{html.escape(h.state)}</span> &nbsp; "
        f"elapsed {h.elapsed:.1f}s &nbsp; attempt {h.attempt} &nbsp; "
        f"restarts {h.restarts_used}/{h.max_restarts} &nbsp; world {h.world_size}"
        f"<br><span style='color:#555'>nodes {html.escape(nodes)}</span></div>")


def tile_html(t: Tile) -> str:
    hung = (" <span class='enb-hung' style='background:#f1c40f;color:black;padding:0 3px'>"
            "possibly hung</span>") if t.hung else ""
    where = f"node {t.node} {html.escape(t.role)}" if t.node is not None else "waiting for rendezvous"
    cpu = "-" if t.cpu_percent is None else f"{t.cpu_percent:.0f}%"
    return (
        f"<div class='enb-tile enb-{t.state}' data-rank='{t.rank}' style='border-left:6px solid {t.color};"
        f"padding:2px 6px;font-family:monospace;font-size:12px;line-height:1.35'>"
        f"<b>rank {t.rank}</b> <span style='color:{t.color};font-weight:bold'>{t.state}</span>{hung}<br>"
        f"{where}<br>pid {t.pid if t.pid is not None else '-'} &nbsp; attempt {t.attempt} "
        f"&nbsp; restarts {t.restart_count}<br>"
        f"cpu {cpu} &nbsp; rss {_megabytes(t.rss)}<br>"
        f"last output {_seconds(t.silent_for)} ago</div>")


def job_html(job: Job) -> str:
    """A static HTML table of the job: what nbconvert or a non-widget frontend shows."""
    h = header(job)
    rows = "".join(
        f"<tr><td>{t.rank}</td><td>{'-' if t.node is None else t.node}</td><td>{html.escape(t.role)}</td>"
        f"<td>{t.pid if t.pid is not None else '-'}</td>"
        f"<td style='color:{t.color};font-weight:bold'>{t.state}</td>"
        f"<td>{t.attempt}</td><td>{t.restart_count}</td></tr>"
        for t in tiles(job))
    failures = "".join(
        f"<pre style='color:#c0392b'>{html.escape(f.summary())}\n{html.escape(f.traceback or '')}</pre>"
        for f in sorted(job.failures.values(), key=lambda f: (f.time, f.rank)))
    return (f"{header_html(h)}<table class='enb-ranks'><thead><tr><th>rank</th><th>node</th>"
            f"<th>role</th><th>pid</th><th>state</th><th>attempt</th><th>restarts</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{failures}")


# ------------------------------------------------------------------ the widget

class Dashboard(widgets.VBox):
    """The live dashboard of one Job: header, rank tiles, controls, logs, timeline.

    Updates are pushed by a background thread every ``interval`` seconds, and
    only when the job, its logs or a filter changed (CPU and silence figures
    refresh once a second). The thread ends when the job has ended and its
    last state is shown, or when the dashboard is closed.
    """

    def __init__(self, job: Job, interval: float = TICK_INTERVAL, start: bool = True,
                 **model_options: Any) -> None:
        self.model = DashboardModel(job, **model_options)
        self.interval = interval
        self.updates = 0  # widget pushes so far (a flood must keep this small)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._render_lock = threading.Lock()
        self._last_stats = 0.0
        self._seen_logs = -1
        self._failures_seen = 0
        self._tile_widgets: dict[int, tuple[widgets.HTML, widgets.Button]] = {}
        self._build()
        super().__init__([self._header, self._tiles_box, self._controls, self._status,
                          self._tabs], layout=widgets.Layout(width="100%"))
        self.add_class("enb-dashboard")
        job.add_listener(self._on_event)
        self.render()
        self._thread = threading.Thread(target=self._tick, name=f"elastic_nb-dashboard-{job.run_id}",
                                        daemon=True)
        if start:
            self._thread.start()

    @property
    def job(self) -> Job:
        return self.model.job

    # --------------------------------------------------------------- layout

    def _build(self) -> None:
        self._header = widgets.HTML()
        self._tiles_box = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns="repeat(auto-fill, minmax(190px, 1fr))", grid_gap="4px"))
        self.signal = widgets.Dropdown(options=SIGNALS, value="SIGKILL", description="signal",
                                       layout=widgets.Layout(width="180px"))
        self.restart_button = self._button("restart group", self._restart, "warning")
        self.stop_button = self._button("stop", self._stop, "danger")
        self.node = widgets.Dropdown(options=[], description="node", layout=widgets.Layout(width="130px"))
        self.kill_node_button = self._button("kill node", self._kill_node, "danger")
        self.add_nproc = widgets.BoundedIntText(value=1, min=1, max=64, description="nproc",
                                                layout=widgets.Layout(width="130px"))
        self.add_node_button = self._button("add node", self._add_node, "")
        self.stacks_button = self._button("dump stacks", self._dump_stacks, "info")
        self._controls = widgets.HBox([
            self.signal, self.restart_button, self.stop_button, self.node, self.kill_node_button,
            self.add_nproc, self.add_node_button, self.stacks_button],
            layout=widgets.Layout(flex_flow="row wrap"))
        self._status = widgets.HTML()
        self.log_rank = widgets.Dropdown(options=[("all ranks (merged)", ALL)], value=ALL,
                                         description="rank", layout=widgets.Layout(width="220px"))
        self.log_attempt = widgets.Dropdown(options=[("all attempts", ALL)], value=ALL,
                                            description="attempt", layout=widgets.Layout(width="200px"))
        self.log_filter = widgets.Text(placeholder="only lines containing…", description="filter",
                                       continuous_update=True)
        for control in (self.log_rank, self.log_attempt, self.log_filter):
            control.observe(lambda _: self._dirty.set(), names="value")
        self.log_area = widgets.HTML(layout=widgets.Layout(  # column-reverse: scrolled to the newest line
            max_height="320px", overflow="auto", display="flex", flex_flow="column-reverse"))
        self.log_area.add_class("enb-logs")
        logs = widgets.VBox([widgets.HBox([self.log_rank, self.log_attempt, self.log_filter]),
                             self.log_area])
        self.event_list = widgets.Select(options=[], rows=10, layout=widgets.Layout(width="100%"))
        self.event_list.observe(lambda _: self._dirty.set(), names="index")
        self.event_details = widgets.HTML()
        timeline_box = widgets.VBox([self.event_list, self.event_details])
        self.stacks_area = widgets.HTML("<i>press “dump stacks” to see where every rank is</i>")
        self._tabs = widgets.Tab([logs, timeline_box, self.stacks_area])
        for i, title in enumerate(("logs", "timeline", "stacks")):
            self._tabs.set_title(i, title)

    def _button(self, label: str, action: Callable[[], str], style: str) -> widgets.Button:
        button = widgets.Button(description=label, button_style=style,
                                layout=widgets.Layout(width="auto"))
        button.on_click(lambda _: self._act(action))
        return button

    def _tile(self, rank: int) -> tuple[widgets.HTML, widgets.Button]:
        body = widgets.HTML()
        kill = widgets.Button(description=f"kill rank {rank}", button_style="danger",
                              layout=widgets.Layout(width="auto"))
        kill.on_click(lambda _: self._act(lambda: self._kill(rank)))
        return body, kill

    def tile_button(self, rank: int) -> widgets.Button:
        """The "kill rank N" button of a rank's tile."""
        return self._tile_widgets[rank][1]

    # -------------------------------------------------------------- actions

    def _act(self, action: Callable[[], str]) -> None:
        """Run a control; show what happened (or why it could not) in the status line."""
        try:
            message = action()
            color = "#2c3e50"
        except Exception as exc:  # shown to the user; a button callback must not raise
            message = f"{type(exc).__name__}: {exc}"
            color = "#c0392b"
        self.model.status = f"<span style='color:{color}'>{html.escape(message)}</span>"
        self._dirty.set()
        if not self._thread.is_alive():
            self.render()

    def _kill(self, rank: int) -> str:
        self.job.kill(rank, self.signal.value)
        return f"sent {self.signal.value} to rank {rank}"

    def _restart(self) -> str:
        self.job.restart()
        return "restart requested: a new attempt starts (the restart budget is not used)"

    def _stop(self) -> str:
        self._in_background("stopping", self.job.stop, lambda _: "job stopped")
        return "stopping the job…"

    def _kill_node(self) -> str:
        if self.node.value is None:
            raise ValueError("no live node to kill")
        self.job.kill_node(self.node.value)
        return f"killed node {self.node.value}"

    def _add_node(self) -> str:
        from elastic_nb.api import Node

        index = self.job.add_node(Node(self.add_nproc.value))
        return f"added node {index} with {self.add_nproc.value} ranks; it joins at the next rendezvous"

    def _dump_stacks(self) -> str:
        def done(stacks: dict[int, str]) -> str:
            self._tabs.selected_index = 2
            return f"stacks of {len(stacks)} ranks dumped (see the stacks tab)"

        self._in_background("dumping stacks", self.model.dump_stacks, done)
        return "dumping the stacks of every running rank…"

    def _in_background(self, what: str, work: Callable[[], Any], done: Callable[[Any], str]) -> None:
        """Slow controls run off the kernel's thread so the notebook stays responsive."""
        def run() -> None:
            self._act(lambda: done(work()))

        threading.Thread(target=run, name=f"elastic_nb-{what}", daemon=True).start()

    # ------------------------------------------------------------ rendering

    def _on_event(self, event: events.Event) -> None:
        self._dirty.set()  # called on the Job's pump thread: do nothing slow here

    def _tick(self) -> None:
        while not self._closed.wait(self.interval):
            if self.job.done:
                self.job.wait()  # returns once the job's last log lines are in
                self.render()
                break
            if self._dirty.is_set() or self.model.logs.version != self._seen_logs \
                    or time.monotonic() - self._last_stats >= STATS_INTERVAL:
                self.render()
        self._detach()

    def render(self) -> None:
        """Compute the view from the model and push what changed to the widgets."""
        with self._render_lock:
            self._dirty.clear()
            self._seen_logs = self.model.logs.version
            if time.monotonic() - self._last_stats >= STATS_INTERVAL:
                self._last_stats = time.monotonic()
                if not self.job.done:
                    self.model.refresh_stats()
            changed = [
                self._set(self._header, "value", header_html(self.model.header())),
                self._render_tiles(),
                self._render_controls(),
                self._set(self._status, "value", self.model.status),
                self._render_logs(),
                self._render_timeline(),
                self._set(self.stacks_area, "value", self._stacks_html()),
            ]
            if any(changed):
                self.updates += 1

    @staticmethod
    def _set_options(widget: widgets.widget_selection._Selection, options: list) -> bool:
        """Replace a selection's options, keeping the user's choice if it is still offered."""
        options = tuple(options)
        if tuple(widget.options) == options:
            return False
        chosen = widget.value
        widget.options = options
        values = [value for _, value in options] if options and isinstance(options[0], tuple) else options
        if chosen in values:
            widget.value = chosen
        elif values:
            widget.value = values[0]
        return True

    @staticmethod
    def _set(widget: widgets.Widget, name: str, value: Any) -> bool:
        if getattr(widget, name) == value:
            return False
        setattr(widget, name, value)
        return True

    def _render_tiles(self) -> bool:
        current = self.model.tiles()
        changed = False
        if [t.rank for t in current] != sorted(self._tile_widgets) or not self._tiles_box.children:
            self._tile_widgets = {t.rank: self._tile_widgets.get(t.rank) or self._tile(t.rank)
                                  for t in current}
            self._tiles_box.children = [widgets.VBox(list(self._tile_widgets[t.rank]))
                                        for t in current]
            changed = True
        for t in current:
            body, kill = self._tile_widgets[t.rank]
            changed |= self._set(body, "value", tile_html(t))
            changed |= self._set(kill, "disabled", t.state not in ("running", "restarted"))
        return changed

    def _render_controls(self) -> bool:
        live = [i for i, status in sorted(self.job.nodes.items()) if status in ("starting", "running")]
        done = self.job.done
        changed = self._set_options(self.node, live)
        for button in (self.restart_button, self.stop_button, self.kill_node_button,
                       self.add_node_button, self.stacks_button):
            changed |= self._set(button, "disabled", done)
        return changed

    def _render_logs(self) -> bool:
        ranks = [("all ranks (merged)", ALL)] + [(f"rank {r}", r) for r in self.model.logs.ranks()]
        attempts = [("all attempts", ALL)] + [(f"attempt {a}", a) for a in self.model.logs.attempts()]
        changed = self._set_options(self.log_rank, ranks)
        changed |= self._set_options(self.log_attempt, attempts)
        rank, attempt = (None if v == ALL else v for v in (self.log_rank.value, self.log_attempt.value))
        text = self.model.log_text(rank, self.log_filter.value, attempt)
        body = (f"<pre style='margin:0;font-size:12px;line-height:1.3'>{html.escape(text)}</pre>"
                if text else "<i>no output yet</i>")
        return changed | self._set(self.log_area, "value", body)

    def _render_timeline(self) -> bool:
        entries = self.model.timeline()
        changed = self._set_options(self.event_list, [(e.label, i) for i, e in enumerate(entries)])
        failures = [i for i, e in enumerate(entries)
                    if e.event.kind in (events.WORKER_FAILED, events.FAILED)]
        if len(failures) > self._failures_seen:  # a new failure: show its traceback at once
            self._failures_seen = len(failures)
            self.event_list.value = failures[-1]
            changed = True
        index = self.event_list.value
        details = entries[index].details if index is not None and index < len(entries) else \
            "click an event to see its details; a failure shows the rank's traceback"
        return changed | self._set(self.event_details, "value",
                                   f"<pre style='font-size:12px'>{html.escape(details)}</pre>")

    def _stacks_html(self) -> str:
        if not self.model.stacks:
            return self.stacks_area.value
        return f"<pre style='font-size:12px'>{html.escape(self.model.stacks_text())}</pre>"

    # ------------------------------------------------------------ lifecycle

    def _detach(self) -> None:
        self.job.remove_listener(self._on_event)
        self.model.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait for the update thread to end (it does once the job has ended)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        elif not self._thread.is_alive():
            self._detach()
        super().close()


# ------------------------------------------------------- the Job's displays

_dashboards: weakref.WeakKeyDictionary[Job, Dashboard] = weakref.WeakKeyDictionary()


def dashboard(job: Job) -> Dashboard:
    """The job's dashboard: one per job, shared by every display of it."""
    existing = _dashboards.get(job)
    if existing is None or existing._closed.is_set():
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


def show(job: Job) -> None:
    """Display the job's live dashboard (or its text summary outside a kernel)."""
    from IPython.display import display

    display(dashboard(job) if in_kernel() else job)


def mimebundle(job: Job, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """A Job's rich display: the live widget in a kernel, plus text and HTML fallbacks."""
    bundle: dict[str, Any] = {}
    if in_kernel():
        bundle.update(dashboard(job)._repr_mimebundle_(include=include, exclude=exclude))
    bundle["text/plain"] = job.summary()
    bundle["text/html"] = job_html(job)
    return bundle

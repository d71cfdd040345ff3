"""The launch options, defined once: name, default, check, help, and who shares them.

``OPTIONS`` is the one list. From it come ``launch``'s checks
(``kernel.planning.make_plan`` runs each option's ``check``), the options
every node of a job shares (``JobOptions``, sent to each node host and
published for nodes that join), the ``%elastic_run`` flags
(``ui.magics``), the CLI's backend choices and the tests' option lists.
``launch``'s signature and ``JobOptions``' fields are written out for
editors and type checkers; tests/test_options.py checks that they agree
with this list.

A check takes the option's name and the value given and returns the value
the plan keeps, or raises ``LaunchError`` saying how to fix it. Checks that
involve several options (node counts, an endpoint's scheme) are the plan's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from elastic_nb.model.errors import LaunchError
from elastic_nb.wire.logfiles import DEFAULT_PREFIX_TEMPLATE, PREFIX_FIELDS, template_fields
from elastic_nb.wire.records import ProtocolError, checked_fields

BACKENDS = ("c10d", "etcd", "etcd-v2", "etcd3")
START_METHODS = ("spawn", "forkserver")
DEFAULT_RDZV_TIMEOUT = 120.0
DEFAULT_LIVENESS_TIMEOUT = 5.0  # README "Reliability" says how it was chosen
DEFAULT_HANG_AFTER = 60.0  # README "Finding a hang" says why
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Check = Callable[[str, Any], Any]


def heartbeat_interval(liveness_timeout: float) -> float:
    """How often the Job and each node beat: five times per timeout, so that one late or lost
    beat is never a loss."""
    return max(0.1, liveness_timeout / 5)


# ------------------------------------------------------------------ checks

def any_value(name: str, value: Any) -> Any:
    return value


def integer(minimum: int, maximum: int | None = None, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise LaunchError(f"{name} must be an int, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise LaunchError(f"{name} must be {bound}, got {value}")
        return value
    return check


def seconds(positive: bool, default: float | None = None, optional: bool = False) -> Check:
    """A number of seconds; None becomes ``default`` (or stays None when ``optional``)."""
    def check(name: str, value: Any) -> Any:
        if value is None and (optional or default is not None):
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LaunchError(f"{name} must be a number of seconds, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise LaunchError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
        return float(value)
    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise LaunchError(f"{name} must be True or False, not {value!r}")
    return value


def text(optional: bool = True) -> Check:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise LaunchError(f"{name} must be a non-empty string, got {value!r}")
        return value
    return check


def choice(choices: tuple[str, ...], hints: dict[str, str] | None = None) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = (hints or {}).get(str(value)) or (f"; did you mean {close[0]!r}?" if close else "")
            raise LaunchError(f"{name} must be one of {', '.join(choices)}, not {value!r}{hint}")
        return value
    return check


def backend_name(name: str, value: Any) -> str:
    if value not in BACKENDS:
        close = difflib.get_close_matches(str(value), BACKENDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LaunchError(f"unknown backend {value!r}{hint} (known: {', '.join(BACKENDS)})")
    return str(value)


def run_id(name: str, value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not _RUN_ID.match(value)):
        raise LaunchError(f"run_id {value!r} must be letters, digits, '_', '-' or '.'")
    return value


def prefix_template(name: str, value: Any) -> str:
    if value is None:
        return DEFAULT_PREFIX_TEMPLATE
    if not isinstance(value, str):
        raise LaunchError("log_line_prefix_template must be a string like "
                          "'[${role_name}-${local_rank}:${rank}]:'")
    unknown = template_fields(value) - set(PREFIX_FIELDS)
    if unknown:
        raise LaunchError(f"log_line_prefix_template uses unknown field(s) "
                          f"{', '.join(sorted(unknown))}; known: "
                          f"{', '.join('${' + f + '}' for f in PREFIX_FIELDS)}")
    return value


def environment(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LaunchError("env must be a dict of environment variables, e.g. {'LR': '0.1'}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise LaunchError(f"env values must be strings: {key!r}={item!r} "
                              f"(write {key}={str(item)!r})")
    return dict(value)


def rendezvous_configs(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LaunchError("rdzv_configs must be a dict of rendezvous options, "
                          "e.g. {'last_call_timeout': 5}")
    return dict(value)


# ------------------------------------------------------------------ the list

@dataclass(frozen=True)
class Option:
    """One launch option.

    ``shared``: every node of the job has it (a field of ``JobOptions``).
    ``flag``: the ``%elastic_run`` flag (None: not offered there, e.g. dicts);
    ``flag_type`` converts the flag's text (None with a bool: a switch).
    """

    name: str
    default: Any
    help: str
    check: Check = any_value
    shared: bool = False
    flag: str | None = None
    short: str | None = None
    flag_type: Callable[[str], Any] | None = str

    @property
    def flags(self) -> list[str]:
        return [f for f in (self.short, self.flag) if f]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("nodes", None, "nodes=[Node(...), ...]: one agent process per node "
           "(the flag: NxM, N nodes of M ranks, or M1,M2,...)", flag="--nodes"),
    Option("nproc", None, "ranks on one node (default 1)", integer(1, optional=True),
           flag="--nproc", short="-n", flag_type=int),
    Option("module", False, "fn is a module's name, run as __main__ like torchrun -m (a str "
           "without it: a script's path)", boolean, flag="--module", short="-m", flag_type=None),
    Option("backend", "c10d", f"rendezvous backend: {', '.join(BACKENDS)}", backend_name,
           flag="--backend"),
    Option("endpoint", None, "rendezvous endpoint host:port (etcd backends; c10d: an external "
           "store)", flag="--endpoint"),
    Option("run_id", None, "the job's run id (default: a new one)", run_id, flag="--run-id"),
    Option("min_nodes", None, "fewest nodes the job runs with (default: the nodes launched)",
           integer(1, optional=True), shared=True, flag="--min-nodes", flag_type=int),
    Option("max_nodes", None, "most nodes the job can grow to (default: the nodes launched)",
           integer(1, optional=True), shared=True, flag="--max-nodes", flag_type=int),
    Option("max_restarts", 0, "restarts allowed after a failure", integer(0), shared=True,
           flag="--max-restarts", flag_type=int),
    Option("monitor_interval", 0.1, "seconds between the agents' checks of their workers",
           seconds(positive=True), shared=True, flag="--monitor-interval", flag_type=float),
    Option("exit_barrier_timeout", 30, "seconds a finished node waits for the others",
           seconds(positive=False), shared=True, flag="--exit-barrier-timeout", flag_type=float),
    Option("rdzv_timeout", None, f"seconds a rendezvous round may take (default "
           f"{DEFAULT_RDZV_TIMEOUT:g})", seconds(positive=True, default=DEFAULT_RDZV_TIMEOUT),
           shared=True, flag="--rdzv-timeout", flag_type=float),
    Option("start_method", "forkserver", "how workers start: forkserver or spawn",
           choice(START_METHODS, {"fork": " (fork is unsafe in a Jupyter kernel)"}), shared=True,
           flag="--start-method"),
    Option("log_line_prefix_template", None, "log prefix template, e.g. "
           "'[${role_name}${rank}]:'", prefix_template, shared=True, flag="--prefix"),
    Option("log_dir", None, "where the logs go (default: a new temporary directory)",
           text(), flag="--log-dir"),
    Option("env", None, "extra environment variables of every rank", environment),
    Option("master_addr", None, "the workers' MASTER_ADDR (default: the rendezvous decides)",
           text(), shared=True, flag="--master-addr"),
    Option("master_port", None, "the workers' MASTER_PORT (default: a free port)",
           integer(1, 65535, optional=True), shared=True, flag="--master-port", flag_type=int),
    Option("rdzv_configs", None, "rendezvous options, e.g. {'last_call_timeout': 5}",
           rendezvous_configs, shared=True),
    Option("shutdown_timeout", 5, "seconds a worker has to exit after SIGTERM", integer(0),
           shared=True, flag="--shutdown-timeout", flag_type=int),
    Option("listen_addr", "127.0.0.1", "where this kernel serves the rendezvous store and "
           "accepts joining nodes", text(optional=False), flag="--listen-addr"),
    Option("keep_warm", None, "seconds the node hosts stay warm after the job (0: they end "
           "with it; default elastic_nb.set_keep_warm)", seconds(positive=False, optional=True),
           flag="--keep-warm", flag_type=float),
    Option("post_mortem", False, "a rank that raises waits for job.debug(rank) at the failing "
           "frame", boolean, shared=True, flag="--post-mortem", flag_type=None),
    Option("post_mortem_timeout", 600, "seconds a post-mortem rank waits for a debugger",
           seconds(positive=True), shared=True, flag="--post-mortem-timeout", flag_type=float),
    Option("liveness_timeout", DEFAULT_LIVENESS_TIMEOUT, "seconds of silence after which a node "
           "is lost (frozen, partitioned) and a joined node leaves a Job it no longer hears",
           seconds(positive=True), shared=True, flag="--liveness-timeout", flag_type=float),
    Option("collective_timeout", None, "seconds a collective may take before it fails (the "
           "default timeout of every process group the ranks create; default torch's 30 min)",
           seconds(positive=True, optional=True), shared=True, flag="--collective-timeout",
           flag_type=float),
    Option("flight_recorder", True, "ranks record their collectives (torch's flight recorder) "
           "for job.hang_report() and the hang map", boolean, shared=True, flag=None),
    Option("hang_after", DEFAULT_HANG_AFTER, "seconds without progress (no collective "
           "completed, no line printed) after which the timeline says the job stalled and "
           "why; 0 turns the watch off", seconds(positive=False), shared=True,
           flag="--hang-after", flag_type=float),
    Option("trust_store", False, "admit nodes without the job's key (plain torchrun, a join "
           "with the store's token) and leave the rendezvous state unsigned: whoever can reach "
           "the store can then run code in the job", boolean, shared=True, flag="--trust-store",
           flag_type=None),
    Option("checkpoint_dir", None, "where enb.save_checkpoint writes and enb.restore_checkpoint "
           "reads (default: a checkpoints folder in the job's log directory); a launch with the "
           "same one resumes; shared storage for nodes on other machines", text(), shared=True,
           flag="--checkpoint-dir"),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)
BY_NAME = {o.name: o for o in OPTIONS}


def collect(namespace: dict[str, Any]) -> dict[str, Any]:
    """The launch options among a call's arguments (``launch`` passes its ``locals()``)."""
    return {name: namespace[name] for name in OPTION_NAMES if name in namespace}


def check_unknown(keys: list[str], named: set[str], strict: bool) -> None:
    """A keyword close to an option name, that the function does not name, is a typo;
    with ``strict`` (no function to take it) any unknown keyword is."""
    for key in keys:
        if key in named:
            continue
        close = difflib.get_close_matches(key, OPTION_NAMES, n=1, cutoff=0.75)
        if close or strict:
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise LaunchError(f"unknown option {key!r}{hint} (options: {', '.join(OPTION_NAMES)})")


@dataclass(frozen=True)
class JobOptions:
    """The settings every node of one job shares, whoever started the node.

    Its fields are the ``shared`` options of ``OPTIONS``, checked; the plan
    holds it, each node host's ``AgentConfig`` carries it, and the join
    descriptor publishes it for nodes that join from another machine.
    """

    min_nodes: int
    max_nodes: int
    max_restarts: int
    monitor_interval: float
    exit_barrier_timeout: float
    rdzv_timeout: float
    start_method: str
    log_line_prefix_template: str
    master_addr: str | None
    master_port: int | None
    rdzv_configs: dict[str, Any]
    shutdown_timeout: int
    post_mortem: bool = False  # a rank whose function raises waits for a debugger first
    post_mortem_timeout: float = 600.0
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT
    collective_timeout: float | None = None
    flight_recorder: bool = True
    hang_after: float = DEFAULT_HANG_AFTER
    trust_store: bool = False  # keyless nodes admitted, rendezvous state unsigned
    checkpoint_dir: str | None = None  # the ranks' CHECKPOINT_DIR_ENV (the plan sets it)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: Any) -> JobOptions:
        if not isinstance(message, dict):
            raise ProtocolError("the job's options must be an object")
        options = cls(**checked_fields(cls, message))
        for option in OPTIONS:
            if option.shared:
                try:
                    option.check(option.name, getattr(options, option.name))
                except LaunchError as exc:
                    raise ProtocolError(f"job options: {exc}") from None
        return options

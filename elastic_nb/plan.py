"""What was asked: the frozen launch plan and the checks that build it.

``make_plan`` turns ``launch()``'s arguments into a ``JobPlan`` or raises a
``LaunchError`` that names the fix, before any process starts. A plan never
changes after launch: what the job became (nodes killed, nodes joined,
restarts) is observed state (``state.py``), kept apart from what was planned.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import cloudpickle

from elastic_nb import network
from elastic_nb.errors import LaunchError
from elastic_nb.logs import DEFAULT_PREFIX_TEMPLATE, PREFIX_FIELDS, template_fields
from elastic_nb.payload import pack_call

BACKENDS = ("c10d", "etcd", "etcd-v2", "etcd3")
START_METHODS = ("spawn", "forkserver")
DEFAULT_RDZV_TIMEOUT = 120.0
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Node:
    """One simulated machine: an agent process running ``nproc`` workers of one role.

    ``fn``, ``args`` and ``kwargs`` default to the ones given to ``launch``.
    """

    nproc: int
    role: str = "default"
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobOptions:
    """The settings every node of one job shares, whoever started the node.

    The plan holds it; each agent's ``AgentConfig`` carries it, and the join
    descriptor publishes it for nodes that join from another machine.
    """

    min_nodes: int
    max_nodes: int
    max_restarts: int
    monitor_interval: float
    exit_barrier_timeout: float
    rdzv_timeout: float
    rdzv_configs: dict[str, Any]
    start_method: str
    log_line_prefix_template: str
    master_addr: str | None
    master_port: int | None
    shutdown_timeout: int
    post_mortem: bool = False  # a rank whose function raises waits for a debugger first
    post_mortem_timeout: float = 600.0

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobOptions:
        return cls(**message)


@dataclass(frozen=True)
class NodePlan:
    """What one node runs: the packed call, its role and size."""

    nproc: int
    role: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class JobPlan:
    """A validated launch: everything needed to start the nodes, frozen at launch.

    ``default_payload`` is the job's function call, packed: what an added or
    joining node runs when it brings no function of its own. The user's
    function and arguments are not kept (only their pickle is).
    """

    run_id: str
    backend: str
    endpoint: str | None  # None: the embedded c10d store, hosted by the Job
    nodes: tuple[NodePlan, ...]
    options: JobOptions
    log_dir: str
    env: dict[str, str]
    listen_addr: str = "127.0.0.1"
    default_payload: bytes | None = field(default=None, repr=False)
    keep_warm: float = 0.0  # seconds a local host stays idle for the next launch (0: it ends)

    @property
    def world_size(self) -> int:
        """Ranks of the nodes planned at launch (what the first rendezvous forms)."""
        return sum(n.nproc for n in self.nodes)


def make_plan(fn: Callable[..., Any] | None, args: tuple, kwargs: dict[str, Any], *,
              nodes: list[Node] | None, nproc: int | None, backend: str, endpoint: str | None,
              run_id: str | None, min_nodes: int | None, max_nodes: int | None,
              max_restarts: int, monitor_interval: float, exit_barrier_timeout: float,
              rdzv_timeout: float | None, start_method: str,
              log_line_prefix_template: str | None, log_dir: str | None,
              env: dict[str, str] | None, master_addr: str | None, master_port: int | None,
              rdzv_configs: dict[str, Any] | None, shutdown_timeout: int,
              listen_addr: str, keep_warm: float, post_mortem: bool = False,
              post_mortem_timeout: float = 600.0) -> JobPlan:
    """Check every argument of ``launch`` and pack the calls; raises LaunchError.

    ``endpoint`` None with the c10d backend means the embedded store, which
    the Job hosts in this process.
    """
    check_unknown_options(fn, kwargs)
    if nodes is not None and nproc is not None:
        raise LaunchError("give either nproc=N (one node) or nodes=[Node(...), ...], not both")
    if nodes is None:
        if nproc is not None:
            _check_int("nproc", nproc, minimum=1)
        nodes = [Node(nproc=1 if nproc is None else nproc)]
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise LaunchError("nodes must be a non-empty list of elastic_nb.Node(nproc=..., role=...)")
    if fn is None and any(not isinstance(n, Node) or n.fn is None for n in nodes):
        raise LaunchError("nothing to run: pass a function, launch(train, nproc=4), "
                          "or give every Node its own fn=")
    if fn is not None and not callable(fn):
        raise LaunchError(f"fn must be callable, got {type(fn).__name__}")

    backend = check_backend(backend)
    run_id = _check_run_id(run_id)
    min_nodes, max_nodes = _check_node_counts(len(nodes), min_nodes, max_nodes)
    _check_int("max_restarts", max_restarts, minimum=0)
    _check_number("monitor_interval", monitor_interval, positive=True)
    _check_number("exit_barrier_timeout", exit_barrier_timeout, positive=False)
    rdzv_timeout = DEFAULT_RDZV_TIMEOUT if rdzv_timeout is None else rdzv_timeout
    _check_number("rdzv_timeout", rdzv_timeout, positive=True)
    _check_int("shutdown_timeout", shutdown_timeout, minimum=0)
    _check_number("keep_warm", keep_warm, positive=False)
    if not isinstance(post_mortem, bool):
        raise LaunchError(f"post_mortem must be True or False, not {post_mortem!r}")
    _check_number("post_mortem_timeout", post_mortem_timeout, positive=True)
    if start_method not in START_METHODS:
        hint = " (fork is unsafe in a Jupyter kernel)" if start_method == "fork" else ""
        raise LaunchError(f"start_method must be one of {', '.join(START_METHODS)}, "
                          f"not {start_method!r}{hint}")
    template = _check_prefix_template(log_line_prefix_template)
    env = _check_env(env)
    if master_port is not None:
        _check_int("master_port", master_port, minimum=1, maximum=65535)
    if rdzv_configs is not None and not isinstance(rdzv_configs, dict):
        raise LaunchError("rdzv_configs must be a dict of rendezvous options, "
                          "e.g. {'last_call_timeout': 5}")
    if not (backend == "c10d" and endpoint is None):
        endpoint, rdzv_configs = check_endpoint(backend, endpoint, rdzv_configs)
    _check_listen_addr(listen_addr)

    default_payload = pack(fn, args, kwargs) if fn is not None else None
    node_plans = tuple(plan_node(i, node, default_payload) for i, node in enumerate(nodes))
    options = JobOptions(
        min_nodes=min_nodes, max_nodes=max_nodes, max_restarts=max_restarts,
        monitor_interval=float(monitor_interval),
        exit_barrier_timeout=float(exit_barrier_timeout), rdzv_timeout=float(rdzv_timeout),
        rdzv_configs=dict(rdzv_configs or {}), start_method=start_method,
        log_line_prefix_template=template, master_addr=master_addr, master_port=master_port,
        shutdown_timeout=shutdown_timeout, post_mortem=post_mortem,
        post_mortem_timeout=float(post_mortem_timeout))
    return JobPlan(run_id=run_id, backend=backend, endpoint=endpoint, nodes=node_plans,
                   options=options, log_dir=_make_log_dir(log_dir, run_id), env=env,
                   listen_addr=listen_addr, default_payload=default_payload,
                   keep_warm=float(keep_warm))


def plan_node(index: int, node: Node, default_payload: bytes | None) -> NodePlan:
    """Check one node and pack the call its workers run (the node's own fn, or the job's)."""
    if not isinstance(node, Node):
        raise LaunchError(f"nodes[{index}] must be an elastic_nb.Node, got {type(node).__name__}")
    _check_int(f"nodes[{index}].nproc", node.nproc, minimum=1)
    if not isinstance(node.role, str) or not node.role:
        raise LaunchError(f"nodes[{index}].role must be a non-empty string")
    if node.fn is None:
        if default_payload is None:
            raise LaunchError(f"nodes[{index}] has no fn and the job has no default function")
        return NodePlan(nproc=node.nproc, role=node.role, payload=default_payload)
    if not callable(node.fn):
        raise LaunchError(f"nodes[{index}].fn must be callable, got {type(node.fn).__name__}")
    payload = pack(node.fn, tuple(node.args), dict(node.kwargs or {}))
    return NodePlan(nproc=node.nproc, role=node.role, payload=payload)


# ------------------------------------------------------------------ checks

LAUNCH_OPTIONS = (
    "nodes", "nproc", "backend", "endpoint", "run_id", "min_nodes", "max_nodes", "max_restarts",
    "monitor_interval", "exit_barrier_timeout", "rdzv_timeout", "start_method",
    "log_line_prefix_template", "log_dir", "env", "master_addr", "master_port", "rdzv_configs",
    "shutdown_timeout", "listen_addr", "keep_warm", "post_mortem", "post_mortem_timeout",
)


def check_unknown_options(fn: Callable[..., Any] | None, kwargs: dict[str, Any]) -> None:
    """A keyword close to an option name, that fn does not name, is a typo."""
    named: set[str] = set()
    if fn is not None:
        try:
            named = set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            named = set()
    for key in kwargs:
        if key in named:
            continue
        close = difflib.get_close_matches(key, LAUNCH_OPTIONS, n=1, cutoff=0.75)
        if close or fn is None:
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise LaunchError(f"unknown option {key!r}{hint} (options: {', '.join(LAUNCH_OPTIONS)})")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LaunchError(f"unknown backend {backend!r}{hint} (known: {', '.join(BACKENDS)})")
    return backend


def _check_run_id(run_id: str | None) -> str:
    if run_id is None:
        return f"enb-{uuid.uuid4().hex[:8]}"
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise LaunchError(f"run_id {run_id!r} must be letters, digits, '_', '-' or '.'")
    return run_id


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LaunchError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise LaunchError(f"{name} must be {bound}, got {value}")


def _check_number(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LaunchError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise LaunchError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")


def _check_node_counts(count: int, min_nodes: int | None, max_nodes: int | None) -> tuple[int, int]:
    if max_nodes is not None:
        _check_int("max_nodes", max_nodes, minimum=1)
        if count > max_nodes:
            raise LaunchError(f"{count} nodes given but max_nodes={max_nodes}: raise max_nodes "
                              "or start fewer nodes (add more later with job.add_node)")
    min_nodes = count if min_nodes is None else min_nodes
    _check_int("min_nodes", min_nodes, minimum=1)
    max_nodes = max(count, min_nodes) if max_nodes is None else max_nodes
    if min_nodes > max_nodes:
        raise LaunchError(f"min_nodes ({min_nodes}) must not exceed max_nodes ({max_nodes})")
    return min_nodes, max_nodes


def _check_prefix_template(template: str | None) -> str:
    if template is None:
        return DEFAULT_PREFIX_TEMPLATE
    if not isinstance(template, str):
        raise LaunchError("log_line_prefix_template must be a string like "
                          "'[${role_name}-${local_rank}:${rank}]:'")
    unknown = template_fields(template) - set(PREFIX_FIELDS)
    if unknown:
        raise LaunchError(f"log_line_prefix_template uses unknown field(s) "
                          f"{', '.join(sorted(unknown))}; known: "
                          f"{', '.join('${' + f + '}' for f in PREFIX_FIELDS)}")
    return template


def _check_env(env: dict[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise LaunchError("env must be a dict of environment variables, e.g. {'LR': '0.1'}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LaunchError(f"env values must be strings: {key!r}={value!r} "
                              f"(write {key}={str(value)!r})")
    return dict(env)


def check_endpoint(backend: str, endpoint: str | None,
                   rdzv_configs: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """A valid endpoint; torch's etcd backends take the scheme as a ``protocol`` config."""
    if not endpoint:
        raise LaunchError(f"backend {backend!r} needs endpoint='host:port' of a running etcd "
                          "server (start one with elastic_nb.EtcdServer())")
    if not isinstance(endpoint, str):
        raise LaunchError(f"endpoint must be 'host:port', got {endpoint!r}")
    hostport = re.sub(r"^https?://", "", endpoint)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"endpoint {endpoint!r} must be 'host:port' or 'http(s)://host:port'")
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else None
    if backend in ("etcd", "etcd-v2") and scheme:
        return hostport, {"protocol": scheme, **(rdzv_configs or {})}
    return endpoint, rdzv_configs


def _check_listen_addr(listen_addr: str) -> None:
    if not isinstance(listen_addr, str):
        raise LaunchError(f"listen_addr must be an address of this host, got {listen_addr!r}")
    if network.advertised_address(listen_addr) is None:
        return
    try:
        network.interface_of(listen_addr)
    except ValueError as exc:
        raise LaunchError(f"listen_addr: {exc}") from None


def _make_log_dir(log_dir: str | None, run_id: str) -> str:
    if log_dir is None:
        return tempfile.mkdtemp(prefix=f"elastic_nb-{run_id}-")
    path = os.path.join(os.path.abspath(log_dir), run_id)
    if os.path.exists(path) and os.listdir(path):
        raise LaunchError(f"log directory {path} already holds a job's logs; "
                          "choose another run_id or log_dir")
    os.makedirs(path, exist_ok=True)
    return path


def pack(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> bytes:
    """Check that the call fits the function, then pack it (naming what cannot be pickled)."""
    _check_binding(fn, args, kwargs)
    try:
        return pack_call(fn, args, kwargs)
    except Exception as exc:
        culprit = _find_unpicklable(fn, args, kwargs)
        raise LaunchError(f"cannot send {culprit} to the workers with cloudpickle: "
                          f"{type(exc).__name__}: {exc}. Create it inside the function instead, "
                          "or pass something picklable.") from exc


def _check_binding(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise LaunchError(f"{name}{signature} cannot be called with these arguments: {exc}") from None


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dumps(obj)
    except Exception:
        return False
    return True


def _find_unpicklable(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> str:
    """Name the first thing that cloudpickle cannot serialize."""
    for i, arg in enumerate(args):
        if not _picklable(arg):
            return f"argument {i} ({type(arg).__name__})"
    for key, value in kwargs.items():
        if not _picklable(value):
            return f"keyword argument {key!r} ({type(value).__name__})"
    name = getattr(fn, "__qualname__", repr(fn))
    code = getattr(fn, "__code__", None)
    if code is not None:
        for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if not _picklable(value):
                return f"variable {var!r} ({type(value).__name__}) captured by {name}()"
        module_globals = getattr(fn, "__globals__", {})
        for global_name in code.co_names:
            if global_name in module_globals and not _picklable(module_globals[global_name]):
                value = module_globals[global_name]
                return f"global {global_name!r} ({type(value).__name__}) used by {name}()"
    return f"the function {name}()"

"""Turning ``launch()``'s arguments into a frozen ``JobPlan``, or a ``LaunchError`` that names the fix.

Every option is checked by its own check (``wire.options``); the checks that
involve several options (node counts, an endpoint and its scheme, the log
directory of a run id) are here, with the ones that look at this machine
(an address no interface owns) and the packing of the calls. Nothing here
starts a process: a mistake is found before any does.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle

from elastic_nb.kernel.packing import pack_call, pack_script
from elastic_nb.kernel.scripts import script_call
from elastic_nb.model.errors import LaunchError
from elastic_nb.model.placement import Placement
from elastic_nb.model.plan import JobPlan, Node, NodePlan
from elastic_nb.rendezvous import network
from elastic_nb.wire import auth
from elastic_nb.wire.options import OPTIONS, JobOptions, check_unknown

Entry = Callable[..., Any] | str
"""What ranks run: a function, or a script's path (a module's name with ``module=True``)."""


def make_plan(fn: Entry | None, args: tuple, kwargs: dict[str, Any],
              given: dict[str, Any]) -> JobPlan:
    """Check every option of ``launch`` (``given``, by name) and pack the calls; LaunchError.

    ``endpoint`` None with the c10d backend means the embedded store, which
    the Job hosts in this process.
    """
    check_unknown(list(kwargs), _parameters(fn), strict=fn is None)
    values = {o.name: o.check(o.name, given.get(o.name, o.default)) for o in OPTIONS}
    nodes = _check_nodes(fn, values["nodes"], values["nproc"])
    min_nodes, max_nodes = _check_node_counts(len(nodes), values["min_nodes"], values["max_nodes"])
    backend, endpoint, rdzv_configs = values["backend"], values["endpoint"], values["rdzv_configs"]
    if not (backend == "c10d" and endpoint is None):
        endpoint, rdzv_configs = check_endpoint(backend, endpoint, rdzv_configs)
    _check_listen_addr(values["listen_addr"])
    run_id = values["run_id"] or f"enb-{uuid.uuid4().hex[:8]}"

    default_payload = (pack_entry(fn, args, kwargs, values["module"])
                       if fn is not None else None)
    node_plans = tuple(plan_node(i, node, default_payload) for i, node in enumerate(nodes))
    for node_plan in node_plans:
        check_reachable(values["listen_addr"], node_plan.on)
    log_dir = _make_log_dir(values["log_dir"], run_id)
    shared = {o.name: values[o.name] for o in OPTIONS if o.shared}
    options = JobOptions(**{**shared, "min_nodes": min_nodes, "max_nodes": max_nodes,
                            "rdzv_configs": dict(rdzv_configs or {}),
                            "checkpoint_dir": _checkpoint_dir(values["checkpoint_dir"], log_dir)})
    return JobPlan(run_id=run_id, backend=backend, endpoint=endpoint, nodes=node_plans,
                   options=options, log_dir=log_dir,
                   env=values["env"], listen_addr=values["listen_addr"],
                   default_payload=default_payload, keep_warm=values["keep_warm"] or 0.0)


def plan_node(index: int, node: Node, default_payload: bytes | None) -> NodePlan:
    """Check one node and pack the call its workers run (the node's own fn, or the job's)."""
    if not isinstance(node, Node):
        raise LaunchError(f"nodes[{index}] must be an elastic_nb.Node, got {type(node).__name__}")
    if isinstance(node.nproc, bool) or not isinstance(node.nproc, int) or node.nproc < 1:
        raise LaunchError(f"nodes[{index}].nproc must be >= 1, got {node.nproc!r}")
    if not isinstance(node.role, str) or not node.role:
        raise LaunchError(f"nodes[{index}].role must be a non-empty string")
    on = _check_placement(index, node.on)
    if on is not None and default_payload is None:
        raise LaunchError(f"nodes[{index}] runs elsewhere ({on.describe()}) and finds the job "
                          "through its function: pass the function to launch(fn, ...), not "
                          "only to its Node")
    if node.fn is None:
        if default_payload is None:
            raise LaunchError(f"nodes[{index}] has no fn and the job has no default function")
        return NodePlan(nproc=node.nproc, role=node.role, payload=default_payload, on=on)
    if not callable(node.fn) and not isinstance(node.fn, str):
        raise LaunchError(f"nodes[{index}].fn must be a function or a script's path, "
                          f"got {type(node.fn).__name__}")
    payload = pack_entry(node.fn, tuple(node.args), dict(node.kwargs or {}), node.module,
                         f"nodes[{index}].fn")
    return NodePlan(nproc=node.nproc, role=node.role, payload=payload, on=on)


def _check_placement(index: int, on: Any) -> Placement | None:
    """This machine (None), or a checked Slurm or SSH placement."""
    if on is None or type(on) is Placement:
        return None
    if not isinstance(on, Placement):
        raise LaunchError(f"nodes[{index}].on must be elastic_nb.Slurm(...) or "
                          f"elastic_nb.SSH('user@host'), got {type(on).__name__}")
    reason = on.check()
    if reason:
        raise LaunchError(f"nodes[{index}].on: {reason}")
    return on


# ------------------------------------------------------------------ checks

def _parameters(fn: Entry | None) -> set[str]:
    if fn is None or isinstance(fn, str):
        return set()
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _check_nodes(fn: Entry | None, nodes: Any, nproc: int | None) -> list[Node]:
    if nodes is not None and nproc is not None:
        raise LaunchError("give either nproc=N (one node) or nodes=[Node(...), ...], not both")
    if nodes is None:
        nodes = [Node(nproc=1 if nproc is None else nproc)]
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise LaunchError("nodes must be a non-empty list of elastic_nb.Node(nproc=..., role=...)")
    if fn is None and any(not isinstance(n, Node) or n.fn is None for n in nodes):
        raise LaunchError("nothing to run: pass a function, launch(train, nproc=4), "
                          "or give every Node its own fn=")
    if fn is not None and not callable(fn) and not isinstance(fn, str):
        raise LaunchError(f"fn must be a function, or a script's path (a str; a module's "
                          f"name with module=True), got {type(fn).__name__}")
    return list(nodes)


def _check_node_counts(count: int, min_nodes: int | None, max_nodes: int | None) -> tuple[int, int]:
    if max_nodes is not None and count > max_nodes:
        raise LaunchError(f"{count} nodes given but max_nodes={max_nodes}: raise max_nodes "
                          "or start fewer nodes (add more later with job.add_node)")
    min_nodes = count if min_nodes is None else min_nodes
    max_nodes = max(count, min_nodes) if max_nodes is None else max_nodes
    if min_nodes > max_nodes:
        raise LaunchError(f"min_nodes ({min_nodes}) must not exceed max_nodes ({max_nodes})")
    return min_nodes, max_nodes


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


def check_reachable(listen_addr: str, on: Placement | None) -> None:
    """A node on another machine must reach the Job: not through this machine's loopback."""
    if on is not None and (listen_addr.startswith("127.") or listen_addr in ("::1", "localhost")):
        raise LaunchError(f"a node on {on.describe()} cannot reach this kernel at {listen_addr}: "
                          "launch with listen_addr set to an address of this machine that it "
                          "reaches (its address on the cluster's network)")


def _check_listen_addr(listen_addr: str) -> None:
    if network.advertised_address(listen_addr) is None:
        return
    try:
        network.interface_of(listen_addr)
    except ValueError as exc:
        raise LaunchError(f"listen_addr: {exc}") from None


def _make_log_dir(log_dir: str | None, run_id: str) -> str:
    """The job's own directory (logs, its key file): new, or empty, and only this user's."""
    if log_dir is None:
        return tempfile.mkdtemp(prefix=f"elastic_nb-{run_id}-")
    path = os.path.join(os.path.abspath(log_dir), run_id)
    if os.path.exists(path) and os.listdir(path):
        raise LaunchError(f"log directory {path} already holds a job's logs; "
                          "choose another run_id or log_dir")
    os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        auth.check_private_dir(path)
    except ValueError as exc:
        raise LaunchError(f"log_dir: {exc}") from None
    return path


def _checkpoint_dir(given: str | None, log_dir: str) -> str:
    """The job's checkpoint directory, absolute (the ranks' cwd is not always this one's):
    the one given (a launch with the same one resumes), or one in the job's log directory."""
    path = os.path.abspath(os.path.expanduser(given)) if given else os.path.join(log_dir,
                                                                                "checkpoints")
    if os.path.exists(path) and not os.path.isdir(path):
        raise LaunchError(f"checkpoint_dir {path} is a file, not a directory")
    return path


def pack_entry(fn: Entry, args: tuple, kwargs: dict[str, Any], module: bool,
               what: str = "fn") -> bytes:
    """Pack what the ranks run: a script or module (``kernel.scripts``) or a function call."""
    if isinstance(fn, str):
        return pack_script(script_call(fn, args, kwargs, module, what))
    if module:
        raise LaunchError(f"module=True runs a module by its name: give {what} as a str like "
                          "'pkg.train', not a function")
    return pack(fn, args, kwargs)


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

"""``%torchrun``: torchrun's own command line, read by torchrun's parser, as ``launch`` arguments.

The line is parsed by ``torch.distributed.run.get_args_parser()``, so every
flag torchrun knows is known here, with dashes or underscores, its ``PET_*``
environment variables included. ``FLAGS`` maps each flag (by the parser's
``dest``) onto launch options, or refuses it: a flag elastic_nb cannot honour
is an error that names it and says what to use instead; none is ignored.
A flag that is in torchrun's parser but not in ``FLAGS`` (a newer torch) is
refused too. ``table()`` is what ``%torchrun --help`` prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.distributed.run import determine_local_world_size, get_args_parser, parse_min_max_nnodes

from elastic_nb.model.plan import Node


class TorchrunError(ValueError):
    """A torchrun command line elastic_nb cannot run as written (the fix is in the message)."""


@dataclass
class TorchrunLaunch:
    """What a torchrun line asks for, as ``launch(target, *args, **options())``."""

    target: str = ""
    args: tuple[str, ...] = ()
    nproc: int = 1
    nodes: tuple[int, int] = (1, 1)  # torchrun's --nnodes MIN:MAX
    role: str = "default"
    launch: dict[str, Any] = field(default_factory=dict)
    standalone: bool = False
    log_rank: int | None = None  # the rank whose logs the dashboard shows (--local-ranks-filter)

    def options(self) -> dict[str, Any]:
        """``launch``'s keyword arguments: MIN nodes of ``nproc`` ranks here, able to grow to MAX."""
        low, high = self.nodes
        options = {**self.launch, "nodes": [Node(self.nproc, role=self.role) for _ in range(low)]}
        if (low, high) != (1, 1):
            options.update(min_nodes=low, max_nodes=high)
        return options


Apply = Callable[[Any, TorchrunLaunch], None]


@dataclass(frozen=True)
class Flag:
    """One torchrun flag: what it becomes (``maps_to``, for the table) and how, or ``refusal``."""

    dest: str
    maps_to: str
    apply: Apply | None = None
    refusal: str | None = None  # why it is refused and what to use instead
    accepts: Callable[[Any], bool] = lambda value: False  # values a refused flag may still take


def _option(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Apply:
    def apply(value: Any, run: TorchrunLaunch) -> None:
        run.launch[name] = convert(value)
    return apply


def _nnodes(value: Any, run: TorchrunLaunch) -> None:
    try:
        low, high = parse_min_max_nnodes(str(value))
    except (RuntimeError, ValueError):
        raise TorchrunError(f"--nnodes {value!r}: write N, or MIN:MAX such as 1:3") from None
    if not 1 <= low <= high:
        raise TorchrunError(f"--nnodes {value!r}: need 1 <= MIN <= MAX")
    run.nodes = (low, high)


def _nproc(value: Any, run: TorchrunLaunch) -> None:
    try:
        run.nproc = int(determine_local_world_size(str(value)))
    except ValueError as exc:
        raise TorchrunError(f"--nproc-per-node {value!r}: {exc} (give a number of ranks, or "
                            "gpu, cpu, xpu or auto as torchrun counts them)") from None


def _backend(value: Any, run: TorchrunLaunch) -> None:
    if value != "static":  # torchrun's fixed world: the embedded store serves it as well
        run.launch["backend"] = value


_THIS_MACHINE = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", socket.gethostname(),
                 socket.getfqdn()}


def _endpoint(value: Any, run: TorchrunLaunch) -> None:
    host, _, port = str(value).rpartition(":")
    local_c10d = run.launch.get("backend", "c10d") == "c10d" and (
        port == "0" or host in _THIS_MACHINE or host.startswith("127."))
    if run.standalone:
        raise TorchrunError("--standalone and --rdzv-endpoint: torchrun replaces the endpoint "
                            "with its own under --standalone; give one of them")
    if not local_c10d:  # an etcd server, or a c10d store another machine hosts
        run.launch["endpoint"] = value


def _rdzv_conf(value: Any, run: TorchrunLaunch) -> None:
    configs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in str(value).split(","))):
        key, sep, setting = item.partition("=")
        if not sep or not key.strip():
            raise TorchrunError(f"--rdzv-conf {value!r}: write key=value,key=value")
        configs[key.strip()] = setting.strip()
    if "join_timeout" in configs:  # torch's name for the rendezvous timeout
        run.launch["rdzv_timeout"] = float(configs.pop("join_timeout"))
    if configs:
        run.launch["rdzv_configs"] = configs


def _standalone(value: Any, run: TorchrunLaunch) -> None:
    run.standalone = bool(value)


def _role(value: Any, run: TorchrunLaunch) -> None:
    run.role = str(value)


def _module(value: Any, run: TorchrunLaunch) -> None:
    run.launch["module"] = bool(value)


def _same(value: Any, run: TorchrunLaunch) -> None:
    """A flag whose meaning is how elastic_nb always works (the table says how)."""


def _ranks_filter(value: Any, run: TorchrunLaunch) -> None:
    try:
        ranks = {int(part) for part in str(value).split(",") if part.strip()}
    except ValueError:
        raise TorchrunError(f"--local-ranks-filter {value!r}: write a rank, e.g. 0") from None
    if not ranks:
        return  # torchrun's default: every rank
    if len(ranks) > 1 or run.nodes[0] > 1:
        raise TorchrunError(f"--local-ranks-filter {value}: the dashboard's log pane shows one "
                            "rank, or all merged: give one rank of a one-node job, or pick "
                            "ranks in the pane (job.logs(rank=R) reads one)")
    run.log_rank = ranks.pop()


def _node_rank(value: Any, run: TorchrunLaunch) -> None:
    if int(value) != 0:
        raise TorchrunError(f"--node-rank {value}: elastic_nb starts and numbers every node of "
                            "the job itself; a node on another machine joins with the command "
                            "job.join_command gives, or job.add_node(Node(n, on=SSH(...)))")


_DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"

FLAGS: tuple[Flag, ...] = (
    Flag("standalone", "the embedded c10d store on a free port (elastic_nb's default)", _standalone),
    Flag("nnodes", "N: N nodes on this machine; MIN:MAX: MIN nodes here, min_nodes=MIN, "
         "max_nodes=MAX (more with job.add_node or python -m elastic_nb join)", _nnodes),
    Flag("nproc_per_node", "nproc of each node (gpu, cpu, xpu, auto: counted as torchrun does)",
         _nproc),
    Flag("rdzv_backend", "backend= (c10d, etcd, etcd-v2; static: the embedded store)", _backend),
    Flag("rdzv_endpoint", "endpoint= for etcd or another machine's c10d store; c10d on this "
         "machine (or port 0): the embedded store, which the Job hosts", _endpoint),
    Flag("rdzv_id", "run_id=", _option("run_id")),
    Flag("rdzv_conf", "rdzv_configs= (join_timeout: rdzv_timeout=)", _rdzv_conf),
    Flag("max_restarts", "max_restarts=", _option("max_restarts", int)),
    Flag("monitor_interval", "monitor_interval=", _option("monitor_interval", float)),
    Flag("start_method", "start_method= (spawn or forkserver, the default; fork is unsafe "
         "in a kernel)", _option("start_method")),
    Flag("role", "the role of every node: Node(nproc, role=ROLE)", _role),
    Flag("module", "module=True: the script is a module's name", _module),
    Flag("run_path", "always: elastic_nb runs the script with runpy in its worker", _same),
    Flag("log_dir", "log_dir= (each job in a directory of its run id)", _option("log_dir")),
    Flag("redirects", "always: every rank's stdout and stderr go to files under log_dir", _same),
    Flag("tee", "always: the dashboard is the console, every rank's stdout and stderr", _same),
    Flag("master_addr", "master_addr=", _option("master_addr")),
    Flag("master_port", "master_port=", _option("master_port", int)),
    Flag("local_addr", "listen_addr= (the address this machine serves and advertises)",
         _option("listen_addr")),
    Flag("shutdown_timeout", "shutdown_timeout=", _option("shutdown_timeout", lambda v: int(float(v)))),
    Flag("local_ranks_filter", "one rank: the dashboard's log pane shows that rank's logs "
         "(a one-node job; its rank menu shows the others)", _ranks_filter),
    Flag("node_rank", "0 only: elastic_nb numbers the nodes it starts", _node_rank),
    Flag("no_python", "refused", refusal="elastic_nb runs Python scripts in its own worker, "
         "which its controls need; start a program from a Python script with subprocess"),
    Flag("duplicate_stdout_filters", "refused", refusal="every rank's output is a file under "
         "log_dir; find lines with job.logs() or the dashboard's filter box",
         accepts=lambda v: not v),
    Flag("duplicate_stderr_filters", "refused", refusal="every rank's output is a file under "
         "log_dir; find lines with job.logs() or the dashboard's filter box",
         accepts=lambda v: not v),
    Flag("event_log_handler", "refused (null accepted)", refusal="elastic_nb records what "
         "happens itself: job.events and the dashboard's timeline", accepts=lambda v: v == "null"),
    Flag("logs_specs", "refused", refusal="elastic_nb lays the logs out itself (torch's layout "
         "under log_dir, a fresh attempt directory per start)"),
    Flag("numa_binding", "refused", refusal="bind a rank's CPUs in the script "
         "(os.sched_setaffinity)", accepts=lambda v: v is None),
    Flag("signals_to_handle", f"refused ({_DEFAULT_SIGNALS} accepted)", refusal="a node host "
         f"forwards torch's default signals ({_DEFAULT_SIGNALS}); send a rank any signal with "
         "job.kill(rank, sig)", accepts=lambda v: v == _DEFAULT_SIGNALS),
    Flag("virtual_local_rank", "refused", refusal="each rank gets its own LOCAL_RANK, as "
         "torchrun does by default; choose devices in the script", accepts=lambda v: not v),
)
BY_DEST = {flag.dest: flag for flag in FLAGS}
_POSITIONAL = ("training_script", "training_script_args", "help")
_UNSET = object()


def parser() -> argparse.ArgumentParser:
    """torchrun's own parser (its defaults read ``PET_*`` variables as torchrun does)."""
    made = get_args_parser()
    made.prog = "%torchrun"
    return made


def flag_names(action: argparse.Action) -> str:
    return ", ".join(action.option_strings)


def _described(flag: Flag) -> str:
    return flag.maps_to if flag.refusal is None else f"{flag.maps_to}: {flag.refusal}"


def parse(line: str) -> TorchrunLaunch | None:
    """The launch a torchrun command line asks for (None: it asks for ``--help``);
    TorchrunError names what cannot be run."""
    torchrun = parser()
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise TorchrunError(f"cannot split the line: {exc}") from None
    given = argparse.Namespace(**{a.dest: _UNSET for a in torchrun._actions if a.option_strings})
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args = torchrun.parse_args(words, namespace=given)
    except SystemExit as exc:
        if exc.code == 0:
            return None  # -h/--help: torchrun's help is replaced by the table of what maps where
        if not words:
            raise TorchrunError("give the script and its arguments, as to torchrun: %torchrun "
                                "--standalone --nproc-per-node 2 train.py --lr 0.1") from None
        message = errors.getvalue().strip().splitlines()[-1:] or ["cannot read the line"]
        raise TorchrunError(message[0].replace("%torchrun: error: ", "")
                            + " (%torchrun --help lists the flags)") from None
    run = TorchrunLaunch(target=args.training_script, args=tuple(args.training_script_args))
    actions = {a.dest: a for a in torchrun._actions if a.dest not in _POSITIONAL}
    first = ("standalone", "rdzv_backend", "nnodes")  # what later flags' checks depend on
    order = [d for d in first if d in actions] + list(actions)
    for dest in dict.fromkeys(order):
        value = getattr(args, dest)
        if value is _UNSET:
            if f"PET_{dest.upper()}" not in os.environ:
                continue
            value = actions[dest].default  # torchrun takes it from PET_<NAME>
        flag = BY_DEST.get(dest)
        name = actions[dest].option_strings[-1 if dest == "module" else 0]
        if flag is None:
            raise TorchrunError(f"{name}: elastic_nb does not know this torchrun flag yet "
                                "(%torchrun --help lists those it maps); remove it, or use "
                                "elastic_nb.launch's options")
        if flag.apply is None:
            if flag.accepts(value):
                continue
            raise TorchrunError(f"{name} is not supported: {flag.refusal}")
        flag.apply(value, run)
    return run


def table() -> str:
    """Each torchrun flag and what ``%torchrun`` makes of it (``%torchrun --help``)."""
    torchrun = parser()
    rows = [(flag_names(a), _described(BY_DEST[a.dest]) if a.dest in BY_DEST else "refused")
            for a in torchrun._actions if a.dest not in _POSITIONAL]
    width = max(len(name) for name, _ in rows)
    lines = ["%torchrun [torchrun's flags] SCRIPT [ARGS...]: runs SCRIPT (or, with -m, a module) "
             "on every rank with elastic_nb.launch and returns the Job.", "",
             f"{'torchrun flag'.ljust(width)}  elastic_nb"]
    lines += [f"{name.ljust(width)}  {maps_to}" for name, maps_to in rows]
    return "\n".join(lines)

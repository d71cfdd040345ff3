"""Public entry points: ``launch`` and ``run``.

Everything a user passes is checked by ``kernel.planning.make_plan`` (each
option by its definition in ``wire.options``) before any process starts; a
mistake becomes a ``LaunchError`` that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from elastic_nb.kernel import host_pool
from elastic_nb.kernel.job import Job
from elastic_nb.kernel.planning import make_plan
from elastic_nb.model.plan import Node
from elastic_nb.wire import options as launch_options


def launch(
    fn: Callable[..., Any] | str | None = None,
    /,
    *args: Any,
    nodes: list[Node] | None = None,
    nproc: int | None = None,
    module: bool = False,
    backend: str = "c10d",
    endpoint: str | None = None,
    run_id: str | None = None,
    min_nodes: int | None = None,
    max_nodes: int | None = None,
    max_restarts: int = 0,
    monitor_interval: float = 0.1,
    exit_barrier_timeout: float = 30,
    rdzv_timeout: float | None = None,
    start_method: str = "forkserver",
    log_line_prefix_template: str | None = None,
    log_dir: str | None = None,
    env: dict[str, str] | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    rdzv_configs: dict[str, Any] | None = None,
    shutdown_timeout: int = 5,
    listen_addr: str = "127.0.0.1",
    keep_warm: float | None = None,
    post_mortem: bool = False,
    post_mortem_timeout: float = 600,
    liveness_timeout: float = 5.0,
    collective_timeout: float | None = None,
    flight_recorder: bool = True,
    hang_after: float = 60.0,
    trust_store: bool = False,
    checkpoint_dir: str | None = None,
    **kwargs: Any,
) -> Job:
    """Start ``fn(*args, **kwargs)`` on every rank of a new elastic job; return its Job at once.

    ``nproc=N`` is one node of N workers; ``nodes=[Node(...), ...]`` is one
    agent process per node. Keyword arguments that are not options go to ``fn``.

    ``fn`` may be a script's path: ``launch("train.py", "--lr", "0.1", nproc=4)``
    runs it as ``__main__`` on every rank, as ``torchrun --nproc-per-node 4
    train.py --lr 0.1`` does (its environment, ``sys.argv``, ``sys.path``);
    with ``module=True`` it is a module's name (torchrun's ``-m``). A rank
    whose script ends or calls ``sys.exit(0)`` returns 0.
    ``listen_addr`` is where this kernel serves the embedded c10d store and
    accepts nodes joining from other machines (``python -m elastic_nb join``);
    the default accepts them from this machine only.

    Each local node runs in a host process that outlives the job: idle for
    ``keep_warm`` seconds (default ``elastic_nb.set_keep_warm``, 300 s), it
    runs the next launch's node at once, torch already imported and its
    forkserver warm. ``keep_warm=0`` ends the hosts with the job.

    ``breakpoint()`` in a rank pauses it for ``job.debug(rank)``; with
    ``post_mortem=True`` a rank whose function raises waits (at most
    ``post_mortem_timeout`` seconds) for ``job.debug`` at the failing frame,
    then fails with its error as it would have.

    A node silent for ``liveness_timeout`` seconds (frozen, partitioned) is
    lost: the others re-form without it and it is fenced. ``collective_timeout``
    bounds every collective of the ranks' process groups (unless a group sets
    its own ``timeout=``), so a stuck all-reduce fails and the restart policy
    applies instead of waiting torch's 30 minutes.

    Every rank records its collectives (``flight_recorder``): ``job.hang_report()``
    says which rank is missing from which collective; when nothing progresses
    for ``hang_after`` seconds the timeline says so (``stalled``).

    Only nodes that hold the job's key join it, and the rendezvous state its
    agents write is signed with that key. ``trust_store=True`` admits plain
    ``torchrun`` nodes and joins with the store's token alone: whoever can
    reach the store can then run code in the job (README, "Security").

    ``enb.save_checkpoint`` and ``enb.restore_checkpoint`` in the ranks use
    ``checkpoint_dir`` (default: ``checkpoints`` in the job's log directory); a
    launch with the same ``checkpoint_dir`` resumes from its newest complete
    checkpoint. Nodes on other machines need it on shared storage.
    """
    given = launch_options.collect(locals())
    if keep_warm is None:
        given["keep_warm"] = host_pool.POOL.keep_warm
    plan = make_plan(fn, args, kwargs, given)
    return Job(plan).start()


def run(fn: Callable[..., Any] | str | None = None, /, *args: Any,
        **options: Any) -> dict[int, Any]:
    """Launch, wait, and return the values by global rank (blocking; raises JobFailed).

    No handle is handed out, so an interrupted ``run`` stops its job.
    """
    job = launch(fn, *args, **options)
    try:
        return job.result()
    finally:
        if not job.done:
            job.stop()

"""torch's private names that the node host relies on, each with what it is for.

torch.distributed.elastic's agent is built to be subclassed (its
``_invoke_run`` calls ``_rendezvous``, ``_start_workers``,
``_monitor_workers``, ``_restart_workers``, ``_stop_workers``, which
``node.agent.ReportingAgent`` fills in), but some of what the agent knows
has no public accessor. Every such name is reached from here only, and
tests/test_compat.py checks each against the installed torch, so a torch
that renamed one fails there, with the name, not deep inside a job.
"""

from __future__ import annotations

import sys
from typing import Any

from torch.distributed.elastic.agent.server import api as agent_api
from torch.distributed.elastic.multiprocessing import api as mp_api
from torch.distributed.elastic.rendezvous import dynamic_rendezvous
from torch.distributed.elastic.rendezvous import utils as rdzv_utils
from torch.distributed.elastic.utils import store as store_util

PRIVATE_NAMES = {
    "SimpleElasticAgent._rendezvous": "hook: report the round a node was admitted to",
    "SimpleElasticAgent._start_workers": "hook: report ranks, pids and log files",
    "SimpleElasticAgent._monitor_workers": "hook: report failures, pauses, results; restarts",
    "SimpleElasticAgent._restart_workers": "hook: report why the group restarts",
    "SimpleElasticAgent._stop_workers": "hook: stop with shutdown_timeout, not a fixed 30 s",
    "SimpleElasticAgent._remaining_restarts": "the restart budget left",
    "SimpleElasticAgent._worker_group": "the group of the current attempt",
    "LocalElasticAgent._pcontext": "the workers' process context (pids, files)",
    "LocalElasticAgent._shutdown": "stop the workers with a given SIGTERM grace",
    "MultiprocessContext._pc": "torch.multiprocessing's context: every worker's exit code",
    "agent.server.api._TERMINAL_STATE_SYNC_ID": "the exit barrier's key prefix",
    "utils.store._NUM_MEMBERS": "the exit barrier's member counter",
    "multiprocessing.api._terminate_process_handler": "torchrun's SIGTERM handler",
    "DynamicRendezvousHandler._state_holder": "the rendezvous state torch syncs every tick",
    "DynamicRendezvousHandler._stop_heartbeats": "silence a handler left open after a signal",
    "_distributed_c10d._dump_fr_trace_json": "a rank's flight recorder (every collective, by group)",
    "dynamic_rendezvous.get_method_name": "names every rendezvous event, recorded or not",
    "dynamic_rendezvous._delay": "the first round's spread of joins, and the wait between polls",
    "dynamic_rendezvous._BackendRendezvousStateHolder": "how long a read of the state is reused",
    "rendezvous.utils._delay": "what dynamic_rendezvous._delay is, to call it unchanged",
}

FIRST_JOIN_SPREAD_PER_NODE = 0.005
"""Seconds of spread a node's first join gets for each other node that may join with it."""

RENDEZVOUS_POLL = 0.1
"""Seconds between a waiting node's looks at the rendezvous state, and how long one read of it
is reused (torch's: 1 s each)."""

_STATE_HOLDER = dynamic_rendezvous._BackendRendezvousStateHolder

EXIT_BARRIER_MEMBERS = f"{agent_api._TERMINAL_STATE_SYNC_ID}{store_util._NUM_MEMBERS}"
"""The counter torch's exit barrier (``store_util.barrier``) adds each node to."""

terminate_process_handler = mp_api._terminate_process_handler
"""torchrun's SIGTERM handler: raises ``SignalException`` so the agent stops its workers."""


def remaining_restarts(agent: Any) -> int:
    return int(agent._remaining_restarts)


def worker_group(agent: Any) -> Any:
    return agent._worker_group


def process_context(agent: Any) -> Any:
    """The agent's ``PContext`` of the current attempt (None before workers start)."""
    return agent._pcontext


def shutdown_workers(agent: Any, timeout: int) -> None:
    """Stop the workers as torch does, with ``timeout`` seconds of SIGTERM grace."""
    agent._shutdown(timeout=timeout)


def worker_exitcodes(pcontext: Any) -> list[tuple[int, int | None]]:
    """``(pid, exit code or None)`` of every worker process of a ``MultiprocessContext``,
    by local rank; empty when torch's context does not expose them."""
    processes = getattr(getattr(pcontext, "_pc", None), "processes", None) or []
    return [(p.pid, p.exitcode) for p in processes]


def rendezvous_state(handler: Any) -> Any:
    """The dynamic rendezvous state (``round``, ``complete``, ``closed``,
    ``participants``) as last synced; None for handlers without one (etcd v1)."""
    holder = getattr(handler, "_state_holder", None)
    return holder.state if holder is not None else None


def stop_heartbeats(handler: Any) -> bool:
    """Silence a dynamic handler's heartbeats; False when it has none to silence (etcd v1)."""
    stop = getattr(handler, "_stop_heartbeats", None)
    if stop is None:
        return False
    stop()
    return True


def flight_recorder_json() -> bytes:
    """The rank's flight recorder as torch dumps it (JSON: ``entries``, ``pg_status``)."""
    from torch._C import _distributed_c10d

    dump: Any = getattr(_distributed_c10d, "_dump_fr_trace_json")  # noqa: B009 - untyped in stubs
    return bytes(dump(True, False))


def quicken_rendezvous(max_nodes: int) -> None:
    """Take out three costs torch's dynamic rendezvous adds to every restart.

    - It names each event it records with ``get_method_name``, two
      ``inspect.stack()`` (which read every frame's module and source), before
      it finds that nothing records them: about 2 ms, ten times a round. The
      frame's own name is the same answer.
    - It spreads the joins of round 0 over a random 0-0.3 s to ease contention
      on the store when many nodes arrive at once, and the round is still 0 at
      the first restart, so that restart waits 0.15 s on average, a lone node
      too. The spread is kept, at ``FIRST_JOIN_SPREAD_PER_NODE`` for each other
      node that may join (torch's 0.3 s from 61 nodes on).
    - A node that waits for others (the first to restart waits for its peers
      to leave the old round) looks at the state once a second, and a state it
      read is reused for a second: a restart of two nodes took 1.1 s, 1 s of it
      that wait. It looks every ``RENDEZVOUS_POLL`` instead, and reads anew as
      often: one read of the store each time, and at each monitor tick (ten a
      second a node), against a restart that all the nodes wait for.

    Call it once in the agent's process, before its first rendezvous.
    """
    spread = FIRST_JOIN_SPREAD_PER_NODE * max(0, max_nodes - 1)

    def delay(seconds: float | tuple[float, float]) -> None:
        if isinstance(seconds, tuple):
            rdzv_utils._delay((seconds[0], min(seconds[1], spread)))
        else:
            rdzv_utils._delay(min(seconds, RENDEZVOUS_POLL))

    def method_name(depth: int = 2) -> str:
        try:
            return sys._getframe(depth).f_code.co_name
        except ValueError:
            return "no_method_name"

    class StateHolder(_STATE_HOLDER):
        def __init__(self, backend: Any, settings: Any, cache_duration: float = RENDEZVOUS_POLL
                     ) -> None:
            # typed int, compared with monotonic seconds: a fraction is as good
            super().__init__(backend, settings, cache_duration)  # type: ignore[arg-type]

    dynamic_rendezvous._delay = delay
    dynamic_rendezvous.get_method_name = method_name
    setattr(dynamic_rendezvous, "_BackendRendezvousStateHolder", StateHolder)  # noqa: B010

"""Live stack dumps of every running rank, wherever it runs.

Each worker arms faulthandler on ``STACK_DUMP_SIGNAL`` once it runs the
user's call, appending every thread's stack to ``stacks.txt`` in its rank
directory; ``wire.rank_probe`` signals a rank and reads what it appended.
``dump`` asks every node with running ranks at once through its handle
(``NodeHandle.ask_stacks``: a local node's ranks are asked here, a joined
node's by its host, through its channel) and waits for all answers up to
the timeout (``kernel.asking``). A rank still starting, or one that does
not dump in time, gets a line saying so; so does each rank of a node that
does not answer in time or whose channel closes first. Notebook frames read
``cell N, line M`` (``model.frames``).
"""

from __future__ import annotations

from elastic_nb.compat.ipython_compat import cell_numbers
from elastic_nb.kernel.asking import ask_nodes, gather
from elastic_nb.kernel.core import JobCore
from elastic_nb.model.frames import name_cells


def dump(core: JobCore, timeout: float) -> dict[int, str]:
    """Every thread's stack of each running rank, by rank; a line of why where there is none."""
    with core.lock:
        asked = ask_nodes(core.state.workers.values(),
                          lambda node, targets: core.nodes[node].ask_stacks(targets, timeout))
    cells = cell_numbers()
    return {rank: name_cells(text, cells) for rank, text in gather(asked, timeout).items()}

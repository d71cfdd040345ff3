"""Every private third-party name the package uses still exists in the installed versions.

A library that renamed one fails here, naming it, instead of deep inside a job.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from torch._C import _distributed_c10d
from torch.distributed.elastic.agent.server import api as agent_api
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import api as mp_api
from torch.distributed.elastic.rendezvous import dynamic_rendezvous
from torch.distributed.elastic.rendezvous import utils as rdzv_utils
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler
from torch.distributed.elastic.utils import store as store_util

from elastic_nb.compat import cloudpickle_compat, ipython_compat, torch_compat

OWNERS = {
    "SimpleElasticAgent": agent_api.SimpleElasticAgent,
    "LocalElasticAgent": LocalElasticAgent,
    "MultiprocessContext": mp_api.MultiprocessContext,
    "DynamicRendezvousHandler": DynamicRendezvousHandler,
    "agent.server.api": agent_api,
    "utils.store": store_util,
    "multiprocessing.api": mp_api,
    "_distributed_c10d": _distributed_c10d,
    "dynamic_rendezvous": dynamic_rendezvous,
    "rendezvous.utils": rdzv_utils,
}
INSTANCE_ATTRIBUTES = {  # set in __init__, so looked for in its source
    "SimpleElasticAgent._remaining_restarts", "SimpleElasticAgent._worker_group",
    "LocalElasticAgent._pcontext", "MultiprocessContext._pc", "DynamicRendezvousHandler._state_holder",
}


@pytest.mark.parametrize("name", sorted(torch_compat.PRIVATE_NAMES))
def test_every_private_torch_name_exists(name):
    import inspect

    owner, attribute = name.rsplit(".", 1)
    where = OWNERS[owner]
    if name in INSTANCE_ATTRIBUTES:
        assert f"self.{attribute} " in inspect.getsource(where) or \
            f"self.{attribute}:" in inspect.getsource(where), f"torch no longer sets {name}"
    else:
        assert hasattr(where, attribute), f"torch no longer has {name}"


def test_the_cloudpickle_and_ipython_names_exist():
    import cloudpickle
    import cloudpickle.cloudpickle as impl

    assert callable(impl._code_reduce), "cloudpickle no longer has _code_reduce"
    assert isinstance(cloudpickle.Pickler._dispatch_table, dict)
    assert set(cloudpickle_compat.PRIVATE_NAMES) and set(ipython_compat.PRIVATE_NAMES)
    from IPython.core.compilerop import CachingCompiler

    assert hasattr(CachingCompiler(), "_filename_map"), "IPython no longer has _filename_map"


def test_a_notebook_function_keeps_its_cell_file_name():
    import pickle

    namespace: dict = {}
    exec(compile("def cell_fn():\n    return 1\n", "/tmp/ipykernel_1/cell7.py", "exec"), namespace)
    namespace["cell_fn"].__module__ = "__main__"
    import io

    buffer = io.BytesIO()
    cloudpickle_compat.SourceKeepingPickler(buffer).dump(namespace["cell_fn"])
    assert pickle.loads(buffer.getvalue()).__code__.co_filename == "/tmp/ipykernel_1/cell7.py"


@pytest.fixture
def quickened(monkeypatch):
    """``quicken_rendezvous``'s patches, undone after the test; the delays it asks for."""
    monkeypatch.setattr(dynamic_rendezvous, "_delay", dynamic_rendezvous._delay)
    monkeypatch.setattr(dynamic_rendezvous, "get_method_name", dynamic_rendezvous.get_method_name)
    monkeypatch.setattr(dynamic_rendezvous, "_BackendRendezvousStateHolder",
                        dynamic_rendezvous._BackendRendezvousStateHolder)
    asked: list = []
    monkeypatch.setattr(rdzv_utils, "_delay", asked.append)
    return asked


@pytest.mark.parametrize(("max_nodes", "spread"), [(1, 0.0), (2, 0.005), (5, 0.02), (200, 0.3)])
def test_the_first_join_spreads_over_what_the_other_nodes_need(quickened, max_nodes, spread):
    torch_compat.quicken_rendezvous(max_nodes)
    dynamic_rendezvous._delay(seconds=(0, 0.3))  # next_rendezvous, round 0
    dynamic_rendezvous._delay(seconds=1)  # the executor's poll of a waiting node
    assert quickened == [(0, pytest.approx(spread)), torch_compat.RENDEZVOUS_POLL]


def test_rendezvous_events_keep_the_names_torch_gives_them(quickened):
    original = dynamic_rendezvous.get_method_name

    def _record():  # as torch's: the name of the method that records
        return original(), dynamic_rendezvous.get_method_name()

    def _add_to_participants():
        return _record()

    before = _add_to_participants()
    torch_compat.quicken_rendezvous(2)
    after = _add_to_participants()
    assert before == ("_add_to_participants", "_add_to_participants")
    assert after == ("_add_to_participants", "_add_to_participants")
    assert dynamic_rendezvous.get_method_name(depth=10_000) == original(depth=10_000)


def test_a_handler_reads_the_rendezvous_state_anew_as_often_as_it_polls(quickened):
    class Backend:
        name = "counting"
        reads = 0

        def get_state(self):
            Backend.reads += 1
            return None

        def set_state(self, state, token=None):
            return None

    settings = dynamic_rendezvous.RendezvousSettings(
        "run", 1, 1, dynamic_rendezvous.RendezvousTimeout(), timedelta(seconds=1), 3)
    torch_compat.quicken_rendezvous(1)
    holder = dynamic_rendezvous._BackendRendezvousStateHolder(Backend(), settings)
    holder.sync()
    holder.sync()  # served from what it read just now
    assert Backend.reads == 1
    time.sleep(torch_compat.RENDEZVOUS_POLL * 1.5)
    holder.sync()
    assert Backend.reads == 2  # torch's holder would reuse the first read for a whole second

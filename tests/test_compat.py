"""Every private third-party name the package uses still exists in the installed versions.

A library that renamed one fails here, naming it, instead of deep inside a job.
"""

from __future__ import annotations

import pytest
from torch._C import _distributed_c10d
from torch.distributed.elastic.agent.server import api as agent_api
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import api as mp_api
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

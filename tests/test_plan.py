"""The launch plan: frozen at launch, and it keeps only the packed call."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest

from elastic_nb.kernel.planning import make_plan
from elastic_nb.model.plan import Node
from elastic_nb.wire.options import OPTIONS as LAUNCH_OPTIONS

OPTIONS = {**{o.name: o.default for o in LAUNCH_OPTIONS}, "nproc": 2, "start_method": "spawn",
           "keep_warm": 0}


class Weights:
    """An argument a user might pass: something large that weakrefs can watch."""

    def __init__(self) -> None:
        self.values = list(range(1000))


def use(weights: Weights) -> int:
    return len(weights.values)


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(OPTIONS, "log_dir", str(tmp_path))


def test_a_plan_is_frozen():
    plan = make_plan(use, (Weights(),), {}, OPTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.nodes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.options.max_restarts = 3  # type: ignore[misc]
    assert isinstance(plan.nodes, tuple) and plan.world_size == 2


def test_a_plan_keeps_the_packed_call_not_the_users_arguments():
    weights = Weights()
    watch = weakref.ref(weights)
    plan = make_plan(use, (weights,), {}, OPTIONS)
    del weights
    gc.collect()
    assert watch() is None, "the plan must not keep the user's arguments alive"
    assert plan.default_payload and plan.nodes[0].payload is plan.default_payload


def test_nodes_with_their_own_function_pack_their_own_call():
    plan = make_plan(use, (Weights(),), {}, {**OPTIONS, "nproc": None,
                                               "nodes": [Node(1), Node(2, fn=len, args=([1],))]})
    assert plan.nodes[0].payload is plan.default_payload
    assert plan.nodes[1].payload != plan.default_payload
    assert plan.world_size == 3 and plan.options.min_nodes == plan.options.max_nodes == 2

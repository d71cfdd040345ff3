"""A rendezvous that cannot happen fails the job within rdzv_timeout, naming endpoint and backend."""

from __future__ import annotations

import time

import pytest
import scenarios

import elastic_nb as enb
from elastic_nb.rendezvous.embedded import free_port


@pytest.mark.parametrize("backend", ["c10d", "etcd", "etcd-v2", "etcd3"])
def test_unreachable_endpoint_fails_within_the_timeout(backend):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    job = enb.launch(scenarios.happy, nproc=1, backend=backend, endpoint=endpoint, rdzv_timeout=5)
    assert job.wait(timeout=60) == "failed"
    assert time.monotonic() - started < 45  # bounded by rdzv_timeout, not torch's 900 s default
    with pytest.raises(enb.JobFailed) as raised:
        job.result()
    message = str(raised.value)
    assert endpoint in message and f"({backend} rendezvous at" in message
    assert raised.value.failures == {}


def test_a_missing_node_times_out_the_rendezvous():
    job = enb.launch(scenarios.happy, nproc=1, min_nodes=2, max_nodes=2, rdzv_timeout=3)
    assert job.wait(timeout=60) == "failed"
    with pytest.raises(enb.JobFailed, match=r"node 0 \(c10d rendezvous at 127\.0\.0\.1:\d+\): "
                                            r"RendezvousTimeoutError"):
        job.result()

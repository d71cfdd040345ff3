"""Rendezvous backends: the embedded c10d default and the etcd family.

`c10d`, `etcd` and `etcd-v2` are torch's own handlers; `etcd3` is this
project's backend on the etcd v3 API, registered into torch's rendezvous
registry so that `torchrun --rdzv-backend etcd3` works too.
"""


def register_backends() -> None:
    """Make ``etcd3`` known to torch's rendezvous registry in this process."""
    from elastic_nb.rendezvous import etcd3

    etcd3.register()

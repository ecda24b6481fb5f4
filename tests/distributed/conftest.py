"""The Ray cluster of the ``ray`` tests: started once for the session, stopped at its end."""

from __future__ import annotations

import os

import pytest

from .cluster import Cluster, loopback_env


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.importorskip("ray")  # with CI set, tests/conftest.py turns the skip into a failure
    saved = dict(os.environ)
    os.environ.update(loopback_env())  # the driver (this process) talks to the nodes on loopback only
    cluster = Cluster(cpus=1, worker_cpus=1)
    os.environ["RAY_ADDRESS"] = cluster.address  # a stray ray.init() joins it instead of starting a Ray elsewhere
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        os.environ.clear()
        os.environ.update(saved)

"""One audit sharded over a real two-node Ray cluster equals the local audit (issue 21 items 2-4)."""

from __future__ import annotations

import pytest

import qaudit
from qaudit.distributed import SUM_RTOL
from qaudit.options import audit_config
from qaudit.report import to_dict

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL
from .cluster import Killer, announcing
from .compare import differences

pytestmark = [pytest.mark.extra, pytest.mark.ray]


def _cfg(**kw):
    return audit_config(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, batch_size=4, **kw)


@pytest.fixture(scope="module")
def local_report():
    return to_dict(qaudit.audit(_cfg()))


def test_sharded_audit_equals_the_local_one(ray_cluster, local_report, tmp_path):
    """Counts, histograms, encodings and ranges exactly; the float64 sums within SUM_RTOL; the quantized
    model byte for byte (calibration is one pass on the driver)."""
    local_model, ray_model = tmp_path / "local.onnx", tmp_path / "ray.onnx"
    local = to_dict(qaudit.audit(_cfg(output_model=local_model)))
    got = to_dict(qaudit.audit(_cfg(output_model=ray_model, ray_address=ray_cluster.address)))
    assert differences(local, got) == []
    assert differences(local_report, got) == []
    assert ray_model.read_bytes() == local_model.read_bytes()
    assert got["meta"]["kernels"] == local["meta"]["kernels"]
    # the shards really split the data: 60 samples in batches of 4 over 2 CPUs, 4 shards
    assert got["meta"]["ray"]["shards"] == 4 and got["meta"]["ray"]["kernels"] == local["meta"]["kernels"]
    assert sum(r["histogram"]["counts"] and sum(r["histogram"]["counts"]) or 0 for r in got["layers"]) > 0
    assert SUM_RTOL == 1e-9


def test_the_comparison_allows_only_the_stated_bound(local_report):
    import copy

    other = copy.deepcopy(local_report)
    row = next(r for r in other["layers"] if r.get("sqnr_db"))
    row["sqnr_db"] *= 1 + 1e-10
    assert differences(local_report, other) == []
    row["sqnr_db"] *= 1 + 1e-8
    assert differences(local_report, other) != []
    other = copy.deepcopy(local_report)
    row = next(r for r in other["layers"] if r.get("histogram"))
    row["histogram"]["counts"][0] += 1
    assert differences(local_report, other) != []
    # a cause's evidence: its value within the bound when its metric comes from sums, else exact
    ev = {"causes": [{"severity": 1.5, "evidence": [{"metric": "clip_error_share", "value": 0.5},
                                                    {"metric": "a_clip_fraction", "value": 0.25}]}]}  # fmt: skip
    near = copy.deepcopy(ev)
    near["causes"][0]["severity"] *= 1 + 1e-12
    near["causes"][0]["evidence"][0]["value"] *= 1 + 1e-12
    assert differences(ev, near) == []
    near["causes"][0]["evidence"][1]["value"] *= 1 + 1e-12
    assert differences(ev, near) == ["causes.0.evidence.1.a_clip_fraction: 0.25 vs 0.25000000000025"]


def test_a_worker_killed_mid_audit_is_retried_and_the_report_is_identical(ray_cluster, local_report, monkeypatch):
    """Kill the worker process running a shard: Ray retries the task, nothing is lost or counted twice."""
    from qaudit import distributed

    folder = ray_cluster.tmp / "audit-tasks"
    monkeypatch.setattr(distributed, "_capture_shard", announcing(distributed._capture_shard, folder))
    with Killer(folder) as k:
        got = to_dict(qaudit.audit(_cfg(ray_address=ray_cluster.address)))
    assert k.killed, "no shard's worker was found to kill"
    assert differences(local_report, got) == []
    assert got["data"] == local_report["data"]  # every sample counted once


def test_stopping_a_cluster_ends_its_own_processes_and_no_other(ray_cluster):
    """Cluster.stop ends its session's processes by id (not ``ray stop``, which ends every Ray process
    of the machine): a second cluster stopped leaves none of its processes and the session's cluster whole."""
    from pathlib import Path

    from .cluster import Cluster, started

    def daemons(c) -> set[int]:  # its GCS, raylets, monitors (workers come and go)
        out = set()
        for pid in c.own_pids():
            try:
                if str(c.tmp) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    out.add(pid)
            except OSError:
                pass
        return out

    before = daemons(ray_cluster)
    other = Cluster(cpus=1, worker_cpus=0, object_store_mb=100)
    try:
        theirs = {pid: started(pid) for pid in other.own_pids()}
        assert theirs and not set(theirs) & set(before)
    finally:
        other.stop()
    still = [pid for pid, t in theirs.items() if t is not None and started(pid) == t]  # not a reused pid
    assert not still, [
        Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in still if Path(f"/proc/{pid}").exists()
    ]
    assert not other.tmp.exists()
    assert before and before == daemons(ray_cluster)
    ray_cluster.wait_for_nodes(2, timeout=10)

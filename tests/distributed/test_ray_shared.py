"""--ray-shared-dir on a real two-node Ray cluster: the models and data by path, the local report,
the object store not carrying the model (issue 21 item 2; both nodes see this machine's files)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qaudit
from qaudit.errors import ConfigError
from qaudit.options import audit_config
from qaudit.report import to_dict

from ..remedy import planted_fix as planted
from .cluster import Handed
from .compare import differences

pytestmark = [pytest.mark.extra, pytest.mark.ray]

#: the wide layer's weights: 256 x 4096 float32, 4 MiB
WIDE = 256 * 4096 * 4


def wide_model() -> onnx.ModelProto:
    """x [N,256] -> MatMul w1 [256,4096] -> Relu -> MatMul w2 [4096,16] -> y: a 4 MiB weight to look for."""
    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array((rng.normal(0, 0.05, (256, 4096))).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.normal(0, 0.05, (4096, 16))).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """The wide model saved with its weights as external data, 32 calibration and 48 evaluation samples."""
    tmp = tmp_path_factory.mktemp("wide")
    model = wide_model()
    onnx.save(model, tmp / "wide.onnx", save_as_external_data=True, location="wide.weights", size_threshold=0)
    calib = planted.write_data(model, tmp / "calib", 32, 1)
    ev = planted.write_data(model, tmp / "eval", 48, 2)
    return audit_config(tmp / "wide.onnx", calib, ev, batch_size=8)


def test_a_shared_folder_gives_the_local_report_and_the_object_store_carries_no_model(
    ray_cluster, wide, tmp_path, monkeypatch
):
    """Local, through the object store, through the shared folder: one report (the float64 sums within
    SUM_RTOL) and one quantized model. What the driver hands Ray holds the models without the folder
    (the fp32 model's 4 MiB weight) and less than a tenth of that weight with it; the folder is left empty."""
    address = ray_cluster.address
    models = {k: tmp_path / f"{k}.onnx" for k in ("local", "store", "shared")}
    shared = tmp_path / "shared"
    shared.mkdir()
    local = to_dict(qaudit.audit(wide.replace(output_model=models["local"])))
    with monkeypatch.context() as m:
        by_store = Handed(m)
        store = to_dict(qaudit.audit(wide.replace(output_model=models["store"], ray_address=address)))
    with monkeypatch.context() as m:
        by_path = Handed(m)
        got = to_dict(
            qaudit.audit(wide.replace(output_model=models["shared"], ray_address=address, ray_shared_dir=shared))
        )
    assert differences(local, store) == [] and differences(local, got) == [] and differences(store, got) == []
    assert models["shared"].read_bytes() == models["store"].read_bytes() == models["local"].read_bytes()
    assert got["meta"]["ray"]["shared_dir"] == str(shared) and store["meta"]["ray"]["shared_dir"] is None
    assert got["meta"]["ray"]["shards"] == store["meta"]["ray"]["shards"] == 3  # 6 batches over 2 CPUs
    assert max(by_store.sizes) > WIDE, by_store.sizes  # the fp32 model, its external data included
    assert sum(by_path.sizes) < WIDE / 10, by_path.sizes  # the pairing, labels, options: no model, no batch
    assert len(by_path.sizes) > 3  # (the spy saw the three shards' tasks)
    assert list(shared.iterdir()) == []


def test_a_worker_that_cannot_see_the_folder_is_one_line_naming_its_node(ray_cluster, wide, tmp_path, monkeypatch):
    """Each task reads the run's token first; a node that mounts another folder at that path (here: the
    task looks one folder off) fails the audit with a ConfigError naming the node and the folder."""
    from qaudit import distributed

    real = distributed._capture_shared_shard

    def elsewhere(run, *args):
        run.path = run.path.parent / "not-mounted" / run.path.name
        return real(run, *args)

    monkeypatch.setattr(distributed, "_capture_shared_shard", elsewhere)
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(ConfigError) as e:
        qaudit.audit(wide.replace(ray_address=ray_cluster.address, ray_shared_dir=shared))
    msg = str(e.value)
    assert "\n" not in msg
    assert re.fullmatch(
        rf"Ray node 127\.0\.0\.[23] cannot see the --ray-shared-dir folder {re.escape(str(shared))}/not-mounted/"
        rf"qaudit-run-\w+ \(No such file or directory\); mount {re.escape(str(shared))} at the same path on every "
        r"node, or drop --ray-shared-dir",
        msg,
    ), msg
    assert list(shared.iterdir()) == []  # the run folder removed on the way out


def test_a_worker_killed_mid_shard_is_retried_from_the_same_files(ray_cluster, wide, tmp_path, monkeypatch):
    """A shard's batch files stay until its task has returned: the retried task reads them again,
    and the report is the local one."""
    from qaudit import distributed

    from .cluster import Killer, announcing

    local = to_dict(qaudit.audit(wide))
    folder = ray_cluster.tmp / "shared-tasks"
    monkeypatch.setattr(distributed, "_capture_shared_shard", announcing(distributed._capture_shared_shard, folder))
    shared = tmp_path / "shared"
    shared.mkdir()
    with Killer(folder) as k:
        got = to_dict(qaudit.audit(wide.replace(ray_address=ray_cluster.address, ray_shared_dir=shared)))
    assert k.killed, "no shard's worker was found to kill"
    assert differences(local, got) == []
    assert got["data"] == local["data"]
    assert list(shared.iterdir()) == []

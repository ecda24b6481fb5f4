"""qaudit fix on a real two-node Ray cluster: the local fix's recipe and numbers (issue 21 items 2-4).

The change sets are measured as Ray tasks, the workspace's files (prepared graph, ranges, evaluation
batches, fp32 outputs) shipped through the object store; both audits are sharded."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from qaudit.gate import GateConfig
from qaudit.options import audit_config
from qaudit.remedy import search as S
from qaudit.report import to_dict

from ..remedy import planted_fix as planted
from .cluster import Killer, announcing
from .compare import differences

pytestmark = [pytest.mark.extra, pytest.mark.ray]

GATES = {"min_output_sqnr": 25.0}


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rayfix")
    model = planted.outlier_channel_model()
    path = tmp / "outlier.onnx"
    onnx.save(model, path)
    calib = planted.write_data(model, tmp / "calib", 64, 1)
    ev = planted.write_data(model, tmp / "eval", 48, 2)
    cfg = audit_config(path, calib, ev, batch_size=8)
    return cfg, S.fix(cfg, GateConfig(GATES))


def _trail(result) -> list:
    """Every measurement of the search, in order: its change set, verdict and output rows."""
    return [
        {
            "changes": [dataclasses.astuple(c) for c in m.changes],
            "passed": m.passed,
            "shortfall": m.shortfall,
            "error": m.error,
            "outputs": [dataclasses.asdict(r) for r in m.outputs],
        }
        for m in result.search.trail
    ]


def _same_fix(local, got) -> None:
    assert got.search.changes == local.search.changes
    assert got.quant == local.quant
    assert got.search.pruned == local.search.pruned
    assert differences(_trail(local), _trail(got)) == []  # the same sets measured, in the same order
    assert differences(to_dict(local.before), to_dict(got.before)) == []
    assert differences(to_dict(local.after), to_dict(got.after)) == []


def test_a_fix_on_ray_gives_the_local_recipe_and_numbers(ray_cluster, subject, monkeypatch):
    cfg, local = subject
    assert local.search.changes == (S.Change("per_channel", "conv1", "w1"),)  # the planted remedy
    from qaudit import distributed

    shipped = []
    real = distributed._measure_shipped

    def spy(item):
        shipped.append(item[2])  # an object reference, not a path
        return real(item)

    monkeypatch.setattr(distributed, "_measure_shipped", spy)
    measured = []
    real_map = distributed.RayExecutor.map

    def counting(self, fn, workspaces, change_sets):
        change_sets = list(change_sets)
        measured.append(len(change_sets))
        return real_map(self, fn, workspaces, change_sets)

    monkeypatch.setattr(distributed.RayExecutor, "map", counting)
    got = S.fix(cfg.replace(ray_address=ray_cluster.address), GateConfig(GATES))
    _same_fix(local, got)
    assert got.before.meta["ray"]["shards"] > 1 and got.after.meta["ray"]["shards"] > 1
    # the search measured its sets on the cluster, two at once (its 2 CPUs), beyond the ones it asked for
    assert max(measured) == 2 and sum(measured) >= local.search.n_measured


def test_a_worker_killed_mid_search_is_retried_and_the_fix_is_identical(ray_cluster, subject, monkeypatch):
    from qaudit import distributed

    cfg, local = subject
    folder = ray_cluster.tmp / "fix-tasks"
    monkeypatch.setattr(distributed, "_measure_shipped", announcing(distributed._measure_shipped, folder))
    with Killer(folder) as k:
        got = S.fix(cfg.replace(ray_address=ray_cluster.address), GateConfig(GATES))
    assert k.killed, "no measurement's worker was found to kill"
    _same_fix(local, got)


def test_cli_fix_on_ray_writes_the_local_recipe(ray_cluster, subject, tmp_path, run_cli):
    cfg, _ = subject
    args = [str(cfg.model), "--calib", str(cfg.calib), "--eval", str(cfg.eval), "--min-output-sqnr", "25"]
    args += ["--batch-size", "8", "--quiet", "--no-progress"]
    local = run_cli("fix", *args, "--recipe", str(tmp_path / "local.toml"), timeout=240)
    ray = run_cli(
        "fix", *args, "--recipe", str(tmp_path / "ray.toml"), "--ray-address", ray_cluster.address, timeout=240
    )
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr
    assert (tmp_path / "ray.toml").read_text() == (tmp_path / "local.toml").read_text()


def test_a_fix_through_a_shared_folder_gives_the_local_recipe_and_numbers(ray_cluster, subject, tmp_path, monkeypatch):
    """The workspace written into the shared folder and read there by path: the object-store route is
    not taken (it would fail here), the recipe and every number are the local fix's, the folder is left empty."""
    from qaudit import distributed

    def not_this_way(item):
        raise AssertionError("the workspace went through the object store")

    monkeypatch.setattr(distributed, "_measure_shipped", not_this_way)
    cfg, local = subject
    got = S.fix(cfg.replace(ray_address=ray_cluster.address, ray_shared_dir=tmp_path), GateConfig(GATES))
    _same_fix(local, got)
    assert got.before.meta["ray"]["shared_dir"] == str(tmp_path)
    assert list(tmp_path.iterdir()) == []

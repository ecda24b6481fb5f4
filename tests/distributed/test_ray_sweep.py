"""qaudit sweep on a real two-node Ray cluster: one task per model x setting, the local table (issue 21)."""

from __future__ import annotations

import pytest

from qaudit import sweep
from qaudit.report import to_dict

from ..cli.test_sweep import without_clock, write_sweep
from .cluster import Killer, announcing

pytestmark = [pytest.mark.extra, pytest.mark.ray]


def _rows(outcomes):
    return [{k: v for k, v in o.row.items() if k != "seconds"} for o in outcomes]


def test_a_sweep_on_ray_gives_the_local_table_with_a_worker_killed(ray_cluster, tmp_path, monkeypatch, run_cli):
    """Models and data reach the tasks through the object store (the workers write them to their own
    temporary folders); a worker killed mid-task is retried; the broken model is its one-line row."""
    path = write_sweep(tmp_path / "s")
    plan = sweep.load(path)
    local = sweep.run(plan)
    folder = ray_cluster.tmp / "sweep-tasks"
    monkeypatch.setattr(sweep, "run_shipped_job", announcing(sweep.run_shipped_job, folder))
    with Killer(folder) as k:
        got = sweep.run(plan, ray_address=ray_cluster.address)
    assert k.killed
    assert _rows(got) == _rows(local)
    assert [o.row["status"] for o in got] == ["pass", "error", "pass", "error"]
    for a, b in zip(local, got):
        if a.report is not None:  # the same audit, naming the user's files
            assert without_clock(to_dict(b.report)) == without_clock(to_dict(a.report))
            assert b.report.model["path"] == a.report.model["path"]
    # the command line: the file's ray_address, one setting (2 tasks), the table as CSV
    small = write_sweep(
        tmp_path / "cli", grid='calibrate_method = ["minmax"]', extra=f'ray_address = "{ray_cluster.address}"'
    )
    p = run_cli("sweep", str(small), "--csv", "-", "--quiet", timeout=180)
    assert p.returncode == 1 and p.stderr == "", p.stderr
    cli_rows = p.stdout.splitlines()[1:]
    assert [r.split(",")[2] for r in cli_rows] == ["pass", "error"]
    assert cli_rows[0].split(",")[4:14] == [
        "" if v is None else repr(v) if isinstance(v, float) else str(v) for v in list(local[0].row.values())[4:14]
    ]


def test_a_sweep_through_a_shared_folder_gives_the_local_table(ray_cluster, tmp_path, run_cli):
    """The sweep's own folder as the shared folder: its models are read in place, the data (outside it)
    copied in once; the same rows and reports, naming the user's files; nothing left in the folder."""
    folder = tmp_path / "s"
    path = write_sweep(folder, grid='calibrate_method = ["minmax"]')
    plan = sweep.load(path)
    local = sweep.run(plan)
    got = sweep.run(plan, ray_address=ray_cluster.address, shared_dir=folder)
    assert _rows(got) == _rows(local)
    assert [o.row["status"] for o in got] == ["pass", "error"]
    assert without_clock(to_dict(got[0].report)) == without_clock(to_dict(local[0].report))
    assert got[0].report.model["path"] == local[0].report.model["path"]
    assert got[0].report.data == local[0].report.data
    assert not list(folder.glob("qaudit-run-*"))
    # the command line, with a folder outside the sweep's: everything copied there
    shared = tmp_path / "shared"
    shared.mkdir()
    args = ["--ray-address", ray_cluster.address, "--ray-shared-dir", str(shared), "--csv", "-", "--quiet"]
    p = run_cli("sweep", str(path), *args, timeout=180)
    assert p.returncode == 1 and p.stderr == "", p.stderr
    assert [r.split(",")[:3] for r in p.stdout.splitlines()[1:]] == [
        [o.row["model"], o.row["setting"], o.row["status"]] for o in local
    ]
    assert list(shared.iterdir()) == []

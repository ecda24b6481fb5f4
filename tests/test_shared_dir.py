"""--ray-shared-dir without a cluster: the up-front checks (one line, exit 2), the run folder's token,
and which files a sweep copies into the shared folder (the Ray runs: tests/distributed)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnx
import pytest

from qaudit import distributed, sweep
from qaudit.cli.settings import resolve
from qaudit.errors import ConfigError

from .cli.test_sweep import write_sweep
from .conftest import SAMPLE_CALIB, SAMPLE_MODEL


def test_a_missing_or_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--ray-shared-dir .*nowhere: no such folder; give a folder every Ray node"):
        distributed.check_shared_dir(tmp_path / "nowhere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"f: not a folder"):
        distributed.check_shared_dir(tmp_path / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anyway: the system's refusal, as it would come

        def refuse(**kw):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(distributed.tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"ro: cannot write there \(Permission denied\); give a folder"):
        distributed.check_shared_dir(ro)
    monkeypatch.undo()
    ro.chmod(0o755)
    assert distributed.check_shared_dir(ro) == ro and list(ro.iterdir()) == []  # the probe is gone


def test_the_run_folder_is_removed_and_a_node_without_it_is_named(tmp_path):
    with distributed.SharedRun(tmp_path) as run:
        assert run.path.parent == tmp_path and run.path.name.startswith("qaudit-run-")
        run.check()  # the driver sees it
        import pickle

        other = pickle.loads(pickle.dumps(run))
        other.token = "another run's"
        with pytest.raises(ConfigError) as e:
            other.check()
        assert "holds another run's files" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError) as e:  # the folder as a node that does not mount it sees it
        run.check()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"Ray node {distributed._node_name()} cannot see the --ray-shared-dir folder {run.path} (")
    assert msg.endswith(f"mount {tmp_path} at the same path on every node, or drop --ray-shared-dir")


def test_a_sweep_reads_files_in_the_folder_in_place_and_copies_the_others_once(tmp_path):
    folder = tmp_path / "s"
    path = write_sweep(folder, broken=False)
    ext = folder / "models" / "b.onnx"  # a model with its weights in a file beside it
    onnx.save(onnx.load(SAMPLE_MODEL), ext, save_as_external_data=True, location="b.weights", size_threshold=0)
    plan = sweep.load(path)
    assert len(plan.jobs) == 4
    with distributed.SharedRun(folder) as run:  # the models are inside the shared folder, the data are not
        items = distributed.shared_jobs(list(plan.jobs), run)
        for job, local, r in items:
            assert r is run
            assert local.model == job.model.resolve() and local.cfg.model == local.model  # in place
            assert local.cfg.calib.is_relative_to(run.path) and local.cfg.calib != job.cfg.calib
        copies = {str(p.relative_to(run.path)) for p in run.path.rglob("*") if p.parent.parent == run.path}
        assert copies == {"0/calib", "1/eval", "2/eval_labels.npy"}  # each once, for every job
        assert sorted(p.name for p in (run.path / "0" / "calib").iterdir()) == sorted(
            p.name for p in SAMPLE_CALIB.iterdir()
        )
    (tmp_path / "elsewhere").mkdir()
    with distributed.SharedRun(tmp_path / "elsewhere") as run:  # nothing inside: the model copied with its data
        item = next(i for i in distributed.shared_jobs(list(plan.jobs), run) if i[0].model == ext)
        assert item[1].model.parent.parent == run.path
        assert (item[1].model.parent / "b.weights").read_bytes() == (folder / "models" / "b.weights").read_bytes()


def test_the_options_are_checked_before_any_work(tmp_path, run_cli):
    model = [str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB)]
    p = run_cli(*model, "--ray-shared-dir", str(tmp_path))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == (
        f"qaudit: error: --ray-shared-dir {tmp_path} is where Ray workers read the models and data: give "
        "--ray-address too, or drop --ray-shared-dir\n"
    )
    missing = tmp_path / "missing"
    p = run_cli(*model, "--ray-address", "127.0.0.9:1", "--ray-shared-dir", str(missing))
    assert p.returncode == 2 and p.stderr.startswith(f"qaudit: error: --ray-shared-dir {missing}: no such folder")
    assert p.stderr.count("\n") == 1
    p = run_cli(
        "fix", *model, "--min-output-sqnr", "25", "--ray-address", "127.0.0.9:1", "--ray-shared-dir", str(missing)
    )
    assert p.returncode == 2 and p.stderr.startswith(f"qaudit: error: --ray-shared-dir {missing}: no such folder")
    path = write_sweep(tmp_path / "s", extra=f'ray_shared_dir = "{missing.name}"')
    p = run_cli("sweep", str(path))
    assert p.returncode == 2 and "give --ray-address too (or ray_address in the sweep file)" in p.stderr
    p = run_cli("sweep", str(path), "--ray-address", "127.0.0.9:1")  # relative to the sweep file
    assert p.returncode == 2 and p.stderr == (
        f"qaudit: error: --ray-shared-dir {tmp_path / 's' / 'missing'}: no such folder; give a folder every Ray node "
        "mounts at the same path, or drop --ray-shared-dir (the object store then carries them)\n"
    )


def test_the_config_key_is_a_folder_relative_to_the_file(tmp_path):
    s = resolve("audit", {}, environ={}, cwd=tmp_path, file=(tmp_path / "q.toml", {"ray_shared_dir": "shared"}))
    assert s["ray_shared_dir"] == str(tmp_path / "shared")
    assert s.sources["ray_shared_dir"] == str(tmp_path / "q.toml")
    cfg = resolve("audit", {"model": SAMPLE_MODEL, "calib": SAMPLE_CALIB, "ray_shared_dir": Path("x")}).audit_config()
    assert cfg.ray_shared_dir == Path("x")

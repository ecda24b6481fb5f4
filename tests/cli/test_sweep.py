"""qaudit sweep: many models x settings from one file, one table (issue 21 item 1)."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest

import qaudit
from qaudit import sweep
from qaudit.errors import ConfigError
from qaudit.options import audit_config
from qaudit.report import to_dict

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL

pytestmark = pytest.mark.slow


def write_sweep(folder, *, grid='calibrate_method = ["minmax", "percentile"]', extra="", broken=True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    shutil.copy(SAMPLE_MODEL, folder / "models" / "a.onnx")
    if broken:
        (folder / "models" / "broken.onnx").write_text("not a model")
    text = f"""models = ["models/*.onnx"]
calib = "{SAMPLE_CALIB.as_posix()}"
eval = "{SAMPLE_EVAL.as_posix()}"
labels = "{SAMPLE_LABELS.as_posix()}"
batch_size = 8
{extra}
[grid]
{grid}

[gates]
min_layer_sqnr = 10
"""
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def without_clock(d: dict) -> dict:
    d = json.loads(json.dumps(d, default=str))
    for key in ("created", "seconds", "phase_seconds"):
        d["meta"].pop(key, None)
    d["model"].pop("path", None)
    return d


def test_a_sweep_runs_every_model_and_setting_and_a_broken_model_is_one_row(tmp_path, run_cli):
    path = write_sweep(tmp_path / "s")
    out = tmp_path / "out"
    out.mkdir()
    p = run_cli("sweep", str(path), "--csv", str(out / "t.csv"), "--json", str(out / "t.json"), "--html",
                str(out / "t.html"))  # fmt: skip
    assert p.returncode == 1, p.stderr  # an audit had an error
    rows = list(csv.DictReader(open(out / "t.csv")))
    assert [(r["model"].rsplit("/", 1)[-1], r["setting"], r["status"]) for r in rows] == [
        ("a.onnx", "calibrate_method=minmax", "pass"),
        ("broken.onnx", "calibrate_method=minmax", "error"),
        ("a.onnx", "calibrate_method=percentile", "pass"),
        ("broken.onnx", "calibrate_method=percentile", "error"),
    ]
    assert "is not a valid ONNX file" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert p.stdout.count("broken.onnx calibrate_method=") == 2 and "4 audits: 2 pass, 2 error" in p.stdout
    doc = json.loads((out / "t.json").read_text())
    assert doc["format"] == {"name": "qaudit-sweep", "version": 1} and doc["reports"][1] is None
    # each row is the audit a plain qaudit.audit gives with those settings, gated
    for row, rep, method in ((doc["rows"][0], doc["reports"][0], "minmax"), (doc["rows"][2], doc["reports"][2],
                                                                            "percentile")):  # fmt: skip
        want = qaudit.audit(audit_config(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, batch_size=8,
                                         calibrate_method=method))  # fmt: skip
        assert without_clock(rep)["layers"] == without_clock(to_dict(want))["layers"]
        worst = min((r for r in want.layers if r.sqnr_db is not None), key=lambda r: r.sqnr_db)
        assert (row["worst_layer"], row["worst_sqnr_db"]) == (worst.name, worst.sqnr_db)
        logits = next(o for o in want.outputs if o.name == row["output"])
        assert row["qce"] == logits.qce and row["acc_drop_pct"] == logits.acc_drop_pct
        assert float(rows[0]["qce"]) == doc["rows"][0]["qce"]  # the CSV keeps full precision
    html = (out / "t.html").read_text()
    assert "a calibrate_method=minmax" in html and "a calibrate_method=percentile" in html


def test_workers_give_the_sequential_rows(tmp_path):
    path = write_sweep(tmp_path / "s", grid='calibrate_method = ["minmax", "percentile", "entropy"]')
    plan = sweep.load(path)
    seq = sweep.run(plan, workers=1)
    par = sweep.run(plan, workers=2)
    strip = [{k: v for k, v in o.row.items() if k != "seconds"} for o in seq]
    assert [{k: v for k, v in o.row.items() if k != "seconds"} for o in par] == strip
    assert [without_clock(to_dict(o.report))["layers"] for o in par if o.report] == [
        without_clock(to_dict(o.report))["layers"] for o in seq if o.report
    ]


@pytest.mark.parametrize(
    "grid, extra, message",
    [
        ('calibrate_method = "minmax"', "", "must be a non-empty list"),
        ("no_such_setting = [1]", "", "is not an audit setting"),
        ('calibrate_method = ["fastest"]', "", "calibrate_method"),
        ('calibrate_method = ["minmax"]', 'json = "x.json"', "does not apply to a sweep"),
        ('calibrate_method = ["minmax"]', 'calibrate_method = "minmax"', "set it in one place"),
        ("max_cost = [3, 5]", "", "setting of qaudit fix"),
        ("minimal = [true, false]", "", "setting of qaudit fix"),
        ("workers = [1, 2]", "", "is not an audit setting a sweep can vary"),
        ('calibrate_method = ["minmax"]', "workers = 2", "give qaudit sweep --workers instead"),
    ],
)
def test_a_bad_sweep_file_is_one_line_before_any_audit(tmp_path, run_cli, grid, extra, message):
    path = write_sweep(tmp_path / "s", grid=grid, extra=extra, broken=False)
    with pytest.raises(ConfigError, match=message):
        sweep.load(path)
    p = run_cli("sweep", str(path))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message.split()[0] in p.stderr, p.stderr


def test_a_glob_matching_nothing_is_an_error(tmp_path):
    path = write_sweep(tmp_path / "s", broken=False)
    path.write_text(path.read_text().replace("models/*.onnx", "elsewhere/*.onnx"))
    with pytest.raises(ConfigError, match="matches no file"):
        sweep.load(path)


def test_ray_address_without_ray_is_one_line_with_the_pip_command(tmp_path, run_cli, monkeypatch):
    """Python started with ray unimportable (a meta-path finder refusing it): qaudit and qaudit sweep say how
    to install it, in one line, exit 2; without --ray-address they do not need it."""
    block = tmp_path / "noray"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nclass _NoRay:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n            raise ImportError('no ray')\n"
        "sys.meta_path.insert(0, _NoRay())\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(block))
    path = write_sweep(tmp_path / "s", grid='calibrate_method = ["minmax"]', broken=False)
    for args in (("sweep", str(path), "--ray-address", "auto"),
                 (str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), "--ray-address", "auto")):  # fmt: skip
        p = run_cli(*args)
        assert p.returncode == 2, p.stderr
        assert p.stderr == 'qaudit: error: --ray-address needs Ray, which is not installed: pip install "qaudit[ray]"\n'
    p = run_cli("sweep", str(path), "--quiet")
    assert p.returncode == 0, p.stderr


def _with_parts(folder, parts: str, **kw):
    path = write_sweep(folder, broken=False, **kw)
    path.write_text(path.read_text() + "\n" + parts)
    return path


def test_a_part_audits_its_own_models_with_its_own_settings(tmp_path):
    """[[part]]: its models, its settings over the top level's, its own [part.grid]; the top-level grid
    does not apply to it; each job's setting names its part, so its files never collide with the top's."""
    parts = """[[part]]
name = "pc"
models = ["models/a.onnx"]
calibrate_method = "minmax"
per_channel = true

[[part]]
name = "types"
models = "models/a.onnx"
weight_type = "int8"
[part.grid]
activation_type = ["uint8", "int8"]
"""
    path = _with_parts(tmp_path / "s", parts)
    plan = sweep.load(path)
    got = [(j.model.name, j.setting, j.cfg.quant.calibrate_method, j.cfg.quant.per_channel, j.cfg.quant.activation_type,
            j.cfg.quant.weight_type)
           for j in plan.jobs]  # fmt: skip
    assert got == [
        ("a.onnx", "calibrate_method=minmax", "minmax", False, "uint8", "uint8"),
        ("a.onnx", "calibrate_method=percentile", "percentile", False, "uint8", "uint8"),
        ("a.onnx", "part=pc", "minmax", True, "uint8", "uint8"),
        ("a.onnx", "part=types activation_type=uint8", "percentile", False, "uint8", "int8"),
        ("a.onnx", "part=types activation_type=int8", "percentile", False, "int8", "int8"),
    ]
    assert all(j.cfg.batch_size == 8 and j.gates.configured(False) for j in plan.jobs)  # the shared settings
    files = sweep.JobFiles(plan, tmp_path / "out", resume=False)
    assert len({files.name(j) for j in plan.jobs}) == 5
    # the part's audit is the one plain qaudit.audit gives with its settings
    (pc,) = [o for o in sweep.run(sweep.Sweep(plan.path, (plan.jobs[2],), plan.grid_keys))]
    want = qaudit.audit(audit_config(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, batch_size=8,
                                     calibrate_method="minmax", per_channel=True))  # fmt: skip
    assert without_clock(to_dict(pc.report))["layers"] == without_clock(to_dict(want))["layers"]
    assert pc.row["setting"] == "part=pc"


def test_a_sweep_of_parts_alone_needs_no_top_level_models(tmp_path):
    path = _with_parts(tmp_path / "s", '[[part]]\nname = "only"\nmodels = ["models/a.onnx"]\n', grid="")
    text = path.read_text().replace('models = ["models/*.onnx"]\n', "").replace("[grid]\n", "")
    path.write_text(text)
    assert [j.setting for j in sweep.load(path).jobs] == ["part=only"]


@pytest.mark.parametrize(
    "parts, message",
    [
        ('[[part]]\nmodels = ["models/a.onnx"]\n', "needs a name"),
        ('[[part]]\nname = "a b"\nmodels = ["models/a.onnx"]\n', "needs a name"),
        (
            '[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\n[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\n',
            "named twice",
        ),
        ('[[part]]\nname = "x"\n', "'models' in [[part]] 'x'"),
        ('[[part]]\nname = "x"\nmodels = ["nowhere/*.onnx"]\n', "matches no file"),
        ('[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\njson = "x.json"\n', "does not apply to a part"),
        ('[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\nray_address = "auto"\n', "does not apply to a part"),
        (
            '[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\nper_channel = true\n[part.grid]\nper_channel = [true]\n',
            "also set in the part",
        ),
        ('[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\n[part.grid]\nmax_cost = [1]\n', "setting of qaudit fix"),
        ('[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\ncalibrate_method = "fastest"\n', "calibrate_method"),
        ("part = 3\n", "must be tables"),
    ],
)
def test_a_bad_part_is_one_line_before_any_audit(tmp_path, run_cli, parts, message):
    if parts.startswith("part ="):  # a top-level key: before the tables
        path = write_sweep(tmp_path / "s", broken=False, extra=parts)
    else:
        path = _with_parts(tmp_path / "s", parts)
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep.load(path)
    p = run_cli("sweep", str(path))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr


def test_a_top_level_grid_without_top_level_models_is_an_error(tmp_path):
    path = _with_parts(tmp_path / "s", '[[part]]\nname = "x"\nmodels = ["models/a.onnx"]\n')
    path.write_text(path.read_text().replace('models = ["models/*.onnx"]\n', ""))
    with pytest.raises(ConfigError, match="needs the top-level 'models'"):
        sweep.load(path)


def test_a_part_turns_the_top_levels_trials_off_with_zero(tmp_path):
    path = _with_parts(
        tmp_path / "s", '[[part]]\nname = "ck"\nmodels = ["models/a.onnx"]\ntrials = 0\n', extra="trials = 3"
    )
    assert [(j.setting, j.cfg.trials) for j in sweep.load(path).jobs] == [
        ("calibrate_method=minmax", 3),
        ("calibrate_method=percentile", 3),
        ("part=ck", 0),
    ]

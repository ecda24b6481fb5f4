"""Calibration trials (issue 19 item 5): reproducible subsets, each trial equal to the audit of its
subset run by hand, statistics equal to numpy's, the fp32 graph run once per evaluation batch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline import capture as capture_module
from qaudit.pipeline import session as session_module
from qaudit.pipeline.trials import MapExecutor
from qaudit.report import from_json, to_dict, to_json
from qaudit.trials import OUTPUT_METRICS, plan, stats

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL

BATCH = 32  # given, so the audits by hand batch exactly as the trials do
TRIALS, SEED = 3, 7
LAYER_METRICS = ("sqnr_db", "sqnr_isolated_db")


def _audit(calib, **kw):
    return qaudit.audit(SAMPLE_MODEL, calib, SAMPLE_EVAL, SAMPLE_LABELS, batch_size=BATCH, **kw)


def _body(report) -> dict:
    d = to_dict(report)
    d.pop("meta")
    d.pop("trials", None)
    return d


@pytest.fixture(scope="module")
def counted():
    """The audit with trials, every session run of the capture counted by the model file it runs."""
    runs: list[str] = []
    real = capture_module.run_named

    def counting(session, feeds):
        runs.append(Path(session._model_path).name + "@" + Path(session._model_path).parent.name)
        return real(session, feeds)

    mp = pytest.MonkeyPatch()
    mp.setattr(capture_module, "run_named", counting)
    mp.setattr(session_module, "run_named", counting)  # the runtimes' sessions (qaudit.pipeline.runtimes)
    try:
        report = _audit(SAMPLE_CALIB, trials=TRIALS, seed=SEED)
    finally:
        mp.undo()
    return report, runs


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    """Each trial's subset audited by hand: its files copied to a directory of their own."""
    files = sorted(p.name for p in Path(SAMPLE_CALIB).iterdir())
    p = plan(files, TRIALS, SEED)
    reports = []
    for i, subset in enumerate(p.subsets):
        d = tmp_path_factory.mktemp(f"subset{i}")
        for k in subset:
            shutil.copyfile(Path(SAMPLE_CALIB) / files[k], d / files[k])
        reports.append(_audit(d))
    return p, reports


def test_the_subsets_are_drawn_from_the_seed():
    names = [f"f{i}" for i in range(10)]
    a, b, c = plan(names, 5, 3), plan(names, 5, 3), plan(names, 5, 4)
    assert a.subsets == b.subsets and a.subsets != c.subsets
    rng = np.random.default_rng(3)  # numpy's own draw, without replacement
    assert a.subsets == tuple(tuple(sorted(rng.choice(10, 5, replace=False).tolist())) for _ in range(5))
    for s in a.subsets:
        assert len(s) == len(set(s)) == 5 and list(s) == sorted(s)
    assert plan(names, 2, 0, fraction=0.25).per_trial == 2  # floor(0.25 * 10)


def test_the_main_report_is_the_full_data_audit(counted):
    report, _ = counted
    assert _body(report) == _body(_audit(SAMPLE_CALIB))  # the table and the gates stay the full-data audit's
    t = report.trials
    assert t["n"] == TRIALS and t["seed"] == SEED and t["std_ddof"] == 1 and t["fp32_pass"] == "shared"
    assert t["files"] == sorted(p.name for p in Path(SAMPLE_CALIB).iterdir())
    assert t["samples"] == [64] * TRIALS  # two files of 32 samples each
    assert any("only 4 calibration files" in n for n in t["notes"])


def test_each_trial_is_the_audit_of_its_subset(counted, by_hand):
    report, _ = counted
    p, reports = by_hand
    t = report.trials
    assert [tuple(s) for s in t["subsets"]] == list(p.subsets)
    for row in t["layers"]:
        for m in LAYER_METRICS:
            by_trial = [getattr(next(r for r in rep.layers if r.name == row["name"]), m) for rep in reports]
            assert row[m]["values"] == by_trial, (row["name"], m)  # bit for bit
            a = np.array(by_trial)
            assert row[m]["mean"] == pytest.approx(np.mean(a), rel=1e-15, abs=0)
            assert row[m]["std"] == pytest.approx(np.std(a, ddof=1), rel=1e-12, abs=1e-300)
            assert (row[m]["min"], row[m]["max"]) == (a.min(), a.max())
    (out,) = t["outputs"]
    for m in OUTPUT_METRICS:
        by_trial = [getattr(rep.outputs[0], m) for rep in reports]
        assert out[m]["values"] == by_trial, m
        assert out[m]["mean"] == pytest.approx(float(np.mean(by_trial)), rel=1e-15)
        assert out[m]["std"] == pytest.approx(float(np.std(by_trial, ddof=1)), rel=1e-12, abs=1e-300)
    # the trials did move the numbers: different subsets, different ranges
    assert t["outputs"][0]["sqnr_db"]["std"] > 0


def test_the_fp32_graph_runs_once_per_evaluation_batch(counted):
    report, runs = counted
    batches = math.ceil(400 / BATCH)
    fp32 = [r for r in runs if r.startswith("folded_instrumented.")]  # folded_instrumented.<run folder>.onnx
    assert len(fp32) == batches  # one pass serves the main run and every trial
    for where in ["qaudit-"] + [f"trial{i}" for i in range(TRIALS)]:
        # the instrumented quantized graph (saved by the runtime beside the plain model) once per batch,
        # plus once on the first batch beside the plain model (the deployment check, capture.py)
        q = [r for r in runs if r.startswith("quantized.ort.onnx@" + where)]
        plain = [r for r in runs if r.startswith("quantized.onnx@" + where)]
        iso = [r for r in runs if r.startswith("quantized_isolated.onnx@" + where)]
        assert len(q) == batches + 1 and len(plain) == 1 and len(iso) == batches, where


def test_a_map_executor_gives_the_same_trials(counted):
    report, _ = counted
    other = qaudit.audit(
        SAMPLE_MODEL,
        SAMPLE_CALIB,
        SAMPLE_EVAL,
        SAMPLE_LABELS,
        batch_size=BATCH,
        trials=TRIALS,
        seed=SEED,
        trial_executor=MapExecutor(map),
    )
    assert _body(other) == _body(report)
    a, b = dict(report.trials), dict(other.trials)
    assert b.pop("fp32_pass") == "per trial"
    for d in (a, b):
        d.pop("seconds")
        d.pop("fp32_pass", None)
    assert a == b


def test_trials_run_in_parallel_processes(counted):
    """A process pool's map (as a cluster would run them): the trials calibrate and quantize at the
    same time, each on its own link of the folded model (ORT writes <model>-inferred.onnx beside it)."""
    from concurrent.futures import ProcessPoolExecutor

    report, _ = counted
    with ProcessPoolExecutor(max_workers=2) as pool:
        other = _audit(SAMPLE_CALIB, trials=TRIALS, seed=SEED, trial_executor=MapExecutor(pool.map))
    a, b = dict(report.trials), dict(other.trials)
    for d in (a, b):
        d.pop("seconds"), d.pop("fp32_pass")
    assert a == b


def test_the_trials_survive_json(counted):
    report, _ = counted
    back = from_json(to_json(report))
    assert back.format_version == 5
    assert back.trials == from_json(to_json(back)).trials
    assert back.trials["layers"][3]["sqnr_db"] == report.trials["layers"][3]["sqnr_db"]


def test_stats_say_why_they_are_missing():
    assert stats([1.0, None, 3.0]) == {"mean": 2.0, "std": math.sqrt(2.0), "min": 1.0, "max": 3.0, "n": 2,
                                       "values": [1.0, None, 3.0]}  # fmt: skip
    s = stats([1.0, math.inf])
    assert s["mean"] is None and "no error" in s["reason"] and s["values"] == [1.0, None]
    s = stats([None, 2.0])
    assert s["std"] is None and "spread needs two" in s["reason"]


def test_in_memory_items_are_the_files():
    feeds = [{"input": np.load(p)} for p in sorted(Path(SAMPLE_CALIB).iterdir())]
    report = _audit(feeds, trials=2, seed=1, isolated=False)
    assert report.trials["files"] == ["item 0", "item 1", "item 2", "item 3"]
    assert report.trials["samples"] == [64, 64]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"trials": 1}, "at least 2 trials|>= 2"),
        ({"trials": 3, "trial_fraction": 0.2}, "less than 1 file"),
        ({"trials": 3, "trial_fraction": 1.0}, r"in \(0, 1\)"),
    ],
)
def test_trials_that_cannot_run_are_one_line_errors(kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        _audit(SAMPLE_CALIB, **kw)
    assert "\n" not in str(e.value)


def _trials(report) -> dict:
    t = dict(report.trials)
    t.pop("seconds")
    return t


def test_several_methods_each_get_the_same_subsets_and_a_paired_difference(counted):
    from qaudit.runs import runs_from_dict, runs_to_dict, summary_rows

    report, _ = counted
    mr = _audit(SAMPLE_CALIB, trials=TRIALS, seed=SEED, calibrate_method=["percentile", "entropy"])
    percentile, entropy = mr.run("percentile"), mr.run("entropy")
    assert _trials(percentile) == _trials(report)  # each run's trials: the single-method audit's
    assert _trials(entropy) == _trials(_audit(SAMPLE_CALIB, trials=TRIALS, seed=SEED, calibrate_method="entropy"))
    assert entropy.trials["subsets"] == percentile.trials["subsets"]
    # the runs table's paired difference: entropy - percentile, trial by trial, on the worst output
    row = summary_rows(mr)[1]
    a = np.array(percentile.trials["outputs"][0]["sqnr_db"]["values"])
    b = np.array(entropy.trials["outputs"][0]["sqnr_db"]["values"])
    p = row["output_sqnr_paired"]
    assert p["values"] == (b - a).tolist()
    assert p["mean"] == pytest.approx(np.mean(b - a), rel=1e-12, abs=1e-15)
    assert p["std"] == pytest.approx(np.std(b - a, ddof=1), rel=1e-12)
    assert (p["higher"], p["lower"]) == (int((b > a).sum()), int((b < a).sum()))
    back = runs_from_dict(json.loads(json.dumps(runs_to_dict(mr))))
    assert back.run("entropy").trials == json.loads(json.dumps(entropy.trials))


def test_a_single_calibration_file_is_refused_before_any_model_runs(tmp_path, monkeypatch):
    from qaudit.pipeline import audit as audit_module

    def no_session(*args, **kw):
        raise AssertionError("a model ran before the trials were checked")

    monkeypatch.setattr(audit_module, "probe_activations", no_session)
    one = tmp_path / "calib.npy"
    shutil.copyfile(Path(SAMPLE_CALIB) / "batch_000.npy", one)
    with pytest.raises(ConfigError, match="of 1 calibration file"):
        _audit(one, trials=2)

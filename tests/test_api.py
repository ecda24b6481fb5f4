"""The public API (qaudit/__init__.py): every way to pass data gives the same audit,
one-shot iterators are refused, options are checked, the caller owns progress,
and the README's API example runs for real.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import qaudit
from qaudit.errors import ConfigError, DataError

from .conftest import REPO, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL, cli_env

NAME = "input"  # the sample model's input


def _batches(d: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(d.glob("*.npy"))]


def _numbers(report) -> tuple:
    """Everything measured (rows, outputs, unmatched), none of the run's bookkeeping."""
    return report.layers, report.outputs, report.unmatched, report.folding["check"]


@pytest.fixture(scope="module")
def from_paths():
    return qaudit.audit(SAMPLE_MODEL, calib=SAMPLE_CALIB, eval=SAMPLE_EVAL, labels=SAMPLE_LABELS, batch_size=16)


class Reader:
    """An ONNX Runtime CalibrationDataReader as users write them, with rewind()."""

    def __init__(self, arrays, split: int = 1):
        self.arrays = [a[i : i + len(a) // split] for a in arrays for i in range(0, len(a), len(a) // split)]
        self.pos = 0
        self.live: set = set()
        self.max_live = 0
        self.passes = 0

    def get_next(self):
        if self.pos >= len(self.arrays):
            return None
        a = self.arrays[self.pos].copy()  # a fresh array per call, as readers that decode files make
        self.pos += 1
        key = id(a)
        self.live.add(key)
        weakref.finalize(a, self.live.discard, key)
        self.max_live = max(self.max_live, len(self.live))
        return {NAME: a}

    def rewind(self):
        self.pos = 0
        self.passes += 1


def test_readers_callables_and_arrays_give_the_audit_of_the_files(from_paths):
    from onnxruntime.quantization import CalibrationDataReader

    class OrtReader(Reader, CalibrationDataReader):
        pass

    calib, evaluation = _batches(SAMPLE_CALIB), _batches(SAMPLE_EVAL)
    labels = np.load(SAMPLE_LABELS)
    sources = {
        "reader": (OrtReader(calib), OrtReader(evaluation)),
        "callable": (lambda: ({NAME: a} for a in calib), lambda: iter([{NAME: a} for a in evaluation])),
        "one array": (np.concatenate(calib), np.concatenate(evaluation)),
        "dict of arrays": ({NAME: np.concatenate(calib)}, {NAME: np.concatenate(evaluation)}),
        "list of feeds": ([{NAME: a} for a in calib], [{NAME: a} for a in evaluation]),
    }
    for what, (c, e) in sources.items():
        report = qaudit.audit(SAMPLE_MODEL, calib=c, eval=e, labels=labels, batch_size=16)
        assert _numbers(report) == _numbers(from_paths), what
        assert report.data["n_calib"] == 128 and report.data["n_eval"] == 400
        assert report.data["labels"] == "array int64[400]"
    r = qaudit.audit(SAMPLE_MODEL, calib=sources["reader"][0], eval=sources["reader"][1], batch_size=16)
    assert r.data["calib"].startswith("CalibrationDataReader ") and r.data["calib"].endswith("OrtReader")
    assert sources["reader"][0].passes >= 3  # checked, probed, calibrated: hence rewind()
    r = qaudit.audit(SAMPLE_MODEL, calib=sources["dict of arrays"][0])
    assert r.data["calib"] == "arrays {input: float32[128, 1, 8, 8]}"
    assert r.data["eval"] is None and r.data["eval_is_calib"]


def test_a_reader_is_streamed_not_materialized():
    calib = _batches(SAMPLE_CALIB)
    reader = Reader(calib, split=4)  # 16 items of 8 samples
    evaluation = Reader(_batches(SAMPLE_EVAL), split=4)
    report = qaudit.audit(SAMPLE_MODEL, calib=reader, eval=evaluation, batch_size=8)
    assert report.data["n_calib"] == 128
    # at most two batches in flight (inference overlaps measuring) plus the one being read
    assert reader.max_live <= 4, reader.max_live
    assert evaluation.max_live <= 4, evaluation.max_live


def test_one_shot_iterators_are_refused_with_what_to_pass():
    calib = _batches(SAMPLE_CALIB)
    for one_shot in (iter([{NAME: a} for a in calib]), ({NAME: a} for a in calib)):
        with pytest.raises(DataError) as e:
            qaudit.audit(SAMPLE_MODEL, calib=one_shot)
        msg = str(e.value)
        assert "one-shot" in msg and "more than once" in msg and "lambda" in msg and "\n" not in msg

    class NoRewind:
        def get_next(self):
            return None

    with pytest.raises(DataError, match=r"has no rewind\(\) method"):
        qaudit.audit(SAMPLE_MODEL, calib=NoRewind())


def test_bad_in_memory_data_is_a_one_line_data_error():
    calib = _batches(SAMPLE_CALIB)
    cases = {
        "wrong key": ([{"image": calib[0]}], r"has inputs image; the model's inputs are input"),
        "not a dict": ([[1, 2, 3]], r"item 0 is list, not a feed dict"),
        "wrong dtype": ([{NAME: calib[0].astype(np.float64)}], r"is float64, the model expects float32"),
        "wrong shape": ([{NAME: calib[0][:, :, :4]}], r"axis 2 must be 8"),
        "NaN": ([{NAME: np.full_like(calib[0], np.nan)}], r"contains NaN values"),
        "empty": ([], r"holds no samples"),
        "callable returning a number": (lambda: 3, r"returned int, not an iterator"),
        "unsupported": (3.5, r"of type float is not supported"),
    }
    for what, (data, pattern) in cases.items():
        with pytest.raises(DataError, match=pattern) as e:
            qaudit.audit(SAMPLE_MODEL, calib=data)
        assert "\n" not in str(e.value), what
    with pytest.raises(DataError, match=r"labels has 3 entries for 128 evaluation samples"):
        qaudit.audit(SAMPLE_MODEL, calib=calib, labels=np.arange(3))


def test_options_are_audit_and_quant_fields_checked_by_name():
    cfg = qaudit.options.audit_config(SAMPLE_MODEL, SAMPLE_CALIB, weight_type="int8", per_channel=True, batch_size=4)
    assert cfg.quant == qaudit.QuantConfig(weight_type="int8", per_channel=True) and cfg.batch_size == 4
    assert cfg.calib == Path(SAMPLE_CALIB)
    with pytest.raises(ConfigError, match=r"unknown audit option 'per_chanel' \(did you mean 'per_channel'\?\)"):
        qaudit.audit(SAMPLE_MODEL, calib=SAMPLE_CALIB, per_chanel=True)
    with pytest.raises(ConfigError, match="weight_type must be one of"):
        qaudit.audit(SAMPLE_MODEL, calib=SAMPLE_CALIB, weight_type="int3")
    with pytest.raises(TypeError):
        qaudit.audit(qaudit.AuditConfig(model=SAMPLE_MODEL, calib=SAMPLE_CALIB), SAMPLE_CALIB)


class Recorder:
    """A progress object that records the calls (the caller owns it: nothing may stop it)."""

    def __init__(self):
        self.calls = []

    def stage(self, description, total):
        self.calls.append(("stage", description, total))

    def advance(self, n):
        self.calls.append(("advance", n))

    def stages(self) -> list[tuple[str, int, int]]:
        """(description, total, sum of the advances that followed it)"""
        out = []
        for c in self.calls:
            if c[0] == "stage":
                out.append([c[1], c[2], 0])
            else:
                out[-1][2] += c[1]
        return [tuple(s) for s in out]


def test_audit_reports_progress_and_never_stops_it():
    rec = Recorder()
    rec.done = lambda: pytest.fail("audit() must not stop the caller's progress")
    qaudit.audit(SAMPLE_MODEL, calib=SAMPLE_CALIB, eval=SAMPLE_EVAL, progress=rec, batch_size=32)
    assert rec.stages() == [
        ("calibrating and checking BN folding", 128, 128),
        ("capturing fp32 + quantized", 400, 400),
    ]


def test_each_audit_of_a_comparison_gets_its_own_stages():
    rec = Recorder()
    rec.done = lambda: pytest.fail("compare() must not stop the caller's progress")
    c = qaudit.compare(
        SAMPLE_MODEL,
        REPO / "samples" / "compare" / "torch_dynamo.onnx",
        calib=SAMPLE_CALIB,
        names=["script", "dynamo"],
        progress=rec,
        isolated=False,
    )
    assert [m.label for m in c.models] == ["script", "dynamo"]
    stages = rec.stages()
    assert [s[0] for s in stages] == [
        "script: calibrating and checking BN folding",
        "script: capturing fp32 + quantized",
        "dynamo: calibrating",  # the dynamo exporter folded BN itself: nothing to check
        "dynamo: capturing fp32 + quantized",
    ]
    assert all(total == done == 128 for _, total, done in stages)


def test_compare_of_saved_reports_and_load_report(tmp_path, from_paths):
    from qaudit.report import to_json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(to_json(from_paths))
    b.write_text(to_json(dataclasses.replace(from_paths, notes=("another run",))))
    assert _numbers(qaudit.load_report(a)) == _numbers(from_paths)
    c = qaudit.compare(a, b)
    assert [m.source for m in c.models] == ["report", "report"]
    assert not any(r.differs for r in c.layers)
    with pytest.raises(ConfigError, match=r"report not found: .*missing\.json"):
        qaudit.load_report(tmp_path / "missing.json")
    with pytest.raises(qaudit.QauditError, match="need calib data"):
        qaudit.compare(SAMPLE_MODEL, a, per_channel=True)


def _readme_api_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Python API\n") :]
    (block,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 2)[1], flags=re.S)[:1]
    return block


def test_the_readme_api_example_runs(tmp_path):
    code = _readme_api_example().replace('"samples/', f'"{(REPO / "samples").as_posix()}/')
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = qaudit.load_report(tmp_path / "report.json")
    assert report.settings["weight_type"] == "int8" and report.settings["per_channel"] is True
    assert report.gates is not None and len(report.layers) == 9
    assert (tmp_path / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    worst = report.worst_layers(3)
    assert r.stdout.splitlines()[:3] == [f"{w.name} {round(w.sqnr_db, 1)}" for w in worst]

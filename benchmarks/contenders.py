"""The contenders of ``bench_audit.py``, one small function each.

Each runs in its own process, started by the benchmark as

    python benchmarks/contenders.py NAME MODEL DATA_DIR --work DIR [--batch-size B] [--calibrate-method M]

so that wall time and peak RSS are those of one contender alone, measured by
the operating system (see ``bench_audit.py``). ``DATA_DIR`` is a folder of
``batch_*.npy`` files (the layout ``samples/realworld/build.py`` writes);
every contender streams the same samples in the same order, in batches of
``--batch-size`` (default 32; qaudit without it picks its own, automatically,
and the benchmark passes that choice to the other contenders). Every
contender quantizes the same way: QDQ, uint8 activations and weights,
per-tensor, Percentile calibration (ORT's defaults: 99.999, 2048 bins,
symmetric); ``ort_static`` and ``qaudit`` take ``--calibrate-method`` (ORT's
defaults of that method, which are qaudit's).

The last line a contender prints on stdout is ``BENCH_PHASES {json}``: the
seconds of its phases, measured inside the process (the benchmark's own
numbers are measured from outside). ``qaudit`` replaces the process with the
CLI instead; its report's ``meta.seconds`` serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# -- data ------------------------------------------------------------------
def _files(data_dir: Path) -> list[Path]:
    files = sorted(Path(data_dir).glob("*.npy"))
    if not files:
        raise SystemExit(f"no .npy files in {data_dir}")
    return files


def _input_name(model: Path) -> str:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).get_inputs()[0].name


class Batches:
    """The samples of ``data_dir`` in file order, re-cut into batches of ``batch_size``.

    Files are memory-mapped: only the batch being built is in memory. Also
    an ONNX Runtime ``CalibrationDataReader`` (one batch per ``get_next``,
    ``__len__`` and ``set_range`` in batches, as ``CalibStridedMinMax`` needs).
    """

    def __init__(self, data_dir: Path, input_name: str, batch_size: int):
        self.input_name = input_name
        self.arrays = [np.load(f, mmap_mode="r") for f in _files(data_dir)]
        self.n = sum(a.shape[0] for a in self.arrays)
        self.batch_size = batch_size
        self.starts = list(range(0, self.n, batch_size))
        self.set_range(0, len(self.starts))

    def _batch(self, start: int) -> np.ndarray:
        stop = min(start + self.batch_size, self.n)
        parts, offset = [], 0
        for a in self.arrays:
            lo, hi = max(start - offset, 0), min(stop - offset, a.shape[0])
            if lo < hi:
                parts.append(a[lo:hi])
            offset += a.shape[0]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    # CalibrationDataReader protocol
    def set_range(self, start_index: int, end_index: int) -> None:
        self._todo = iter(self.starts[start_index:end_index])

    def get_next(self):
        start = next(self._todo, None)
        return None if start is None else {self.input_name: self._batch(start)}

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        for start in self.starts:
            yield {self.input_name: self._batch(start)}


def _reader(model: Path, data_dir: Path, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(Batches, CalibrationDataReader):
        pass

    return Reader(data_dir, _input_name(model), batch_size)


# -- contenders ------------------------------------------------------------
def fp32(model: Path, data: Path, work: Path, batch_size: int) -> dict:
    """Plain fp32 inference of every sample, default session options."""
    import onnxruntime as ort

    t = time.perf_counter()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    t_load = time.perf_counter() - t
    batches = Batches(data, sess.get_inputs()[0].name, batch_size)
    t = time.perf_counter()
    n = 0
    for feeds in batches:
        sess.run(None, feeds)
        n += next(iter(feeds.values())).shape[0]
    return {"session": t_load, "inference": time.perf_counter() - t, "samples": n}


#: ``--calibrate-method`` -> ORT's CalibrationMethod member
METHODS = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy", "distribution": "Distribution"}


def _quantize(
    model: Path, data: Path, out: Path, batch_size: int, stride: int | None, method: str = "percentile"
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"CalibStridedMinMax": stride} if stride else {}
    quantize_static(
        str(model),
        str(out),
        _reader(model, data, batch_size),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        per_channel=False,
        calibrate_method=getattr(CalibrationMethod, METHODS[method]),
        extra_options=extra,
    )


def ort_percentile(model: Path, data: Path, work: Path, batch_size: int) -> dict:
    """Bare quantize_static, Percentile calibration, ORT's default (all data collected at once)."""
    t = time.perf_counter()
    _quantize(model, data, work / "ort_percentile.onnx", batch_size, None)
    return {"quantize_static": time.perf_counter() - t}


def ort_percentile_strided(model: Path, data: Path, work: Path, batch_size: int, stride: int = 1) -> dict:
    """The same with CalibStridedMinMax = ``stride`` batches: ORT's own memory bound."""
    t = time.perf_counter()
    _quantize(model, data, work / "ort_percentile_strided.onnx", batch_size, stride)
    return {"quantize_static": time.perf_counter() - t, "stride_batches": stride}


def ort_static(model: Path, data: Path, work: Path, batch_size: int, method: str = "percentile") -> dict:
    """Bare quantize_static with ``method`` and ORT's defaults for it, all data collected at once
    (ORT's default): ``ort_percentile`` for any calibration method."""
    t = time.perf_counter()
    _quantize(model, data, work / f"ort_{method}.onnx", batch_size, None, method)
    return {"quantize_static": time.perf_counter() - t, "method": method}


def ort_qdq_loss_debug(model: Path, data: Path, work: Path, batch_size: int) -> dict:
    """ORT's qdq_loss_debug workflow on the model quantized as ``ort_percentile`` does."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    phases = {}
    t = time.perf_counter()
    qdq = work / "qdq_loss_debug_quantized.onnx"
    _quantize(model, data, qdq, batch_size, None)
    phases["quantize_static"] = time.perf_counter() - t

    t = time.perf_counter()
    float_aug, qdq_aug = work / "qdq_loss_debug_float_aug.onnx", work / "qdq_loss_debug_qdq_aug.onnx"
    modify_model_output_intermediate_tensors(str(model), str(float_aug))
    modify_model_output_intermediate_tensors(str(qdq), str(qdq_aug))
    phases["augment"] = time.perf_counter() - t

    t = time.perf_counter()
    float_act = collect_activations(str(float_aug), _reader(model, data, batch_size))
    qdq_act = collect_activations(str(qdq_aug), _reader(model, data, batch_size))
    phases["collect_activations"] = time.perf_counter() - t

    t = time.perf_counter()
    matching = create_activation_matching(qdq_act, float_act)
    errors = compute_activation_error(matching)
    phases["match_and_error"] = time.perf_counter() - t
    phases["tensors"] = len(errors)
    return phases


def qaudit(model: Path, data: Path, work: Path, batch_size: int, method: str | None = None) -> dict:
    """The full audit through the CLI: folding, calibration, quantization, capture with isolated error,
    metrics, JSON + HTML reports.

    The process *becomes* ``python -m qaudit ...`` (``os.execve``: same process id, so the benchmark's
    measurements cover it), with this repository first on ``PYTHONPATH``. Its phases are not printed;
    the benchmark reads ``meta.seconds`` from the JSON report.
    """
    argv = [
        sys.executable,
        "-m",
        "qaudit",
        str(model),
        "--calib",
        str(data),
        "--json",
        str(work / "qaudit.json"),
        "--html",
        str(work / "qaudit.html"),
        "--quiet",
        *(["--batch-size", str(batch_size)] if batch_size else []),
        *(["--calibrate-method", method] if method else []),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


CONTENDERS = {
    "fp32": fp32,
    "ort_percentile": ort_percentile,
    "ort_percentile_strided": ort_percentile_strided,
    "ort_static": ort_static,
    "ort_qdq_loss_debug": ort_qdq_loss_debug,
    "qaudit": qaudit,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run one benchmark contender (see bench_audit.py).")
    ap.add_argument("name", choices=sorted(CONTENDERS))
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path, help="folder of batch_*.npy files")
    ap.add_argument("--work", type=Path, required=True, help="folder for the contender's output files")
    ap.add_argument("--batch-size", type=int, help="samples per batch; default 32, for qaudit its automatic choice")
    ap.add_argument("--calibrate-method", choices=sorted(METHODS), help="ort_static and qaudit: the calibration method")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    bs = args.batch_size if args.batch_size or args.name == "qaudit" else 32
    if args.calibrate_method and args.name not in ("ort_static", "qaudit"):
        ap.error(f"--calibrate-method: {args.name} calibrates with Percentile only")
    method = {"method": args.calibrate_method} if args.calibrate_method else {}
    phases = CONTENDERS[args.name](args.model, args.data, args.work, bs, **method)
    print(f"BENCH_PHASES {json.dumps(phases)}", flush=True)


if __name__ == "__main__":
    main()

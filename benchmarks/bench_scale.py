"""Memory and overhead of a full audit on synthetic models that stress scale.

    python benchmarks/bench_scale.py [--cases audio big chain] [--out results.json]

Three cases, each made by this script (nothing is committed or downloaded) and
each audited in a fresh process, so that peak memories do not mix:

* ``audio``: a 1-D conv net on 16,000-sample inputs with 128 channels
  (0.3 MB of weights, ~100 MB of float activations per sample): memory must
  be bounded by what the activations of the automatic batch cost, not by N.
  Target: peak RSS <= 1 GB (models under 20 MB, automatic batch).
* ``big``: ``MatMul`` with an 8192 x 9600 float weight (315 MB) and a small
  head. Target: peak RSS <= 3 x weight bytes + 1 GB.
* ``chain``: 2,000 nodes (``--chain-nodes``; the issue's 5,000) in a chain (``MatMul`` 16 x 16, ``Add``, ``Relu``
  repeated) on small inputs. Target: qaudit's own share of the wall time
  (outside ONNX Runtime's ``quantize_static``, its sessions' creation and
  their ``run``) < 20 %.

Every figure is a ratio measured in the same run. Peak RSS is the kernel's
high-water mark of the audit's process (``VmHWM`` in ``/proc/self/status``),
read at exit; the per-phase peaks come from a thread sampling ``VmRSS`` every
10 ms. The time split comes from wrapping, inside the audit's process,
``onnxruntime.quantization.quantize_static``, ``InferenceSession.__init__``
and ``InferenceSession.run`` (the union of their intervals over all threads),
next to the report's ``meta.phase_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MB = 1_000_000
GB = 1_000_000_000
CASES = ("audio", "big", "chain")
SMALL_MODEL_BYTES = 20 * MB
TARGET_SMALL_RSS = 1 * GB
TARGET_OWN_SHARE = 0.20


# -- the models ---------------------------------------------------------------
def audio_model(channels: int = 128, blocks: int = 4, length: int = 16000):
    """Conv1d 1 -> C (k=5), then ``blocks`` x (depthwise k=9, pointwise C x C, BatchNorm, Relu), pooling, Gemm."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    c = channels
    nodes.append(
        helper.make_node(
            "Conv",
            ["x", init("w0", rng.normal(0, 0.3, (c, 1, 5))), init("b0", np.zeros(c))],
            ["h0"],
            pads=[2, 2],
            name="conv0",
        )
    )
    x = "h0"
    for i in range(blocks):
        dw = init(f"dw{i}", rng.normal(0, 0.3, (c, 1, 9)))
        nodes.append(helper.make_node("Conv", [x, dw], [f"d{i}"], group=c, pads=[4, 4], name=f"dw{i}"))
        pw = init(f"pw{i}", rng.normal(0, 1 / np.sqrt(c), (c, c, 1)))
        nodes.append(helper.make_node("Conv", [f"d{i}", pw, init(f"pb{i}", np.zeros(c))], [f"p{i}"], name=f"pw{i}"))
        bn = [
            init(f"bn{i}_{k}", v)
            for k, v in (
                ("s", rng.uniform(0.5, 1.5, c)),
                ("b", rng.normal(0, 0.1, c)),
                ("m", rng.normal(0, 0.1, c)),
                ("v", rng.uniform(0.5, 1.5, c)),
            )
        ]
        nodes.append(helper.make_node("BatchNormalization", [f"p{i}", *bn], [f"n{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flat"))
    nodes.append(
        helper.make_node(
            "Gemm",
            ["f", init("wf", rng.normal(0, 0.1, (10, c))), init("bf", np.zeros(10))],
            ["logits"],
            transB=1,
            name="fc",
        )
    )
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
    g = helper.make_graph(
        nodes,
        "audio",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, length])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (1, length)


def big_model(k: int = 8192, n: int = 9600):
    """x[N, k] -> MatMul(k x n, 315 MB) -> Add -> Relu -> MatMul(n x 10) -> Softmax."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n), dtype=np.float32) * np.float32(1 / np.sqrt(k))).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w_big"),
        numpy_helper.from_array(np.zeros(n, np.float32), "b_big"),
        numpy_helper.from_array(rng.normal(0, 0.05, (n, 10)).astype(np.float32), "w_head"),
    ]
    del w
    nodes = [
        helper.make_node("MatMul", ["x", "w_big"], ["mm"], name="big"),
        helper.make_node("Add", ["mm", "b_big"], ["h"], name="bias"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w_head"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"),
    ]
    g = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (k,)


def chain_model(nodes_total: int = 5000, width: int = 16):
    """``nodes_total`` nodes: (MatMul width x width, Add, Relu) repeated, one chain."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    x = "x"
    i = 0
    while len(nodes) < nodes_total:
        w = numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.normal(0, 0.05, width).astype(np.float32), f"b{i}")
        inits += [w, b]
        nodes.append(helper.make_node("MatMul", [x, w.name], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", b.name], [f"a{i}"], name=f"add{i}"))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
        i += 1
    nodes = nodes[:nodes_total]
    last = nodes[-1].output[0]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (width,)


MAKERS = {"audio": audio_model, "big": big_model, "chain": chain_model}
#: samples per case: audio enough for several automatic batches; big and chain a few batches
SAMPLES = {"audio": 32, "big": 64, "chain": 64}


def build_case(case: str, work: Path) -> tuple[Path, Path, int]:
    """Write the model and its calibration data; ``(model path, data dir, weight bytes)``."""
    import numpy as np
    import onnx

    model, sample_shape = MAKERS[case]()
    weight_bytes = sum(
        int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )
    path = work / f"{case}.onnx"
    onnx.save(model, str(path))
    del model
    data = work / f"{case}_calib"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    n, per_file = SAMPLES[case], 16
    for f in range(n // per_file):
        x = rng.standard_normal((per_file, *sample_shape), dtype=np.float32)
        np.save(data / f"batch_{f:03d}.npy", x)
    return path, data, weight_bytes


# -- inside the audit's process --------------------------------------------------
def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Intervals:
    """Wall-time intervals of calls on any thread; :meth:`union` is their covered length."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def wrap(self, fn):
        def wrapped(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with self.lock:
                    self.spans.append((t, time.perf_counter()))

        return wrapped

    def union(self, minus: Intervals | None = None) -> float:
        total, end = 0.0, -1.0
        for a, b in sorted(self.spans):
            if b <= end:
                continue
            total += b - max(a, end)
            end = b
        return total


def child(case: str, model: str, data: str, out: str) -> None:
    """Audit ``model`` on ``data`` with the automatic batch; write the measurements to ``out``."""
    import onnxruntime as ort
    import onnxruntime.quantization as oq

    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sampler():
        while not stop.wait(0.01):
            samples.append((time.perf_counter(), _rss_now()))

    runs, sessions, quant = Intervals(), Intervals(), Intervals()
    ort.InferenceSession.run = runs.wrap(ort.InferenceSession.run)
    ort.InferenceSession.__init__ = sessions.wrap(ort.InferenceSession.__init__)
    oq.quantize_static = quant.wrap(oq.quantize_static)
    import qaudit
    from qaudit.report import to_json

    base = _rss_now()
    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.perf_counter()
    batch = int(os.environ.get("QAUDIT_BENCH_BATCH", "0")) or None  # a fixed batch, to measure memory per sample
    report = qaudit.audit(model, calib=data, batch_size=batch)
    to_json(report)
    wall = time.perf_counter() - t0
    stop.set()
    # phase peaks: the sampled RSS mapped onto the report's phases (laps in order)
    phases, peaks, t = report.meta["phase_seconds"], {}, t0
    bounds = []
    for name, secs in phases.items():
        bounds.append((name, t, t + secs))
        t += secs
    for ts, rss in samples:
        name = next((n for n, a, b in bounds if a <= ts < b), "after")
        peaks[name] = max(peaks.get(name, 0), rss)
    ort_s = {"quantize_static": quant.union(), "session_create": sessions.union(), "session_run": runs.union()}
    both = Intervals()
    both.spans = quant.spans + sessions.spans + runs.spans
    Path(out).write_text(
        json.dumps(
            {
                "case": case,
                "wall_s": wall,
                "report_seconds": report.meta["seconds"],
                "phase_seconds": phases,
                "ort_seconds": ort_s,
                "ort_union_s": both.union(),
                "peak_rss_bytes": _hwm(),
                "rss_after_imports_bytes": base,
                "phase_peak_rss_bytes": peaks,
                "batch_size": report.settings["batch_size"],
                "activation_mb_per_sample": report.settings["activation_mb_per_sample"],
                "rows": len(report.layers),
            }
        )
    )


# -- the benchmark ----------------------------------------------------------------
def run_case(case: str, work: Path) -> dict:
    t = time.perf_counter()
    model, data, weight_bytes = build_case(case, work)
    built = time.perf_counter() - t
    out = work / f"{case}.json"
    env_cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, str(model), str(data), str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    p = subprocess.run(env_cmd, cwd=str(REPO), capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{case}: the audit failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(out.read_text())
    r["weight_bytes"] = weight_bytes
    r["model_file_bytes"] = model.stat().st_size
    r["build_s"] = built
    own = r["wall_s"] - r["ort_union_s"]
    r["own_share"] = own / r["wall_s"]
    if weight_bytes < SMALL_MODEL_BYTES:
        r["rss_bound_bytes"] = TARGET_SMALL_RSS
    else:
        r["rss_bound_bytes"] = 3 * weight_bytes + GB
    r["rss_met"] = r["peak_rss_bytes"] <= r["rss_bound_bytes"]
    r["own_met"] = r["own_share"] < TARGET_OWN_SHARE
    return r


def describe(r: dict) -> str:
    gb = r["peak_rss_bytes"] / GB
    lines = [
        f"{r['case']}: weights {r['weight_bytes'] / MB:,.2f} MB, {r['activation_mb_per_sample']:.1f} MB of activations "
        f"per sample, automatic batch {r['batch_size']}, {r['rows']} rows",
        f"  peak RSS {gb:.2f} GB = {r['peak_rss_bytes'] / r['weight_bytes']:.1f} x weight bytes; bound "
        f"{r['rss_bound_bytes'] / GB:.2f} GB: {'met' if r['rss_met'] else 'NOT met'} "
        f"(peak / bound {r['peak_rss_bytes'] / r['rss_bound_bytes']:.2f}; after imports {r['rss_after_imports_bytes'] / GB:.2f} GB)",
        "  peak RSS by phase: " + ", ".join(f"{k} {v / GB:.2f}" for k, v in r["phase_peak_rss_bytes"].items()) + " GB",
        f"  wall {r['wall_s']:.1f} s: ORT quantize_static {r['ort_seconds']['quantize_static']:.1f} s, session creation "
        f"{r['ort_seconds']['session_create']:.1f} s, session run {r['ort_seconds']['session_run']:.1f} s; qaudit's own "
        f"share {r['own_share'] * 100:.1f} %"
        + (
            f" (target < {TARGET_OWN_SHARE * 100:g} %: {'met' if r['own_met'] else 'NOT met'})"
            if r["case"] == "chain"
            else ""
        ),
        "  phases: " + ", ".join(f"{k} {v:.1f}" for k, v in r["phase_seconds"].items()) + " s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--out", type=Path, help="write the measurements as JSON")
    ap.add_argument("--work", type=Path, help="keep models, data and measurements here (default: a temporary folder)")
    ap.add_argument(
        "--chain-nodes",
        type=int,
        default=2000,
        help="nodes of the chain case (default 2000: ORT's quantize_static is quadratic in them, ~6 min at 5000)",
    )
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if sys.platform != "linux":
        print("warning: peak RSS needs Linux (/proc/self/status)", file=sys.stderr)
    MAKERS["chain"] = lambda: chain_model(args.chain_nodes)
    results = []
    with tempfile.TemporaryDirectory(prefix="qaudit-scale-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in args.cases:
            r = run_case(case, work)
            results.append(r)
            print(describe(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["rss_met"] and (r["case"] != "chain" or r["own_met"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

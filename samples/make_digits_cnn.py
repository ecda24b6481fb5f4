"""Build the ``samples/digits`` sample: a small CNN on scikit-learn's digits.

Trains a Conv-BN-ReLU network on the 1797 real 8x8 images of
``sklearn.datasets.load_digits`` (shipped inside the scikit-learn wheel, no
download), exports it to ONNX with every BatchNormalization kept as its own
node (nothing folded), and writes calibration / evaluation batches as ``.npy``.

Run:  python samples/make_digits_cnn.py   (needs torch==2.13.0, scikit-learn)

Everything is seeded and single-threaded with deterministic algorithms, so a
rerun reproduces the same files.
"""

from __future__ import annotations

import shutil
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
OUT = HERE / "digits"

SEED = 0
N_CALIB = 128
N_EVAL = 400
CALIB_BATCH = 32
EVAL_BATCH = 100
EPOCHS = 40
TRAIN_BATCH = 64
OPSET = 17


def conv_bn_relu(cin: int, cout: int, k: int, *, groups: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(),
        )
    )


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = conv_bn_relu(1, 16, 3)  # conv without bias
        self.block2 = conv_bn_relu(16, 32, 3, bias=True)  # conv with bias
        self.pool = nn.MaxPool2d(2)  # 8x8 -> 4x4
        self.dw = conv_bn_relu(32, 32, 3, groups=32)  # depthwise
        self.pw = conv_bn_relu(32, 32, 1, bias=True)  # pointwise
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc1_bn = nn.BatchNorm1d(64)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = self.pw(self.dw(x))
        x = self.fc1_relu(self.fc1_bn(self.fc1(self.flatten(x))))
        return self.fc2(x)


def load_split():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # NCHW [N,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    x_rest, x_eval, y_rest, y_eval = train_test_split(x, y, test_size=N_EVAL, stratify=y, random_state=SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=N_CALIB, stratify=y_rest, random_state=SEED
    )
    return (x_train, y_train), (x_calib, y_calib), (x_eval, y_eval)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(perm), TRAIN_BATCH):
            idx = perm[i : i + TRAIN_BATCH]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch
                continue
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def export(model: nn.Module, path: Path) -> None:
    # torch 2.13 defaults to the dynamo exporter (needs onnxscript). The legacy
    # TorchScript exporter (dynamo=False) is still there; TrainingMode.PRESERVE
    # on a model in eval mode skips the eval peephole pass that folds BN into
    # Conv, and do_constant_folding=False keeps the graph as written.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )


def write_batches(folder: Path, x: np.ndarray, batch: int) -> None:
    folder.mkdir(parents=True)
    for i in range(0, len(x), batch):
        np.save(folder / f"batch_{i // batch:03d}.npy", np.ascontiguousarray(x[i : i + batch]))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def main() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    (x_train, y_train), (x_calib, y_calib), (x_eval, y_eval) = load_split()
    model = DigitsCNN()
    train(model, x_train, y_train)

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_eval)).numpy()

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    model_path = OUT / "model.onnx"
    export(model, model_path)

    onnx_model = onnx.load(str(model_path))
    onnx.checker.check_model(onnx_model, full_check=True)
    ops = [n.op_type for n in onnx_model.graph.node]
    n_bn = ops.count("BatchNormalization")
    if n_bn != 5:
        raise SystemExit(f"expected 5 BatchNormalization nodes, found {n_bn}: {ops}")

    write_batches(OUT / "calib", x_calib, CALIB_BATCH)
    write_batches(OUT / "eval", x_eval, EVAL_BATCH)
    np.save(OUT / "calib_labels.npy", y_calib)
    np.save(OUT / "eval_labels.npy", y_eval)

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    # Read back exactly as a consumer would: batch files in sorted name order.
    eval_files = sorted((OUT / "eval").glob("*.npy"))
    ort_logits = np.concatenate([sess.run(["logits"], {"input": np.load(f)})[0] for f in eval_files])
    labels = np.load(OUT / "eval_labels.npy")

    torch_acc = accuracy(torch_logits, y_eval)
    ort_acc = accuracy(ort_logits, labels)
    max_diff = float(np.abs(torch_logits - ort_logits).max())
    print(f"train/calib/eval samples: {len(x_train)}/{len(x_calib)}/{len(x_eval)}")
    print(f"fp32 eval accuracy  torch: {torch_acc:.4f}  onnxruntime: {ort_acc:.4f}  (max |logit diff| {max_diff:.2e})")
    print(f"BatchNormalization nodes: {n_bn}")
    print("graph:")
    for node in onnx_model.graph.node:
        print(f"  {node.op_type:20s} {node.name}")
    if torch_acc != ort_acc or max_diff > 1e-3:
        raise SystemExit("torch and onnxruntime disagree")


if __name__ == "__main__":
    main()

"""Build ``samples/compare``: one trained network exported three ways, for ``qaudit compare``.

The network and its trained weights are those of the digits sample
(``samples/digits/model.onnx``, built by ``make_digits_cnn.py``): the weights
are read from that file's initializers, so every export computes the same
function. The exports:

* ``torch_script.onnx``: PyTorch's TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``) with ``TrainingMode.PRESERVE`` and
  no constant folding, as a model exported mid-training: every BatchNormalization
  stays a node, opset 17;
* ``torch_dynamo.onnx``: PyTorch's dynamo exporter (``dynamo=True``, needs
  ``onnxscript``) of the model in eval mode, its default opset;
* ``keras_tf2onnx.onnx``: the same network written in Keras (TensorFlow), NHWC
  layout, the weights transferred (conv kernels to HWIO, the first Dense's rows
  permuted from NCHW to NHWC flattening order), converted by ``tf2onnx``
  (``from_keras``), opset 15. The input is NHWC ``[N, 8, 8, 1]``; no
  BatchNormalization node is left: tf2onnx folds the first BN into its
  (bias-free) conv and writes the others as Mul/Add after their layers.

Run:  python samples/make_compare_exports.py [OUT_DIR]   (needs the ``compare-samples`` extra)

The script checks that the three exports give the torch model's logits on the
digits evaluation data (max |difference| < 1e-4) and prints their graphs'
weighted layers. The calibration and evaluation data are the digits sample's
(NCHW); ``qaudit compare`` feeds the Keras export a transposed copy.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DIGITS = HERE / "digits"
OUT = HERE / "compare"

import torch  # noqa: E402
from make_digits_cnn import DigitsCNN  # noqa: E402

#: BatchNorm epsilon of torch's BatchNorm (Keras' default is 1e-3)
BN_EPS = 1e-5


def trained_weights() -> dict[str, np.ndarray]:
    """The digits sample's trained parameters and BN statistics, by torch state-dict name."""
    model = onnx.load(str(DIGITS / "model.onnx"))
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def torch_model(w: dict[str, np.ndarray]) -> torch.nn.Module:
    m = DigitsCNN()
    state = m.state_dict()
    for k in state:
        if k.endswith("num_batches_tracked"):
            continue
        state[k] = torch.from_numpy(w[k])
    m.load_state_dict(state)
    return m.eval()


def export_torchscript(m: torch.nn.Module, path: Path) -> None:
    # TrainingMode.PRESERVE on the eval-mode model skips the pass that folds BN into Conv
    # (like an export in training mode, without updating the BN statistics while tracing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )


def export_dynamo(m: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m,
            (torch.zeros(2, 1, 8, 8),),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    prog.save(str(path))


def keras_model(w: dict[str, np.ndarray]):
    import keras

    L = keras.layers

    def conv_w(t):  # torch [O, I, kh, kw] -> keras [kh, kw, I, O]
        return t.transpose(2, 3, 1, 0)

    def bn(name, prefix):
        layer = L.BatchNormalization(epsilon=BN_EPS, name=name)
        return layer, [
            w[f"{prefix}.weight"],
            w[f"{prefix}.bias"],
            w[f"{prefix}.running_mean"],
            w[f"{prefix}.running_var"],
        ]

    inp = keras.Input((8, 8, 1), name="input")
    setters = []

    def add(layer, x, weights):
        y = layer(x)
        setters.append((layer, weights))
        return y

    x = add(L.Conv2D(16, 3, padding="same", use_bias=False, name="block1_conv"), inp, [conv_w(w["block1.conv.weight"])])
    b1, b1w = bn("block1_bn", "block1.bn")
    x = L.ReLU(name="block1_relu")(add(b1, x, b1w))
    x = add(
        L.Conv2D(32, 3, padding="same", name="block2_conv"), x, [conv_w(w["block2.conv.weight"]), w["block2.conv.bias"]]
    )
    b2, b2w = bn("block2_bn", "block2.bn")
    x = L.ReLU(name="block2_relu")(add(b2, x, b2w))
    x = L.MaxPooling2D(2, name="pool")(x)
    # depthwise: torch [C, 1, kh, kw] -> keras [kh, kw, C, 1]
    x = add(
        L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv"),
        x,
        [w["dw.conv.weight"].transpose(2, 3, 0, 1)],
    )
    b3, b3w = bn("dw_bn", "dw.bn")
    x = L.ReLU(name="dw_relu")(add(b3, x, b3w))
    x = add(L.Conv2D(32, 1, name="pw_conv"), x, [conv_w(w["pw.conv.weight"]), w["pw.conv.bias"]])
    b4, b4w = bn("pw_bn", "pw.bn")
    x = L.ReLU(name="pw_relu")(add(b4, x, b4w))
    x = L.Flatten(name="flatten")(x)  # NHWC order: (h, w, c)
    # torch fc1 reads the NCHW flattening (c, h, w): permute its input rows to (h, w, c)
    fc1 = w["fc1.weight"].reshape(64, 32, 4, 4).transpose(2, 3, 1, 0).reshape(512, 64)
    x = add(L.Dense(64, name="fc1"), x, [fc1, w["fc1.bias"]])
    b5, b5w = bn("fc1_bn", "fc1_bn")
    x = L.ReLU(name="fc1_relu")(add(b5, x, b5w))
    x = add(L.Dense(10, name="fc2"), x, [w["fc2.weight"].T, w["fc2.bias"]])
    model = keras.Model(inp, x, name="digits_cnn")
    for layer, weights in setters:
        layer.set_weights([np.ascontiguousarray(a, dtype=np.float32) for a in weights])
    return model


def export_keras(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=15)
    onnx.save(proto, str(path))


def eval_data() -> np.ndarray:
    return np.concatenate([np.load(f) for f in sorted((DIGITS / "eval").glob("*.npy"))])


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.shape[-1] == 1 and inp.shape[1] != 1:  # NHWC
        x = x.transpose(0, 2, 3, 1)
    return sess.run(None, {inp.name: np.ascontiguousarray(x)})[0]


def main(out: Path = OUT) -> None:
    import keras
    import tensorflow as tf
    import tf2onnx

    torch.manual_seed(0)
    w = trained_weights()
    m = torch_model(w)
    x = eval_data()
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    out.mkdir(exist_ok=True)
    keras_net = keras_model(w)
    k_out = keras_net(x.transpose(0, 2, 3, 1), training=False).numpy()
    print(f"keras vs torch: max |logit diff| {np.abs(k_out - ref).max():.2e}")
    exports = {
        "torch_script.onnx": lambda p: export_torchscript(m, p),
        "torch_dynamo.onnx": lambda p: export_dynamo(m, p),
        "keras_tf2onnx.onnx": lambda p: export_keras(keras_net, p),
    }
    versions = f"torch {torch.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}"
    print(versions)
    for name, fn in exports.items():
        path = out / name
        fn(path)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        y = run_onnx(path, x)
        diff = float(np.abs(y - ref).max())
        ops = [n.op_type for n in model.graph.node]
        weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        print(
            f"{name}: {path.stat().st_size} bytes, opset {opset}, producer {model.producer_name} {model.producer_version}, "
            f"{len(ops)} nodes ({ops.count('BatchNormalization')} BN, {ops.count('Transpose')} Transpose), "
            f"max |logit diff| vs torch {diff:.2e}"
        )
        print("   weighted:", ", ".join(weighted))
        if diff > 1e-4:
            raise SystemExit(f"{name} does not reproduce the torch model (max |diff| {diff:.3g})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

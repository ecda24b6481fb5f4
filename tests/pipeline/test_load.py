"""Loading: shape-inference variants, dynamic dims written as -1."""

import numpy as np
import onnx
import pytest

import qaudit
from qaudit.pipeline.load import infer_shapes, input_specs, load_model, untyped_outputs

from ..models import contrib_op_model


def test_contrib_op_needs_ort_symbolic_shape_inference(tmp_path):
    model = contrib_op_model()
    assert untyped_outputs(onnx.shape_inference.infer_shapes(model)) == ["g"]  # onnx cannot type Gelu
    inferred, variant, untyped = infer_shapes(model)
    assert variant == "onnxruntime symbolic" and untyped == []
    assert list(tmp_path.iterdir()) == []  # and nothing was written to the working directory


def test_contrib_op_model_is_quantized_after_the_right_inference(tmp_path):
    """Without a type for 'g' (onnx inference only), ORT does not calibrate it: g gets
    no QuantizeLinear and fc2 reads a float input."""
    onnx.save(contrib_op_model(), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    np.save(tmp_path / "calib" / "x.npy", np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    report = qaudit.audit(qaudit.AuditConfig(model=tmp_path / "m.onnx", calib=tmp_path / "calib"))
    assert report.model["shape_inference"] == "onnxruntime symbolic"
    rows = {r.name: r for r in report.layers}
    assert rows["fc2"].has_weights and rows["fc2"].w_sqnr_db is not None
    assert rows["gelu"].quant_tensor is not None  # g got an encoding
    assert not report.unmatched and not report.notes[:-1]


def test_negative_dims_are_dynamic():
    model = contrib_op_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # Paddle2ONNX writes -1
    assert input_specs(model)[0].shape == (None, 8)


def test_sample_uses_plain_onnx_inference():
    from pathlib import Path

    lm = load_model(Path(__file__).resolve().parents[2] / "samples" / "digits" / "model.onnx")
    assert lm.shape_inference == "onnx" and lm.untyped == ()


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_variant_runs(variant):
    from qaudit.pipeline.load import SHAPE_INFERENCE_VARIANTS

    name, run = SHAPE_INFERENCE_VARIANTS[variant]
    assert run(contrib_op_model()).graph.node

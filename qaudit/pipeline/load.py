"""Stage 1: load and check the user's model without ever modifying it.

The model is read once, hashed, checked with ``onnx.checker`` and annotated
with ``onnx.shape_inference``. Everything downstream works on in-memory copies
and on files inside a temporary directory (see :mod:`qaudit.pipeline.audit`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from qaudit.errors import ModelError
from qaudit.pipeline.graph import elem_dtype

#: ONNX Runtime's quantizer needs QuantizeLinear/DequantizeLinear (opset >= 10)
#: and upgrades older default-domain opsets itself only from 10 on (ORT 1.32).
MIN_OPSET = 10

#: Ops of a model quantized at run time (onnxruntime's ``quantize_dynamic``): the
#: activation encodings are computed from each batch (qaudit.pipeline.prequant).
DYNAMIC_QUANT_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QAttention",
    }
)
#: Weight-only quantization (onnxruntime contrib ops): the activations stay float.
WEIGHT_ONLY_QUANT_OPS = frozenset({"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"})
#: Ops that only a quantized model holds: ONNX's QDQ pair and integer ops, and
#: onnxruntime's contrib integer ops (com.microsoft). Any ``QLinear*`` op counts too.
QUANTIZED_OPS = (
    frozenset({"QuantizeLinear", "DequantizeLinear", "QGemm", "QEmbedLayerNormalization", "QOrderedMatMul"})
    | DYNAMIC_QUANT_OPS
    | WEIGHT_ONLY_QUANT_OPS
)


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype and shape (``None`` for a dynamic dim)."""

    name: str
    dtype: object
    shape: tuple
    #: the dim_param of each axis (``None`` where the dim is fixed or unnamed); ``()``: not known
    symbols: tuple = ()

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class LoadedModel:
    path: Path
    model: onnx.ModelProto
    sha256: str
    opset: int
    inputs: list[InputSpec]
    output_names: list[str]
    shape_inference: str = "onnx"  # the variant that typed the graph (see infer_shapes)
    untyped: tuple[str, ...] = ()  # node outputs no variant could type


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input '{vi.name}' is not a tensor; qaudit supports tensor inputs only")
        # Paddle2ONNX writes dynamic dims as dim_value -1; treat any non-positive value as dynamic.
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        symbols = tuple(d.dim_param if d.HasField("dim_param") and d.dim_param else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, elem_dtype(tt.elem_type), dims, symbols))
    return specs


def _all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of its subgraphs (If branches, Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` of the ops that show ``model`` is already quantized, most frequent first."""
    counts: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def check_not_quantized(model: onnx.ModelProto, path: Path | str = "model") -> None:
    """Refuse a model that is already quantized: ORT's quantizer fails on it deep inside
    (``KeyError: '140_scale'``, "Graph is not a DAG", onnxruntime 1.32)."""
    found = quantized_ops(model)
    if found:
        what = ", ".join(f"{n} {op}" for op, n in list(found.items())[:4]) + (", ..." if len(found) > 4 else "")
        raise ModelError(
            f"{path} is already quantized ({what}): pass the fp32 model it was made from as MODEL.onnx, and this "
            f"one with --quantized {path} to audit it as it is"
        )


def load_model(path: str | Path, quantized: bool = False) -> LoadedModel:
    """Read, check and shape-infer ``path``; raise :class:`ModelError` with a fix on failure.

    ``quantized``: the model is the one given with ``--quantized`` (a quantized model is
    then expected, see :mod:`qaudit.pipeline.prequant`)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path} (pass the .onnx file itself)")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty: {path} (re-export the model)")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as e:
        raise ModelError(
            f"{path} is not a valid ONNX file (protobuf decode failed: {e}); "
            "it may be truncated or not an ONNX model - re-export it"
        ) from e
    except FileNotFoundError as e:
        raise ModelError(
            f"{path} refers to external data that is missing ({e.filename or e}); "
            "keep the .onnx file next to its external data files"
        ) from e
    except Exception as e:  # onnx raises assorted types for garbage input
        raise ModelError(f"{path} could not be read as ONNX ({type(e).__name__}: {e}); re-export the model") from e
    if not model.graph.node:
        raise ModelError(f"{path} has no nodes: it is not an ONNX model or the export failed")
    if not quantized:
        check_not_quantized(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        text = " ".join(str(e).split()) or "invalid model"
        if len(text) > 300:
            text = text[:297] + "..."
        raise ModelError(f"{path} fails onnx.checker: {text}; fix the exporter settings and re-export") from e
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(
            f"{path} uses opset {opset}; quantization needs opset >= {MIN_OPSET}: "
            f"convert it with onnx.version_converter.convert_version(model, 13) or re-export"
        )
    model, variant, untyped = infer_shapes(model, path)
    return LoadedModel(
        path=path,
        model=model,
        sha256=_sha256(path),
        opset=opset,
        inputs=input_specs(model),
        output_names=[o.name for o in model.graph.output],
        shape_inference=variant,
        untyped=tuple(untyped),
    )


def untyped_outputs(model: onnx.ModelProto) -> list[str]:
    """Node outputs with no type information after shape inference."""
    typed = {v.name for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    typed |= {t.name for t in model.graph.initializer}
    return [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o and o not in typed]


class ShapesNotInferred(Exception):
    """A shape-inference variant cannot infer this model's shapes; the message says why."""


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _onnx(model):
    try:
        return onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as e:
        raise ShapesNotInferred(_reason(e)) from e


#: What ORT's symbolic shape inference raises on a model it cannot handle
#: (onnxruntime 1.32, ``onnxruntime/tools/symbolic_shape_infer.py``; all but the last
#: two seen on 20,000 random single-node models that pass ``onnx.checker``):
#: ``AssertionError`` from its checks of ranks, dims and attributes, ``TypeError`` and
#: ``IndexError`` from its per-op code on shapes it does not expect, ``ValueError`` for
#: op variants it does not support, ``KeyError`` from its look-up tables, and onnx's
#: ``InferenceError`` from the onnx inference it runs node by node. "Incomplete symbolic
#: shape inference" and "Invalid model with cyclic graph" are a bare ``Exception``.
SYMBOLIC_FAILURES = (AssertionError, ValueError, TypeError, KeyError, IndexError, onnx.shape_inference.InferenceError)


def _ort_symbolic(auto_merge: bool):
    def run(model):
        import os
        import tempfile

        # Not caught: it imports sympy, a dependency of qaudit, so an ImportError here is a
        # broken installation, not a model whose shapes cannot be inferred.
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # On an incomplete inference it saves "sym_shape_infer_temp.onnx" into the
        # current directory (onnxruntime 1.32): run it somewhere harmless.
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="qaudit-shapes-") as tmp:
            os.chdir(tmp)
            try:
                out = SymbolicShapeInference.infer_shapes(model, auto_merge=auto_merge)
            except SYMBOLIC_FAILURES as e:
                raise ShapesNotInferred(_reason(e)) from e
            except Exception as e:
                if type(e) is not Exception:  # a subclass (OSError, AttributeError, ...) is not ORT's verdict
                    raise
                raise ShapesNotInferred(_reason(e)) from e
            finally:
                os.chdir(cwd)
        if out is None:  # it logs "Only support models of onnx opset 7 and above."
            raise ShapesNotInferred("returned no model (it needs opset 7 or later)")
        return out

    return run


#: Tried in order until every node output has a type. ORT's calibrator only
#: calibrates tensors that have a value_info, so an untyped tensor is silently
#: left unquantized (onnxruntime 1.32); onnx's inference cannot type contrib ops
#: (com.microsoft Gelu, FusedMatMul, ...), ORT's symbolic inference can, and its
#: ``auto_merge`` reconciles conflicting symbolic dims found in real exports.
#: A variant raises :class:`ShapesNotInferred` for a model it cannot handle; any
#: other exception is a bug or a broken installation and propagates.
SHAPE_INFERENCE_VARIANTS = (
    ("onnx", _onnx),
    ("onnxruntime symbolic", _ort_symbolic(False)),
    ("onnxruntime symbolic auto_merge", _ort_symbolic(True)),
)


def infer_shapes(model: onnx.ModelProto, path: Path | str = "model") -> tuple[onnx.ModelProto, str, list[str]]:
    """Shape-infer ``model`` with the first variant that types every tensor.

    Returns ``(model, variant name, untyped outputs)``; when no variant types
    everything, the one leaving the fewest untyped tensors wins, and the caller
    reports them.
    """
    best, errors = None, []
    for name, run in SHAPE_INFERENCE_VARIANTS:
        try:
            inferred = run(model)
        except ShapesNotInferred as e:
            errors.append(f"{name}: {e}")
            continue
        untyped = untyped_outputs(inferred)
        if not untyped:
            return inferred, name, []
        if best is None or len(untyped) < len(best[2]):
            best = (inferred, name, untyped)
    if best is None:
        raise ModelError(
            f"shape inference failed on {path} with every variant ({'; '.join(errors)}); re-export the model"
        )
    return best

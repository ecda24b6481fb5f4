"""The runtimes that execute the quantized model (``--runtimes``, docs/runtimes.md).

A quantized ONNX model does not compute the same numbers everywhere: ONNX
Runtime's optimized CPU run uses fused integer kernels, its unoptimized run is
a float simulation of the Q/DQ graph, OpenVINO's CPU plugin rewrites the graph
again. A :class:`Runtime` is what the capture needs from one of them:

* ``name``: as given on the command line (``ort``, ``ort-sim``, ``openvino``,
  ``ort:NAME`` for an ORT execution provider, ``ort-sim:NAME``);
* ``load(model_path, outputs)``: a :class:`Loaded` whose ``run(feeds)`` returns
  every output of the model by name, the graph's own and the intermediate tensors
  ``outputs`` names (``{tensor: ONNX element type}``), exposed without changing what
  the runtime computes where the runtime allows it (the capture checks it: the
  graph outputs must be bit-identical with and without them);
* ``can_expose_intermediates`` and ``reason``: whether intermediate tensors can be
  asked for at all.

Nothing here assumes a CPU: an ORT runtime takes any provider list and session
options; the capture treats every runtime alike.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from qaudit.errors import ConfigError, ModelError

#: the runtimes ``--runtimes`` knows by name (besides ``ort:PROVIDER`` and ``ort-sim:PROVIDER``)
RUNTIME_NAMES = ("ort", "ort-sim", "openvino")
DEFAULT_RUNTIMES = ("ort",)

#: the exact OpenVINO release qaudit is tested with (pyproject.toml's ``openvino`` extra)
OPENVINO_PIP = "pip install 'qaudit[openvino]' (openvino==2026.4.1)"

#: how to get an ORT execution provider that is not installed (each ships in its own onnxruntime wheel)
PROVIDER_PIP = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and a CUDA runtime)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu (and TensorRT)",
    "ROCMExecutionProvider": "install onnxruntime built with ROCm",
    "MIGraphXExecutionProvider": "install onnxruntime built with MIGraphX",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
    "DmlExecutionProvider": "pip install onnxruntime-directml (Windows)",
    "QNNExecutionProvider": "pip install onnxruntime-qnn",
    "CoreMLExecutionProvider": "pip install onnxruntime on macOS",
}

#: GPU providers the tests exercise wherever one is installed (tests/pipeline/test_runtimes.py)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")


@dataclass
class Loaded:
    """A runtime's compiled model: ``run(feeds)`` -> every output by name.

    ``shifted``: exposed int8 tensors that hold ``q + 128`` as uint8 (ORT's CPU
    conversion of int8 Q/DQ pairs, :func:`qaudit.pipeline.capture.expose`);
    ``unexposed``: ``{tensor: reason}`` for the tensors asked for that the runtime
    cannot expose."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    shifted: frozenset[str] = frozenset()
    unexposed: dict[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    name: str
    can_expose_intermediates: bool
    reason: str

    def load(self, model_path: Path, outputs: dict[str, int], what: str = ..., advice: str = ...) -> Loaded: ...

    def describe(self) -> dict: ...


class OrtRuntime:
    """ONNX Runtime with any provider list and session options.

    ``optimize=False`` is the float simulation (``ort-sim``): every graph optimization
    off, so each QuantizeLinear/DequantizeLinear runs as written (what ORT's own
    ``qdq_loss_debug`` measures). ``providers``: tried in order, ORT placing on the
    later ones (the CPU provider) what the first cannot run.
    """

    can_expose_intermediates = True
    reason = ""

    def __init__(
        self,
        name: str = "ort",
        providers: Sequence[str] = ("CPUExecutionProvider",),
        optimize: bool = True,
        threads: int | None = None,
    ):
        self.name, self.providers, self.optimize, self.threads = name, tuple(providers), optimize, threads

    @property
    def converts_int8(self) -> bool:
        """Whether the session rewrites int8 Q -> DQ pairs to uint8 (ORT's CPU provider, optimized, on x86)."""
        from qaudit.pipeline.capture import ort_converts_int8_qdq

        return self.optimize and self.providers[0] == "CPUExecutionProvider" and ort_converts_int8_qdq()

    def load(
        self, model_path: Path, outputs: dict[str, int], what: str = "the quantized model", advice: str = ""
    ) -> Loaded:
        from qaudit.pipeline.capture import expose
        from qaudit.pipeline.session import QUANTIZER_AT_FAULT, load_light, make_session, run_named, save_model

        model_path, shifted = Path(model_path), frozenset()
        if outputs:
            m, shifted = expose(load_light(model_path), outputs, self.converts_int8)
            # beside the model: a big model's external data is referred to relative to its folder
            model_path = save_model(m, model_path.with_name(f"{model_path.stem}.{_slug(self.name)}.onnx"))
            del m
        session = make_session(
            model_path, self.optimize, self.threads, what, advice or QUANTIZER_AT_FAULT, self.providers
        )
        return Loaded(functools.partial(run_named, session), frozenset(shifted))

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "name": self.name,
            "engine": "onnxruntime",
            "version": ort.__version__,
            "device": ",".join(self.providers),
            "optimized": self.optimize,
        }


class OpenVinoRuntime:
    """OpenVINO's CPU plugin reading the same ONNX file (``openvino.Core().read_model``).

    Intermediate tensors are exposed by name with ``Model.add_outputs`` before
    compiling; a name the frontend renamed or fused away cannot be exposed (its
    reason is kept). Inference precision is the plugin's default, as deployed.
    """

    can_expose_intermediates = True
    reason = ""

    def __init__(self, name: str = "openvino", device: str = "CPU", threads: int | None = None):
        self.name, self.device, self.threads = name, device, threads
        self.ov = require_openvino()
        self.version = self.ov.__version__.split("-")[0]

    def load(
        self, model_path: Path, outputs: dict[str, int], what: str = "the quantized model", advice: str = ""
    ) -> Loaded:
        core = self.ov.Core()
        try:
            model = core.read_model(str(model_path))
        except Exception as e:
            raise ModelError(f"OpenVINO {self.version} cannot read {what}: {_ov_message(e)}") from e
        unexposed = {}
        for name in outputs:
            try:
                model.add_outputs(name)
            except Exception as e:
                unexposed[name] = f"OpenVINO cannot expose it ({_ov_message(e)})"
        config = {"INFERENCE_NUM_THREADS": self.threads} if self.threads else {}
        try:
            compiled = core.compile_model(model, self.device, config)
        except Exception as e:
            raise ModelError(f"OpenVINO {self.version} cannot compile {what}: {_ov_message(e)}") from e
        ports = [(o, sorted(o.get_names())) for o in compiled.outputs]
        wanted = [o.name for o in onnx.load(str(model_path), load_external_data=False).graph.output]
        wanted += [n for n in outputs if n not in unexposed]
        request = compiled.create_infer_request()

        def run(feeds):
            try:
                res = request.infer(feeds, share_inputs=False, share_outputs=False)
            except Exception as e:
                raise ModelError(f"OpenVINO cannot run {what} on the data: {_ov_message(e)}") from e
            out = {}
            for port, names in ports:
                for n in names:
                    if n in wanted:
                        out[n] = np.asarray(res[port])
            return out

        return Loaded(run, frozenset(), unexposed)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "engine": "openvino",
            "version": self.version,
            "device": self.device,
            "optimized": True,
        }


def _ov_message(e: Exception) -> str:
    """OpenVINO's exception text without its source locations: its first four informative lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "FrontEnd API failed", "Summary:"))]
    useful = [re.sub(r"^Check '.*' failed at \S+:\s*", "", ln) for ln in useful]
    return "; ".join(ln for ln in useful[:4] if ln) or type(e).__name__


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def require_openvino():
    """The ``openvino`` module, or the one-line error saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(f"--runtimes openvino needs OpenVINO, which is not installed: {OPENVINO_PIP}") from None
    return openvino


def parse(names: Sequence[str], threads: int | None = None) -> tuple[Runtime, ...]:
    """The runtimes ``--runtimes`` names, in order; an unknown name, a repeated one or a provider
    that is not installed is a :class:`ConfigError` saying how to get it."""
    names = [n.strip() if isinstance(n, str) else n for n in names] or list(DEFAULT_RUNTIMES)
    given = [n if isinstance(n, str) else n.name for n in names]
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise ConfigError(f"--runtimes lists {repeated[0]} twice: each runtime is measured once")
    out = []
    for n in names:
        if not isinstance(n, str):  # a Runtime object (Python API)
            out.append(n)
            continue
        base, _, provider = n.partition(":")
        if base in ("ort", "ort-sim"):
            providers = (provider, "CPUExecutionProvider") if provider else ("CPUExecutionProvider",)
            if provider:
                check_provider(provider)
                providers = tuple(dict.fromkeys(providers))
            out.append(OrtRuntime(n, providers, optimize=base == "ort", threads=threads))
        elif n == "openvino":
            out.append(OpenVinoRuntime(n, threads=threads))
        else:
            raise ConfigError(
                f"unknown runtime {n!r} in --runtimes: give ort, ort-sim, openvino or ort:PROVIDER "
                "(an ONNX Runtime execution provider, e.g. ort:CUDAExecutionProvider)"
            )
    return tuple(out)


def check_provider(provider: str) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider in available:
        return
    how = PROVIDER_PIP.get(provider)
    if how is None and not provider.endswith("ExecutionProvider"):
        how = f"execution providers are named like CUDAExecutionProvider; installed here: {', '.join(available)}"
    raise ConfigError(
        f"ONNX Runtime execution provider {provider} is not installed (onnxruntime {ort.__version__} has "
        f"{', '.join(available)}): {how or 'install the onnxruntime build that ships it'}"
    )


def section(captured, report, runtimes: Sequence[Runtime]):
    """The report's ``runtimes`` section from the capture's :class:`~qaudit.pipeline.measure.RuntimeMeter`."""
    from qaudit.report import RuntimeInfo

    why = {o.runtime.name: o for o in captured.runtimes.opened}
    infos = []
    for rt in runtimes:
        o = why.get(rt.name)
        infos.append(
            RuntimeInfo(
                **rt.describe(),
                reason=o.reason if o is not None else None,
                layers_reason=o.layers_reason if o is not None else None,
            )
        )
    return captured.runtimes.result(report.layers, report.outputs, infos)


__all__ = ["Loaded", "OpenVinoRuntime", "OrtRuntime", "Runtime", "parse", "require_openvino", "section"]

"""Calibration and evaluation data: discovery, validation, streaming batches.

Accepted layouts (``--calib`` / ``--eval`` take a directory or a single file):

* ``*.npy``: one sample (the input's shape without the batch axis) or a batch
  (with it) per file; single-input models only.
* ``*.npz``: arrays keyed by input name, one sample or a batch per file; any
  number of inputs.
* ONNX test-data folders, the model-zoo layout: ``test_data_set_*/input_*.pb``
  (TensorProto files; matched to inputs by the tensor's name, else by index).

Files are read in sorted name order, so labels line up with samples in that
order. Axis 0 is the batch axis. Everything is checked against the model's
inputs (names, rank, fixed dims, dtype, finite values) by :meth:`Dataset.scan`
before any model runs; batches are then streamed: ``.npy`` files are memory
mapped and only one batch is held in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qaudit.errors import DataError
from qaudit.pipeline.load import InputSpec

_FINITE_CHUNK = 1 << 22  # elements checked for NaN/Inf at a time


@dataclass(frozen=True)
class _Item:
    """One file (or test-data folder) holding one sample or one batch for every input."""

    path: Path
    kind: str  # "npy" | "npz" | "pb"


def discover(path: Path, what: str) -> list[_Item]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} data not found: {path}")
    if path.is_file():
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("npy", "npz"):
            raise DataError(f"{what} data file {path} is not .npy or .npz")
        return [_Item(path, kind)]
    sets = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("test_data_set_"))
    if sets:
        items = [_Item(p, "pb") for p in sets if any(p.glob("input_*.pb"))]
        if not items:
            raise DataError(f"{what} data {path}: the test_data_set_* folders hold no input_*.pb files")
        return items
    items = [
        _Item(p, p.suffix.lower().lstrip(".")) for p in sorted(path.iterdir()) if p.suffix.lower() in (".npy", ".npz")
    ]
    if not items:
        raise DataError(
            f"{what} data directory {path} is empty: put .npy/.npz files or test_data_set_*/input_*.pb folders in it"
        )
    return items


class Dataset:
    """A validated, streamable set of model feeds."""

    def __init__(self, path: Path, inputs: list[InputSpec], what: str = "calibration"):
        self.path = Path(path)
        self.inputs = inputs
        self.what = what
        self.items = discover(self.path, what)
        self.n_samples = 0
        self._scanned = False

    # -- reading ---------------------------------------------------------
    def _read(self, item: _Item) -> dict[str, np.ndarray]:
        names = [s.name for s in self.inputs]
        try:
            if item.kind == "npy":
                if len(names) != 1:
                    raise DataError(
                        f"{item.path}: .npy files feed single-input models only; this model has inputs "
                        f"{', '.join(names)}: save .npz files keyed by input name"
                    )
                return {names[0]: np.load(item.path, mmap_mode="r", allow_pickle=False)}
            if item.kind == "npz":
                with np.load(item.path, allow_pickle=False) as z:
                    keys = set(z.files)
                    missing = [n for n in names if n not in keys]
                    if missing:
                        raise DataError(
                            f"{item.path} lacks input(s) {', '.join(missing)} (it has {', '.join(sorted(keys)) or 'nothing'}); "
                            f"key the arrays by the model's input names: {', '.join(names)}"
                        )
                    return {n: z[n] for n in names}
            return self._read_pb(item)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {item.path}: {_numpy_load_message(e)}") from e

    def _read_pb(self, item: _Item) -> dict[str, np.ndarray]:
        files = sorted(
            item.path.glob("input_*.pb"),
            key=lambda p: int(p.stem.split("_")[-1]) if p.stem.split("_")[-1].isdigit() else 0,
        )
        names = [s.name for s in self.inputs]
        out: dict[str, np.ndarray] = {}
        for i, f in enumerate(files):
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            name = t.name if t.name in names else (names[i] if i < len(names) else None)
            if name is None:
                raise DataError(f"{f}: more input files than the model has inputs ({len(names)})")
            out[name] = numpy_helper.to_array(t)
        missing = [n for n in names if n not in out]
        if missing:
            raise DataError(f"{item.path} lacks input(s) {', '.join(missing)}")
        return out

    # -- validation ------------------------------------------------------
    def _batched(self, item: _Item, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the batch axis to single samples, and check every input's shape and dtype."""
        out, n = {}, None
        for spec in self.inputs:
            a = arrays[spec.name]
            rank = len(spec.shape)
            if a.ndim == rank - 1:
                a = a[None]
            elif a.ndim != rank:
                raise DataError(
                    f"{item.path}: input '{spec.name}' has shape {tuple(a.shape)}, the model expects "
                    f"{spec.describe()} (one sample without the batch axis, or a batch)"
                )
            for axis, (got, want) in enumerate(zip(a.shape, spec.shape)):
                if axis > 0 and want is not None and got != want:
                    raise DataError(
                        f"{item.path}: input '{spec.name}' has shape {tuple(a.shape)}, the model expects "
                        f"{spec.describe()} (axis {axis} must be {want})"
                    )
            if a.dtype != spec.dtype:
                raise DataError(
                    f"{item.path}: input '{spec.name}' is {a.dtype}, the model expects {spec.dtype}; "
                    f"convert with array.astype(np.{spec.dtype})"
                )
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise DataError(f"{item.path}: inputs have different batch sizes ({n} and {a.shape[0]})")
            out[spec.name] = a
        return out

    def scan(self) -> int:
        """Check every file against the model's inputs; return the number of samples."""
        total = 0
        for item in self.items:
            feeds = self._batched(item, self._read(item))
            for name, a in feeds.items():
                if a.dtype.kind == "f":
                    flat = a.reshape(-1)
                    for start in range(0, flat.size, _FINITE_CHUNK):
                        chunk = np.asarray(flat[start : start + _FINITE_CHUNK])
                        if not np.isfinite(chunk).all():
                            bad = "NaN" if np.isnan(chunk).any() else "Inf"
                            raise DataError(
                                f"{item.path}: input '{name}' contains {bad} values; clean the data "
                                f"(e.g. np.nan_to_num) or drop those samples"
                            )
            total += next(iter(feeds.values())).shape[0]
        if total == 0:
            raise DataError(f"{self.what} data {self.path} holds no samples")
        self.n_samples = total
        self._scanned = True
        return total

    # -- streaming -------------------------------------------------------
    def fixed_batch(self) -> int | None:
        dims = {s.shape[0] for s in self.inputs if s.shape}
        fixed = [d for d in dims if d is not None]
        return fixed[0] if fixed else None

    def count(self, max_samples: int | None) -> int:
        if not self._scanned:
            self.scan()
        return self.n_samples if max_samples is None else min(self.n_samples, max_samples)

    def batches(self, batch_size: int, max_samples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of ``batch_size`` samples (the model's fixed batch size if it has one).

        Samples of consecutive files are concatenated while their shapes agree;
        a change of shape (e.g. sequence length) starts a new batch.
        """
        fixed = self.fixed_batch()
        bs = fixed or batch_size
        limit = self.count(max_samples)
        if fixed and limit % fixed:
            raise DataError(
                f"the model's batch size is fixed at {fixed} but {limit} {self.what} samples are given; "
                f"use a multiple of {fixed} (--max-samples) or export the model with a dynamic batch axis"
            )
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        sent = 0

        def flush():
            nonlocal pending, held
            feeds = {k: np.ascontiguousarray(np.concatenate([p[k] for p in pending])) for k in pending[0]}
            pending, held = [], 0
            return feeds

        for item in self.items:
            feeds = self._batched(item, self._read(item))
            n = next(iter(feeds.values())).shape[0]
            start = 0
            while start < n and sent < limit:
                if pending and any(pending[0][k].shape[1:] != feeds[k].shape[1:] for k in feeds):
                    yield flush()
                take = min(n - start, bs - held, limit - sent)
                pending.append({k: v[start : start + take] for k, v in feeds.items()})
                held += take
                sent += take
                start += take
                if held == bs:
                    yield flush()
            if sent >= limit:
                break
        if pending:
            yield flush()


def _numpy_load_message(e: Exception) -> str:
    """numpy says "contains pickled (object) data, use allow_pickle" for any file that
    is not .npy/.npz; that advice is wrong and unsafe here."""
    if "allow_pickle" in str(e) or "pickle" in str(e).lower():
        return "not a valid .npy/.npz file (or it holds Python objects); save arrays with np.save / np.savez"
    return f"{type(e).__name__}: {e}"


def load_labels(path: Path, n_samples: int, exact: bool = True) -> np.ndarray:
    """Integer class labels, one per evaluation sample (``[N]`` ints or ``[N, K]`` one-hot)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    try:
        y = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(
            f"cannot read labels {path}: {_numpy_load_message(e)}; save them with np.save as an integer array"
        ) from e
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"labels {path} must be a 1-D integer array (or one-hot [N, K]), got {y.dtype}{list(y.shape)}")
    if len(y) < n_samples or (exact and len(y) != n_samples):
        raise DataError(
            f"labels {path} has {len(y)} entries for {n_samples} evaluation samples; give one label per sample"
        )
    return y[:n_samples].astype(np.int64)

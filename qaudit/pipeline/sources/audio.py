"""WAV folders, read with the standard library's ``wave`` (no new dependency).

Every ``*.wav`` of the folder (sorted) is read whole, one file at a time:
PCM 8-bit (unsigned) and 16-, 24-, 32-bit (signed) scaled to [-1, 1) by
2^(bits-1); more than one channel is refused unless the recipe says ``mix=mean``
or ``mix=first``; a file at another rate than ``rate`` is refused unless
``resample=linear`` (linear interpolation, :func:`numpy.interp`: no anti-alias
filter, so downsampling aliases what lies above the new Nyquist frequency; use a
loader script for a better resampler). The signal is cut into frames of
``frame`` samples starting every ``hop`` samples; with ``tail=pad`` the end is
zero-padded so every sample is in a frame, with ``tail=drop`` a partial last
frame is dropped. Each frame is one sample.
"""

from __future__ import annotations

import dataclasses
import functools
import wave
from pathlib import Path

import numpy as np

from qaudit.errors import DataError
from qaudit.pipeline.sources import ahead
from qaudit.pipeline.sources.preprocess import AudioRecipe, audio_recipe

SUFFIXES = (".wav",)


def find(path: Path) -> list[Path] | None:
    """The WAV files of ``path`` (a .wav file or a folder holding only WAV data), or None."""
    if path.is_file():
        return [path] if path.suffix.lower() in SUFFIXES else None
    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    if any(p.suffix.lower() in (".npy", ".npz") for p in entries):
        return None
    wavs = [p for p in entries if p.suffix.lower() in SUFFIXES]
    return wavs or None


def pcm(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM samples as float64 in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float64) / float(1 << 23)
    dt = {2: "<i2", 4: "<i4"}[width]
    return np.frombuffer(raw, dt).astype(np.float64) / float(1 << (8 * width - 1))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """``(samples [n, channels] float64, rate)``."""
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(
            f"{path}: cannot read it as a PCM WAV file ({e}); qaudit reads 8/16/24/32-bit integer PCM (convert "
            "float or compressed WAV with e.g. sox or ffmpeg -c:a pcm_s16le, or use a loader script)"
        ) from None
    if width not in (1, 2, 3, 4):
        raise DataError(f"{path}: {8 * width}-bit samples; qaudit reads 8/16/24/32-bit PCM WAV files")
    if len(raw) < n * ch * width:
        raise DataError(f"{path} is truncated: its header promises {n} frames, it holds {len(raw) // (ch * width)}")
    return pcm(raw, width).reshape(-1, ch), rate


def frames(x: np.ndarray, frame: int, hop: int, tail: str) -> np.ndarray:
    """``[k, frame]`` frames of the 1-D signal ``x`` starting every ``hop`` samples."""
    n = len(x)
    if tail == "pad":
        extra = max(0, -(-(n - frame) // hop)) if n > frame else 0
        x = np.concatenate([x, np.zeros(frame + hop * extra - n, x.dtype)])
    if len(x) < frame:
        return np.zeros((0, frame), x.dtype)
    return np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]


class AudioSource:
    kind = "audio"
    labels = None

    def __init__(self, path: Path, files: list[Path], spec, inputs, what: str):
        if len(inputs) != 1:
            raise DataError(
                f"{what} data is a folder of WAV files, which feeds single-input models; this model has inputs "
                f"{', '.join(s.name for s in inputs)} (a state, a sample rate...): use a loader script "
                "(--calib loader.py:NAME)"
            )
        self.path, self.files, self.what, self.input = path, files, what, inputs[0]
        self.recipe: AudioRecipe = audio_recipe(spec, self.input.shape, self.input.dtype, what)
        self.rate = self.recipe.rate  # the files' rate when none is declared (the first file's)
        self.description = f"{path} ({len(files)} WAV files)"

    def info(self) -> dict:
        prep = {**self.recipe.as_dict(), "rate": self.rate}
        prep["summary"] = dataclasses.replace(self.recipe, rate=self.rate).describe()
        return {"kind": self.kind, "path": str(self.path), "files": len(self.files), "preprocess": prep}

    def _decode(self, p: Path) -> np.ndarray:
        r = self.recipe
        x, rate = read_wav(p)
        if x.shape[1] > 1:
            if r.mix == "refuse":
                raise DataError(
                    f"{p} has {x.shape[1]} channels and the model takes one: give mix=mean or mix=first in --preprocess"
                )
            x = x.mean(axis=1, keepdims=True) if r.mix == "mean" else x[:, :1]
        x = x[:, 0]
        if self.rate is None:
            self.rate = rate
        if rate != self.rate:
            if r.resample == "none":
                raise DataError(
                    f"{p} is at {rate} Hz, the data at {self.rate} Hz: resample the files, or give "
                    f"rate={self.rate},resample=linear in --preprocess"
                )
            n = int(len(x) * self.rate // rate)
            x = np.interp(np.arange(n) * (rate / self.rate), np.arange(len(x)), x)
        f = frames(x, r.frame, r.hop, r.tail)
        if not len(f):
            raise DataError(f"{p} holds {len(x)} samples, fewer than one frame ({r.frame}) with tail=drop")
        f = f.astype(r.dtype)
        return f[:, None, :] if len(self.input.shape) == 3 else np.ascontiguousarray(f)

    def read(self, dataset):
        for p, x in zip(self.files, ahead(functools.partial(self._decode, p) for p in self.files)):
            yield str(p), {self.input.name: x}

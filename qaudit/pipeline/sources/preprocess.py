"""The declared preprocessing of image and audio folders: presets, keys, and their defaults.

Pure Python (no Pillow): the settings table parses ``--preprocess`` and the
``[preprocess]`` table with :func:`parse` and :func:`check_table`; the image and
audio sources complete the declaration from the model's input with
:func:`image_recipe` and :func:`audio_recipe`. What a recipe's ``as_dict()``
returns is what the report records as ``data.preprocess`` (docs/data.md).

The compact syntax is ``PRESET[,KEY=VALUE...]`` or ``KEY=VALUE[,KEY=VALUE...]``;
several numbers in one value are separated by ``/`` (``mean=0.5/0.5/0.5``), a
size is ``HxW`` or one number for a square.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass

from qaudit.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Every preset: the keys it sets (any key given beside it wins).
PRESETS: dict[str, dict] = {
    # torchvision's ImageNet evaluation transform: short side to 256, centre crop 224 (or the
    # model's size, the short side scaled by 256/224), RGB, x/255, ImageNet mean and std
    "imagenet": {"resize": "crop", "crop_ratio": 224 / 256, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "unit": {"mean": (0.0,), "std": (1.0,)},  # [0, 1]
    "signed": {"mean": (0.5,), "std": (0.5,)},  # [-1, 1]
    "raw": {"scale": 1.0, "mean": (0.0,), "std": (1.0,)},  # pixel values 0..255 as floats
}
RESIZE_MODES = ("stretch", "crop", "letterbox", "none")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CHANNELS = ("rgb", "bgr", "gray")
LAYOUTS = ("nchw", "nhwc")
MIXES = ("refuse", "mean", "first")
TAILS = ("pad", "drop")
RESAMPLES = ("none", "linear")

#: key -> (kind, help); kind: int, float, floats, size, or a tuple of choices
IMAGE_KEYS: dict[str, tuple] = {
    "size": ("size", "the tensor's height and width, HxW or N (default: the model's fixed size)"),
    "resize": (RESIZE_MODES, "stretch to size (default), crop (short side, then centre crop), letterbox, none"),
    "short_side": ("int", "crop: the short side before the centre crop (default: imagenet 256/224 of the size)"),
    "interpolation": (INTERPOLATIONS, "Pillow's resampling filter (default bilinear)"),
    "pad": ("int", "letterbox: the fill value of the border, 0..255 (default 0)"),
    "channels": (CHANNELS, "channel order rgb or bgr, or gray (default: gray for 1 channel, else rgb)"),
    "scale": ("float", "pixel values 0..255 are multiplied by it first (default 1/255)"),
    "mean": ("floats", "subtracted after scaling, one value or one per channel (default 0)"),
    "std": ("floats", "divided by after subtracting the mean (default 1)"),
    "layout": (LAYOUTS, "nchw or nhwc (default: from the model's input shape, else nchw)"),
}
AUDIO_KEYS: dict[str, tuple] = {
    "rate": ("int", "the sample rate the model expects, Hz (default: the files' rate, one for all)"),
    "resample": (RESAMPLES, "none (a file at another rate is an error) or linear (linear interpolation)"),
    "mix": (MIXES, "stereo and more: refuse (default), mean of the channels, or the first channel"),
    "frame": ("int", "samples per frame (default: the model's fixed input length)"),
    "hop": ("int", "samples between frame starts (default: the frame length, no overlap)"),
    "tail": (TAILS, "the last partial frame: pad with zeros (default) or drop"),
}
KEYS = {**IMAGE_KEYS, **AUDIO_KEYS}


def help_text() -> str:
    """The presets and keys, for ``--help``."""
    return (
        "the preprocessing of an image or WAV folder: PRESET[,KEY=VALUE...] with presets "
        + ", ".join(PRESETS)
        + "; image keys "
        + ", ".join(IMAGE_KEYS)
        + "; audio keys "
        + ", ".join(AUDIO_KEYS)
        + " (several numbers: 0.5/0.5/0.5; a size: 48x192); docs/data.md"
    )


def _number(key: str, text: str, kind: str, where: str):
    try:
        v = int(text) if kind == "int" else float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise ConfigError(
            f"preprocess {where}: {key} must be {'an integer' if kind == 'int' else 'a finite number'}, not {text!r}"
        )
    return v


def _value(key: str, value, where: str):
    """One key's value, checked; from a string (the command line) or a TOML value."""
    kind = KEYS[key][0]
    if isinstance(kind, tuple):
        if value not in kind:
            raise ConfigError(f"preprocess {where}: {key} must be one of {', '.join(kind)}, not {value!r}")
        return value
    if kind in ("int", "float"):
        if isinstance(value, str):
            value = _number(key, value.strip(), kind, where)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind == "int" and isinstance(value, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"preprocess {where}: {key} must be a number, not {value!r}")
        if key == "scale" and not value > 0 or key in ("short_side", "frame", "hop", "rate") and value < 1:
            raise ConfigError(f"preprocess {where}: {key} must be positive, not {value!r}")
        if key == "pad" and not 0 <= value <= 255:
            raise ConfigError(f"preprocess {where}: pad must be in 0..255, not {value!r}")
        return float(value) if kind == "float" else int(value)
    if kind == "floats":
        items = value.split("/") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
        out = tuple(_number(key, str(x).strip(), "float", where) for x in items)
        if len(out) not in (1, 3) or (key == "std" and any(v == 0 for v in out)):
            raise ConfigError(
                f"preprocess {where}: {key} must be one number or three (one per channel), non-zero "
                f"for std, not {value!r}"
            )
        return out
    # size
    items = (
        value.lower().split("x") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    )
    try:
        dims = tuple(int(str(x).strip()) for x in items)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise ConfigError(f"preprocess {where}: size must be HxW (e.g. 48x192) or one number, not {value!r}")
    return dims


def _key(key: str, where: str) -> str:
    if key not in KEYS:
        close = difflib.get_close_matches(key, [*KEYS, "preset"], n=1)
        raise ConfigError(
            f"preprocess {where}: unknown key '{key}'"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + f"; the keys: preset, {', '.join(KEYS)}"
        )
    return key


def _preset(name, where: str) -> str:
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        raise ConfigError(
            f"preprocess {where}: unknown preset {name!r}"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + f"; the presets: {', '.join(PRESETS)}, or give keys such as size=224,mean=0.5,std=0.5"
        )
    return name


def parse(text: str, where: str) -> dict:
    """``"imagenet,size=320"`` -> ``{"preset": "imagenet", "size": (320, 320)}``."""
    out: dict = {}
    for i, part in enumerate(p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            if i or "preset" in out:
                raise ConfigError(f"preprocess {where}: '{part}' is not KEY=VALUE (a preset comes first)")
            out["preset"] = _preset(part, where)
            continue
        key = _key(key.strip(), where)
        out[key] = _value(key, value.strip(), where)
    if not out:
        raise ConfigError(f"preprocess {where} is empty: give a preset ({', '.join(PRESETS)}) or KEY=VALUE items")
    return out


def check_table(table, where: str) -> dict:
    """The ``[preprocess]`` table of a config file (or a string in the compact syntax)."""
    if isinstance(table, str):
        return parse(table, where)
    if not isinstance(table, dict):
        raise ConfigError(f"preprocess {where} must be a preset name, a compact string or a table")
    out = {}
    for k, v in table.items():
        out[k] = _preset(v, where) if k == "preset" else _value(_key(k, where), v, where)
    return out


def keys_of(used: dict) -> dict:
    """The ``preprocess`` table that reproduces ``used`` (a report's ``data.preprocess``: an
    :class:`ImageRecipe`'s or :class:`AudioRecipe`'s ``as_dict``), every key explicit (what a
    preset or the model's shape gave included) and the preset kept for the reader: what
    ``qaudit fix --recipe`` writes."""
    if used.get("kind") == "audio":
        return {k: used[k] for k in AUDIO_KEYS if used.get(k) is not None}
    out = {"preset": used["preset"]} if used.get("preset") else {}
    if None not in used["size"]:
        out["size"] = list(used["size"])
    out["resize"] = used["resize"]
    if used["resize"] == "crop":
        out["short_side"] = used["short_side"]
    out.update({k: used[k] for k in ("interpolation", "pad", "channels", "scale", "mean", "std", "layout")})
    return out


def _kind_keys(spec: dict, keys: dict, kind: str, what: str) -> None:
    other = [k for k in spec if k != "preset" and k not in keys]
    if other:
        raise DataError(
            f"{what} data is {kind}, but --preprocess gives {', '.join(other)}, which {kind} do not take; "
            f"the {kind} keys: {', '.join(keys)}"
        )


@dataclass(frozen=True)
class ImageRecipe:
    """Everything an image becomes a tensor by (docs/data.md#images): resize, channels, then
    ``(pixel * scale - mean) / std`` in float32, in ``layout``."""

    preset: str | None
    size: tuple  # (H, W); (None, None) with resize "none" on a dynamic input: every image as it is
    resize: str
    short_side: int | None
    interpolation: str
    pad: int
    channels: str
    scale: float
    mean: tuple
    std: tuple
    layout: str
    dtype: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)  # None: as the images are
        return {"kind": "images", **d, "summary": self.describe()}

    def describe(self) -> str:
        h, w = ("?" if d is None else d for d in self.size)
        how = {
            "stretch": f"resized to {h}x{w}",
            "crop": f"short side to {self.short_side}, centre crop {h}x{w}",
            "letterbox": f"letterboxed into {h}x{w} (fill {self.pad})",
            "none": f"not resized ({h}x{w})",
        }[self.resize]
        nums = "/".join(f"{v:g}" for v in self.mean), "/".join(f"{v:g}" for v in self.std)
        return (
            (f"{self.preset}: " if self.preset else "")
            + f"{how} ({self.interpolation}), {self.channels.upper()}, (x * {self.scale:.6g} - {nums[0]}) / {nums[1]}, "
            f"{self.layout.upper()} {self.dtype}"
        )


def image_recipe(spec: dict | None, shape: tuple, dtype, what: str) -> ImageRecipe:
    """The recipe of ``spec`` for an input of ``shape`` (rank 4, ``None`` for dynamic dims)."""
    if not spec:
        raise DataError(
            f"{what} data is a folder of images, and how they become tensors must be declared: give --preprocess "
            f"PRESET ({', '.join(PRESETS)}) and keys, e.g. --preprocess imagenet or --preprocess signed,size=48x192 "
            "(docs/data.md)"
        )
    _kind_keys(spec, IMAGE_KEYS, "images", what)
    s = {**PRESETS.get(spec.get("preset"), {}), **spec}
    if len(shape) != 4:
        raise DataError(
            f"{what} data is a folder of images, but the model's input has rank {len(shape)}, not 4 (N, C, H, W or "
            "N, H, W, C); feed it with a loader script (--calib loader.py:NAME)"
        )
    layout = s.get("layout")
    if layout is None:
        layout = "nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw"
    c_ax, h_ax = (1, 2) if layout == "nchw" else (3, 1)
    channels_dim = shape[c_ax]
    channels = s.get("channels") or ("gray" if channels_dim == 1 else "rgb")
    want = 1 if channels == "gray" else 3
    if channels_dim is not None and channels_dim != want:
        raise DataError(
            f"{what} data: --preprocess gives channels={channels} ({want} channel{'s' * (want > 1)}), but the model's "
            f"input has {channels_dim} on its channel axis ({layout.upper()}); set channels (rgb, bgr, gray) or layout"
        )
    model_size = (shape[h_ax], shape[h_ax + 1])
    size = s.get("size")
    resize = s.get("resize", "stretch")
    if size is None and resize == "none" and None in model_size:
        size = model_size  # fed as they are: every image the same size (the fixed dims checked)
    elif size is None:
        if None in model_size:
            raise DataError(
                f"{what} data: the model's input has no fixed height and width ({layout.upper()} "
                f"{['?' if d is None else d for d in shape]}): give size=HxW in --preprocess, e.g. --preprocess "
                f"{spec.get('preset', 'unit')},size=224x224"
            )
        size = model_size
    for got, fixed, name in zip(size, model_size, ("height", "width")):
        if fixed is not None and got is not None and got != fixed:
            raise DataError(
                f"{what} data: --preprocess size={size[0]}x{size[1]}, but the model fixes the {name} at {fixed}"
            )
    short = s.get("short_side")
    if resize == "crop":
        short = short or round(max(size) / s.get("crop_ratio", 1.0))  # imagenet: 224 -> 256
        if short < max(size):
            raise DataError(f"{what} data: short_side={short} is smaller than the crop {size[0]}x{size[1]}")
    elif short is not None:
        raise DataError(f"{what} data: short_side applies only to resize=crop (given resize={resize})")
    kind = str(dtype)
    if kind not in ("float32", "float16", "float64", "uint8"):
        raise DataError(f"{what} data: image folders feed float or uint8 inputs; the model's input is {kind}")
    scale = s.get("scale", 1 / 255)
    mean, std = s.get("mean", (0.0,)), s.get("std", (1.0,))
    if kind == "uint8" and (scale, mean, std) != (1.0, (0.0,), (1.0,)):
        raise DataError(f"{what} data: the model's input is uint8, so pixels are fed as they are: use --preprocess raw")
    if want == 1 and (len(mean) == 3 or len(std) == 3):
        raise DataError(f"{what} data: channels=gray takes one mean and one std, not three")
    return ImageRecipe(
        spec.get("preset"), tuple(size), resize, short, s.get("interpolation", "bilinear"), s.get("pad", 0),
        channels, float(scale), tuple(mean), tuple(std), layout, kind,
    )  # fmt: skip


@dataclass(frozen=True)
class AudioRecipe:
    """How WAV files become frames (docs/data.md#audio): PCM scaled to [-1, 1), channels mixed as
    declared, resampled only if asked, cut into frames of ``frame`` samples every ``hop``."""

    rate: int | None
    resample: str
    mix: str
    frame: int
    hop: int
    tail: str
    dtype: str

    def as_dict(self) -> dict:
        return {"kind": "audio", **asdict(self), "summary": self.describe()}

    def describe(self) -> str:
        rate = f"{self.rate} Hz" if self.rate else "the files' rate"
        return (
            f"WAV at {rate} (resample {self.resample}), channels: {self.mix}, frames of {self.frame} every {self.hop} "
            f"samples, last partial frame: {self.tail}, {self.dtype}"
        )


def audio_recipe(spec: dict | None, shape: tuple, dtype, what: str) -> AudioRecipe:
    """The recipe for an input ``[N, L]`` or ``[N, 1, L]`` (``L`` fixed, or ``frame`` given)."""
    spec = dict(spec or {})
    if spec.get("preset"):
        raise DataError(f"{what} data is a folder of WAV files: the presets are for images; give audio keys only")
    _kind_keys(spec, AUDIO_KEYS, "WAV files", what)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[1] in (1, None))):
        raise DataError(
            f"{what} data is a folder of WAV files, but the model's input is {['?' if d is None else d for d in shape]}"
            " (qaudit frames audio for [N, L] or [N, 1, L] inputs); feed it with a loader script (--calib loader.py:NAME)"
        )
    frame = spec.get("frame") or shape[-1]
    if frame is None:
        raise DataError(f"{what} data: the model's input length is not fixed: give frame=SAMPLES in --preprocess")
    if shape[-1] is not None and frame != shape[-1]:
        raise DataError(f"{what} data: frame={frame}, but the model fixes the input length at {shape[-1]}")
    if str(dtype) not in ("float32", "float16", "float64"):
        raise DataError(f"{what} data: WAV folders feed float inputs; the model's input is {dtype}")
    if spec.get("resample", "none") != "none" and not spec.get("rate"):
        raise DataError(f"{what} data: resample={spec['resample']} needs the target rate: give rate=HZ")
    return AudioRecipe(
        spec.get("rate"), spec.get("resample", "none"), spec.get("mix", "refuse"), int(frame),
        int(spec.get("hop") or frame), spec.get("tail", "pad"), str(dtype),
    )  # fmt: skip

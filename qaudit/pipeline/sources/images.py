"""Image folders (PNG, JPEG, BMP, WebP, decoded by Pillow: the ``images`` extra).

``DIR/*.png`` feeds one image per sample; ``DIR/CLASS/*.jpg`` (class subfolders)
also gives each sample its label: the class order comes from a class-names file
(one name per line) or is the sorted folder names. Samples are read class by
class, each folder's files in sorted name order. Each image becomes a tensor by
the declared :class:`~qaudit.pipeline.sources.preprocess.ImageRecipe`; nothing
is decoded before the batches reach it (:func:`qaudit.pipeline.sources.ahead`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from qaudit.errors import DataError
from qaudit.pipeline.sources import ahead
from qaudit.pipeline.sources.preprocess import ImageRecipe, image_recipe

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Pillow modes read as 8-bit gray or colour (alpha is dropped, a palette is expanded)
_MAPPABLE = {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA"}


def is_image(p: Path) -> bool:
    return p.suffix.lower() in SUFFIXES


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _pillow(what: str):
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise DataError(
            f'{what} data is a folder of images, which needs Pillow: pip install "qaudit[images]"'
        ) from None
    return Image


def find(path: Path, what: str, class_names=None) -> tuple[list[Path], list[int] | None, list[str] | None] | None:
    """``(files, labels, class names)`` when ``path`` is an image file, a folder of images or a
    folder of class subfolders of images; None when it is none of them."""
    if path.is_file():
        return ([path], None, None) if is_image(path) else None
    entries = sorted(p for p in path.iterdir() if _visible(p))
    if any(p.suffix.lower() in (".npy", ".npz") or p.name.startswith("test_data_set_") for p in entries):
        return None
    images = [p for p in entries if p.is_file() and is_image(p)]
    folders = [p for p in entries if p.is_dir()]
    if images and not folders:
        if class_names is not None:
            raise DataError(f"--class-names is given, but {what} data {path} has no class subfolders")
        return images, None, None
    if not folders or not any(is_image(f) for d in folders for f in d.iterdir()):
        return None
    if images:
        raise DataError(
            f"{what} data {path} holds images ({images[0].name}) beside subfolders ({folders[0].name}): put every "
            "image in a class subfolder, or the images alone in a folder"
        )
    names = read_class_names(class_names) if class_names is not None else [d.name for d in folders]
    index = {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for d in folders:
        if d.name not in index:
            raise DataError(f"{what} data: class folder '{d.name}' of {path} is not in the class names {class_names}")
        found = sorted(p for p in d.iterdir() if _visible(p) and p.is_file() and is_image(p))
        if not found:
            raise DataError(
                f"{what} data: class folder {d} holds no images ({', '.join(SUFFIXES)}); remove it or fill it"
            )
        files += found
        labels += [index[d.name]] * len(found)
    return files, labels, names


def read_class_names(spec) -> list[str]:
    """Class names, one per line (blank lines skipped), from a file or (Python API) a list."""
    if isinstance(spec, (list, tuple)):
        names = [str(n) for n in spec]
        where = "class_names"
    else:
        where = f"class-names file {spec}"
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"class-names file not found: {spec}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the class-names file {spec}: {e}; write one UTF-8 name per line") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{where} holds no class names: write one name per line")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{where} names class '{twice[0]}' twice: each class once, in the model's order")
    return names


_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # Image.Resampling


def decode(path: Path, r: ImageRecipe, what: str) -> np.ndarray:
    """One image as the recipe's tensor without the batch axis ([C, H, W] or [H, W, C])."""
    Image = _pillow(what)
    try:
        with Image.open(path) as im:
            # Pillow opens a 16-bit RGB(A) PNG as mode RGB, keeping the high byte of each sample
            # (Pillow 13.0); its decoder's raw mode still says 16 bits
            deep = any(";16" in str(getattr(t, "args", "")) for t in im.tile)
            im.load()  # a truncated file fails here, not half-read
            mode = f"{im.mode};16" if deep and ";16" not in im.mode else im.mode
            if mode not in _MAPPABLE:
                raise DataError(
                    f"{path}: image mode {mode} ({_mode_name(mode)}) cannot be mapped to 8-bit "
                    f"{'gray' if r.channels == 'gray' else 'RGB'}; convert the file to 8-bit RGB or gray, or feed "
                    "it with a loader script"
                )
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
            im = im.convert("L" if r.channels == "gray" else "RGB")
            im = _resized(im, r, path)
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{path}: cannot decode the image ({type(e).__name__}: {e}); replace or remove it") from None
    a = np.asarray(im, dtype=np.uint8)
    if r.channels == "bgr":
        a = a[:, :, ::-1]
    if a.ndim == 2:
        a = a[:, :, None]
    if r.dtype == "uint8":
        x = np.ascontiguousarray(a)
    else:
        x = a.astype(np.float32)
        x *= np.float32(r.scale)
        x -= np.asarray(r.mean, np.float32)
        x /= np.asarray(r.std, np.float32)
        x = x.astype(r.dtype, copy=False)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if r.layout == "nchw" else x)


def _mode_name(mode: str) -> str:
    if mode.endswith(";16") and mode[:-3] in _MAPPABLE:
        return "16 bits per sample"
    return {"CMYK": "print colours", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer",
            "F": "32-bit float", "YCbCr": "video colours", "LAB": "L*a*b*", "HSV": "hue/saturation"}.get(mode, "unmapped")  # fmt: skip


def _resized(im, r: ImageRecipe, path: Path):
    h, w = r.size
    f = _FILTERS[r.interpolation]
    if r.resize == "none":
        if (h is not None and im.height != h) or (w is not None and im.width != w):
            raise DataError(
                f"{path} is {im.height}x{im.width} (HxW), but the model takes {h}x{w} and --preprocess has resize=none: "
                "set resize=stretch, crop or letterbox"
            )
        return im
    if r.resize == "stretch":
        return im.resize((w, h), f)
    if r.resize == "crop":  # torchvision's Resize(short_side) + CenterCrop(size)
        k = r.short_side / min(im.width, im.height)
        nw, nh = (r.short_side, max(r.short_side, round(im.height * k))) if im.width <= im.height else (
            max(r.short_side, round(im.width * k)), r.short_side)  # fmt: skip
        im = im.resize((nw, nh), f)
        left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))
        return im.crop((left, top, left + w, top + h))
    k = min(w / im.width, h / im.height)  # letterbox: fit inside, centred, the border filled with pad
    nw, nh = max(1, round(im.width * k)), max(1, round(im.height * k))
    from PIL import Image

    canvas = Image.new(im.mode, (w, h), (r.pad,) * 3 if im.mode == "RGB" else r.pad)
    canvas.paste(im.resize((nw, nh), f), ((w - nw) // 2, (h - nh) // 2))
    return canvas


class ImageSource:
    """A folder of images (or one image file), with labels when it holds class subfolders."""

    kind = "images"

    def __init__(self, path: Path, found, spec, inputs, what: str):
        self.path, self.what = path, what
        self.files, labels, self.class_names = found
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        if len(inputs) != 1:
            raise DataError(
                f"{what} data is a folder of images, which feeds single-input models; this model has inputs "
                f"{', '.join(s.name for s in inputs)}: use a loader script (--calib loader.py:NAME)"
            )
        self.input = inputs[0]
        _pillow(what)
        self.recipe = image_recipe(spec, self.input.shape, self.input.dtype, what)
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        self.description = f"{path} ({len(self.files)} images{classes})"

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "files": len(self.files),
            "preprocess": self.recipe.as_dict(),
            **({"class_names": list(self.class_names)} if self.class_names else {}),
        }

    def read(self, dataset) -> object:
        first = None
        jobs = (functools.partial(decode, p, self.recipe, self.what) for p in self.files)
        for p, x in zip(self.files, ahead(jobs)):
            if first is None:
                first = (p, x.shape)
            elif x.shape != first[1]:  # resize=none on a dynamic input: one size for all
                raise DataError(
                    f"{p} is {_hw(x.shape, self.recipe)} but {first[0]} is {_hw(first[1], self.recipe)} (HxW), and "
                    "--preprocess has resize=none: give size=HxW with resize=stretch, crop or letterbox"
                )
            yield str(p), {self.input.name: x}


def _hw(shape, r: ImageRecipe) -> str:
    h, w = shape[1:] if r.layout == "nchw" else shape[:2]
    return f"{h}x{w}"

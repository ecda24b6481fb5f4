"""Image folders, WAV folders and loader scripts from the command line: the README's quick start,
and every bad input of issue 17 item 6 as exit 2, one stderr line, no file written."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from ..pipeline.test_sources import LOADER, by_hand, classifier, framer, photos
from .test_bad_input import assert_user_error, snapshot

try:  # not pytest.importorskip at import time: the bare run collects this module and leaves its tests out
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None
# Pillow: the test and images extras (with CI set, the skip is a failure: tests/conftest.py)
pytestmark = [pytest.mark.extra, pytest.mark.skipif(Image is None, reason="could not import 'PIL'")]


def png16(a) -> bytes:
    """A 16-bit RGB PNG (colour type 2, bit depth 16) of the big-endian array ``a`` [H, W, 3]."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture()
def model(tmp_path):
    return classifier(tmp_path / "m.onnx", hw=(32, 32))


def run_refused(run_cli, tmp_path, *args, needles=()):
    before = snapshot(tmp_path)
    proc = run_cli(*args, "--json", tmp_path / "out.json", "--output-model", tmp_path / "q.onnx")
    line = assert_user_error(proc, *needles)
    assert snapshot(tmp_path) == before, "a file was written or changed"
    return line


def test_readme_quick_start_image_folder_and_loader(run_cli, tmp_path, model):
    """`qaudit model.onnx --calib photos/ --preprocess imagenet` and `--calib loader.py:load_data`."""
    photos(tmp_path / "photos" / "cat", n=3, seed=1, sizes=((40, 60), (50, 45)))
    photos(tmp_path / "photos" / "dog", n=3, seed=2, sizes=((40, 60), (50, 45)))
    proc = run_cli(model, "--calib", tmp_path / "photos", "--preprocess", "imagenet", "--json", tmp_path / "a.json")
    assert proc.returncode == 0, proc.stderr
    assert "classes cat=0, dog=1" in proc.stdout and "preprocess imagenet: short side to 37" in proc.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    assert (
        a["data"]["labels"] == f"class subfolders of {tmp_path / 'photos'}" and a["outputs"][0]["acc_fp32"] is not None
    )
    (tmp_path / "npy").mkdir()
    for i, p in enumerate(sorted((tmp_path / "photos").glob("*/*"))):
        np.save(tmp_path / "npy" / f"{i:02d}.npy", by_hand(p, (32, 32)))
    (tmp_path / "loader.py").write_text(LOADER + "\nload_data = reader\n")
    proc = run_cli(model, "--calib", f"{tmp_path / 'loader.py'}:load_data", "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["data"]["calib"] == f"{tmp_path / 'loader.py'}:load_data"
    assert b["data"]["sources"]["calib"]["loader"]["returns"] == "CalibrationDataReader Reader"


def test_help_lists_presets_and_keys(run_cli):
    out = run_cli("--help").stdout
    for word in ("imagenet", "unit", "signed", "raw", "short_side", "layout", "hop", "--class-names"):
        assert word in out, word


def test_config_table(run_cli, tmp_path, model):
    photos(tmp_path / "imgs", n=2)
    (tmp_path / "qaudit.toml").write_text(
        'model = "m.onnx"\ncalib = "imgs"\njson = "r.json"\n[preprocess]\npreset = "signed"\nsize = [32, 32]\n'
    )
    proc = run_cli("--config", tmp_path / "qaudit.toml")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["data"]["preprocess"]["preset"] == "signed" and r["data"]["preprocess"]["mean"] == [0.5]
    # a loader script in the config file, relative to the file (the run's directory is elsewhere)
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "0.npy", np.zeros((3, 32, 32), np.float32) + 0.5)
    (tmp_path / "loader.py").write_text(LOADER)
    (tmp_path / "qaudit.toml").write_text('model = "m.onnx"\ncalib = "loader.py:generator"\njson = "r.json"\n')
    proc = run_cli("--config", tmp_path / "qaudit.toml")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["data"]["calib"] == f"{tmp_path / 'loader.py'}:generator" and r["data"]["n_calib"] == 1


def _one(tmp_path, name, make):
    d = tmp_path / "data"
    d.mkdir()
    make(d)
    return d


@pytest.mark.parametrize(
    "case,needles",
    [
        ("truncated", ("cut.png", "cannot decode")),
        ("not-an-image", ("junk.jpg", "cannot decode")),
        ("cmyk", ("cmyk.jpg", "mode CMYK")),
        ("16-bit", ("deep.png", "I;16", "16-bit")),
        ("16-bit-rgb", ("deep-rgb.png", "RGB;16", "16 bits per sample")),
        ("mixed-sizes", ("resize=none",)),
        ("empty-class", ("class folder", "holds no images")),
        ("no-preprocess", ("--preprocess",)),
        ("unknown-key", ("did you mean 'size'",)),
        ("preprocess-on-npy", ("--preprocess", "image and WAV")),
        ("wav-stereo", ("mix=mean",)),
        ("wav-float", ("PCM",)),
    ],
)
def test_bad_data_is_one_line_exit_2_nothing_written(run_cli, tmp_path, model, case, needles):
    d = tmp_path / "data"
    d.mkdir()
    prep = ["--preprocess", "unit"]
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    target = model
    if case == "truncated":
        Image.fromarray(rgb).save(d / "cut.png")
        (d / "cut.png").write_bytes((d / "cut.png").read_bytes()[:200])
    elif case == "not-an-image":
        (d / "junk.jpg").write_bytes(b"not a jpeg at all" * 10)
    elif case == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    elif case == "16-bit":
        Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(d / "deep.png")
    elif case == "16-bit-rgb":  # Pillow opens it as mode RGB, keeping the high byte: written by hand
        (d / "deep-rgb.png").write_bytes(png16(np.full((4, 4, 3), 3000, ">u2")))
    elif case == "mixed-sizes":
        Image.fromarray(rgb).save(d / "a.png")
        Image.fromarray(rgb[:20]).save(d / "b.png")
        prep = ["--preprocess", "unit,resize=none"]
    elif case == "empty-class":
        (d / "cat").mkdir()
        (d / "dog").mkdir()
        Image.fromarray(rgb).save(d / "cat" / "a.png")
    elif case == "no-preprocess":
        Image.fromarray(rgb).save(d / "a.png")
        prep = []
    elif case == "unknown-key":
        Image.fromarray(rgb).save(d / "a.png")
        prep = ["--preprocess", "unit,sise=3"]
    elif case == "preprocess-on-npy":
        np.save(d / "a.npy", np.zeros((3, 32, 32), np.float32))
    elif case in ("wav-stereo", "wav-float"):
        target = framer(tmp_path / "f.onnx")
        with wave.open(str(d / "a.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.zeros(256, "<i2").tobytes())
        if case == "wav-float":  # WAVE_FORMAT_IEEE_FLOAT (3) in the fmt chunk
            raw = bytearray((d / "a.wav").read_bytes())
            raw[20:22] = (3).to_bytes(2, "little")
            (d / "a.wav").write_bytes(bytes(raw))
        prep = []
    run_refused(run_cli, tmp_path, target, "--calib", d, *prep, needles=needles)


LOADERS = """
import numpy as np

def nothing():
    return []

def none():
    return None

def wrong_name():
    yield {"input": np.zeros((1, 3, 32, 32), np.float32)}

def wrong_shape():
    yield {"x": np.zeros((1, 3, 16, 32), np.float32)}

def wrong_dtype():
    yield {"x": np.zeros((1, 3, 32, 32), np.float64)}

def raises():
    data = {}
    return data["missing"]

def raises_later():
    yield {"x": np.zeros((1, 3, 32, 32), np.float32)}
    raise RuntimeError("the disk went away")
"""


@pytest.mark.parametrize(
    "name,needles",
    [
        ("nothing", ("holds no samples",)),
        ("none", ("returned None",)),
        ("wrong_name", ("inputs are x",)),
        ("wrong_shape", ("axis 2 must be 32",)),
        ("wrong_dtype", ("float64", "astype")),
        ("raises", ("KeyError", "loaders.py, line 21")),
        ("raises_later", ("the disk went away", "line 25")),
        ("absent", ("has no 'absent'", "raises_later")),
    ],
)
def test_bad_loader_is_one_line_exit_2(run_cli, tmp_path, model, name, needles):
    (tmp_path / "loaders.py").write_text(LOADERS)
    run_refused(run_cli, tmp_path, model, "--calib", f"{tmp_path / 'loaders.py'}:{name}", needles=needles)


def test_loader_syntax_error_names_the_line_and_debug_shows_the_traceback(run_cli, tmp_path, model):
    (tmp_path / "bad.py").write_text("def load():\n    return [\n")
    run_refused(
        run_cli, tmp_path, model, "--calib", f"{tmp_path / 'bad.py'}:load", needles=("bad.py, line 2", "SyntaxError")
    )
    proc = run_cli(model, "--calib", f"{tmp_path / 'bad.py'}:load", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "SyntaxError" in proc.stderr

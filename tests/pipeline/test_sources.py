"""Image folders, class subfolders, WAV folders and loader scripts (qaudit.pipeline.sources).

Each source is checked against the same data made by hand: images decoded and
normalized with Pillow and numpy here, saved as ``.npy``, must give the same report
bit for bit (minus timings and paths); a loader script reading the same files must
too. WAV files are written with the standard library and framed by hand.
"""

from __future__ import annotations

import json
import sys
import threading
import wave

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import qaudit
from qaudit.errors import ConfigError, DataError
from qaudit.pipeline.data import Dataset
from qaudit.pipeline.load import InputSpec
from qaudit.pipeline.sources import ahead, audio, preprocess
from qaudit.report import to_dict

try:  # not pytest.importorskip at import time: the bare run collects this module and leaves its tests out
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None
# Pillow: the test and images extras (with CI set, the skip is a failure: tests/conftest.py)
pytestmark = [pytest.mark.extra, pytest.mark.skipif(Image is None, reason="could not import 'PIL'")]


def classifier(path, c=3, hw=(16, 16), layout="nchw", k=2, seed=0):
    """x -> (Transpose) -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Softmax."""
    rng = np.random.default_rng(seed)
    shape = ["N", c, *hw] if layout == "nchw" else ["N", *hw, c]
    nodes, src = [], "x"
    if layout == "nhwc":
        nodes.append(h.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [
        h.make_node("Conv", [src, "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("GlobalAveragePool", ["r"], ["g"]),
        h.make_node("Flatten", ["g"], ["f"]),
        h.make_node("MatMul", ["f", "fw"], ["l"]),
        h.make_node("Softmax", ["l"], ["y"], axis=1),
    ]
    inits = [nh.from_array(rng.normal(size=(4, c, 3, 3)).astype(np.float32), "w")]
    inits.append(nh.from_array(rng.normal(size=(4, k)).astype(np.float32), "fw"))
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, shape)],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", k])],
        inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def framer(path, length=64, rank=2):
    """x [N, L] or [N, 1, L] -> MatMul -> Relu -> y [N, 4]."""
    rng = np.random.default_rng(3)
    shape = ["N", length] if rank == 2 else ["N", 1, length]
    nodes = ([h.make_node("Flatten", ["x"], ["xf"])] if rank == 3 else []) + [
        h.make_node("MatMul", ["xf" if rank == 3 else "x", "w"], ["m"]),
        h.make_node("Relu", ["m"], ["y"]),
    ]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, shape)],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
        [nh.from_array(rng.normal(size=(length, 4)).astype(np.float32), "w")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def photos(folder, n=6, seed=0, sizes=((20, 30), (31, 17), (16, 16))):
    """Smooth random colour images of several sizes, PNG and JPEG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        hh, ww = sizes[i % len(sizes)]
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        im = Image.fromarray(base).resize((ww, hh), Image.BICUBIC)
        p = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        im.save(p, quality=95)
        files.append(p)
    return files


def by_hand(p, size, mean=0.0, std=1.0, bgr=False, layout="nchw"):
    """The ``unit``/``signed`` preprocessing written out: stretch (bilinear), x/255, (x - mean)/std."""
    im = Image.open(p).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    a = np.asarray(im, np.uint8)
    if bgr:
        a = a[:, :, ::-1]
    x = (a.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)
    return x.transpose(2, 0, 1) if layout == "nchw" else x


def comparable(report) -> dict:
    """The report's JSON without timings, paths and the data's description."""
    d = json.loads(json.dumps(to_dict(report)))
    d.pop("meta")
    d["model"].pop("path")
    for k in ("calib", "eval", "sources", "preprocess", "labels", "class_names"):
        d["data"].pop(k, None)
    return d


# ----------------------------------------------------------------- images


def test_image_folder_gives_the_report_of_npy_files_made_by_hand(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    files = photos(tmp_path / "imgs")
    npy = tmp_path / "npy"
    npy.mkdir()
    for i, p in enumerate(files):
        np.save(npy / f"{i:02d}.npy", by_hand(p, (16, 16), 0.5, 0.5))
    a = qaudit.audit(model, tmp_path / "imgs", preprocess="signed")
    b = qaudit.audit(model, npy)
    assert comparable(a) == comparable(b)
    assert a.data["preprocess"]["mean"] == [0.5] and a.data["preprocess"]["size"] == [16, 16]
    assert a.data["sources"]["calib"] == {"kind": "images", "path": str(tmp_path / "imgs"), "files": 6}
    assert "preprocess" not in b.data and "sources" not in b.data


def test_keys_and_model_layout(tmp_path):
    """NHWC from the model's dims, BGR, explicit size on a dynamic input, uint8 PNG and JPEG."""
    files = photos(tmp_path / "imgs", n=3)
    spec = InputSpec("x", np.dtype("float32"), (None, None, None, 3))
    ds = Dataset(tmp_path / "imgs", [spec], preprocess=preprocess.parse("signed,size=12x20,channels=bgr", "t"))
    got = [f["x"] for f in ds.batches(8)][0]
    want = np.stack([by_hand(p, (12, 20), 0.5, 0.5, bgr=True, layout="nhwc") for p in files])
    assert got.shape == (3, 12, 20, 3)
    np.testing.assert_array_equal(got, want)


def test_imagenet_crop_and_letterbox_geometry(tmp_path):
    """imagenet: short side 256/224 of the crop, centre crop (torchvision's rounding); letterbox:
    fit inside, centred, the border filled; both computed here with Pillow by hand."""
    p = tmp_path / "a" / "wide.png"
    p.parent.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 90, 3)).astype(np.uint8)).save(p)
    spec = InputSpec("x", np.dtype("float32"), (None, 3, 28, 28))
    got = next(iter(Dataset(p.parent, [spec], preprocess={"preset": "imagenet"}).batches(1)))["x"][0]
    short = round(28 * 256 / 224)  # 32
    im = Image.open(p).convert("RGB").resize((round(90 * short / 40), short), Image.BILINEAR)  # 72 x 32
    left, top = int(round((72 - 28) / 2.0)), int(round((32 - 28) / 2.0))
    a = np.asarray(im.crop((left, top, left + 28, top + 28)), np.uint8).astype(np.float32) * np.float32(1 / 255)
    want = ((a - np.float32(preprocess.IMAGENET_MEAN)) / np.float32(preprocess.IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want)

    got = next(iter(Dataset(p.parent, [spec], preprocess="raw,resize=letterbox,pad=7").batches(1)))["x"][0]
    nh_ = round(40 * 28 / 90)  # 12
    canvas = Image.new("RGB", (28, 28), (7, 7, 7))
    canvas.paste(Image.open(p).convert("RGB").resize((28, nh_), Image.BILINEAR), (0, (28 - nh_) // 2))
    np.testing.assert_array_equal(got, np.asarray(canvas, np.float32).transpose(2, 0, 1))


def test_gray_from_the_models_channel_dim(tmp_path):
    files = photos(tmp_path / "imgs", n=2)
    spec = InputSpec("x", np.dtype("float32"), (None, 1, 8, 8))
    got = next(iter(Dataset(tmp_path / "imgs", [spec], preprocess="unit").batches(2)))["x"]
    want = [np.asarray(Image.open(p).convert("L").resize((8, 8), Image.BILINEAR), np.float32) for p in files]
    np.testing.assert_array_equal(got, np.stack(want)[:, None] * np.float32(1 / 255))


def test_class_subfolders_give_labels_sorted_or_from_the_names_file(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    data = tmp_path / "data"
    photos(data / "dog", n=3, seed=1)
    photos(data / "cat", n=2, seed=2)
    r = qaudit.audit(model, data, preprocess="unit")
    assert r.data["class_names"] == ["cat", "dog"] and r.data["labels"] == f"class subfolders of {data}"
    src = Dataset(data, [InputSpec("x", np.dtype("float32"), (None, 3, 16, 16))], preprocess="unit").source
    assert src.labels.tolist() == [0, 0, 1, 1, 1]
    assert [p.parent.name for p in src.files] == ["cat", "cat", "dog", "dog", "dog"]
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\nbird\n")
    src = Dataset(data, [src.input], preprocess="unit", class_names=names).source
    assert src.labels.tolist() == [1, 1, 0, 0, 0] and src.class_names == ["dog", "cat", "bird"]
    # the accuracy is that of these labels, and --labels wins over the folders
    labels = tmp_path / "l.npy"
    np.save(labels, np.array([1, 1, 0, 0, 0]))
    r2 = qaudit.audit(model, data, labels=labels, preprocess="unit", class_names=names)
    r3 = qaudit.audit(model, data, preprocess="unit", class_names=names)
    assert r2.data["labels"] == str(labels) and r3.outputs[0].acc_fp32 == r2.outputs[0].acc_fp32
    assert r.outputs[0].acc_fp32 != r3.outputs[0].acc_fp32 or r.outputs[0].acc_fp32 == 50.0


def test_decoding_is_lazy_and_runs_ahead_by_two(tmp_path):
    """Memory flat in the number of files: taking the first batch decodes at most 1 + AHEAD images."""
    photos(tmp_path / "imgs", n=12)
    spec = InputSpec("x", np.dtype("float32"), (None, 3, 8, 8))
    ds = Dataset(tmp_path / "imgs", [spec], preprocess="unit")
    from qaudit.pipeline.sources import images

    calls = []
    real = images.decode
    try:
        images.decode = lambda *a: calls.append(threading.current_thread().name) or real(*a)
        it = ds.source.read(ds)
        next(it)
        import time

        time.sleep(0.2)  # let the worker run as far ahead as it may
        assert len(calls) <= 3
        assert all(n.startswith("qaudit-decode") for n in calls)  # beside the consumer, not on its thread
        it.close()
    finally:
        images.decode = real
    out = list(ahead([lambda i=i: i for i in range(7)], depth=2))
    assert out == list(range(7))


def test_no_pillow_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    photos(tmp_path / "imgs", n=1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r'pip install "qaudit\[images\]"'):
        Dataset(tmp_path / "imgs", [InputSpec("x", np.dtype("float32"), (None, 3, 8, 8))], preprocess="unit")


def test_preprocess_parsing():
    assert preprocess.parse("imagenet,size=320", "t") == {"preset": "imagenet", "size": (320, 320)}
    assert preprocess.parse("mean=0.1/0.2/0.3,size=48x192", "t") == {"mean": (0.1, 0.2, 0.3), "size": (48, 192)}
    assert preprocess.check_table({"preset": "unit", "size": [4, 5], "std": 2}, "t") == {
        "preset": "unit",
        "size": (4, 5),
        "std": (2.0,),
    }
    for bad, needle in [
        ("imagenett", "did you mean 'imagenet'"),
        ("unit,sise=3", "did you mean 'size'"),
        ("size=4x", "HxW"),
        ("std=0", "non-zero"),
        ("mean=1/2", "three"),
        ("layout=nwhc", "nchw, nhwc"),
        ("size=4,imagenet", "KEY=VALUE"),
        ("mean=nan", "finite"),
        ("scale=inf", "finite"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            preprocess.parse(bad, "t")
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        preprocess.check_table({"meen": 0.5}, "t")
    with pytest.raises(ConfigError, match="finite"):
        preprocess.check_table({"std": float("inf")}, "t")
    for k in [*preprocess.PRESETS, *preprocess.KEYS]:
        assert k in preprocess.help_text()


# ----------------------------------------------------------------- audio


def write_wav(path, x, rate=16000, width=2, channels=1):
    """``x`` float in [-1, 1), shape [n] or [n, channels], as integer PCM."""
    x = np.asarray(x).reshape(len(x), -1)
    scale = float(1 << (8 * width - 1))
    q = np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)
    if width == 1:
        raw = (q + 128).astype(np.uint8).tobytes()
    elif width == 3:
        u = (q & 0xFFFFFF).astype(np.uint32)
        raw = np.stack([u & 255, (u >> 8) & 255, (u >> 16) & 255], -1).astype(np.uint8).tobytes()
    else:
        raw = q.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return q


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_pcm_widths_are_scaled_by_hand(tmp_path, width):
    x = np.sin(np.arange(150) / 7) * 0.9
    q = write_wav(tmp_path / "a.wav", x, width=width)
    got, rate = audio.read_wav(tmp_path / "a.wav")
    assert rate == 16000
    np.testing.assert_array_equal(got[:, 0], q[:, 0] / float(1 << (8 * width - 1)))


def test_wav_folder_frames_with_hop_and_tail(tmp_path):
    d = tmp_path / "wav"
    d.mkdir()
    x = np.sin(np.arange(150) / 5) * 0.5
    q = write_wav(d / "a.wav", x)[:, 0] / 32768.0
    spec = InputSpec("x", np.dtype("float32"), (None, 64))
    ds = Dataset(d, [spec], preprocess="hop=32")
    got = np.concatenate([f["x"] for f in ds.batches(64)])
    padded = np.concatenate([q, np.zeros(64 + 32 * 3 - 150)])  # starts 0, 32, 64, 96: every sample framed
    want = np.stack([padded[s : s + 64] for s in (0, 32, 64, 96)]).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    ds = Dataset(d, [spec], preprocess="hop=32,tail=drop")
    assert ds.count(None) == 3  # starts 0, 32, 64 (64 + 64 <= 150)
    assert ds.source.info()["preprocess"]["rate"] == 16000


def test_wav_stereo_resample_and_rank3(tmp_path):
    d = tmp_path / "wav"
    d.mkdir()
    st = np.stack([np.linspace(-0.5, 0.5, 128), np.linspace(0.25, -0.25, 128)], 1)
    q = write_wav(d / "s.wav", st, rate=8000, channels=2) / 32768.0
    spec = InputSpec("x", np.dtype("float32"), (None, 1, 64))
    with pytest.raises(DataError, match="mix=mean or mix=first"):
        Dataset(d, [spec]).scan()
    got = next(iter(Dataset(d, [spec], preprocess="mix=mean").batches(8)))["x"]
    assert got.shape == (2, 1, 64)
    np.testing.assert_array_equal(got[:, 0].reshape(-1), q.mean(1).astype(np.float32))
    with pytest.raises(DataError, match="resample=linear"):
        Dataset(d, [spec], preprocess="mix=first,rate=16000").scan()
    got = np.concatenate(
        [f["x"] for f in Dataset(d, [spec], preprocess="mix=first,rate=16000,resample=linear").batches(8)]
    )
    want = np.interp(np.arange(256) * 0.5, np.arange(128), q[:, 0]).astype(np.float32)
    np.testing.assert_array_equal(got[:, 0].reshape(-1), want)


def test_wav_folder_audit_equals_npy_frames(tmp_path):
    model = framer(tmp_path / "m.onnx")
    d, npy = tmp_path / "wav", tmp_path / "npy"
    d.mkdir()
    npy.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        q = write_wav(d / f"{i}.wav", rng.uniform(-0.8, 0.8, 64 * 4)) / 32768.0
        np.save(npy / f"{i}.npy", q[:, 0].reshape(4, 64).astype(np.float32))
    a = qaudit.audit(model, d)
    b = qaudit.audit(model, npy)
    assert comparable(a) == comparable(b)
    assert a.data["preprocess"]["kind"] == "audio" and a.data["preprocess"]["hop"] == 64


# ----------------------------------------------------------------- loader scripts

LOADER = """
import numpy as np
from pathlib import Path

HERE = Path(__file__).parent


class Reader:  # ONNX Runtime's CalibrationDataReader protocol, without rewind()
    def __init__(self):
        self.it = iter(sorted((HERE / "npy").glob("*.npy")))

    def get_next(self):
        p = next(self.it, None)
        return None if p is None else {"x": np.load(p)[None]}


def reader():
    return Reader()


def generator():
    for p in sorted((HERE / "npy").glob("*.npy")):
        yield {"x": np.load(p)[None]}


def arrays():
    return np.stack([np.load(p) for p in sorted((HERE / "npy").glob("*.npy"))])
"""


@pytest.mark.parametrize("name", ["reader", "generator", "arrays"])
def test_loader_script_gives_the_report_of_the_directory_it_reads(tmp_path, name):
    model = classifier(tmp_path / "m.onnx")
    files = photos(tmp_path / "imgs", n=5)
    (tmp_path / "npy").mkdir()
    for i, p in enumerate(files):
        np.save(tmp_path / "npy" / f"{i:02d}.npy", by_hand(p, (16, 16)))
    (tmp_path / "loader.py").write_text(LOADER)
    a = qaudit.audit(model, f"{tmp_path / 'loader.py'}:{name}")
    b = qaudit.audit(model, tmp_path / "npy")
    c = qaudit.audit(model, tmp_path / "imgs", preprocess="unit")
    assert comparable(a) == comparable(b) == comparable(c)
    assert a.data["calib"] == f"{tmp_path / 'loader.py'}:{name}"
    assert a.data["sources"]["calib"]["loader"]["name"] == name


def test_a_loader_script_and_what_it_imports_beside_it_leave_no_file_in_its_folder(tmp_path, monkeypatch):
    """Running the user's script writes no ``__pycache__`` into its folder: not for the script, not for a
    module it imports beside it, not for one it imports only while it yields (Python writes bytecode unless
    told not to; the CI machine's environment did not say so). Python's own setting is restored after."""
    import hashlib
    import sys

    model = classifier(tmp_path / "m.onnx")
    scripts = tmp_path / "scripts"
    (scripts / "npy").mkdir(parents=True)
    for i, p in enumerate(photos(tmp_path / "imgs", n=3)):
        np.save(scripts / "npy" / f"{i:02d}.npy", by_hand(p, (16, 16)))
    (scripts / "helper_at_import.py").write_text("SCALE = 1.0\n")
    (scripts / "helper_when_yielding.py").write_text(
        "def load(p):\n    import numpy as np\n    return np.load(p)[None]\n"
    )
    (scripts / "loader.py").write_text(
        "from pathlib import Path\nimport helper_at_import\n\n\ndef feeds():\n"
        "    for p in sorted((Path(__file__).parent / 'npy').glob('*.npy')):\n"
        "        import helper_when_yielding\n\n"
        "        yield {'x': helper_when_yielding.load(p) * helper_at_import.SCALE}\n"
    )

    def tree():
        return {str(p.relative_to(scripts)): p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest()
                for p in scripts.rglob("*")}  # fmt: skip

    before = tree()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as a fresh machine's Python runs it
    for mod in ("helper_at_import", "helper_when_yielding"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    a = qaudit.audit(model, f"{scripts / 'loader.py'}:feeds")
    assert comparable(a) == comparable(qaudit.audit(model, scripts / "npy"))
    assert "helper_when_yielding" in sys.modules  # the lazy import did run
    assert tree() == before
    assert sys.dont_write_bytecode is False


def test_script_syntax_is_split_at_the_last_colon():
    from pathlib import Path

    from qaudit.pipeline.sources.loader import split

    assert split("C:\\data\\loader.py:make") == (Path("C:\\data\\loader.py"), "make")
    assert split("loaders/x.PY:mod.fn") == (Path("loaders/x.PY"), "mod.fn")
    assert split("C:\\data\\images") is None and split("data:calib") is None and split("a.py:1x") is None


def test_a_path_that_exists_wins_over_script_syntax(tmp_path):
    weird = tmp_path / "a.py:reader"  # a directory whose name reads like a loader
    weird.mkdir()
    np.save(weird / "0.npy", np.zeros((3, 8, 8), np.float32))
    spec = InputSpec("x", np.dtype("float32"), (None, 3, 8, 8))
    assert Dataset(str(weird), [spec]).scan() == 1


def test_a_missing_script_path_and_a_bare_script_are_one_line_errors(tmp_path):
    spec = [InputSpec("x", np.dtype("float32"), (None, 3, 8, 8))]
    with pytest.raises(DataError, match="loader script not found: .*nowhere.py"):
        Dataset(f"{tmp_path / 'nowhere.py'}:load", spec)
    (tmp_path / "l.py").write_text("def load():\n    return []\n")
    with pytest.raises(DataError, match=r"name its function, .*l\.py:NAME"):
        Dataset(tmp_path / "l.py", spec)
    with pytest.raises(DataError, match="holds no samples"):
        Dataset(f"{tmp_path / 'l.py'}:load", spec).scan()


def test_saved_report_rerenders_its_data_line_and_refuses_a_bad_preprocess(tmp_path):
    from qaudit.renderers import render
    from qaudit.report import ReportFormatError, from_dict

    model = classifier(tmp_path / "m.onnx")
    photos(tmp_path / "data" / "b", n=2)
    photos(tmp_path / "data" / "a", n=2, seed=4)
    r = qaudit.audit(model, tmp_path / "data", preprocess="signed")
    d = json.loads(json.dumps(to_dict(r)))
    again = from_dict(d, strict=True)
    out = " ".join(render(again, "terminal").split())  # the data line names tmp_path: the terminal may wrap it
    assert "preprocess signed: resized to 16x16 (bilinear), RGB, (x * 0.00392157 - 0.5) / 0.5" in out
    assert "classes a=0, b=1" in out
    d["data"]["preprocess"] = "signed"
    with pytest.raises(ReportFormatError, match="data.preprocess must be an object"):
        from_dict(d)

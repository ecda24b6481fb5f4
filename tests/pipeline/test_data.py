"""Data layouts: .npy samples/batches, .npz by input name, ONNX test_data_set folders."""

import numpy as np
import pytest
from onnx import numpy_helper

from qaudit.errors import ConfigError, DataError
from qaudit.pipeline.data import Dataset, batch_layout, load_labels
from qaudit.pipeline.load import InputSpec
from qaudit.pipeline.parallel import auto_batch_size

IMG = InputSpec("x", np.dtype("float32"), (None, 2, 3))
TOK = InputSpec("ids", np.dtype("int64"), (None, None))


def _stack(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_npy_samples_and_batches_are_rebatched_in_file_order(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 2, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", data[:3])  # a batch of 3
    np.save(tmp_path / "b.npy", data[3])  # one sample, no batch axis
    np.save(tmp_path / "c.npy", data[4:])  # a batch of 3
    ds = Dataset(tmp_path, [IMG])
    assert ds.scan() == 7
    batches = list(ds.batches(batch_size=2))
    assert [b["x"].shape[0] for b in batches] == [2, 2, 2, 1]
    np.testing.assert_array_equal(_stack(batches)["x"], data)
    assert [b["x"].shape[0] for b in ds.batches(batch_size=4, max_samples=5)] == [4, 1]


def test_npz_feeds_every_input_by_name(tmp_path):
    specs = [IMG, TOK]
    for i in range(3):
        np.savez(tmp_path / f"s{i}.npz", x=np.full((2, 2, 3), i, np.float32), ids=np.full((2, 5), i, np.int64))
    ds = Dataset(tmp_path, specs)
    assert ds.scan() == 6
    out = _stack(list(ds.batches(4)))
    np.testing.assert_array_equal(out["ids"][:, 0], [0, 0, 1, 1, 2, 2])


def test_shape_change_starts_a_new_batch(tmp_path):
    np.savez(tmp_path / "a.npz", ids=np.zeros((2, 5), np.int64))
    np.savez(tmp_path / "b.npz", ids=np.zeros((2, 7), np.int64))
    batches = list(Dataset(tmp_path, [TOK]).batches(8))
    assert [b["ids"].shape for b in batches] == [(2, 5), (2, 7)]


def test_onnx_test_data_sets(tmp_path):
    rng = np.random.default_rng(1)
    want = []
    for i in range(2):
        d = tmp_path / f"test_data_set_{i}"
        d.mkdir()
        x = rng.normal(size=(1, 2, 3)).astype(np.float32)
        want.append(x)
        (d / "input_0.pb").write_bytes(numpy_helper.from_array(x, "x").SerializeToString())
        (d / "output_0.pb").write_bytes(numpy_helper.from_array(x, "y").SerializeToString())
    ds = Dataset(tmp_path, [IMG])
    assert ds.scan() == 2
    np.testing.assert_array_equal(_stack(list(ds.batches(8)))["x"], np.concatenate(want))


def test_fixed_batch_dim_is_honoured(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 2, 3), np.float32))
    fixed = InputSpec("x", np.dtype("float32"), (1, 2, 3))
    assert [b["x"].shape[0] for b in Dataset(tmp_path, [fixed]).batches(32)] == [1, 1, 1, 1]
    fixed2 = InputSpec("x", np.dtype("float32"), (3, 2, 3))
    with pytest.raises(DataError, match="fixed at 3"):
        list(Dataset(tmp_path, [fixed2]).batches(32))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 2, 4), np.float32), "axis 2 must be 3"),
        (np.zeros((2, 2, 3), np.float64), "astype"),
        (np.zeros((2, 2, 3, 1), np.float32), "shape"),
        (np.array([[[np.nan, 0, 0], [0, 0, 0]]], np.float32), "NaN"),
        (np.array([[[np.inf, 0, 0], [0, 0, 0]]], np.float32), "Inf"),
    ],
)
def test_bad_arrays_are_rejected_before_running(tmp_path, array, message):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(DataError, match=message):
        Dataset(tmp_path, [IMG]).scan()


def test_npy_for_multi_input_model_is_rejected(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 3), np.float32))
    with pytest.raises(DataError, match="npz"):
        Dataset(tmp_path, [IMG, TOK]).scan()


def test_empty_and_missing_dirs(tmp_path):
    with pytest.raises(DataError, match="empty"):
        Dataset(tmp_path, [IMG])
    with pytest.raises(DataError, match="not found"):
        Dataset(tmp_path / "nope", [IMG])


def test_labels(tmp_path):
    np.save(tmp_path / "y.npy", np.array([1, 0, 2]))
    np.testing.assert_array_equal(load_labels(tmp_path / "y.npy", 3), [1, 0, 2])
    np.testing.assert_array_equal(load_labels(tmp_path / "y.npy", 2, exact=False), [1, 0])
    with pytest.raises(DataError, match="3 entries for 2"):
        load_labels(tmp_path / "y.npy", 2)
    np.save(tmp_path / "onehot.npy", np.eye(3)[[2, 0]])
    np.testing.assert_array_equal(load_labels(tmp_path / "onehot.npy", 2), [2, 0])


# ------------------------------------------------------------- batch axes

F32, I64 = np.dtype("float32"), np.dtype("int64")


def spec(name, *dims, dtype=F32):
    """An input spec from dims: an int is fixed, a str a named dynamic dim, None an unnamed one."""
    shape = tuple(d if isinstance(d, int) else None for d in dims)
    return InputSpec(name, dtype, shape, tuple(d if isinstance(d, str) else None for d in dims))


@pytest.mark.parametrize(
    "specs, axes, fixed",
    [
        # Silero VAD (16k_op15): the state's batch is the dim 'batch' on axis 1; the sample rate is a scalar
        (
            [spec("input", "batch", "sequence"), spec("state", 2, "batch", 128), spec("sr", dtype=I64)],
            [0, 1, None],
            None,
        ),
        # time-major recurrent input: 'batch' wins over the leading sequence dim
        ([spec("x", "seq", "batch", 8), spec("h", 1, "batch", 16)], [1, 1], None),
        # dynamo-style names: 's0' is shared and preceded only by fixed dims
        ([spec("x", "s0", "s1"), spec("state", 2, "s0", 16)], [0, 1], None),
        # a fixed batch of 1 and a symbolic sequence shared by both inputs: batch axis 0, fixed at 1
        ([spec("x", 1, "seq", 4), spec("mask", 1, "seq")], [0, 0], 1),
        # an unnamed batch before a named sequence: not the sequence
        ([spec("ids", None, "seq"), spec("mask", None, "seq")], [0, 0], None),
        # position_ids [1, seq] beside input_ids [batch, seq]: a batch fixed at 1, never concatenated
        ([spec("ids", "batch", "seq"), spec("pos", 1, "seq")], [0, 0], 1),
        # image sizes [1, 2] beside images [N, 3, H, W] (detectors): likewise
        ([spec("images", "N", 3, None, None), spec("im_size", 1, 2)], [0, 0], 1),
        # a side input of another size beside the batch: fed as it is
        ([spec("x", "batch", 8), spec("anchors", 6, 4)], [0, None], None),
        # Silero VAD (openvino_16k): every dim fixed; the one dim of 1 in each input
        ([spec("input", 1, 576), spec("state", 2, 1, 128)], [0, 1], 1),
        # fixed dims of other sizes are not read as a batch: [2, 3] @ [3, 4] is one run
        ([spec("a", 2, 3), spec("b", 3, 4)], [None, None], 1),
        # Silero VAD (silero_vad.onnx): unnamed dims, nothing to tell the batch by: every file one run
        ([spec("input", None, None), spec("state", 2, None, 128), spec("sr", dtype=I64)], [None, None, None], 1),
        # Silero VAD (16k_sequence): the chunks of one recording on axis 0, the LSTM state [1, 1, 128]
        ([spec("input", "sequence_length", 576), spec("h", 1, 1, 128), spec("c", 1, 1, 128)], [None] * 3, 1),
        # one input: axis 0, as always
        ([spec("x", None, 2, 3)], [0], None),
        ([spec("x", 3, "t")], [0], 3),
        ([spec("sr", dtype=I64)], [None], 1),
    ],
)
def test_batch_axes_are_inferred_from_the_model(specs, axes, fixed):
    layout = batch_layout(specs)
    assert layout.axes == {s.name: a for s, a in zip(specs, axes)}
    assert layout.fixed == fixed
    assert layout.rule


def test_given_batch_axes_win_and_are_checked():
    specs = [spec("input", None, 6), spec("state", 2, None, 5), spec("sr", dtype=I64)]
    layout = batch_layout(specs, {"input": 0, "state": -2})
    assert layout.axes == {"input": 0, "state": 1, "sr": None}
    assert layout.fixed is None and "given" in layout.rule
    with pytest.raises(ConfigError, match="did you mean 'state'"):
        batch_layout(specs, {"stat": 1})
    with pytest.raises(ConfigError, match="scalar"):
        batch_layout(specs, {"sr": 0})
    with pytest.raises(ConfigError, match="out of range"):
        batch_layout(specs, {"state": 3})
    with pytest.raises(ConfigError, match="different fixed sizes"):
        batch_layout([spec("a", 1, 3), spec("b", 2, 3)], {"a": 0, "b": 0})


def _recurrent_files(d, n, rng, sr=16000, chunk=6, hidden=5):
    """n complete feeds, as recorded: input [1, F], state [2, 1, H], the scalar sample rate."""
    d.mkdir(exist_ok=True)
    inputs = rng.normal(size=(n, chunk)).astype(np.float32)
    states = rng.normal(size=(2, n, hidden)).astype(np.float32)
    for i in range(n):
        np.savez(d / f"{i:03d}.npz", input=inputs[i : i + 1], state=states[:, i : i + 1], sr=np.array(sr, np.int64))
    return inputs, states


RECURRENT = [spec("input", "batch", 6), spec("state", 2, "batch", 5), spec("sr", dtype=I64)]


def test_state_is_batched_on_axis_1_and_the_scalar_fed_as_it_is(tmp_path):
    rng = np.random.default_rng(0)
    inputs, states = _recurrent_files(tmp_path / "d", 5, rng)
    # one more sample without its batch axes: input [F], state [2, H]
    np.savez(tmp_path / "d" / "100.npz", input=inputs[0], state=states[:, 0], sr=np.array(16000, np.int64))
    ds = Dataset(tmp_path / "d", RECURRENT)
    assert ds.scan() == 6
    batches = list(ds.batches(4))
    assert [b.samples for b in batches] == [4, 2]
    assert [b["state"].shape for b in batches] == [(2, 4, 5), (2, 2, 5)]
    assert all(b["sr"].shape == () and b["sr"] == 16000 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), np.concatenate([inputs, inputs[:1]]))
    np.testing.assert_array_equal(
        np.concatenate([b["state"] for b in batches], axis=1), np.concatenate([states, states[:, :1]], axis=1)
    )
    assert ds.layout.axes == {"input": 0, "state": 1, "sr": None}


def test_a_change_of_the_unbatched_input_starts_a_new_batch(tmp_path):
    rng = np.random.default_rng(1)
    _recurrent_files(tmp_path / "d", 3, rng, sr=16000)
    for i in range(3, 5):
        np.savez(
            tmp_path / "d" / f"{i:03d}.npz",
            input=rng.normal(size=(1, 6)).astype(np.float32),
            state=rng.normal(size=(2, 1, 5)).astype(np.float32),
            sr=np.array(8000, np.int64),
        )
    batches = list(Dataset(tmp_path / "d", RECURRENT).batches(8))
    assert [(b.samples, int(b["sr"])) for b in batches] == [(3, 16000), (2, 8000)]


def test_files_of_a_model_with_no_batch_axis_are_one_run_each(tmp_path):
    """silero_vad.onnx's unnamed dims: each file is fed as it is, whatever it holds."""
    specs = [spec("input", None, None), spec("state", 2, None, 5), spec("sr", dtype=I64)]
    d = tmp_path / "d"
    d.mkdir()
    x = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    np.savez(d / "a.npz", input=x, state=np.zeros((2, 3, 5), np.float32), sr=np.array(16000))
    np.savez(d / "b.npz", input=x[:1], state=np.zeros((2, 1, 5), np.float32), sr=np.array(16000))
    ds = Dataset(d, specs)
    assert ds.scan() == 2 and ds.fixed_batch() == 1
    batches = list(ds.batches(64))
    assert [b["input"].shape for b in batches] == [(3, 7), (1, 7)]
    np.testing.assert_array_equal(batches[0]["input"], x)
    np.savez(d / "c.npz", input=x[0], state=np.zeros((2, 5), np.float32), sr=np.array(16000))
    with pytest.raises(DataError, match="no batch axis.*--batch-axis"):
        Dataset(d, specs).scan()


def test_fixed_batch_of_one_with_a_symbolic_sequence(tmp_path):
    specs = [spec("x", 1, "seq", 4), spec("mask", 1, "seq")]
    for i, t in enumerate([3, 3, 5]):
        np.savez(tmp_path / f"{i}.npz", x=np.full((1, t, 4), i, np.float32), mask=np.ones((1, t), np.float32))
    ds = Dataset(tmp_path, specs)
    assert ds.scan() == 3 and ds.fixed_batch() == 1
    assert auto_batch_size(1, ds.fixed_batch()) == 1
    assert [b["x"].shape for b in ds.batches(16)] == [(1, 3, 4), (1, 3, 4), (1, 5, 4)]


def test_different_batch_sizes_name_the_inputs_and_their_axes(tmp_path):
    np.savez(
        tmp_path / "a.npz",
        input=np.zeros((2, 6), np.float32),
        state=np.zeros((2, 3, 5), np.float32),
        sr=np.array(16000, np.int64),
    )
    with pytest.raises(DataError, match=r"input: 2 on axis 0, state: 3 on axis 1"):
        Dataset(tmp_path, RECURRENT).scan()


def test_memory_feeds_use_the_batch_axes():
    rng = np.random.default_rng(2)
    feeds = {
        "input": rng.normal(size=(3, 6)).astype(np.float32),
        "state": rng.normal(size=(2, 3, 5)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    ds = Dataset(feeds, RECURRENT)
    assert ds.scan() == 3
    batches = list(ds.batches(2))
    assert [b["state"].shape for b in batches] == [(2, 2, 5), (2, 1, 5)]
    np.testing.assert_array_equal(batches[1]["state"], feeds["state"][:, 2:])


# ------------------------------------------------------ hostile data files


def test_a_zip_named_npy_is_refused_with_what_to_do(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 2, 3), np.float32))
    (tmp_path / "a.npz").rename(tmp_path / "a.npy")
    with pytest.raises(DataError, match=r"a\.npy is an \.npz archive.*rename it to \.npz"):
        Dataset(tmp_path, [IMG]).scan()


def test_an_npy_named_npz_is_refused_with_what_to_do(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 3), np.float32))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(DataError, match=r"a\.npz is a single \.npy array.*rename it to \.npy"):
        Dataset(tmp_path, [IMG]).scan()


def test_npz_members_that_are_not_arrays_are_refused(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr("x", b"not an array")  # numpy hands such a member back as bytes
    with pytest.raises(DataError, match=r"member 'x' is not a numpy array"):
        Dataset(tmp_path, [IMG]).scan()
    np.savez(tmp_path / "a.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"member 'x' holds Python objects.*never") as e:
        Dataset(tmp_path, [IMG]).scan()
    assert "allow_pickle" not in str(e.value)


def test_an_object_npy_is_refused_without_pickle_advice(tmp_path):
    np.save(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="object array") as e:
        Dataset(tmp_path, [IMG]).scan()
    assert "allow_pickle" not in str(e.value)


def _unblock(fifo):
    """Open the FIFO's write end so that a reader stuck in open() gets EOF."""
    import os

    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader: nothing is stuck


@pytest.mark.parametrize("where", ["in the directory", "given itself", "a test_data_set file"])
def test_a_fifo_is_refused_naming_it_and_never_opened(tmp_path, where):
    import os
    import threading

    np.save(tmp_path / "a.npy", np.zeros((1, 2, 3), np.float32))
    fifo = tmp_path / "b.npy"
    target = tmp_path
    if where == "a test_data_set file":
        (tmp_path / "a.npy").unlink()
        (tmp_path / "test_data_set_0").mkdir()
        fifo = tmp_path / "test_data_set_0" / "input_0.pb"
    elif where == "given itself":
        target = fifo
    os.mkfifo(fifo)
    result = {}

    def scan():
        try:
            Dataset(target, [IMG]).scan()
        except DataError as e:
            result["error"] = str(e)

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(10)
    hung = t.is_alive()
    _unblock(fifo)
    assert not hung, "reading the data blocked on a FIFO"
    assert fifo.name in result["error"] and "FIFO" in result["error"] and "regular file" in result["error"]


def test_a_directory_named_npy_is_refused(tmp_path):
    (tmp_path / "a.npy").mkdir()
    with pytest.raises(DataError, match=r"a\.npy is a directory, not a regular file"):
        Dataset(tmp_path, [IMG])


# ----------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32), r"not one-hot: row 0 holds 0\.1.*probabilities"),
        (np.array([[1, 1, 0], [0, 0, 1]], np.int64), "row 0 holds 2 ones"),
        (np.array([[0, 0, 1], [0, 0, 0]], np.float64), "row 1 holds 0 ones"),
        (np.array([[3], [1]], np.int64), r"holds 3 .*reshape\(-1\)"),
        (np.array([1.0, 0.0]), "1-D integer"),
        (np.array([["a", "b"], ["c", "d"]]), "integer class labels"),
    ],
)
def test_labels_that_are_not_classes_or_exactly_one_hot_are_refused(tmp_path, labels, message):
    with pytest.raises(DataError, match=message):
        load_labels(labels, 2)


def test_labels_in_a_zip_are_refused(tmp_path):
    np.savez(tmp_path / "y.npz", y=np.array([1, 0]))
    (tmp_path / "y.npz").rename(tmp_path / "y.npy")
    with pytest.raises(DataError, match=r"y\.npy is an \.npz archive"):
        load_labels(tmp_path / "y.npy", 2)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, bool])
def test_one_hot_labels_of_any_numeric_dtype(dtype):
    y = np.eye(4, dtype=dtype)[[3, 0, 2]]
    np.testing.assert_array_equal(load_labels(y, 3), [3, 0, 2])


# ------------------------------------------- audits fed on each input's batch axis


def _sqnr_qmse(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    x, y = x.astype(np.float64), y.astype(np.float64)
    e2 = np.sum((x - y) ** 2)
    return float(10 * np.log10(np.sum(x**2) / e2)), float(e2 / x.size)


@pytest.mark.parametrize("batch_size", [1, 4, None])
def test_audit_batched_on_axis_1_matches_numpy_one_sample_at_a_time(tmp_path, batch_size):
    """The state is batched on axis 1, the sample rate fed as it is; the output metrics of the
    report equal numpy's over the same samples, each run alone on the fp32 and the quantized model."""
    import onnx
    import onnxruntime as ort

    import qaudit

    from ..models import recurrent_model

    model = tmp_path / "rec.onnx"
    onnx.save(recurrent_model(), model)
    rng = np.random.default_rng(3)
    _recurrent_files(tmp_path / "calib", 16, rng)
    inputs, states = _recurrent_files(tmp_path / "eval", 10, rng)
    out_model = tmp_path / "q.onnx"
    report = qaudit.audit(
        model, tmp_path / "calib", tmp_path / "eval", batch_size=batch_size, output_model=out_model, isolated=False
    )
    assert report.data["batch_axes"]["axes"] == {"input": 0, "state": 1, "sr": None}
    assert report.data["n_eval"] == 10
    assert any("batch axes" in n and "state: axis 1" in n for n in report.notes)
    if batch_size is None:
        assert report.settings["batch_size"] > 1  # the automatic batch did batch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    fp32 = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    quant = ort.InferenceSession(str(out_model), so, providers=["CPUExecutionProvider"])
    got = {"fp32": [], "quant": []}
    for i in range(10):
        feeds = {"input": inputs[i : i + 1], "state": states[:, i : i + 1], "sr": np.array(16000, np.int64)}
        got["fp32"].append(fp32.run(None, feeds))
        got["quant"].append(quant.run(None, feeds))
    rows = {o.name: o for o in report.outputs}
    for k, (name, axis) in enumerate([("output", 0), ("stateN", 1)]):
        x = np.concatenate([r[k] for r in got["fp32"]], axis=axis)
        y = np.concatenate([r[k] for r in got["quant"]], axis=axis)
        sqnr, qmse = _sqnr_qmse(x, y)
        assert rows[name].sqnr_db == pytest.approx(sqnr, rel=1e-6), name
        assert rows[name].qmse == pytest.approx(qmse, rel=1e-6), name


def test_audit_of_a_fixed_batch_of_one_with_a_symbolic_sequence(tmp_path):
    import onnx

    import qaudit

    from ..models import sequence_model

    model = tmp_path / "seq.onnx"
    onnx.save(sequence_model(), model)
    rng = np.random.default_rng(4)
    (tmp_path / "d").mkdir()
    for i, t in enumerate([3, 5, 5, 2]):
        x, mask = rng.normal(size=(1, t, 4)).astype(np.float32), np.ones((1, t), np.float32)
        np.savez(tmp_path / "d" / f"{i}.npz", x=x, mask=mask)
    report = qaudit.audit(model, tmp_path / "d", isolated=False)
    assert report.settings["batch_size"] == 1  # the model fixes it: the sequences are never concatenated
    assert report.data["n_calib"] == 4
    assert report.data["batch_axes"] == {"axes": {"x": 0, "mask": 0}, "rule": "axis 0", "fixed": 1}
    assert not any("batch axes" in n for n in report.notes)


def test_labels_of_runs_that_hold_several_rows_are_refused(tmp_path):
    """No input has a batch axis (unnamed dims): each file is one run, one sample, one label; an
    output with 3 rows per run cannot be scored against it (numpy would broadcast the label)."""
    import onnx

    import qaudit

    from ..models import recurrent_model

    onnx.save(recurrent_model(batch=None), tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    (tmp_path / "d").mkdir()
    for i in range(2):
        x, s = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(2, 3, 5)).astype(np.float32)
        np.savez(tmp_path / "d" / f"{i}.npz", input=x, state=s, sr=np.array(16000, np.int64))
    with pytest.raises(DataError, match=r"output 'output' has 3 rows for 1 labelled samples.*--batch-axis"):
        qaudit.audit(tmp_path / "m.onnx", tmp_path / "d", labels=np.array([0, 1]), isolated=False)
    report = qaudit.audit(
        tmp_path / "m.onnx", tmp_path / "d", labels=np.arange(6) % 3, batch_axis={"input": 0, "state": 1}
    )
    assert report.data["n_eval"] == 6 and report.outputs[0].acc_fp32 is not None

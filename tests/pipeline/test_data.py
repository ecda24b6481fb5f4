"""Data layouts: .npy samples/batches, .npz by input name, ONNX test_data_set folders."""

import numpy as np
import pytest
from onnx import numpy_helper

from qaudit.errors import DataError
from qaudit.pipeline.data import Dataset, load_labels
from qaudit.pipeline.load import InputSpec

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


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, bool])
def test_one_hot_labels_of_any_numeric_dtype(dtype):
    y = np.eye(4, dtype=dtype)[[3, 0, 2]]
    np.testing.assert_array_equal(load_labels(y, 3), [3, 0, 2])

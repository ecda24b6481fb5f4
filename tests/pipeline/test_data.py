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

import gzip
import struct

import numpy as np
import pytest

from surfacekit.data import DataError, load_data, read_idx, standardize


def write_idx(path, array: np.ndarray, gz: bool = False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(payload)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 30))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)), gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 12), gz=True)
    return tmp_path


def test_digits_split_and_standardization():
    d = load_data({"name": "digits"})
    assert d.x_train.shape == (1000, 64) and d.x_test.shape == (797, 64)
    assert d.num_outputs == 10 and d.classification
    assert np.abs(d.x_test.numpy()).max() < 100  # constant pixels must not blow up test inputs
    again = load_data({"name": "digits"})
    assert (again.y_train == d.y_train).all()


def test_standardize_constant_features():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    tr, te = standardize(x, np.array([[2.0, 6.0]]))
    assert np.allclose(tr[:, 0], [-1, 1]) and np.allclose(tr[:, 1], 0) and np.allclose(te, [[0, 1]])


def test_mnist1d_and_teacher_shapes():
    d = load_data({"name": "mnist1d", "num_samples": 500})
    assert d.x_train.shape == (400, 40) and d.x_test.shape == (100, 40) and d.num_outputs == 10
    t = load_data({"name": "teacher", "train_size": 50, "test_size": 20, "input_dim": 7, "outputs": 2, "standardize": False})
    assert t.x_train.shape == (50, 7) and t.y_train.shape == (50, 2) and not t.classification
    c = load_data({"name": "teacher", "train_size": 50, "test_size": 20, "outputs": 3, "classification": True})
    assert c.classification and c.y_train.shape == (50,)


def test_mnist_idx_with_downsampling_and_subset(mnist_dir):
    d = load_data({"name": "mnist", "path": str(mnist_dir), "downsample": 10, "train_size": 20})
    assert d.x_train.shape == (20, 100) and d.x_test.shape == (12, 100)
    assert d.num_outputs <= 10
    full = load_data({"name": "mnist", "path": str(mnist_dir), "standardize": False})
    assert full.x_train.shape == (30, 784) and float(full.x_train.max()) <= 1.0


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "fashion.npz", x_train=rng.integers(0, 256, (8, 28, 28)), y_train=rng.integers(0, 10, 8),
             x_test=rng.integers(0, 256, (4, 28, 28)), y_test=rng.integers(0, 10, 4))
    d = load_data({"name": "mnist", "path": str(tmp_path)})
    assert d.x_train.shape == (8, 784)


def test_nan_in_data_is_rejected(tmp_path):
    x = np.zeros((8, 28, 28))
    x[3, 4, 5] = np.nan
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.zeros(8, dtype=int), x_test=np.zeros((2, 28, 28)),
             y_test=np.zeros(2, dtype=int))
    with pytest.raises(DataError, match="inputs contain NaN"):
        load_data({"name": "mnist", "path": str(tmp_path)})
    with pytest.raises(DataError, match="inputs contain NaN"):  # the .npz file itself is read the same way
        load_data({"name": "mnist", "path": str(tmp_path / "bad.npz")})


def test_bad_inputs_give_one_line_errors(tmp_path, mnist_dir):
    with pytest.raises(DataError, match="no such file or directory"):
        load_data({"name": "mnist", "path": str(tmp_path / "nope")})
    with pytest.raises(DataError, match="data.path is not set"):
        load_data({"name": "mnist"})
    with pytest.raises(DataError, match="unknown"):
        load_data({"name": "imagenet"})
    truncated = struct.pack(">HBB3I", 0, 0x08, 3, 30, 28, 28) + bytes(10)
    (mnist_dir / "train-images-idx3-ubyte").write_bytes(truncated)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*IDX header"):
        load_data({"name": "mnist", "path": str(mnist_dir)})
    (mnist_dir / "train-images-idx3-ubyte").write_bytes(b"garbage!")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(mnist_dir / "train-images-idx3-ubyte")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte"):
        load_data({"name": "mnist", "path": str(tmp_path / "empty")})
    with pytest.raises(DataError) as info:
        load_data({"name": "mnist", "path": str(tmp_path / "nope")})
    assert "\n" not in str(info.value) and str(tmp_path / "nope") in str(info.value)


def _npz(path, **changes):
    rng = np.random.default_rng(2)
    arrays = dict(x_train=rng.integers(0, 256, (8, 28, 28)), y_train=rng.integers(0, 10, 8),
                  x_test=rng.integers(0, 256, (4, 28, 28)), y_test=rng.integers(0, 10, 4))
    path.mkdir()
    np.savez(path / "data.npz", **{**arrays, **changes})
    return str(path)


@pytest.mark.parametrize("changes,message", [
    (dict(y_train=np.array([0.0, 1.5, 2, 3, 4, 5, 6, 7])), "labels must be integers; found 1.5"),
    (dict(y_train=np.array([0.0, np.nan, 2, 3, 4, 5, 6, 7])), "labels must be integers; found nan"),
    (dict(y_train=np.array(list("abcdefgh"))), "are not integers"),
    (dict(x_test=np.zeros((0, 28, 28)), y_test=np.zeros(0, dtype=int)), "the test split is empty"),
    (dict(x_test=np.zeros((4, 14, 14))), "differ in size"),
])
def test_bad_npz_contents_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(DataError, match=message) as info:
        load_data({"name": "mnist", "path": _npz(tmp_path / "d", **changes)})
    assert "\n" not in str(info.value)


def test_whole_valued_float_labels_are_accepted_and_a_fake_npz_refused(tmp_path):
    d = load_data({"name": "mnist", "path": _npz(tmp_path / "d", y_train=np.arange(8.0))})
    assert d.y_train.tolist() == list(range(8))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz archive"):
        load_data({"name": "mnist", "path": str(tmp_path / "fake")})
    with pytest.raises(DataError, match="data.train_size=99 is invalid: data=mnist has 8 training examples"):
        load_data({"name": "mnist", "path": _npz(tmp_path / "e"), "train_size": 99})

"""Image data for convolutional models: digits as 1x8x8, CIFAR-10/100 from python batches or an .npz."""

import pickle

import numpy as np
import pytest
import torch

from surfacekit.data import DataError, load_data


def write_batch(path, images: np.ndarray, labels, key=b"labels"):
    """A CIFAR python batch: a pickled dict with b'data' [n, 3072] uint8 rows and the labels."""
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), key: list(labels), b"batch_label": b"test"}, f)


@pytest.fixture
def cifar10_dir(tmp_path):
    """CIFAR-10's layout with 4 images per training batch (20) and 6 test images, in cifar-10-batches-py/."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 10, 4))
    write_batch(folder / "test_batch", rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 6))
    return tmp_path


def test_digits_are_1x8x8_images_with_unchanged_values():
    from sklearn.datasets import load_digits

    d = load_data({"name": "digits", "standardize": False, "train_size": 100})
    assert d.image_shape == (1, 8, 8) and d.input_shape == (1, 8, 8) and d.x_train.shape == (100, 64)
    rows = {tuple(r) for r in load_digits().data}
    assert all(tuple(r) in rows for r in d.x_train.numpy())  # the flattened images are sklearn's feature rows
    assert load_data({"name": "mnist1d", "num_samples": 100}).input_shape == (40,)


def test_cifar10_batches_with_per_channel_standardization(cifar10_dir):
    d = load_data({"name": "cifar10", "path": str(cifar10_dir)})
    assert d.x_train.shape == (20, 3072) and d.x_test.shape == (6, 3072) and d.image_shape == (3, 32, 32)
    assert d.num_outputs == 10
    images = d.x_train.reshape(20, 3, 32, 32)
    torch.testing.assert_close(images.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(images.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    raw = load_data({"name": "cifar10", "path": str(cifar10_dir / "cifar-10-batches-py"), "standardize": False})
    with open(cifar10_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    np.testing.assert_allclose(raw.x_train[0].numpy(), first / 255.0)  # channel-major rows kept as they are


def test_cifar_grayscale_downsample_and_subsets(cifar10_dir):
    d = load_data({"name": "cifar10", "path": str(cifar10_dir), "grayscale": True, "downsample": 8, "train_size": 7,
                   "test_size": 3, "standardize": False})
    assert d.image_shape == (1, 8, 8) and d.x_train.shape == (7, 64) and d.x_test.shape == (3, 64)
    full = load_data({"name": "cifar10", "path": str(cifar10_dir), "standardize": False})
    rgb = full.x_train.reshape(20, 3, 32, 32)
    gray = torch.einsum("nchw,c->nhw", rgb, torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64))
    pooled = torch.nn.functional.avg_pool2d(gray[:, None], 4).reshape(20, 64)
    assert all(any(torch.allclose(row, p, atol=1e-12) for p in pooled) for row in d.x_train)


def test_cifar100_and_npz_layouts(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "c100"
    folder.mkdir()
    for name, n in (("train", 10), ("test", 4)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(rng.integers(0, 100, n)),
                         b"coarse_labels": list(rng.integers(0, 20, n))}, f)
    fine = load_data({"name": "cifar100", "path": str(folder)})
    coarse = load_data({"name": "cifar100", "path": str(folder), "labels": "coarse"})
    assert fine.num_outputs == 100 and coarse.num_outputs == 20 and fine.x_train.shape == (10, 3072)
    last = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)  # channels last, as keras.datasets
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "cifar.npz", x_train=last, y_train=rng.integers(0, 10, (5, 1)), x_test=last[:2],
             y_test=rng.integers(0, 10, 2))
    d = load_data({"name": "cifar10", "path": str(npz), "standardize": False})
    same = load_data({"name": "cifar10", "path": str(npz / "cifar.npz"), "standardize": False})  # the file itself
    assert torch.equal(same.x_train, d.x_train) and torch.equal(same.y_test, d.y_test)
    (npz / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: a file that is not an .npz"):
        load_data({"name": "cifar10", "path": str(npz / "notes.txt")})
    np.testing.assert_allclose(d.x_train.reshape(5, 3, 32, 32).numpy(), last.transpose(0, 3, 1, 2) / 255.0)
    assert d.y_train.shape == (5,)
    np.savez(npz / "cifar.npz", x_train=last, y_train=np.array([0.0, 1.0, 2.5, 3.0, 4.0]), x_test=last[:2],
             y_test=np.array([1, 2]))
    with pytest.raises(DataError, match="train split: labels must be integers; found 2.5"):
        load_data({"name": "cifar10", "path": str(npz)})


def test_cifar_errors_are_one_line(cifar10_dir, tmp_path):
    with pytest.raises(DataError, match="data.path=.*nope: no such file or directory"):
        load_data({"name": "cifar10", "path": str(tmp_path / "nope")})
    folder = cifar10_dir / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_data({"name": "cifar10", "path": str(cifar10_dir)})
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR python batch"):
        load_data({"name": "cifar10", "path": str(cifar10_dir)})
    write_batch(folder / "data_batch_3", np.zeros((4, 3, 32, 32), dtype=np.uint8), [1, 2, 3])
    with pytest.raises(DataError, match="data_batch_3: 4 images but 3 labels"):
        load_data({"name": "cifar10", "path": str(cifar10_dir)})
    write_batch(folder / "data_batch_3", np.zeros((4, 3, 32, 32), dtype=np.uint8), [1, 2, 3, 12])
    with pytest.raises(DataError, match="labels 12 lie outside the 10 classes"):
        load_data({"name": "cifar10", "path": str(cifar10_dir)})
    with pytest.raises(DataError, match="data.path is not set"):
        load_data({"name": "cifar100"})
    write_batch(folder / "data_batch_3", np.zeros((4, 3, 32, 32), dtype=np.uint8), [1, 2, 3, 4])
    with pytest.raises(DataError, match="data.downsample=64 is invalid"):
        load_data({"name": "cifar10", "path": str(cifar10_dir), "downsample": 64})

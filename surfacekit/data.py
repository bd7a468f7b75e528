"""Offline data sets as in-memory tensors.

Sources: ``digits`` (scikit-learn's bundled 8x8 digits, the default), ``mnist1d`` (generated
locally), ``teacher`` (a random teacher MLP, regression or classification), ``mnist``
(MNIST-format IDX or NPZ files, MNIST or Fashion-MNIST, read from a directory the user names) and
``cifar10`` / ``cifar100`` (the python-pickle batches of the CIFAR distribution, or an .npz, from a
directory the user names). Image sources (digits, mnist, cifar) also record the image shape
(channels, height, width) for convolutional models; the tensors hold flattened examples.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


class DataError(ValueError):
    """A data source is missing, malformed or inconsistent (one-line message)."""


@dataclass
class Dataset:
    """Train and test splits: x [N, D] floating point, y [N] int64 labels or [N, C] targets.

    ``image_shape``: one example's shape as an image, (channels, height, width), for convolutional
    models (x holds the flattened examples, channel-major); None for feature vectors.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int
    classification: bool
    image_shape: tuple[int, ...] | None = None

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as a model takes it: ``image_shape``, or (D,) for feature vectors."""
        return tuple(self.image_shape) if self.image_shape is not None else (self.in_dim,)

    def to(self, device: str | torch.device, dtype: torch.dtype) -> "Dataset":
        """Move to ``device``; inputs (and regression targets) take ``dtype``."""
        ydt = None if self.classification else dtype
        return Dataset(
            self.name,
            self.x_train.to(device, dtype),
            self.y_train.to(device, ydt),
            self.x_test.to(device, dtype),
            self.y_test.to(device, ydt),
            self.num_outputs,
            self.classification,
            self.image_shape,
        )


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature standardization with training statistics; constant features get std 1."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-12] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def _split(x: np.ndarray, y: np.ndarray, train_size: int, test_size: int | None, seed: int):
    n = len(x)
    if not 0 < train_size < n:
        raise DataError(f"data.train_size={train_size} must lie in (0, {n}) for this data set")
    order = np.random.default_rng(seed).permutation(n)
    test_end = n if test_size is None else min(n, train_size + test_size)
    train, test = order[:train_size], order[train_size:test_end]
    return x[train], y[train], x[test], y[test]


def _digits(cfg: Mapping[str, Any]):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None]  # [N, 1, 8, 8]
    y = bunch.target.astype(np.int64)
    return _split(x, y, cfg.get("train_size", 1000), cfg.get("test_size"), cfg.get("split_seed", 0))


def _mnist1d(cfg: Mapping[str, Any]):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = cfg.get("num_samples", 5000)
    args.seed = cfg.get("split_seed", 42)
    d = make_dataset(args)
    x_train, y_train = d["x"].astype(np.float64), d["y"].astype(np.int64)
    x_test, y_test = d["x_test"].astype(np.float64), d["y_test"].astype(np.int64)
    size = cfg.get("train_size")
    if size is not None:
        _check_subset(size, len(x_train), "mnist1d")
        x_train, y_train = x_train[:size], y_train[:size]
    return x_train, y_train, x_test, y_test


def _check_subset(size: int, available: int, name: str) -> None:
    if not 0 < int(size) <= available:
        raise DataError(f"data.train_size={size} is invalid: data={name} has {available} training examples")


def _integer_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64; DataError for non-numeric, non-finite or non-integral labels (never truncated)."""
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise DataError(f"{where}: labels of type {y.dtype} are not integers (e.g. {y.ravel()[:3].tolist()})")
    bad = y[~np.isfinite(y) | (y != np.round(y))]
    if bad.size:
        shown = ", ".join(str(v) for v in np.unique(bad)[:5])
        raise DataError(f"{where}: labels must be integers; found {shown}")
    return y.astype(np.int64)


def _teacher(cfg: Mapping[str, Any]):
    gen = torch.Generator().manual_seed(int(cfg.get("teacher_seed", 0)))
    n_train, n_test = int(cfg.get("train_size", 1000)), int(cfg.get("test_size", 1000))
    dim, hidden, out = int(cfg.get("input_dim", 20)), int(cfg.get("teacher_width", 10)), int(cfg.get("outputs", 1))
    x = torch.randn(n_train + n_test, dim, generator=gen, dtype=torch.float64)
    w1 = torch.randn(dim, hidden, generator=gen, dtype=torch.float64) / dim**0.5
    w2 = torch.randn(hidden, out, generator=gen, dtype=torch.float64) / hidden**0.5
    clean = torch.tanh(x @ w1) @ w2
    if cfg.get("classification", False):
        y = clean.argmax(dim=1) if out > 1 else (clean[:, 0] > 0).long()
    else:
        y = clean + float(cfg.get("noise", 0.0)) * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    x, y = x.numpy(), y.numpy()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    except (OSError, struct.error, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but file holds {data.size} values")
    return data.reshape(shape)


def _npz_files(path: Path, expected: str) -> tuple[Path, list[Path]]:
    """(directory, .npz files) of ``data.path``: an .npz file itself, or a directory and the .npz files in it.

    Raises:
        DataError: ``path`` is neither a directory nor an .npz file.
    """
    if path.is_file() and path.suffix == ".npz":
        return path.parent, [path]
    if path.is_file():
        raise DataError(f"data.path={path}: a file that is not an .npz (expected a directory of {expected} or an .npz file)")
    if not path.is_dir():
        raise DataError(f"data.path={path}: no such file or directory (expected a directory of {expected} or an .npz file)")
    return path, sorted(path.glob("*.npz"))


def _mnist_arrays(directory: Path) -> dict[str, np.ndarray]:
    directory, npz = _npz_files(directory, "MNIST-format IDX files")
    if npz:
        import zipfile

        if not zipfile.is_zipfile(npz[0]):
            raise DataError(f"{npz[0]}: not an .npz archive (expected a zip of arrays {list(_IDX_NAMES)}, as numpy.savez writes)")
        try:
            with np.load(npz[0]) as f:
                return {k: f[k] for k in _IDX_NAMES}
        except (KeyError, OSError, ValueError) as exc:
            raise DataError(f"{npz[0]}: expected an NPZ with arrays {list(_IDX_NAMES)} ({exc})") from None
    arrays = {}
    for key, stem in _IDX_NAMES.items():
        found = [p for p in (directory / stem, directory / f"{stem}.gz") if p.exists()]
        if not found:
            raise DataError(f"{directory}: missing {stem}[.gz] (expected MNIST-format IDX files or an .npz)")
        arrays[key] = read_idx(found[0])
    return arrays


def _mnist(cfg: Mapping[str, Any]):
    path = cfg.get("path")
    if not path:
        raise DataError("data.path is not set: name the directory holding the MNIST-format files")
    arrays = _mnist_arrays(Path(path).expanduser())
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: {split} images {x.shape} and labels {y.shape} do not match [N, H, W] and [N]")
        if len(x) == 0:
            raise DataError(f"{path}: the {split} split is empty")
        images = torch.from_numpy(x.astype(np.float64) / 255.0)
        size = cfg.get("downsample")
        if size and not 1 <= int(size) <= min(x.shape[1:]):
            raise DataError(f"data.downsample={size} is invalid: expected an image size from 1 to {min(x.shape[1:])} "
                            f"(the images are {x.shape[1]}x{x.shape[2]}; larger values would upsample)")
        if size:
            images = torch.nn.functional.adaptive_avg_pool2d(images[:, None], int(size))[:, 0]
        out += [images[:, None].numpy(), _integer_labels(y, f"{path}: {split} split")]
    x_train, y_train, x_test, y_test = out
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: training images {arrays['x_train'].shape[1:]} and test images "
                        f"{arrays['x_test'].shape[1:]} differ in size")
    subset = cfg.get("train_size")
    if subset is not None:
        _check_subset(subset, len(x_train), "mnist")
        keep = np.random.default_rng(cfg.get("split_seed", 0)).permutation(len(x_train))[: int(subset)]
        x_train, y_train = x_train[keep], y_train[keep]
    return x_train, y_train, x_test, y_test


# CIFAR's python version: file names of the training and test batches, and the label key.
_CIFAR_FILES = {
    "cifar10": (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], ["test_batch"],
                "cifar-10-batches-py"),
    "cifar100": (["train"], ["test"], "cifar-100-python"),
}
_CIFAR_LABELS = {"cifar10": {"fine": b"labels"}, "cifar100": {"fine": b"fine_labels", "coarse": b"coarse_labels"}}
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as torchvision's Grayscale


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of CIFAR's python version: images [n, 3, 32, 32] uint8 and labels [n] int64.

    The file is a pickled dict with ``b"data"`` [n, 3072] (channel-major rows) and the labels under
    ``label_key``. Raises DataError for a file that is not such a batch or whose counts disagree.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch (a pickled dict with b'data' and {label_key!r}): "
                        f"{type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' has shape {data.shape}; a CIFAR batch holds [n, 3072] rows")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in _IDX_NAMES}
    except (KeyError, OSError, ValueError) as exc:
        raise DataError(f"{path}: expected an NPZ with arrays {list(_IDX_NAMES)} ({exc})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels last (keras layout) -> channels first
        if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) != len(y):
            raise DataError(f"{path}: {split} images {arrays[f'x_{split}'].shape} and labels {arrays[f'y_{split}'].shape} "
                            "do not match [N, 32, 32, 3] (or [N, 3, 32, 32]) and [N]")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return arrays


def _cifar_arrays(cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    name, path = cfg["name"], cfg.get("path")
    if not path:
        raise DataError(f"data.path is not set: name the directory holding the {name} files")
    directory = Path(path).expanduser()
    train_files, test_files, subdir = _CIFAR_FILES[name]
    if (directory / subdir).is_dir():
        directory = directory / subdir
    directory, npz = _npz_files(directory, f"{name}'s python batches")
    if npz:
        return _cifar_npz(npz[0])
    missing = [f for f in train_files + test_files if not (directory / f).is_file()]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (expected {name}'s python batches "
                        f"{train_files + test_files} or an .npz)")
    key = _CIFAR_LABELS[name][cfg.get("labels", "fine")]
    arrays = {}
    for split, files in (("train", train_files), ("test", test_files)):
        parts = [read_cifar_batch(directory / f, key) for f in files]
        arrays[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        arrays[f"y_{split}"] = np.concatenate([p[1] for p in parts])
    return arrays


def _cifar(cfg: Mapping[str, Any]):
    arrays = _cifar_arrays(cfg)
    rng = np.random.default_rng(cfg.get("split_seed", 0))
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        subset = cfg.get(f"{split}_size")
        if subset is not None:
            if not 0 < int(subset) <= len(x):
                raise DataError(f"data.{split}_size={subset} is invalid: expected 1 to {len(x)} (the {split} images)")
            keep = np.sort(rng.permutation(len(x))[: int(subset)])
            x, y = x[keep], y[keep]
        images = torch.from_numpy(x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0))
        if cfg.get("grayscale") and images.shape[1] == 3:
            images = torch.einsum("nchw,c->nhw", images, torch.tensor(GRAY_WEIGHTS, dtype=torch.float64))[:, None]
        size = cfg.get("downsample")
        if size and not 1 <= int(size) <= min(images.shape[2:]):
            raise DataError(f"data.downsample={size} is invalid: expected an image size from 1 to {min(images.shape[2:])}")
        if size:
            images = torch.nn.functional.adaptive_avg_pool2d(images, int(size))
        out += [images.numpy(), _integer_labels(y, f"data.name={cfg['name']}: {split} split")]
    return tuple(out)


def standardize_channels(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardization of images [N, C, H, W] with the training set's mean and std over
    examples and pixels; a constant channel gets std 1."""
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    std[std < 1e-12] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


_SOURCES = {"digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher, "mnist": _mnist, "cifar10": _cifar,
            "cifar100": _cifar}
_CLASSES = {"digits": 10, "mnist1d": 10, "mnist": 10, "cifar10": 10}  # teacher: its outputs (2 for a single output)
# How ``standardize`` works per source: per feature (pixel) by default, per channel for CIFAR.
_PER_CHANNEL = ("cifar10", "cifar100")


def _teacher_classes(cfg: Mapping[str, Any]) -> int:
    outputs = int(cfg.get("outputs", 1))
    return 2 if outputs == 1 else outputs


def _classes(name: str, cfg: Mapping[str, Any]) -> int:
    if name == "cifar100":
        return 20 if cfg.get("labels", "fine") == "coarse" else 100
    return _CLASSES.get(name) or _teacher_classes(cfg)


def _check_labels(name: str, y_train: np.ndarray, y_test: np.ndarray, classes: int) -> int:
    """Labels must be integers in 0..classes-1; returns the number of classes (the model's outputs)."""
    labels = np.concatenate([y_train, y_test])
    bad = np.unique(labels[(labels < 0) | (labels >= classes) | (labels != np.round(labels))])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise DataError(f"data.name={name}: labels {shown} lie outside the {classes} classes 0..{classes - 1}")
    return classes


def load_data(cfg: Mapping[str, Any]) -> Dataset:
    """Build the data set named by ``cfg["name"]`` (float64 tensors on the CPU, examples flattened;
    ``image_shape`` set for image sources).

    Raises:
        DataError: an unknown source, missing or malformed files, non-finite values, or labels outside
            the classes (one-line messages).
    """
    name = cfg.get("name")
    if name not in _SOURCES:
        raise DataError(f"data.name={name!r} is unknown; choose one of {sorted(_SOURCES)}")
    x_train, y_train, x_test, y_test = _SOURCES[name](cfg)
    for split, arr in (("training", x_train), ("test", x_test)):
        if len(arr) == 0:
            raise DataError(f"data.name={name}: the {split} split is empty")
    for label, arr in (("inputs", x_train), ("inputs", x_test), ("targets", y_train), ("targets", y_test)):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"data.name={name}: {label} contain NaN or inf")
    image_shape = tuple(int(d) for d in x_train.shape[1:]) if x_train.ndim == 4 else None
    if cfg.get("standardize", True) and name in _PER_CHANNEL:
        x_train, x_test = standardize_channels(x_train, x_test)
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    if cfg.get("standardize", True) and name not in _PER_CHANNEL:
        x_train, x_test = standardize(x_train, x_test)
    classification = y_train.ndim == 1
    if classification:
        num_outputs = _check_labels(name, y_train, y_test, _classes(name, cfg))
    else:
        y_train, y_test = y_train.reshape(len(y_train), -1), y_test.reshape(len(y_test), -1)
        num_outputs = y_train.shape[1]
    t = torch.from_numpy
    return Dataset(name, t(x_train), t(y_train), t(x_test), t(y_test), num_outputs, classification, image_shape)

"""Offline data sets as in-memory tensors.

Sources: ``digits`` (scikit-learn's bundled 8x8 digits, the default), ``mnist1d`` (generated
locally), ``teacher`` (a random teacher MLP, regression or classification) and ``mnist``
(MNIST-format IDX or NPZ files, MNIST or Fashion-MNIST, read from a directory the user names).
"""

from __future__ import annotations

import gzip
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
    """Train and test splits: x [N, D] floating point, y [N] int64 labels or [N, C] targets."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int
    classification: bool

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

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
    x = bunch.data.astype(np.float64)
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


def _mnist_arrays(directory: Path) -> dict[str, np.ndarray]:
    if not directory.is_dir():
        raise DataError(f"data.path={directory}: no such directory (expected MNIST-format IDX files or mnist.npz)")
    npz = sorted(directory.glob("*.npz"))
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
        out += [images.reshape(len(images), -1).numpy(), _integer_labels(y, f"{path}: {split} split")]
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


_SOURCES = {"digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher, "mnist": _mnist}
_CLASSES = {"digits": 10, "mnist1d": 10, "mnist": 10}  # teacher: its outputs (2 for a single output)


def _teacher_classes(cfg: Mapping[str, Any]) -> int:
    outputs = int(cfg.get("outputs", 1))
    return 2 if outputs == 1 else outputs


def _check_labels(name: str, y_train: np.ndarray, y_test: np.ndarray, classes: int) -> int:
    """Labels must be integers in 0..classes-1; returns the number of classes (the model's outputs)."""
    labels = np.concatenate([y_train, y_test])
    bad = np.unique(labels[(labels < 0) | (labels >= classes) | (labels != np.round(labels))])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise DataError(f"data.name={name}: labels {shown} lie outside the {classes} classes 0..{classes - 1}")
    return classes


def load_data(cfg: Mapping[str, Any]) -> Dataset:
    """Build the data set named by ``cfg["name"]`` (float64 tensors on the CPU)."""
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
    if cfg.get("standardize", True):
        x_train, x_test = standardize(x_train, x_test)
    classification = y_train.ndim == 1
    if classification:
        num_outputs = _check_labels(name, y_train, y_test, _CLASSES.get(name) or _teacher_classes(cfg))
    else:
        y_train, y_test = y_train.reshape(len(y_train), -1), y_test.reshape(len(y_test), -1)
        num_outputs = y_train.shape[1]
    t = torch.from_numpy
    return Dataset(name, t(x_train), t(y_train), t(x_test), t(y_test), num_outputs, classification)

"""Training data for fine-tuning: Fashion-MNIST (Debian package), scikit-learn's digits, or an ``.npz``.

Needs numpy only (scikit-learn for ``digits``); no downloads. Images are float32 NCHW, labels int64.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import attrs
import numpy as np

from tvm_mcu.errors import BadOptionError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# The normalisation the demo model was trained with (examples/train_demo.py): x = (pixel / 255 - MEAN) / STD.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
# Seed of the 80/20 train/test split for data sets that come without one (digits, an npz with x and y).
SPLIT_SEED = 0
SPLIT_TRAIN = 0.8

_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


@attrs.frozen
class Dataset:
    """A classification data set: float32 NCHW images and int64 labels, split into train and test."""

    name: str
    x_train: np.ndarray = attrs.field(eq=False, repr=False)
    y_train: np.ndarray = attrs.field(eq=False, repr=False)
    x_test: np.ndarray = attrs.field(eq=False, repr=False)
    y_test: np.ndarray = attrs.field(eq=False, repr=False)

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1


def load_dataset(spec: str, input_shape: tuple[int, ...], *, limit: int | None = None) -> Dataset:
    """Load ``spec`` for a model whose input is ``input_shape`` (batch first).

    ``spec`` is ``"fashion-mnist"`` (package ``dataset-fashion-mnist``, normalised as the demo model
    expects), ``"digits"`` (scikit-learn's 8x8 digits, values / 16, seeded 80/20 split) or the path of an
    ``.npz`` holding ``x_train, y_train, x_test, y_test`` or just ``x, y`` (then a seeded 80/20 split).
    ``limit`` keeps the first ``limit`` training samples (quick runs); the test set stays whole.

    Raises BadOptionError when the data are missing, malformed, or their per-sample shape is not
    ``input_shape[1:]``.
    """
    if spec == "fashion-mnist":
        data = _fashion_mnist()
    elif spec == "digits":
        data = _digits()
    elif spec.endswith(".npz") or Path(spec).is_file():
        data = _npz(Path(spec))
    else:
        raise BadOptionError(f"unknown data set '{spec}' (expected fashion-mnist, digits or an .npz file)")
    want = tuple(input_shape[1:])
    got = tuple(data.x_train.shape[1:])
    if got != want:
        raise BadOptionError(
            f"data set '{data.name}' has samples of shape {got}; the model's input {tuple(input_shape)} "
            f"takes samples of shape {want}"
        )
    if limit is not None:
        if limit < 1:
            raise BadOptionError(f"limit {limit}: give a positive number of training samples")
        data = attrs.evolve(data, x_train=data.x_train[:limit], y_train=data.y_train[:limit])
    return data


def _read_idx(path: Path) -> np.ndarray:
    """A gzip-compressed IDX file of unsigned bytes (the MNIST format) as a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise BadOptionError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist() -> Dataset:
    data_dir = FASHION_MNIST_DIR
    missing = [n for n in _FASHION_FILES.values() if not (data_dir / n).is_file()]
    if missing:
        raise BadOptionError(
            f"Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)}): "
            "sudo apt-get install dataset-fashion-mnist"
        )
    arrays = {key: _read_idx(data_dir / name) for key, name in _FASHION_FILES.items()}

    def normalise(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / np.float32(255.0)
        x = (x - np.float32(FASHION_MNIST_MEAN)) / np.float32(FASHION_MNIST_STD)
        return x[:, None, :, :]

    return Dataset(
        "fashion-mnist",
        normalise(arrays["x_train"]),
        arrays["y_train"].astype(np.int64),
        normalise(arrays["x_test"]),
        arrays["y_test"].astype(np.int64),
    )


def _digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise BadOptionError("the digits data set needs scikit-learn: pip install -e '.[train]'") from e
    digits = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    return _split("digits", x, np.asarray(digits.target))


def _npz(path: Path) -> Dataset:
    if not path.is_file():
        raise BadOptionError(f"data file {path} does not exist")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    four = ("x_train", "y_train", "x_test", "y_test")
    if all(k in arrays for k in four):
        x_train, y_train, x_test, y_test = (arrays[k] for k in four)
        data = Dataset(path.name, *(_images(x_train), _labels(y_train), _images(x_test), _labels(y_test)))
    elif "x" in arrays and "y" in arrays:
        data = _split(path.name, _images(arrays["x"]), arrays["y"])
    else:
        raise BadOptionError(
            f"{path} holds {sorted(arrays)}; expected x_train, y_train, x_test, y_test or x, y"
        )
    for x, y, part in ((data.x_train, data.y_train, "train"), (data.x_test, data.y_test, "test")):
        if len(x) != len(y):
            raise BadOptionError(f"{path}: {len(x)} {part} samples but {len(y)} labels")
    return data


def _images(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise BadOptionError(f"labels must be non-negative integers of shape (N,), got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _split(name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    """A fixed, seeded 80/20 train/test split."""
    y = _labels(y)
    if len(x) != len(y):
        raise BadOptionError(f"data set '{name}': {len(x)} samples but {len(y)} labels")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    cut = int(round(SPLIT_TRAIN * len(x)))
    train, test = order[:cut], order[cut:]
    return Dataset(name, x[train], y[train], x[test], y[test])

"""Training data: Fashion-MNIST from the Debian package, scikit-learn's digits, and .npz files.

Fashion-MNIST is a precondition of these tests, not a reason to skip them: the project's set-up installs
the package ``dataset-fashion-mnist``; without it the first test fails saying so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_mcu
from tvm_mcu.errors import BadOptionError
from tvm_mcu.train import data
from tvm_mcu.train.data import load_dataset

SAMPLES = Path(tvm_mcu.__file__).parent / "data" / "demo" / "samples.npz"


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    assert data.FASHION_MNIST_DIR.is_dir(), (
        f"{data.FASHION_MNIST_DIR} is missing: sudo apt-get install dataset-fashion-mnist"
    )
    return load_dataset("fashion-mnist", (1, 1, 28, 28))


def test_fashion_mnist_shapes_and_dtypes(fashion: data.Dataset) -> None:
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.x_train.dtype == fashion.x_test.dtype == np.float32
    assert fashion.y_train.dtype == fashion.y_test.dtype == np.int64
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10
    assert fashion.num_classes == 10


def test_fashion_mnist_normalisation_is_the_demo_models(fashion: data.Dataset) -> None:
    """(pixel / 255 - 0.2860) / 0.3530: bit-identical to the samples shipped with the demo model."""
    with np.load(SAMPLES) as samples:
        np.testing.assert_array_equal(fashion.x_test[:16], samples["x"])
        np.testing.assert_array_equal(fashion.y_test[:16], samples["y"])
    assert fashion.x_train.min() == pytest.approx((0.0 - 0.2860) / 0.3530, rel=1e-6)
    assert fashion.x_train.max() == pytest.approx((1.0 - 0.2860) / 0.3530, rel=1e-6)
    assert abs(float(fashion.x_train.mean())) < 0.01 and abs(float(fashion.x_train.std()) - 1.0) < 0.01
    pixels = (fashion.x_train[:100].astype(np.float64) * 0.3530 + 0.2860) * 255.0
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)


def test_limit_keeps_the_first_training_samples(fashion: data.Dataset) -> None:
    small = load_dataset("fashion-mnist", (1, 1, 28, 28), limit=300)
    np.testing.assert_array_equal(small.x_train, fashion.x_train[:300])
    np.testing.assert_array_equal(small.y_train, fashion.y_train[:300])
    assert len(small.x_test) == 10000
    with pytest.raises(BadOptionError, match="limit 0"):
        load_dataset("fashion-mnist", (1, 1, 28, 28), limit=0)


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(BadOptionError, match="sudo apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", (1, 1, 28, 28))


def test_digits_seeded_split() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    a = load_dataset("digits", (1, 1, 8, 8))
    b = load_dataset("digits", (1, 1, 8, 8))
    assert (len(a.x_train), len(a.x_test)) == (1438, 359)  # 80/20 of 1797
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0  # values / 16
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    # The two parts are a partition of the data set: every image once, with its label.
    both = np.concatenate([a.x_train, a.x_test]).reshape(1797, 64) * 16
    labels = np.concatenate([a.y_train, a.y_test])
    order = np.lexsort(both.T[::-1])
    expected = np.lexsort(digits.data.T[::-1])
    np.testing.assert_array_equal(both[order], digits.data[expected])
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(digits.target))


def test_missing_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(BadOptionError, match=r"pip install -e '\.\[train\]'"):
        load_dataset("digits", (1, 1, 8, 8))


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 5, 5)), rng.integers(0, 4, n)


def test_npz_with_a_train_test_split(tmp_path: Path) -> None:
    (x_train, y_train), (x_test, y_test) = _arrays(12, 0), _arrays(5, 1)
    path = tmp_path / "split.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    got = load_dataset(str(path), (1, 2, 5, 5))
    assert got.name == "split.npz"
    np.testing.assert_array_equal(got.x_train, x_train.astype(np.float32))
    np.testing.assert_array_equal(got.y_test, y_test)
    assert got.x_test.dtype == np.float32 and got.y_train.dtype == np.int64


def test_npz_with_x_and_y_is_split_80_20(tmp_path: Path) -> None:
    x, y = _arrays(20, 2)
    path = tmp_path / "all.npz"
    np.savez(path, x=x, y=y)
    got = load_dataset(str(path), (1, 2, 5, 5))
    assert (len(got.x_train), len(got.x_test)) == (16, 4)
    order = np.random.default_rng(data.SPLIT_SEED).permutation(20)
    np.testing.assert_array_equal(got.x_train, x[order[:16]].astype(np.float32))
    np.testing.assert_array_equal(got.y_test, y[order[16:]])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 2, 5, 5))}, "expected x_train, y_train, x_test, y_test or x, y"),
        ({"x": np.zeros((4, 2, 5, 5)), "y": np.array([0, 1, -1, 2])}, "non-negative integers"),
        ({"x": np.zeros((4, 2, 5, 5)), "y": np.array([0.0, 1.0, 1.0, 2.0])}, "non-negative integers"),
        ({"x": np.zeros((4, 2, 5, 5)), "y": np.array([0, 1, 2])}, "4 samples but 3 labels"),
    ],
    ids=["unknown_keys", "negative_label", "float_labels", "too_few_labels"],
)
def test_malformed_npz_is_refused(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(BadOptionError, match=message):
        load_dataset(str(path), (1, 2, 5, 5))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(
        BadOptionError, match=r"samples of shape \(1, 8, 8\).*\(1, 3, 32, 32\).*\(3, 32, 32\)"
    ):
        load_dataset("digits", (1, 3, 32, 32))


def test_unknown_data_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match="unknown data set 'mnist'"):
        load_dataset("mnist", (1, 1, 28, 28))
    with pytest.raises(BadOptionError, match="missing.npz does not exist"):
        load_dataset(str(tmp_path / "missing.npz"), (1, 1, 28, 28))

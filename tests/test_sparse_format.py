"""The compiler's choice of storage per convolution weight: dense, CSR over filterlets or over single
weights, whichever takes the least flash (filterlets within a few bytes: the faster kernel)."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_mcu import compiler
from tvm_mcu.passes.tir import sparse_element_kernels, sparse_kernels
from tvm_mcu.passes.tir.sparse_elements import ATTR_WANTED as ELEMENTS
from tvm_mcu.passes.tir.sparse_filterlets import ATTR_WANTED as FILTERLETS


def _weights(shape: tuple[int, ...], *, filterlets: float = 1.0, density: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.integers(1, 128, shape) * rng.choice([-1, 1], shape)
    w = w * (rng.random(shape[:3]) < filterlets)[..., None] * (rng.random(shape) < density)
    return w.astype(np.int8)


def test_weights_pruned_element_wise_take_element_csr() -> None:
    w = _weights((16, 3, 3, 32), density=0.3)
    assert compiler._sparse_format(w) == ELEMENTS
    assert sparse_element_kernels.blob_bytes(w) < w.size


def test_weights_pruned_by_filterlets_take_filterlet_csr() -> None:
    w = _weights((16, 3, 3, 32), filterlets=0.4)
    assert compiler._sparse_format(w) == FILTERLETS


def test_filterlets_within_the_slack_are_preferred() -> None:
    """Filterlets kept at 40 %, each keeping a fifth of its values: element CSR is smaller, by more
    than the slack; with a slack as large as the difference the faster filterlet kernel wins."""
    w = _weights((16, 3, 3, 32), filterlets=0.4, density=0.2)
    gap = sparse_kernels.compress_blob(w).size - sparse_element_kernels.blob_bytes(w)
    assert gap > compiler.FILTERLET_SLACK_BYTES
    assert compiler._sparse_format(w) == ELEMENTS
    with pytest.MonkeyPatch.context() as m:
        m.setattr(compiler, "FILTERLET_SLACK_BYTES", gap)
        assert compiler._sparse_format(w) == FILTERLETS


@pytest.mark.parametrize(
    "w",
    [
        _weights((16, 3, 3, 32)),  # no zeros
        _weights((16, 3, 3, 32), density=0.55),  # element CSR larger than dense
        _weights((16, 1, 1, 32), density=0.1),  # 1x1: no runs call to rewrite
        _weights((16, 3, 3, 4), density=0.1),  # taps of 4 input channels: the window kernel's
        _weights((16, 3, 3, 32), density=0.1).astype(np.int16),  # not int8
    ],
    ids=["dense", "denser-than-half", "pointwise", "few-channels", "int16"],
)
def test_weights_stay_dense(w: np.ndarray) -> None:
    assert compiler._sparse_format(w) is None


def test_pointwise_weights_pruned_element_wise_take_element_csr_rows() -> None:
    """A 1x1 convolution has no runs call (no filterlet kernel), but its output channels are a dense
    layer's rows at each pixel: element CSR where that is smaller, as for a dense layer."""
    w = _weights((16, 1, 1, 32), density=0.1)
    assert compiler._conv_sparse_format(w) == ELEMENTS
    assert compiler._conv_sparse_format(_weights((16, 1, 1, 32), density=0.6)) is None  # larger
    assert compiler._conv_sparse_format(_weights((16, 1, 1, 4), density=0.1)) is None  # 4 channels
    assert compiler._conv_sparse_format(_weights((16, 3, 3, 32), filterlets=0.4)) == FILTERLETS
    assert compiler.may_store_elements(1, 8) and not compiler.may_store_sparse(1, 8)
    assert not compiler.may_store_elements(9, 1)  # a depthwise or single-channel window


def _float_weights(shape: tuple[int, ...], *, filterlets: float = 1.0, density: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape)
    w = w * (rng.random(shape[:3]) < filterlets)[..., None] * (rng.random(shape) < density)
    return w.astype(np.float32)


def test_float_weights_pruned_by_filterlets_take_filterlet_csr() -> None:
    w = _float_weights((16, 3, 3, 12), filterlets=0.4)
    assert compiler._sparse_format(w) == FILTERLETS
    blob = sparse_kernels.compress_blob(w)
    kept = int(sparse_kernels.filterlets_kept(w).sum())
    # The kept float values plus 2 B per kept filterlet and per channel (and one row pointer and at most
    # 7 B of alignment more): the flash bound.
    assert blob.size <= 4 * 12 * kept + 2 * kept + 2 * 16 + 2 + 7 < w.nbytes


@pytest.mark.parametrize(
    "w",
    [
        _float_weights((16, 3, 3, 12), filterlets=0.9),  # more than SPARSE_MAX_KEPT of them kept
        _float_weights((16, 3, 3, 12), density=0.1),  # zeros anywhere: no float element CSR
        _float_weights((16, 1, 1, 12), filterlets=0.2),  # 1x1: no runs call to rewrite
        _float_weights((16, 3, 3, 4), filterlets=0.2),  # taps of 4 input channels
        np.where(_float_weights((16, 3, 3, 12), filterlets=0.3) != 0, np.float32(np.inf), 0).astype(
            np.float32
        ),
        _float_weights((16, 3, 3, 12), filterlets=0.3).astype(np.float64),  # not float32
    ],
    ids=["kept-most", "element-pruned", "pointwise", "few-channels", "not-finite", "float64"],
)
def test_float_weights_stay_dense(w: np.ndarray) -> None:
    assert compiler._sparse_format(w) is None
    assert compiler._conv_sparse_format(w) is None


@pytest.mark.parametrize(("low", "high", "per_byte"), [(-8, 7, 2), (-2, 1, 4)], ids=["int4", "int2"])
def test_a_sparse_format_must_beat_the_packed_dense_weights(low: int, high: int, per_byte: int) -> None:
    """Weights whose values fit int4 (int2) are stored dense two (four) per byte: element CSR, 2 B a kept
    weight, is smaller than a byte a value at 30 % kept but not than the packed weights. Ternary
    weights from prune --weights int2 had been stored element CSR, four times the crumbs' bytes."""
    rng = np.random.default_rng(1)
    w = (rng.integers(low, high + 1, (16, 3, 3, 32)) * (rng.random((16, 3, 3, 32)) < 0.3)).astype(np.int8)
    assert sparse_element_kernels.blob_bytes(w) < w.size
    assert sparse_element_kernels.blob_bytes(w) > w.size / per_byte
    assert compiler._sparse_format(w, pack=False) == ELEMENTS
    assert compiler._sparse_format(w) is None
    assert compiler._dense_sparse_format(w.reshape(16, -1), pack=False) == ELEMENTS
    assert compiler._dense_sparse_format(w.reshape(16, -1)) is None

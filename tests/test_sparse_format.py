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

"""The short requantisations (tvmmcu_fp_mbqm_bounded, and tvmmcu_fp_mbqm_right for right shifts) equal
TFLite's MultiplyByQuantizedMultiplier (tvmmcu_fp_mbqm) wherever the compiler lets a layer use them, on
the host and on the cores."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.passes.relax.integer import emit, fixed_point
from tvm_mcu.passes.relax.integer.values import QTensor

# The functions on n values: out[3k] the generic, out[3k + 1] the short one, out[3k + 2] the right-shift
# one (the generic where the shift is not a right shift).
BOTH_C = """\
#include "model.h"
#include "tvmmcu_fixed_point.h"

static void both(const int32_t *v, int32_t n, int32_t *out)
{
    for (int32_t k = 0; k < n; ++k) {
        const int32_t x = v[3 * k], m = v[3 * k + 1], s = v[3 * k + 2];
        out[3 * k] = tvmmcu_fp_mbqm(x, m, s);
        out[3 * k + 1] = tvmmcu_fp_mbqm_bounded(x, m, s);
        out[3 * k + 2] = s <= -1 ? tvmmcu_fp_mbqm_right(x, m, -s - 1) : tvmmcu_fp_mbqm(x, m, s);
    }
}

int32_t tvmmcu_model_run(const void *input, void *output)
{
    both((const int32_t *)input, TVMMCU_INPUT_BYTES / 12, (int32_t *)output);
    return 0;
}

int32_t host_both(const int32_t *v, int32_t n, int32_t *out)
{
    both(v, n, out);
    return 0;
}
"""


def _cases(n: int, seed: int = 0) -> np.ndarray:
    """(x, multiplier, shift) triples that satisfy the bound, many at its edge, ties included."""
    rng = np.random.default_rng(seed)
    m = rng.integers(1 << 30, (1 << 31) - 1, n, endpoint=True)
    m[:4] = [1 << 30, (1 << 31) - 1, 1 << 30, 1518500250]
    s = rng.integers(-31, 8, n)
    left = np.maximum(s, 0) + 1
    limit = ((1 << 31) - 1) >> left  # the largest |x| the bound allows
    x = (rng.random(n) * 2 - 1) * limit
    x = np.rint(x).astype(np.int64)
    edge = rng.random(n) < 0.3
    x[edge] = np.where(rng.random(edge.sum()) < 0.5, 1, -1) * limit[edge]
    small = rng.random(n) < 0.2  # small values: exact ties of the final shift are common
    x[small] = rng.integers(-64, 65, small.sum())
    assert fixed_point.fits_bounded(np.abs(x), s)
    return np.stack([x, m, s], axis=1).astype(np.int32)


def _write_lib(directory: Path, n: int) -> Path:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=12 * n, outputs=12 * n))
    (directory / "model.c").write_text(BOTH_C)
    (directory / fixed_point.HEADER_NAME).write_text(fixed_point.HEADER_TEXT)
    return directory


def test_equal_to_the_generic_path_on_the_host(tmp_path: Path) -> None:
    n = 20000
    lib = _write_lib(tmp_path / "lib", n)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "both.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    fn = ctypes.CDLL(str(so)).host_both
    cases = _cases(n)
    out = np.zeros(3 * n, np.int32)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    fn(cases.ctypes.data, n, out.ctypes.data)
    generic, short, right = out[0::3], out[1::3], out[2::3]
    np.testing.assert_array_equal(short, generic)
    np.testing.assert_array_equal(right, generic)
    assert len(np.unique(generic)) > n // 2  # not a degenerate sample
    assert np.count_nonzero(cases[:, 2] <= -1) > n // 2  # the right-shift path mostly taken


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385"])
def test_equal_to_the_generic_path_on_the_cores(board: str, tmp_path: Path) -> None:
    """SMMULR on the cores with DSP (M4, M7), the 64-bit product without (M3)."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    n = 600
    fw = build_firmware(_write_lib(tmp_path / "lib", n), load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    cases = _cases(n, seed=1)
    out = np.frombuffer(run_firmware(fw, cases.tobytes(), 12 * n).output, np.int32)
    np.testing.assert_array_equal(out[1::3], out[0::3])
    np.testing.assert_array_equal(out[2::3], out[0::3])


def test_a_layer_takes_the_short_path_only_when_its_accumulators_are_bounded() -> None:
    x8 = QTensor(None, 0.1, 0, "int8")
    xu = QTensor(None, 0.1, 128, "uint8")
    w = np.full((4, 1, 1, 100), 127, np.int8)  # O=4, 100 taps: |acc| <= 128 * 12700 = 1,625,600
    bias = np.array([0, -5, 5, 2**20], np.int32)
    right_shift = np.full(4, -7)
    assert emit._bounded(x8, w, 0, bias, 0, right_shift)
    # A left shift of 9: 2**10 * (1,625,600 + 2**20) > 2**31.
    assert not emit._bounded(x8, w, 0, bias, 0, np.array([-1, -1, -1, 9]))
    # uint8 data doubles the bound: at a left shift of 9, 2**10 * 128 * 12700 fits, 2**10 * 255 * 12700
    # does not.
    assert emit._bounded(x8, w[:3], 0, bias[:3], 0, np.full(3, 9))
    assert not emit._bounded(xu, w[:3], 0, bias[:3], 0, np.full(3, 9))
    # The pre-shift of a fine float bias scales the products.
    assert not emit._bounded(x8, w, 0, bias, 12, right_shift)


def test_a_layer_takes_the_right_shift_path_only_when_every_shift_is_one_to_31_bits_right() -> None:
    assert fixed_point.right_shifts(np.array([-1, -7, -31]))
    assert not fixed_point.right_shifts(np.array([-1, 0, -7]))
    assert not fixed_point.right_shifts(np.array([-1, 2]))
    assert not fixed_point.right_shifts(np.array([-32]))
    assert not fixed_point.right_shifts(np.array([], np.int64))


def test_the_bound_on_a_requantised_value_holds_at_the_edges() -> None:
    """largest_product (the ADD kernel's proof that its sum takes the short path) bounds TFLite's
    MultiplyByQuantizedMultiplier of every value up to the given magnitude."""
    from tvm_mcu.passes.relax.integer.params import _rdbpot, _srdhm

    rng = np.random.default_rng(3)
    for _ in range(300):
        largest = int(rng.integers(1, 1 << 28))
        m = int(rng.integers(1 << 30, 1 << 31))
        s = int(rng.integers(-20, 3))
        bound = fixed_point.largest_product(largest, m, s)
        for x in (largest, -largest, largest - 1, -(largest - 1)):
            if abs(x << max(s, 0)) >= 1 << 31:
                continue
            got = _rdbpot(_srdhm(x << max(s, 0), m), max(-s, 0))
            assert abs(got) <= bound, (x, m, s, got, bound)
            if abs(x) == largest:
                assert bound - abs(got) <= 3  # and is tight


def test_the_right_shift_path_is_tflite_rounding_only() -> None:
    """ONNX's half-to-even rounding takes the shift as it is: a layer must never hand it -shift."""
    from tvm_mcu._tvm import tirx

    x = tirx.Var("x", "int32")
    for rounding, bounded in ((fixed_point.ONNX, True), (fixed_point.TFLITE, False)):
        with pytest.raises(ValueError, match="right-shift"):
            fixed_point.multiply_by_quantized_multiplier(x, 1 << 30, 3, rounding, bounded=bounded, right=True)


SAT_C = """\
#include "model.h"
#include "tvmmcu_fixed_point.h"

static void sat(const int32_t *v, int32_t n, int32_t *out)
{
    for (int32_t k = 0; k < n; ++k) {
        out[2 * k] = tvmmcu_fp_sat_s8(v[k]);
        out[2 * k + 1] = tvmmcu_fp_sat_u8(v[k]);
    }
}

int32_t tvmmcu_model_run(const void *input, void *output)
{
    sat((const int32_t *)input, TVMMCU_INPUT_BYTES / 4, (int32_t *)output);
    return 0;
}
"""


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385", "mps2-an521"])
def test_saturation_to_8_bits_on_the_cores(board: str, tmp_path: Path) -> None:
    """SSAT/USAT where the core has them (M4, M3, M33), the C comparisons elsewhere: the same values."""
    from tests.targets.test_firmware_on_emulator import MODEL_H
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    values = np.concatenate([np.arange(-300, 300), [-(2**31), 2**31 - 1, -129, 128, 255, 256]]).astype(
        np.int32
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "model.h").write_text(MODEL_H.format(inputs=4 * values.size, outputs=8 * values.size))
    (lib / "model.c").write_text(SAT_C)
    (lib / fixed_point.HEADER_NAME).write_text(fixed_point.HEADER_TEXT)
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    out = np.frombuffer(run_firmware(fw, values.tobytes(), 8 * values.size).output, np.int32)
    np.testing.assert_array_equal(out[0::2], np.clip(values, -128, 127))
    np.testing.assert_array_equal(out[1::2], np.clip(values, 0, 255))


def test_one_half_of_a_shifted_value_is_an_exact_shift() -> None:
    """The ADD kernel's larger-scale input (multiplier 2**30, one half) is scaled by a plain shift:
    TFLite's two roundings leave v * 2**20 * (1/2) * 2**s exact for s <= 0 down to -19."""
    from tvm_mcu.passes.relax.integer.params import _rdbpot, _srdhm

    for v in range(-255, 256):
        for s in range(-19, 1):
            assert _rdbpot(_srdhm(v << 20, 1 << 30), -s) == v << (19 + s)


# ONNX's one rounding with the scale known when compiling: out[k] = tvmmcu_fp_mbqm_even(x, m, S) with S a
# literal (GCC's inline path for S >= 0, a scale of 1/2 or more) for each shift S the case names.
EVEN_SHIFTS = (0, 1, 5, 17, 30, -1, -20)
_EVEN_CASES = "\n".join(
    f"        case {k}: out[k] = tvmmcu_fp_mbqm_even(x, m, {s}); break;" for k, s in enumerate(EVEN_SHIFTS)
)
EVEN_C = (
    """\
#include "model.h"
#include "tvmmcu_fixed_point.h"

static void even(const int32_t *v, int32_t n, int32_t *out)
{
    for (int32_t k = 0; k < n; ++k) {
        const int32_t x = v[2 * k], m = v[2 * k + 1];
        switch (k % COUNT) {
"""
    + _EVEN_CASES
    + """
        }
    }
}

int32_t tvmmcu_model_run(const void *input, void *output)
{
    even((const int32_t *)input, TVMMCU_INPUT_BYTES / 8, (int32_t *)output);
    return 0;
}

int32_t host_even(const int32_t *v, int32_t n, int32_t *out)
{
    even(v, n, out);
    return 0;
}
"""
).replace("COUNT", str(len(EVEN_SHIFTS)))


def _even_cases(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, multiplier) pairs, exact ties and saturating products included, and the values ONNX's
    rounding gives: x * m / 2**(31 - S) rounded half to even, saturated to int32."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-(2**31), 2**31, n, dtype=np.int64)
    m = rng.integers(1 << 30, 1 << 31, n, dtype=np.int64)
    small = rng.random(n) < 0.4  # small values: exact ties
    x[small] = rng.integers(-9, 10, small.sum())
    m[small] = 1 << 30  # x * 2**30 / 2**(31 - S): ties for S = 0
    want = []
    for k, (xv, mv) in enumerate(zip(x.tolist(), m.tolist(), strict=True)):
        total = 31 - EVEN_SHIFTS[k % len(EVEN_SHIFTS)]
        value = xv * mv
        q, r = divmod(value, 1 << total)  # floor
        half = 1 << (total - 1)
        q += int(r > half or (r == half and q % 2 == 1))
        want.append(max(-(2**31), min(2**31 - 1, q)))
    return np.stack([x, m], axis=1).astype(np.int32), np.array(want, np.int64).astype(np.int32)


def _write_even(directory: Path, n: int) -> Path:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=8 * n, outputs=4 * n))
    (directory / "model.c").write_text(EVEN_C)
    (directory / fixed_point.HEADER_NAME).write_text(fixed_point.HEADER_TEXT)
    return directory


def test_half_to_even_with_a_constant_scale_on_the_host(tmp_path: Path) -> None:
    n = 14000
    lib = _write_even(tmp_path / "lib", n)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "even.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    fn = ctypes.CDLL(str(so)).host_even
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    cases, want = _even_cases(n, seed=2)
    out = np.zeros(n, np.int32)
    fn(cases.ctypes.data, n, out.ctypes.data)
    np.testing.assert_array_equal(out, want)
    assert np.count_nonzero((want == 2**31 - 1) | (want == -(2**31))) > n // 20  # saturation reached


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385"])
def test_half_to_even_with_a_constant_scale_on_the_cores(board: str, tmp_path: Path) -> None:
    """The inline path for a scale of 1/2 or more and the 32-bit-step one, on the M4 and the M3."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    n = 700
    fw = build_firmware(_write_even(tmp_path / "lib", n), load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    cases, want = _even_cases(n, seed=3)
    out = np.frombuffer(run_firmware(fw, cases.tobytes(), 4 * n).output, np.int32)
    np.testing.assert_array_equal(out, want)

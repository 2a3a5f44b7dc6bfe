"""InlineFixedPoint's TIR against the header's C: every helper, built by TVM (LLVM and its C backend) after
TVM's TIR pipeline, equals ``fixed_point.HEADER_TEXT`` compiled by host gcc, bit for bit, on seeded random
inputs of each helper's domain, the corner cases (INT32_MIN, INT32_MAX, 0, +-1, ties, every shift count)
and constant arguments (which TVM folds, and for which gcc takes the header's constant-only branch)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.host import CFLAGS
from tvm_mcu import pipeline
from tvm_mcu._tvm import te, tirx, tvm
from tvm_mcu.passes.relax.integer.fixed_point import HEADER_TEXT, HELPER_PREFIX
from tvm_mcu.passes.tir.inline_fixed_point import HELPERS

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
CORNERS = np.array(
    [INT32_MIN, INT32_MIN + 1, -(2**30), -65536, -257, -129, -128, -2, -1, 0, 1, 2, 127, 128, 255, 2**30]
    + [INT32_MAX - 1, INT32_MAX],
    np.int64,
)
RANDOM = 3000  # random values per argument, besides the corners and the domain's every shift count


def _int32s(rng: np.random.Generator) -> np.ndarray:
    """Every corner, random int32 values, and corners again in random positions (pairs of corners)."""
    return np.concatenate(
        [CORNERS, rng.integers(INT32_MIN, INT32_MAX, RANDOM, endpoint=True), rng.choice(CORNERS, RANDOM)]
    )


def _counts(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    """``n`` shift counts: every count from ``lo`` to ``hi`` first, then random ones."""
    every = np.arange(lo, hi + 1)
    return np.concatenate([every, rng.integers(lo, hi, n - len(every), endpoint=True)])


def _int64s(rng: np.random.Generator, n: int) -> np.ndarray:
    """Full-range int64 values, and int32 products (the requantisations' values)."""
    half = n // 2
    products = _int32s(rng)[: n - half] * rng.integers(1, 2**31, n - half)
    return np.concatenate([rng.integers(-(2**63), 2**63 - 1, half, endpoint=True), products])


# Helper -> its arguments on its C's domain (fixed_point.HEADER_TEXT's comments).
DOMAINS: dict[str, Callable[[np.random.Generator], list[np.ndarray]]] = {
    "srdhm": lambda r: [_int32s(r), _int32s(r)],
    "sat_s8": lambda r: [_int32s(r)],
    "sat_u8": lambda r: [_int32s(r)],
    "rdbpot": lambda r: [_int32s(r), _counts(r, 0, 31, len(_int32s(r)))],
    "mbqm": lambda r: [_int32s(r), _int32s(r), _counts(r, -31, 31, len(_int32s(r)))],
    "mbqm_bounded": lambda r: [_int32s(r), _int32s(r), _counts(r, -31, 30, len(_int32s(r)))],
    "mbqm_right": lambda r: [_int32s(r), _int32s(r), _counts(r, 0, 30, len(_int32s(r)))],
    "round_even": lambda r: [_int64s(r, len(_int32s(r))), _counts(r, -3, 62, len(_int32s(r)))],
    "mbqm_even": lambda r: [_int32s(r), _int32s(r), _counts(r, -32, 40, len(_int32s(r)))],
    "div_round_even": lambda r: [
        _int64s(r, len(_int32s(r))),
        np.concatenate(
            [r.integers(1, 2**62 - 1, len(_int32s(r)) // 2), r.integers(1, 1000, len(_int32s(r)))]
        )[: len(_int32s(r))],
    ],
    "saturating_lshift": lambda r: [_int32s(r), _counts(r, 0, 31, len(_int32s(r)))],
    "clz": lambda r: [_int32s(r)],
    "one_over_one_plus_x": lambda r: [_int32s(r)],
    "reciprocal_scale": lambda r: [_int32s(r)],
    "reciprocal_bits": lambda r: [_int32s(r)],
}

# Helper calls with constant trailing arguments: (case name, helper, constants).
CONSTANT_CASES: list[tuple[str, str, tuple[int, ...]]] = [
    *((f"rdbpot_{e}", "rdbpot", (e,)) for e in (0, 1, 12, 31)),
    ("srdhm_min", "srdhm", (INT32_MIN,)),
    *((f"saturating_lshift_{e}", "saturating_lshift", (e,)) for e in (0, 2, 31)),
    *((f"round_even_{t}".replace("-", "m"), "round_even", (t,)) for t in (-3, 0, 1, 31, 40, 62)),
]
# (case name, helper, the constant last argument); the first two stay arrays.
CONSTANT_SHIFT_CASES: list[tuple[str, str, int]] = [
    *((f"mbqm_{s}".replace("-", "m"), "mbqm", s) for s in (-31, -1, 0, 5)),
    *((f"mbqm_bounded_{s}".replace("-", "m"), "mbqm_bounded", s) for s in (-20, 0, 3)),
    *((f"mbqm_right_{s}", "mbqm_right", s) for s in (0, 9, 30)),
    # -32 and -1: the high-word branch; 5: gcc's constant-only branch (total 26); 31 and 40: total <= 0.
    *((f"mbqm_even_{s}".replace("-", "m"), "mbqm_even", s) for s in (-32, -1, 5, 31, 40)),
]

CASES: dict[str, tuple[str, tuple[int | None, ...]]] = {
    **{name: (name, (None,) * len(HELPERS[name][0])) for name in DOMAINS},
    **{case: (helper, (None, *consts)) for case, helper, consts in CONSTANT_CASES},
    **{case: (helper, (None, None, s)) for case, helper, s in CONSTANT_SHIFT_CASES},
}

C_TYPES = {"int32": "int32_t", "int64": "int64_t"}


def _inputs() -> dict[str, list[np.ndarray]]:
    out = {}
    for k, (case, (helper, consts)) in enumerate(CASES.items()):
        arrays = DOMAINS[helper](np.random.default_rng(k))
        types = HELPERS[helper][0]
        out[case] = [a.astype(t) for a, t, c in zip(arrays, types, consts, strict=True) if c is None]
    return out


def _call(helper: str, types: tuple[str, ...], consts: tuple[int | None, ...], held: list) -> Callable:
    """``i -> tvmmcu_fp_<helper>(held arrays at i, constants)``."""

    def value(i: object) -> object:
        it = iter(held)
        args = [next(it)[i] if c is None else tirx.const(c, t) for t, c in zip(types, consts, strict=True)]
        return tirx.call_extern("int32", HELPER_PREFIX + helper, *args)

    return value


def _module(inputs: dict[str, list[np.ndarray]]) -> tvm.IRModule:
    """One PrimFunc per case, ``out[i] = T.call_extern("int32", "tvmmcu_fp_<helper>", ...)``, as the
    integer lowering writes them."""
    funcs = {}
    for case, (helper, consts) in CASES.items():
        types = HELPERS[helper][0]
        n = len(inputs[case][0])
        held = [
            te.placeholder((n,), t, name=f"a{k}")
            for k, (t, c) in enumerate(zip(types, consts, strict=True))
            if c is None
        ]

        out = te.compute((n,), _call(helper, types, consts, held), name="out")
        funcs[case] = te.create_prim_func([*held, out]).with_attr("global_symbol", case)
    return tvm.IRModule(funcs)


def _c_source() -> str:
    lines = [HEADER_TEXT]
    for case, (helper, consts) in CASES.items():
        types = HELPERS[helper][0]
        params = [
            f"const {C_TYPES[t]}* a{k}"
            for k, (t, c) in enumerate(zip(types, consts, strict=True))
            if c is None
        ]
        args = [
            f"a{k}[i]" if c is None else f"({C_TYPES[t]}){c}"
            for k, (t, c) in enumerate(zip(types, consts, strict=True))
        ]
        if INT32_MIN in consts:
            args = [a.replace(f"){INT32_MIN}", ")INT32_MIN") for a in args]
        lines.append(
            f"void run_{case}(int n, {', '.join(params)}, int32_t* out) {{\n"
            f"  for (int i = 0; i < n; i++) out[i] = {HELPER_PREFIX}{helper}({', '.join(args)});\n}}"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def inputs() -> dict[str, list[np.ndarray]]:
    return _inputs()


@pytest.fixture(scope="module")
def header_outputs(inputs: dict[str, list[np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case computed by the header, built by host gcc with the library's flags."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "host gcc is missing (make setup installs it)"
    directory = tmp_path_factory.mktemp("header")
    src, so = directory / "helpers.c", directory / "helpers.so"
    src.write_text(_c_source())
    subprocess.run([gcc, *CFLAGS, str(src), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    out = {}
    for case, arrays in inputs.items():
        want = np.zeros(len(arrays[0]), np.int32)
        fn = getattr(lib, f"run_{case}")
        fn(
            ctypes.c_int(len(want)),
            *(a.ctypes.data_as(ctypes.c_void_p) for a in arrays),
            want.ctypes.data_as(ctypes.c_void_p),
        )
        out[case] = want
    return out


def _tvm_build(mod: tvm.IRModule, target: str, directory: Path) -> object:
    lib = tvm.compile(mod, target=target, tir_pipeline=pipeline.tvm_tir_pipeline())
    if target == "c":  # TVM's C backend: compiled by the host compiler, then loaded
        lib.export_library(str(directory / "inlined.so"))
        return tvm.runtime.load_module(str(directory / "inlined.so"))
    return lib


@pytest.mark.parametrize("target", ["llvm", "c"], ids=["llvm", "c"])
def test_inlined_helpers_equal_the_header_bit_for_bit(
    target: str, inputs: dict, header_outputs: dict, tmp_path: Path
) -> None:
    mod = _module(inputs)
    assert "call_extern" in mod.script()
    lib = _tvm_build(mod, target, tmp_path)
    wrong = {}
    for case, arrays in inputs.items():
        got = tvm.runtime.tensor(np.zeros(len(arrays[0]), np.int32))
        lib[case](*(tvm.runtime.tensor(a) for a in arrays), got)
        bad = np.nonzero(got.numpy() != header_outputs[case])[0]
        if len(bad):
            k = int(bad[0])
            wrong[case] = (
                len(bad),
                [int(a[k]) for a in arrays],
                int(got.numpy()[k]),
                int(header_outputs[case][k]),
            )
    assert not wrong, f"(mismatches, first inputs, TIR, C) per case: {wrong}"
    assert len(CASES) == len(inputs) == 44  # 15 helpers, 29 with constant arguments


def test_every_helper_of_the_header_is_inlined() -> None:
    """The header's functions (but its out-of-line copy of round_even) are exactly the pass's table."""
    import re

    defined = set(re.findall(rf"{HELPER_PREFIX}(\w+)\(", HEADER_TEXT)) - {"round_even_call"}
    assert defined == set(DOMAINS) == set(HELPERS) - {"round_even_call"}
    assert len(defined) == 15

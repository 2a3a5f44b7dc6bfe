"""InlineFixedPoint: the fixed-point helpers' calls become TIR arithmetic; functions without them are left
alone; a function still in blocks, an unknown helper or mistyped arguments are refused by name."""

from __future__ import annotations

import pytest
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu._tvm import assert_structural_equal, te, tirx, tvm
from tvm_mcu.errors import PassOrderError, UnsupportedOpError
from tvm_mcu.passes.tir import InlineFixedPoint


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(A: T.Buffer((8,), "int32"), M: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int8")):
        for i in range(8):
            B[i] = T.Cast(
                "int8",
                T.call_extern(
                    "int32",
                    "tvmmcu_fp_sat_s8",
                    T.call_extern(
                        "int32", "tvmmcu_fp_rdbpot", T.call_extern("int32", "tvmmcu_fp_srdhm", A[i], M[i]), 3
                    ),
                ),
            )


# srdhm: min((a * b + 2**30) >> 31, INT32_MAX); rdbpot by 3: (x + 4 - (x < 0)) >> 3, its x bound once
# (read twice); sat_s8: a clamp.
@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(A: T.Buffer((8,), "int32"), M: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int8")):
        for i in range(8):
            x = T.int32()
            B[i] = T.Cast(
                "int8",
                T.max(
                    T.min(
                        T.Let(
                            T.Cast(
                                "int32",
                                (T.Cast("int64", x) + T.int64(4) - T.Select(x < 0, T.int64(1), T.int64(0)))
                                >> T.int64(3),
                            ),
                            where={
                                x: T.Cast(
                                    "int32",
                                    T.min(
                                        (T.Cast("int64", A[i]) * T.Cast("int64", M[i]) + T.int64(1073741824))
                                        >> T.int64(31),
                                        T.int64(2147483647),
                                    ),
                                )
                            },
                        ),
                        127,
                    ),
                    -128,
                ),
            )


@I.ir_module
class NoHelpers:
    @T.prim_func(s_tir=True)
    def g(A: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int32")):
        for i in range(8):
            B[i] = T.call_extern("int32", "tvmmcu_dot_s8s8", A[i], 4) + A[i]


def test_helper_calls_become_arithmetic() -> None:
    assert_structural_equal(InlineFixedPoint()(Before), Expected)


def test_idempotent_and_pure() -> None:
    assert_idempotent_and_pure(InlineFixedPoint(), Before)


def test_declines_a_function_without_helper_calls() -> None:
    after = InlineFixedPoint()(NoHelpers)
    assert after["g"].same_as(NoHelpers["g"])
    assert "tvmmcu_dot_s8s8" in after.script()  # other externs (micro-kernels) are not its business


@I.ir_module
class UnknownHelper:
    @T.prim_func(s_tir=True)
    def h(A: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int32")):
        for i in range(8):
            B[i] = T.call_extern("int32", "tvmmcu_fp_cube", A[i])


@I.ir_module
class MistypedHelper:
    @T.prim_func(s_tir=True)
    def h(A: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int32")):
        for i in range(8):
            B[i] = T.call_extern("int32", "tvmmcu_fp_srdhm", A[i], T.int64(3))


def test_refuses_a_function_still_in_blocks() -> None:
    """At the Relax level, before TVM's lowering: TVM's own passes would then see the let-chains."""
    a = te.placeholder((8,), "int32", name="a")
    b = te.compute((8,), lambda i: tirx.call_extern("int32", "tvmmcu_fp_sat_s8", a[i]), name="b")
    mod = tvm.IRModule({"h": te.create_prim_func([a, b])})
    with pytest.raises((PassOrderError, RuntimeError), match="InlineFixedPoint needs LowerOpaqueBlock"):
        InlineFixedPoint()(mod)


def test_refuses_an_unknown_helper_by_name() -> None:
    with pytest.raises(
        (UnsupportedOpError, RuntimeError), match="tvmmcu_fp_cube is not a fixed-point helper"
    ):
        InlineFixedPoint()(UnknownHelper)


def test_refuses_arguments_of_other_types_than_the_c() -> None:
    with pytest.raises((UnsupportedOpError, RuntimeError), match=r"srdhm takes \(int32, int32\), given"):
        InlineFixedPoint()(MistypedHelper)


def test_reciprocal_stays_small_for_tvms_analysers() -> None:
    """TVM substitutes each Let into the later ones: what its analysers see of the largest helper, every
    binding expanded, stays near 14,000 nodes (written as the C is, the leading-zero count read again in
    every Newton-Raphson step, it took tvm.compile 6 s for this helper alone)."""
    from tvm_mcu.passes.tir.inline_fixed_point import inline

    expr = inline("reciprocal_scale", [tirx.Var("x", "int32")])
    sizes: dict[object, int] = {}

    def expanded(e: object) -> int:
        if isinstance(e, tirx.Let):
            sizes[e.var] = expanded(e.value)
            return expanded(e.body)
        if isinstance(e, tirx.Var):
            return sizes.get(e, 1)
        fields = ("a", "b", "value", "condition", "true_value", "false_value")
        kids = list(e.args) if isinstance(e, tvm.ir.Call) else [getattr(e, f, None) for f in fields]
        return 1 + sum(expanded(k) for k in kids if hasattr(k, "ty"))

    assert 1000 < expanded(expr) < 20000

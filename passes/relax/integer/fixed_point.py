"""TFLite's (gemmlowp's) fixed-point helpers as TIR expressions, for use inside TE compute definitions.

Every helper takes a :class:`Lets` builder: intermediate values are bound to variables (``tirx.Let``) so
expressions stay linear in size and the generated C evaluates each value once. All arithmetic is on
int32 / int64 and is exactly TFLite's, including its rounding and the truncating division of C.
"""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import tirx

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

Expr = Any  # a TIR PrimExpr


def c32(v: int) -> Expr:
    return tirx.const(v, "int32")


def c64(v: int) -> Expr:
    return tirx.const(v, "int64")


def dtype_of(e: Expr) -> str:
    ty = e.ty
    return str(ty.dtype) if hasattr(ty, "dtype") else str(ty)


class Lets:
    """Collects ``name = value`` bindings; :meth:`wrap` nests them around a result as ``tirx.Let``."""

    def __init__(self) -> None:
        self._binds: list[tuple[Expr, Expr]] = []

    def __call__(self, value: Expr, name: str = "t") -> Expr:
        if hasattr(value, "asobject"):  # a TE tensor element (TensorSlice)
            value = value.asobject()
        if isinstance(value, (tirx.IntImm, tirx.Var)):
            return value
        var = tirx.Var(name, dtype_of(value))
        self._binds.append((var, value))
        return var

    def wrap(self, body: Expr) -> Expr:
        for var, value in reversed(self._binds):
            body = tirx.Let(var, value, body)
        return body


def select(cond: Expr, a: Expr, b: Expr) -> Expr:
    return tirx.Select(cond, a, b)


def srdhm(lets: Lets, a: Expr, b: Expr | int) -> Expr:
    """``SaturatingRoundingDoublingHighMul(a, b)``: high 32 bits of ``2*a*b``; ties round toward +inf.

    The saturation case (both operands INT32_MIN) cannot occur here: every call has a constant
    multiplier in [2**30, 2**31) or fixed-point operands bounded well inside int32 (gemmlowp's
    exp and reciprocal), so it is not tested for.
    """
    b_expr = c64(b) if isinstance(b, int) else b.astype("int64")
    ab = lets(a.astype("int64") * b_expr, "ab")
    t = lets(ab + select(ab >= c64(0), c64(1 << 30), c64(1 - (1 << 30))), "nudged")
    # C's truncating division by 2**31 (not an arithmetic shift, which would round toward -inf).
    return lets(((t + select(t < c64(0), c64((1 << 31) - 1), c64(0))) >> c64(31)).astype("int32"), "high")


def rdbpot(lets: Lets, x: Expr, exponent: Expr | int) -> Expr:
    """``RoundingDivideByPOT(x, exponent)``: ``x / 2**exponent`` rounded half away from zero."""
    if isinstance(exponent, int):
        if exponent == 0:
            return x
        e = c32(exponent)
    else:
        e = exponent
    x = lets(x, "x")
    mask = lets((c32(1) << e) - c32(1), "mask")
    remainder = lets(x & mask, "rem")
    threshold = lets((mask >> c32(1)) + select(x < c32(0), c32(1), c32(0)), "thr")
    return (x >> e) + select(remainder > threshold, c32(1), c32(0))


def multiply_by_quantized_multiplier(
    lets: Lets, x: Expr, multiplier: Expr | int, shift: Expr | int, *, any_left_shift: bool
) -> Expr:
    """``MultiplyByQuantizedMultiplier(x, m, shift)`` (TFLite's double rounding).

    ``shift`` > 0 shifts left before the multiply, < 0 rounds right after it. ``any_left_shift`` False
    (every shift <= 0, known at compile time) drops the left-shift arithmetic.
    """
    if isinstance(shift, int):
        left, right = max(shift, 0), max(-shift, 0)
        if left:
            x = x * c32(1 << left)
        return rdbpot(lets, lets(srdhm(lets, x, multiplier), "prod"), right)
    if any_left_shift:
        left = lets(tirx.max(shift, c32(0)), "lshift")
        right = lets(tirx.max(c32(0) - shift, c32(0)), "rshift")
        x = lets(x * (c32(1) << left), "xs")
    else:
        right = lets(c32(0) - shift, "rshift")
    return rdbpot(lets, lets(srdhm(lets, x, multiplier), "prod"), right)


def saturating_left_shift(lets: Lets, x: Expr, exponent: int) -> Expr:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<exponent>`` for exponent > 0."""
    threshold = (1 << (31 - exponent)) - 1
    x = lets(x, "x")
    return select(
        x > c32(threshold), c32(INT32_MAX), select(x < c32(-threshold), c32(INT32_MIN), x << c32(exponent))
    )


def count_leading_zeros(lets: Lets, x: Expr) -> Expr:
    """Leading zero bits of ``x`` read as uint32 (C has no portable clz; TVM's C codegen lacks one)."""
    u = lets(x.astype("uint32"), "u")
    n = c32(0)
    for step in (16, 8, 4, 2, 1):
        empty = lets(tirx.EQ(u >> tirx.const(32 - step, "uint32"), tirx.const(0, "uint32")), "empty")
        n = lets(n + select(empty, c32(step), c32(0)), "n")
        u = lets(select(empty, u << tirx.const(step, "uint32"), u), "u")
    return n + select(tirx.EQ(u, tirx.const(0, "uint32")), c32(1), c32(0))


def half_sum_with_one(lets: Lets, a: Expr) -> Expr:
    """gemmlowp ``RoundingHalfSum(a, One)`` for Q0.31: ``(a + 2**31 - 1 +- 1) / 2``, truncating."""
    total = lets(a.astype("int64") + c64(INT32_MAX), "sum")
    num = lets(total + select(total >= c64(0), c64(1), c64(-1)), "num")
    return ((num + select(num < c64(0), c64(1), c64(0))) >> c64(1)).astype("int32")


def newton_step(lets: Lets, x: Expr, half_denominator: Expr) -> Expr:
    """One step of gemmlowp's ``one_over_one_plus_x_for_x_in_0_1``: x += x * (1 - d * x), in Q2.29."""
    dx = lets(srdhm(lets, half_denominator, x), "dx")
    one_minus = lets(c32(1 << 29) - dx, "one_minus")
    return x + saturating_left_shift(lets, lets(srdhm(lets, x, one_minus), "x_om"), 2)

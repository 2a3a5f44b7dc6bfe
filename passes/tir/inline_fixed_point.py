"""InlineFixedPoint: the fixed-point helpers' calls become plain TIR arithmetic, for TVM's own build."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvm_mcu._tvm import PrimFunc, structural_map, structural_walk, tirx, tvm
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.passes.relax.integer.fixed_point import HELPER_PREFIX
from tvm_mcu.passes.tir.each_function import Needs, check_needs, extern_name

logger = logging.getLogger(__name__)

Expr = Any  # a TIR PrimExpr

I32, I64 = "int32", "int64"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _const(value: int, dtype: str) -> Expr:
    """``value`` as a constant of ``dtype``, wrapped as C converts an integer to that type."""
    bits = tvm.runtime.DataType(dtype).bits
    value &= (1 << bits) - 1
    if dtype.startswith("int") and value >= 1 << (bits - 1):
        value -= 1 << bits
    return tirx.const(value, dtype)


def _cast(dtype: str, e: Expr) -> Expr:
    """C's ``(dtype)e``: a no-op for the same type, folded for a constant (two's complement wrap)."""
    if str(e.ty) == dtype:
        return e
    if isinstance(e, tirx.IntImm):
        return _const(int(e.value), dtype)
    return tirx.Cast(dtype, e)


def _is_const(e: Expr) -> bool:
    return isinstance(e, tirx.IntImm)


def _select(cond: Expr, then: Callable[[], Expr], other: Callable[[], Expr]) -> Expr:
    """``cond ? then() : other()``; a constant condition builds only the arm it takes."""
    if _is_const(cond):
        return then() if int(cond.value) else other()
    return tirx.Select(cond, then(), other())


def _eq(a: Expr, b: Expr) -> Expr:
    if _is_const(a) and _is_const(b):
        return tirx.const(int(a.value) == int(b.value), "bool")
    return tirx.EQ(a, b)


def _ne(a: Expr, b: Expr) -> Expr:
    if _is_const(a) and _is_const(b):
        return tirx.const(int(a.value) != int(b.value), "bool")
    return tirx.NE(a, b)


def _and(a: Expr, b: Expr) -> Expr:
    if _is_const(a):
        return b if int(a.value) else a
    if _is_const(b):
        return a if int(b.value) else b
    return tirx.And(a, b)


def _or(a: Expr, b: Expr) -> Expr:
    if _is_const(a):
        return a if int(a.value) else b
    if _is_const(b):
        return b if int(b.value) else a
    return tirx.Or(a, b)


def _shl(a: Expr, b: Expr) -> Expr:
    """``a << b`` (b within the width of a's type), folded for constants."""
    if _is_const(a) and _is_const(b):
        return _const(int(a.value) << int(b.value), str(a.ty))
    return tirx.shift_left(a, b)


def _shr(a: Expr, b: Expr) -> Expr:
    """``a >> b``: arithmetic for signed types, logical for unsigned, as C; folded for constants."""
    if _is_const(a) and _is_const(b):
        return _const(int(a.value) >> int(b.value), str(a.ty))
    return tirx.shift_right(a, b)


def _neg(a: Expr) -> Expr:
    return _const(0, str(a.ty)) - a


def _flag(cond: Expr, dtype: str) -> Expr:
    """C's ``cond ? 1 : 0``."""
    return _select(cond, lambda: _const(1, dtype), lambda: _const(0, dtype))


class _Lets:
    """The ``Let`` bindings of one inlined call, in order: every value used more than once is bound once,
    so the expression stays as large as the C (a tree of copies grows exponentially through the
    Newton-Raphson steps of ``one_over_one_plus_x``)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._bindings: list[tuple[Any, Expr]] = []
        self._names: set[str] = set()

    def __call__(self, name: str, value: Expr) -> Expr:
        if isinstance(value, tirx.Var | tirx.IntImm):
            return value
        unique, k = name, 1
        while unique in self._names:
            unique, k = f"{name}_{k}", k + 1
        self._names.add(unique)
        var = tirx.Var(f"{self._prefix}{unique}", str(value.ty))
        self._bindings.append((var, value))
        return var

    def wrap(self, body: Expr) -> Expr:
        for var, value in reversed(self._bindings):
            body = tirx.Let(var, value, body)
        return body


# Each helper below computes its C function in fixed_point.HEADER_TEXT for every input of the domain
# the C comments state, in int32 and int64 arithmetic only (uint32 trips TVM's canonical simplifier).
# TVM's analysers substitute every Let value into the later ones (Analyzer::Bind, which its LLVM and C
# code generators call for each Let), so what matters for compile time is how often a bound value is
# used: where the C reads a value several times, the TIR is an equal form that reads it once or twice,
# with the derivation beside it. The tests compare each with the header compiled by gcc.


def _i64(e: Expr) -> Expr:
    return _cast(I64, e)


def _pow2(exponent: Expr) -> Expr:
    """``(int64_t)1 << exponent`` (exponent 0..62)."""
    return _shl(_const(1, I64), _i64(exponent))


def _wrap32(e: Expr) -> Expr:
    """An int64 value as int32, modulo 2**32: C's ``(int32_t)(uint32_t)`` conversions, and the int32 sums
    of the C that overflow only outside the domain (as two's complement hardware wraps them)."""
    return _cast(I32, e)


def _srdhm(let: _Lets, a: Expr, b: Expr) -> Expr:
    # trunc((ab + nudge) / 2**31) is floor((ab + 2**30) / 2**31) for either sign of ab: for ab < 0 the
    # quotient is negative, trunc is ceil, and ceil(n / d) = floor((n + d - 1) / d) with
    # n = ab + 1 - 2**30, d = 2**31. It exceeds INT32_MAX only for a = b = INT32_MIN (2**31), the C's
    # saturated case.
    ab = _i64(a) * _i64(b)
    return _cast(I32, tirx.min(_shr(ab + _const(1 << 30, I64), _const(31, I64)), _const(INT32_MAX, I64)))


def _sat_s8(let: _Lets, x: Expr) -> Expr:
    return tirx.max(tirx.min(x, _const(127, I32)), _const(-128, I32))


def _sat_u8(let: _Lets, x: Expr) -> Expr:
    return tirx.max(tirx.min(x, _const(255, I32)), _const(0, I32))


def _rdbpot(let: _Lets, x: Expr, exponent: Expr) -> Expr:
    # With x = q * 2**e + r (q = x >> e, r = x & mask), the C adds 1 to q when r > 2**(e-1) - 1 + (x < 0),
    # that is r + 2**(e-1) - (x < 0) >= 2**e: floor((x + 2**(e-1) - (x < 0)) / 2**e) for e >= 1, and x
    # for e = 0 (mask 0). The sum in int64: x + 2**30 overflows int32.
    x, exponent = let("x", x), let("exponent", exponent)
    half = _shr(_pow2(exponent), _const(1, I64))
    toward = _flag(_and(x < _const(0, I32), _ne(exponent, _const(0, I32))), I64)
    return _cast(I32, _shr(_i64(x) + half - toward, _i64(exponent)))


def _left_right(let: _Lets, shift: Expr) -> tuple[Expr, Expr]:
    """The C's ``shift > 0 ? shift : 0`` and ``shift > 0 ? 0 : -shift``."""
    shift = let("shift", shift)
    return tirx.max(shift, _const(0, I32)), tirx.max(_neg(shift), _const(0, I32))


def _shifted(x: Expr, amount: Expr) -> Expr:
    """``(int32_t)((uint32_t)x << amount)`` (amount 0..31, or 32 for x = 0): the int64 product
    |x| * 2**amount <= 2**62 wraps to the same 32 bits."""
    return _wrap32(_i64(x) * _pow2(amount))


def _mbqm(let: _Lets, x: Expr, multiplier: Expr, shift: Expr) -> Expr:
    left, right = _left_right(let, shift)
    return _rdbpot(let, _srdhm(let, _shifted(x, left), multiplier), right)


def _rounded_high(let: _Lets, doubled: Expr, multiplier: Expr) -> Expr:
    """``(int32_t)(((int64_t)doubled * multiplier + ((int64_t)1 << 31)) >> 32)``: SMMULR's result."""
    product = _i64(doubled) * _i64(multiplier)
    return let("high", _cast(I32, _shr(product + _const(1 << 31, I64), _const(32, I64))))


def _mbqm_bounded(let: _Lets, x: Expr, multiplier: Expr, shift: Expr) -> Expr:
    left, right = _left_right(let, shift)
    right = let("right", right)
    high = _rounded_high(let, _shifted(x, left + _const(1, I32)), multiplier)
    half = _shr(_pow2(right), _const(1, I64))
    toward = _flag(_and(high < _const(0, I32), _ne(right, _const(0, I32))), I64)
    # high + half reaches 2**31 only for 2x = multiplier = INT32_MIN: wraps, then shifts (as the C).
    return _shr(_wrap32(_i64(high) + half - toward), right)


def _mbqm_right(let: _Lets, x: Expr, multiplier: Expr, rm1: Expr) -> Expr:
    high = _rounded_high(let, _shifted(x, _const(1, I32)), multiplier)
    one = _const(1, I32)
    return _shr(_shr(high + _shr(high, _const(31, I32)), rm1) + one, one)


def _saturate_int32(q: Expr) -> Expr:
    """``q > INT32_MAX ? INT32_MAX : (q < INT32_MIN ? INT32_MIN : (int32_t)q)`` for an int64 ``q``."""
    return _cast(I32, tirx.max(tirx.min(q, _const(INT32_MAX, I64)), _const(INT32_MIN, I64)))


def _round_even(let: _Lets, value: Expr, total: Expr) -> Expr:
    value, total = let("value", value), let("total", total)

    def rounded() -> Expr:
        # The C's branch for total > 0; total clamped to 1 where it is not taken (no negative shift).
        t = let("t", _i64(tirx.max(total, _const(1, I32))))
        q = let("q", _shr(value, t))
        remainder = let("remainder", value - q * _pow2(t))
        half = _pow2(t - _const(1, I64))
        odd = _ne(q & _const(1, I64), _const(0, I64))
        up = _or(remainder > half, _and(_eq(remainder, half), odd))
        return q + _flag(up, I64)

    return _saturate_int32(_select(total > _const(0, I32), rounded, lambda: value))


def _mbqm_even(let: _Lets, x: Expr, multiplier: Expr, shift: Expr) -> Expr:
    value = let("value", _i64(x) * _i64(multiplier))
    total = let("total", _const(31, I32) - shift)

    def high_word() -> Expr:
        # The C's branch for 32 <= total <= 63; t kept in 0..31 where it is not taken.
        t = total - _const(32, I32)
        t = let("t", t if _is_const(t) else tirx.min(tirx.max(t, _const(0, I32)), _const(31, I32)))
        high = let("high_word", _shr(value, _const(32, I64)))
        q = _shr(_cast(I32, high), t)
        bias = _shl(_pow2(t), _const(31, I64)) - _const(1, I64) + _i64(q & _const(1, I32))
        # ((uint64_t)value + bias) >> 32 as high + ((low + bias) >> 32): the C's uint64 sum reaches 2**63
        # (x = multiplier = INT32_MIN, t = 31), an int64 one would overflow; both are the same modulo
        # 2**32, all the int32 result keeps.
        low = value & _const(0xFFFFFFFF, I64)
        return _shr(_wrap32(high + _shr(low + bias, _const(32, I64))), t)

    # The C's __builtin_constant_p branch for 1 <= total <= 31 computes round_even's result exactly
    # (|value| <= 2**62: its biased sum does not overflow), so it needs no arm of its own.
    fast = _and(total >= _const(32, I32), total <= _const(63, I32))
    return _select(fast, high_word, lambda: _round_even(let, value, total))


def _div_round_even(let: _Lets, numerator: Expr, denominator: Expr) -> Expr:
    # The C's truncating quotient moved to the floor is floordiv (remainder floormod, in [0, d)).
    n, d = let("numerator", numerator), let("denominator", denominator)
    q = let("q", tirx.floordiv(n, d))
    twice = let("twice", _const(2, I64) * (n - q * d))
    odd = _ne(q & _const(1, I64), _const(0, I64))
    up = _or(twice > d, _and(_eq(twice, d), odd))
    return _saturate_int32(q + _flag(up, I64))


def _saturating_lshift(let: _Lets, x: Expr, exponent: Expr) -> Expr:
    # threshold = 2**(31-e) - 1: x > threshold is x * 2**e >= 2**31, x < -threshold is x * 2**e <= -2**31
    # (and -2**31 itself is INT32_MIN): the C is x * 2**e (|x| * 2**31 <= 2**62) saturated to int32.
    return _saturate_int32(_i64(x) * _pow2(exponent))


def _clz(let: _Lets, x: Expr) -> Expr:
    """Leading zeros of the 32 bits u of x: the number of j in 0..31 with u < 2**j (32 for u = 0). TVM's
    ``clz`` intrinsic has no lowering for its C backend, and a binary search (each step reads the
    previous one's value twice) takes TVM's analysers seconds."""
    u = let("u", _i64(x) & _const(0xFFFFFFFF, I64))
    count = _flag(u < _const(1, I64), I32)
    for j in range(1, 32):
        count = count + _flag(u < _const(1 << j, I64), I32)
    return count


def _newton(let: _Lets, half_denominator: Expr) -> Expr:
    """one_over_one_plus_x from its half denominator on: three Newton-Raphson steps in Q2.29."""

    def add(p: Expr, q: Expr) -> Expr:
        return _wrap32(_i64(p) + _i64(q))

    x = let("x", add(_const(1515870810, I32), _srdhm(let, half_denominator, _const(-1010580540, I32))))
    for _ in range(3):
        one_minus_dx = add(_const(1 << 29, I32), _neg(_i64(_srdhm(let, half_denominator, x))))
        x = let("x", add(x, _saturating_lshift(let, _srdhm(let, x, one_minus_dx), _const(2, I32))))
    return _saturating_lshift(let, x, _const(1, I32))


def _one_over_one_plus_x(let: _Lets, a: Expr) -> Expr:
    total = let("sum", _i64(a) + _const(INT32_MAX, I64))
    sign = _select(total >= _const(0, I64), lambda: _const(1, I64), lambda: _const(-1, I64))
    return _newton(let, let("half_denominator", _cast(I32, tirx.truncdiv(total + sign, _const(2, I64)))))


def _reciprocal_scale(let: _Lets, x: Expr) -> Expr:
    # one_over_one_plus_x(a) with a = n - 2**31, n = (uint32_t)x << clz(x) (the C's shifted_minus_one):
    # for x != 0, n is in [2**31, 2**32), sum = a + INT32_MAX = n - 1 >= 0, and the half denominator
    # (sum + 1) / 2 is n >> 1; for x = 0 (the C shifts by 32, where ARM and x86 give n = 0), a is
    # INT32_MIN, sum -1, and it is (-1 - 1) / 2 = -1. Computed from n this way, the half denominator
    # reads x's leading-zero count once: TVM's analysers substitute it into each Newton-Raphson step.
    x = let("x", x)
    n = _i64(x) * _pow2(_clz(let, x)) & _const(0xFFFFFFFF, I64)
    zero = _flag(_eq(x, _const(0, I32)), I64)
    return _newton(let, let("half_denominator", _cast(I32, _shr(n, _const(1, I64)) - zero)))


def _reciprocal_bits(let: _Lets, x: Expr) -> Expr:
    return _const(12, I32) - _clz(let, x)


# Helper name (after HELPER_PREFIX) -> (its argument types, its TIR). round_even_call is the header's
# out-of-line copy of round_even.
HELPERS: dict[str, tuple[tuple[str, ...], Callable[..., Expr]]] = {
    "srdhm": ((I32, I32), _srdhm),
    "sat_s8": ((I32,), _sat_s8),
    "sat_u8": ((I32,), _sat_u8),
    "rdbpot": ((I32, I32), _rdbpot),
    "mbqm": ((I32, I32, I32), _mbqm),
    "mbqm_bounded": ((I32, I32, I32), _mbqm_bounded),
    "mbqm_right": ((I32, I32, I32), _mbqm_right),
    "round_even": ((I64, I32), _round_even),
    "round_even_call": ((I64, I32), _round_even),
    "mbqm_even": ((I32, I32, I32), _mbqm_even),
    "div_round_even": ((I64, I64), _div_round_even),
    "saturating_lshift": ((I32, I32), _saturating_lshift),
    "clz": ((I32,), _clz),
    "one_over_one_plus_x": ((I32,), _one_over_one_plus_x),
    "reciprocal_scale": ((I32,), _reciprocal_scale),
    "reciprocal_bits": ((I32,), _reciprocal_bits),
}


def inline(name: str, args: list[Expr], prefix: str = "fp_") -> Expr:
    """The TIR of helper ``name`` (without HELPER_PREFIX) on ``args``, its ``Let`` variables named
    ``prefix...``; UnsupportedOpError for an unknown helper or arguments of other types than the C's."""
    if name not in HELPERS:
        raise UnsupportedOpError(
            f"{HELPER_PREFIX}{name} is not a fixed-point helper InlineFixedPoint knows; known: "
            + ", ".join(sorted(HELPERS))
        )
    types, build = HELPERS[name]
    given = tuple(str(a.ty) for a in args)
    if given != types:
        raise UnsupportedOpError(
            f"{HELPER_PREFIX}{name} takes ({', '.join(types)}), given ({', '.join(given)})"
        )
    let = _Lets(prefix)
    return let.wrap(build(let, *args))


def helper_calls(func: PrimFunc) -> list[str]:
    """The helpers ``func`` calls, one entry per call, in walk order."""
    found: list[str] = []

    def visit(node: Any) -> None:
        name = extern_name(node)
        if name.startswith(HELPER_PREFIX):
            found.append(name)

    structural_walk(func.body, (tvm.ir.Call, visit))
    return found


def _inline_function(func: PrimFunc, gv_name: str) -> PrimFunc:
    count = [0]

    def on_call(call: Any) -> Any:
        name = extern_name(call)
        if not name.startswith(HELPER_PREFIX):
            return call
        if str(call.ty) != I32:
            raise UnsupportedOpError(f"{name} in '{gv_name}' returns {call.ty}; the helpers return int32")
        prefix = f"fp{count[0]}_"
        count[0] += 1
        return inline(name.removeprefix(HELPER_PREFIX), list(call.args[1:]), prefix)

    body = structural_map(func.body, (tvm.ir.Call, on_call))
    return func.with_body(body)


@tvm.transform.module_pass(opt_level=0, name="InlineFixedPoint")
class InlineFixedPoint:
    """Replace every call of a fixed-point helper (``tvmmcu_fp_*``) with the same arithmetic in TIR.

    The integer lowering calls TFLite's fixed-point helpers through ``call_extern``; only the library
    tvm-mcu emits ships their C (``fixed_point.HEADER_TEXT``). After this pass an integer-lowered module
    builds with TVM's own backends and runs in ``relax.VirtualMachine``, with no symbol to resolve:
    ``tvm.compile(mod, target="llvm", tir_pipeline=tvm_mcu.pipeline.tvm_tir_pipeline())``.

    Matches
        ``T.call_extern("int32", "tvmmcu_fp_<helper>", args...)`` in lowered PrimFuncs, for the 15
        helpers of the header (``HELPERS``: srdhm, sat_s8, sat_u8, rdbpot, mbqm, mbqm_bounded,
        mbqm_right, round_even, mbqm_even, div_round_even, saturating_lshift, clz,
        one_over_one_plus_x, reciprocal_scale, reciprocal_bits).
    Rewrites to
        one int32 TIR expression per call, in int32 and int64 arithmetic: ``Select`` for the C's
        branches, min/max for its saturations, a count of comparisons for ``clz`` (TVM's ``clz``
        intrinsic has no lowering for its C backend). A value used more than once is a ``Let``
        binding; where the C reads a value several times, the TIR is an equal form that reads it once
        or twice (the derivations are beside each helper), because TVM's analysers substitute every
        ``Let`` into the later ones (``Analyzer::Bind``, also in the LLVM code generator): what they
        see grows with those reads: about 14,000 nodes for ``reciprocal_scale``, the largest (0.4 s of
        ``tvm.compile`` per softmax; written as the C is, 6 s).
    Declines when
        a function calls no helper (it is returned unchanged). An unknown ``tvmmcu_fp_`` name, or
        arguments of other types than the C's, is an error naming the call.
    Numerics
        bit-exact with the header compiled by gcc, for every input in the domain its C is defined on
        (shift counts of ``rdbpot``, ``mbqm`` and ``saturating_lshift`` in 0..31, ``mbqm_right``'s in
        0..30, ``mbqm_even``'s shift at least -32, ``round_even``'s ``total`` at most 62,
        ``div_round_even``'s denominator in 1..2**62), the int32 overflows of ``one_over_one_plus_x``
        outside [0, 2**31) and of ``mbqm_bounded`` for 2x = multiplier = INT32_MIN included (as two's
        complement hardware wraps them). The Cortex-M paths of the header (SSAT, USAT, SMMULR) compute
        the same values.
    Ordering
        after TVM's lowering, last: on functions with flat buffers and no blocks (PassOrderError
        otherwise), after NarrowDataType (which rejects ``Let`` expressions) and the simplifications
        (which would expand the bindings). ``tvm_mcu.pipeline.tvm_tir_pipeline()`` is TVM's default TIR
        pipeline with this pass appended.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, PrimFunc):
                continue
            calls = helper_calls(func)
            if not calls:
                continue
            check_needs("InlineFixedPoint", gv.name_hint, func, Needs(flat=True))
            logger.debug("InlineFixedPoint: %d helper calls in %s", len(calls), gv.name_hint)
            out[gv] = _inline_function(func, gv.name_hint)
        return out

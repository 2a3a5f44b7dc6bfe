"""Operator kernels as plain C: TVM's CodeGenCHost output with its runtime preamble removed."""

from __future__ import annotations

import re

from tvm_mcu import _tvm

OP_PREFIX = "tvmmcu_op_"

# Lines of CodeGenCHost's fixed preamble that reference TVM's runtime (CodeGenCHost::Init).
_DROP = (
    re.compile(r"^// tvm target:"),
    re.compile(r"^#define TVM_EXPORTS"),
    re.compile(r'^#include "tvm/'),
    re.compile(r"^void\* __tvm_ffi__library_ctx"),
    re.compile(r"^#ifdef __cplusplus$"),
    re.compile(r'^extern "C"$'),
    re.compile(r"^#endif$"),
    re.compile(r"^#include <(math|stdbool)\.h>$"),
)
# Prototypes CodeGenC emits for the C functions it calls (expf, ..., the helpers): <math.h> and the
# helper headers declare them.
_LIBM_PROTO = re.compile(r"^TVM_DLL \w+ \w+\([\w, *]*\);$")
_OP_PROTO = re.compile(rf"^TVM_DLL (int32_t {OP_PREFIX}\w+\(.*\));$")
# A scratch buffer carved out of the workspace argument (HoistScratchToWorkspace): distinct scratch
# buffers never overlap each other, the operator's tensors or its weights, so each such pointer is
# ``restrict``. Without it the compiler must assume an int8 tensor may alias an int32 accumulator and
# reload and store it on every multiply-accumulate.
_WORKSPACE_VIEW = re.compile(
    r"^(\s+\w+\*) (\w+ = \(\(\w+\*\)\(\(\w+\*\)\(\(\(char\*\)workspace\) \+ \d+\)\)\);)$"
)


# Each operator is static to model.c, which holds its only call sites: the C compiler sees the constant
# pointers every call passes (the weights, the arena) and propagates them into the operator. Never
# inlined into tvmmcu_model_run: an inlined operator's spills would join the driver's frame, under the
# calls of every other operator (measured: KWS 40 B more stack), and each operator keeps its own
# symbol for the per-operator profile.
OP_QUALIFIER = "TVMMCU_OP"
OP_QUALIFIER_DEFINITION = f"""\
#if defined(__GNUC__)
#define {OP_QUALIFIER} static __attribute__((noinline))
#else
#define {OP_QUALIFIER} static
#endif"""


def kernels_source(lowered: _tvm.IRModule, readonly: dict[str, set[int]] | None = None) -> str:
    """C definitions of every PrimFunc in ``lowered`` (unpacked, with workspaces), each qualified
    ``TVMMCU_OP`` (:data:`OP_QUALIFIER_DEFINITION`), for model.c.

    ``readonly``: function symbol -> positions of its parameters that hold constant weights. Those
    become ``const T* restrict``: nothing writes them and no other pointer reaches them (they live in
    flash), so the compiler may keep a weight in a register across the stores of a loop (a depthwise
    window's nine weights across a channel's pixels) instead of reloading it after every store.
    """
    raw = _tvm.build_c_source(lowered)
    body: list[str] = []
    for line in raw.splitlines():
        if any(p.match(line) for p in _DROP) or _OP_PROTO.match(line) or _LIBM_PROTO.match(line):
            continue
        line = _WORKSPACE_VIEW.sub(r"\1 restrict \2", line)
        line = line.removeprefix("TVM_DLL ")
        if _DEFINITION.match(line):
            line = f"{OP_QUALIFIER} {_readonly_params(line, readonly or {})}"
        body.append(line)
    text = "\n".join(_mark_unused_parameters(body)).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text + "\n"


_DEFINITION = re.compile(rf"^(?:{OP_QUALIFIER} )?int32_t {OP_PREFIX}\w+\((.*)\) {{$")
_SIGNATURE = re.compile(rf"^(int32_t ({OP_PREFIX}\w+)\()(.*)(\).*)$")


def _readonly_params(signature: str, readonly: dict[str, set[int]]) -> str:
    """``signature`` (``int32_t f(T* a, ...)`` with or without its body's brace) with the parameters
    ``readonly`` lists for ``f`` made ``const T* restrict``."""
    m = _SIGNATURE.match(signature)
    if m is None or m.group(2) not in readonly:
        return signature
    params = m.group(3).split(", ")
    for k in readonly[m.group(2)]:
        if k < len(params) and params[k].count("*") == 1 and not params[k].startswith("const "):
            ctype, name = params[k].rsplit(" ", 1)
            params[k] = f"const {ctype} restrict {name}"
    return m.group(1) + ", ".join(params) + m.group(4)


def _mark_unused_parameters(lines: list[str]) -> list[str]:
    """``(void)p;`` for each parameter a kernel never reads (the library builds warning-free with
    -Wextra): a convolution whose every window lies in the padding computes its output from the
    bias alone."""
    out: list[str] = []
    for k, line in enumerate(lines):
        out.append(line)
        definition = _DEFINITION.match(line)
        if definition is None:
            continue
        end = next((j for j in range(k + 1, len(lines)) if lines[j] == "}"), len(lines))
        body = "\n".join(lines[k + 1 : end])
        for param in definition.group(1).split(","):
            name = param.strip().split()[-1].lstrip("*")
            if not re.search(rf"\b{re.escape(name)}\b", body):
                out.append(f"  (void){name};")
    return out

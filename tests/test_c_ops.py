"""Operator C from TVM's CodeGenC: the weights an operator reads are const and restrict."""

from __future__ import annotations

import re
from pathlib import Path

from tests import host
from tests.zoo import write_model
from tvm_mcu.codegen import c_ops
from tvm_mcu.compiler import compile_module
from tvm_mcu.frontend import load_model


def test_the_listed_parameters_become_const_restrict() -> None:
    readonly = {"tvmmcu_op_f": {1, 2}}
    line = "int32_t tvmmcu_op_f(int8_t* x, int8_t* w, int32_t* bias, int8_t* y) {"
    assert c_ops._readonly_params(line, readonly) == (
        "int32_t tvmmcu_op_f(int8_t* x, const int8_t* restrict w, const int32_t* restrict bias, int8_t* y) {"
    )
    assert c_ops._readonly_params(line, {}) == line  # another operator's list leaves it alone
    proto = "int32_t tvmmcu_op_f(int8_t* x, int8_t* w, int32_t* bias, int8_t* y)"
    assert c_ops._readonly_params(proto, readonly).count("restrict") == 2


def test_a_compiled_model_reads_its_weights_through_const_restrict_pointers(tmp_path: Path) -> None:
    model = load_model(write_model("int8_ds_cnn_block", tmp_path))
    compiled = compile_module(model.mod, model_name="ds")
    source = host.operators_source(compiled)
    definitions = [line for line in source.splitlines() if line.startswith(f"{c_ops.OP_QUALIFIER} int32_t ")]
    assert definitions and all("const int8_t* restrict" in line for line in definitions if "conv" in line)
    assert any("const int32_t* restrict" in line for line in definitions)
    # The activations (an in-place operator's input is its output) are never restrict.
    for line in definitions:
        params = line[line.index("(") + 1 : line.rindex(")")].split(", ")
        assert not params[0].startswith("const"), line  # the data input
        assert not params[-1].startswith("const") or "workspace" in params[-1], line


def test_operators_are_static_to_model_c_and_never_inlined_into_the_driver(tmp_path: Path) -> None:
    model = load_model(write_model("int8_ds_cnn_block", tmp_path))
    model_c = compile_module(model.mod, model_name="ds").library.files["model.c"]
    assert "#define TVMMCU_OP static __attribute__((noinline))" in model_c
    calls = re.findall(r"if \((tvmmcu_op_\w+)\(", model_c)
    assert calls
    for name in set(calls):  # each called operator is defined static in the same file, before its call
        definition = model_c.index(f"{c_ops.OP_QUALIFIER} int32_t {name}(")
        assert definition < model_c.index(f"if ({name}(")
    assert "tvmmcu_op_" not in compile_module(model.mod, model_name="ds").library.files["model.h"]

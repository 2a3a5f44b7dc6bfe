"""Operator C from TVM's CodeGenC: the weights an operator reads are const and restrict."""

from __future__ import annotations

from pathlib import Path

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
    header = compiled.library.files["model_ops.h"]
    source = compiled.library.files["model_ops.c"]
    assert "const int8_t* restrict" in header and "const int32_t* restrict" in header
    # The activations (an in-place operator's input is its output) are never restrict.
    for line in header.splitlines():
        if line.startswith("int32_t tvmmcu_op_"):
            params = line[line.index("(") + 1 : line.rindex(")")].split(", ")
            assert not params[0].startswith("const"), line  # the data input
            assert not params[-1].startswith("const") or "workspace" in params[-1], line
    assert source.count("restrict") >= header.count("restrict")

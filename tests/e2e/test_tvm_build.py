"""An integer-lowered model built by TVM's own LLVM backend, without tvm-mcu's C library or its header.

tvm-mcu's graph passes (the integer lowering), then ``tvm.compile`` with ``pipeline.tvm_tir_pipeline()``
(TVM's TIR pipeline, InlineFixedPoint last), run in ``relax.VirtualMachine``: the outputs must be the
bytes of tvm-mcu's own C library built on the host, and match the reference as the library does (the
tflite-micro interpreter exactly; onnxruntime within one quantisation step). Two models from outside:
ONNX Runtime's ``quantize_static`` (QDQ, int8) and an int8 TFLite model, both with a softmax (the
reciprocal helpers) and requantised convolutions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import host
from tests.zoo import write_model
from tests.zoo.ort_quantized import FLOAT_MODELS, ort_quantize
from tvm_mcu import pipeline
from tvm_mcu._tvm import PrimFunc, relax, tvm
from tvm_mcu.api import dequantize_linear, quantize_linear
from tvm_mcu.compiler import compile_module
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.passes.relax.make_integer_interface import io_quantization
from tvm_mcu.passes.tir.inline_fixed_point import helper_calls
from tvm_mcu.reference import reference_outputs

MODELS = ["ort_resnet_concat_softmax_int8", "int8_resnet_block"]


def _model_file(name: str, directory: Path) -> Path:
    if name.startswith("ort_"):
        return ort_quantize(
            FLOAT_MODELS["resnet_concat_softmax"](), directory / f"{name}.onnx", activations="int8"
        )
    return write_model(name, directory)


@pytest.mark.parametrize("name", MODELS, ids=MODELS)
def test_tvm_built_model_equals_the_c_library(name: str, tmp_path: Path) -> None:
    model = load_model(_model_file(name, tmp_path))
    rounding = "onnx" if model.format == "onnx" else "tflite"
    lowered = pipeline.run(pipeline.graph_passes(rounding=rounding), model.mod)
    calls = [c for f in lowered.functions.values() if isinstance(f, PrimFunc) for c in helper_calls(f)]
    assert "tvmmcu_fp_reciprocal_scale" in calls and len(set(calls)) >= 4, sorted(set(calls))

    vm = relax.VirtualMachine(
        tvm.compile(lowered, target="llvm", tir_pipeline=pipeline.tvm_tir_pipeline()), tvm.cpu()
    )
    floats = random_inputs(model, 0)
    io = io_quantization(lowered)
    inputs = floats
    if io is not None:  # a QDQ model's interface is integer: the caller quantises
        dtypes = [str(p.ty.dtype) for p in lowered["main"].params]
        inputs = [
            quantize_linear(x, s, int(z), d)
            for x, (s, z), d in zip(floats, io["inputs"], dtypes, strict=True)
        ]
    result = vm["main"](*(tvm.runtime.tensor(x) for x in inputs))
    got = [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]

    compiled = compile_module(model.mod, model_name=model.name, rounding=rounding)
    mine = host.run(host.build_shared(compiled, tmp_path, model.name), compiled, inputs)
    assert [g.tobytes() for g in got] == [m.tobytes() for m in mine]
    assert len(np.unique(got[0])) > 1  # not a dead network

    reference = reference_outputs(model, floats)
    if io is None:  # TFLite int8: tflite-micro's integers
        assert all(np.array_equal(g, r) for g, r in zip(got, reference, strict=True))
    else:
        for g, r, (scale, zero) in zip(got, reference, io["outputs"], strict=True):
            assert np.abs(dequantize_linear(g, scale, int(zero)) - r).max() <= 1.0001 * scale

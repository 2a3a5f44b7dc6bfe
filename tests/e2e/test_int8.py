"""int8 end to end on the emulated boards.

- every int8 TFLite model of the zoo is bit-exact with the tflite-micro interpreter on several inputs;
- an int8 model's firmware on the FPU-less Cortex-M3 links no floating-point routine;
- ``tvm-mcu quantize`` + ``verify``: QDQ ONNX models (the demo, a residual + concat model) match
  ``onnx.reference`` within one quantisation step, and the quantised demo still classifies its images;
- a padded convolution after ReLU + MaxPool verifies under both the layer-by-layer and row-band schedules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.zoo import INT8_MODELS, write_model
from tests.zoo.onnx_models import _Graph
from tvm_mcu import api
from tvm_mcu.cli import main
from tvm_mcu.demo import demo_files
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.ptq import quantize_onnx
from tvm_mcu.reference import reference_outputs

# The Cortex-M3 (portable kernels) and the Cortex-M4F (DSP kernels); the M7 (mps2-an500) runs a third of
# the zoo, int8 models among them, in tests/e2e/test_boards.py: its kernels are the M4F's.
INT8_BOARDS = ("mps2-an385", "mps2-an386")
SEEDS = range(4)


@pytest.mark.emulator
@pytest.mark.parametrize("board", INT8_BOARDS)
@pytest.mark.parametrize("name", INT8_MODELS)
def test_int8_tflite_is_bit_exact_with_tflite_micro(name, board, tmp_path):
    path = write_model(name, tmp_path)
    compiled = api.compile_model(path, board, tmp_path / "out")
    assert compiled.report.library_warnings == ()
    assert compiled.report.float_routines == (), "an int8 model must link no floating-point routine"
    model = load_model(path)
    for seed in SEEDS:
        inputs = random_inputs(model, seed)
        outcome = api.run_compiled(compiled.out_dir, inputs)
        want = reference_outputs(model, inputs)
        for got, ref in zip(outcome.outputs, want, strict=True):
            assert got.dtype == np.int8
            assert np.array_equal(got, np.asarray(ref).reshape(got.shape)), f"{name} seed {seed} differs"


def test_float_check_can_fail(tmp_path):
    """The float-routine check finds soft-float helpers in a float model on the same FPU-less board."""
    path = write_model("gemm_head", tmp_path)
    compiled = api.compile_model(path, "mps2-an385", tmp_path / "out")
    assert any(name.startswith("__aeabi_f") for name in compiled.report.float_routines)


@pytest.fixture(scope="module")
def quantized_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = demo_files()
    calibration = model.parent / "calibration.npz"
    out = tmp_path_factory.mktemp("ptq") / "fashion_cnn_int8.onnx"
    assert main(["quantize", str(model), "--calibration", str(calibration), "-o", str(out)]) == 0
    return out


@pytest.mark.emulator
def test_quantized_demo_verifies_within_one_step_and_classifies(quantized_demo, tmp_path):
    _, samples_path = demo_files()
    samples = np.load(samples_path)
    np.save(tmp_path / "x0.npy", samples["x"][0:1])
    v = api.verify(quantized_demo, "mps2-an386", tmp_path / "out", input_path=tmp_path / "x0.npy")
    row = v.report.outputs[0]
    assert v.report.inputs[0].dtype == "int8" and v.report.inputs[0].scale is not None
    assert v.passed and v.report.max_abs_error <= row.scale * 1.0001
    assert v.report.float_routines == () or all(not r.startswith("__aeabi") for r in v.report.float_routines)
    # The int8 firmware classifies the demo's real test images as the float model's labels say.
    correct = 0
    for x, y in zip(samples["x"][:8], samples["y"][:8], strict=True):
        out = api.run_compiled(tmp_path / "out", [x.reshape(1, 1, 28, 28).astype(np.float32)]).outputs[0]
        correct += int(np.argmax(out) == int(y))
    assert correct >= 7


@pytest.mark.emulator
@pytest.mark.parametrize("name", ["resnet_block", "inception_concat"])
def test_quantize_and_verify_residual_and_concat_models(name, tmp_path):
    float_model = write_model(name, tmp_path)
    spec = load_model(float_model).inputs[0]
    rng = np.random.default_rng(5)
    np.savez(
        tmp_path / "calib.npz", **{spec.name: rng.standard_normal((32, *spec.shape[1:])).astype(np.float32)}
    )
    out = tmp_path / f"{name}_int8.onnx"
    assert (
        main(["quantize", str(float_model), "--calibration", str(tmp_path / "calib.npz"), "-o", str(out)])
        == 0
    )
    for seed in (0, 1):
        v = api.verify(out, "mps2-an386", tmp_path / f"out{seed}", seed=seed)
        assert v.passed, f"max abs error {v.report.max_abs_error} > one step {v.report.tolerance}"
        assert v.report.float_routines == () or not any(
            r.startswith("__aeabi") for r in v.report.float_routines
        )


def _relu_pool_padded_conv(path: Path) -> Path:
    """conv -> Relu -> MaxPool -> padded conv: the pool's output keeps the Relu's zero point (-128),
    which is the padding value of the next convolution."""
    g = _Graph("relu_pool_padded_conv", seed=3)
    y = g.op("Relu", [g.conv("x", 1, 8, 3, pads=[1, 1, 1, 1])])
    y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.conv(y, 8, 16, 3, pads=[1, 1, 1, 1])
    onnx.save(g.model([("x", [1, 1, 28, 28])], [(y, [1, 16, 14, 14])]), path)
    return path


@pytest.mark.emulator
@pytest.mark.parametrize("schedule", ["layer by layer", "row bands"])
def test_padded_conv_after_relu_and_max_pool_verifies(schedule, tmp_path):
    """Row bands once computed the padding under the pool's loops and left its border unwritten."""
    float_model = _relu_pool_padded_conv(tmp_path / "model.onnx")
    calib = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    quantized = quantize_onnx(float_model, {"x": calib}, tmp_path / "model_int8.onnx").out_path
    for seed in (0, 1):
        v = api.verify(quantized, "mps2-an386", tmp_path / f"out{seed}", seed=seed, schedule=schedule)
        assert v.report.schedule == schedule
        assert v.passed, f"max abs error {v.report.max_abs_error} > one step {v.report.tolerance}"


@pytest.mark.emulator
def test_int8_model_on_cortex_m3_has_no_float_code(tmp_path, capsys):
    path = write_model("int8_ds_cnn_block", tmp_path)
    assert main(["verify", str(path), "--board", "mps2-an385", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["float_routines"] == [] and report["max_abs_error"] == 0.0


@pytest.mark.emulator
def test_row_bands_are_bit_exact_with_tflite_micro_on_the_board(tmp_path):
    """The DS-CNN block run a row at a time (line buffers between its convolutions) on QEMU."""
    path = write_model("int8_ds_cnn_block", tmp_path)
    compiled = api.compile_model(path, "mps2-an386", tmp_path / "out", schedule="row bands")
    assert compiled.report.schedule == "row bands"
    whole = api.compile_model(path, "mps2-an386", tmp_path / "whole", in_place=False, partial_execution=False)
    assert compiled.report.arena_bytes < whole.report.arena_bytes
    model = load_model(path)
    for seed in SEEDS:
        inputs = random_inputs(model, seed)
        outcome = api.run_compiled(compiled.out_dir, inputs)
        for got, ref in zip(outcome.outputs, reference_outputs(model, inputs), strict=True):
            assert np.array_equal(got, np.asarray(ref).reshape(got.shape)), f"seed {seed} differs"

"""The ``tvm-mcu`` command line: outputs, JSON, determinism, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.zoo import write_model
from tvm_mcu.cli import main

REPORT_KEYS = {
    "board",
    "model",
    "arena_bytes",
    "stack_bytes",
    "flash_bytes",
    "ram_bytes",
    "instructions",
    "max_abs_error",
    "compile_seconds",
    "ops",
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would."""
    exe = Path(sys.executable).parent / "tvm-mcu"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)


def _big_model(path: Path) -> Path:
    """A float conv net whose activations (2 x 128 KiB) cannot fit lm3s6965evb's 64 KiB of SRAM."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 32, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="conv_big"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="pointwise"),
    ]
    g = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 32, 32])],
        [w, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(m, str(path))
    return path


def _unsupported_model(path: Path) -> Path:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Floor", ["a"], ["b"], name="my_floor"),
        helper.make_node("Round", ["b"], ["y"], name="my_round"),
    ]
    g = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_boards_lists_all_five(capsys):
    assert main(["boards", "--json"]) == 0
    boards = {b["name"] for b in json.loads(capsys.readouterr().out)}
    assert boards == {
        "mps2-an385",
        "mps2-an386",
        "mps2-an500",
        "mps2-an521",
        "lm3s6965evb",
        "nrf52840dk",
        "nucleo-h743zi",
        "nucleo-l4r5zi",
        "stm32f746g-disco",
    }


@pytest.mark.emulator
def test_compile_run_verify(tmp_path, capsys):
    model = write_model("resnet_block", tmp_path)
    out = tmp_path / "out"
    assert main(["compile", str(model), "--board", "mps2-an386", "-o", str(out), "--json"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    for name in ("model.h", "model.c", "memory_plan.json", "report.json"):
        assert (out / name).is_file(), name
    assert (out / "build" / "firmware.elf").is_file()
    assert compiled["arena_bytes"] > 0 and compiled["ops"]
    assert {"name", "kind", "macs", "output_bytes", "scratch_bytes"} <= set(compiled["ops"][0])

    x = np.random.default_rng(3).standard_normal(compiled["inputs"][0]["shape"]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "run",
                str(out),
                "--input",
                str(tmp_path / "x.npy"),
                "--save-output",
                str(tmp_path / "y.npy"),
                "--json",
            ]
        )
        == 0
    )
    ran = json.loads(capsys.readouterr().out)
    assert ran["instructions"] > 0 and ran["stack_bytes"] > 0
    # Every instruction is in one operator call or in the driver; each call is counted, the convs most.
    ops = ran["ops"]
    assert all(op["instructions"] > 0 for op in ops if op["kind"] != "copy")
    assert sum(op["instructions"] or 0 for op in ops) + ran["driver_instructions"] == ran["instructions"]
    assert 0 < ran["driver_instructions"] < 20 * len(ops)
    convs = [op for op in ops if op["macs"]]
    assert convs and all(
        op["instructions_per_mac"] == round(op["instructions"] / op["macs"], 3) for op in convs
    )
    assert max(ops, key=lambda op: op["instructions"] or 0)["macs"] > 0
    assert main(["explain", str(out)]) == 0
    explained = capsys.readouterr().out
    assert f"instructions (QEMU, not cycles): {ran['instructions']:,}" in explained
    assert f"{max(op['instructions'] or 0 for op in ops):,}" in explained
    y = np.load(tmp_path / "y.npy")
    assert list(y.shape) == compiled["outputs"][0]["shape"]

    assert (
        main(["verify", str(model), "--board", "mps2-an386", "--input", str(tmp_path / "x.npy"), "--json"])
        == 0
    )
    verified = json.loads(capsys.readouterr().out)
    assert set(verified) >= REPORT_KEYS
    assert verified["max_abs_error"] <= 1e-4
    assert verified["instructions"] == ran["instructions"]  # exact and repeatable


def test_compile_twice_gives_byte_identical_c(tmp_path):
    model = write_model("inception_concat", tmp_path)
    texts = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        assert main(["compile", str(model), "--board", "mps2-an500", "-o", str(out)]) == 0
        texts.append(
            {p.name: p.read_bytes() for p in sorted(out.glob("model*"))}
            | {"memory_plan.json": (out / "memory_plan.json").read_bytes()}
        )
    assert texts[0] == texts[1]
    assert texts[0]["model.c"].startswith(b"/* generated by tvm-mcu")


@pytest.mark.parametrize(
    "make_bad,pattern",
    [
        (
            lambda p: (p / "corrupt.onnx").write_bytes(b"\x08\x07not a protobuf" * 50) and p / "corrupt.onnx",
            r"corrupt\.onnx is not a readable ONNX model",
        ),
        (
            lambda p: (
                (p / "garbage.tflite").write_bytes(b"\x00" * 4 + b"TFL3" + b"\xff" * 64)
                and p / "garbage.tflite"
            ),
            r"garbage\.tflite is not a readable TFLite model",
        ),
        (lambda p: p / "missing.onnx", r"missing\.onnx does not exist"),
        (
            lambda p: _unsupported_model(p / "unsupported.onnx"),
            r"2 operator\(s\) .*Floor \(node 'my_floor'\).*Round \(node 'my_round'\)"
            r".*Supported ONNX operators: .*Conv",
        ),
    ],
    ids=["corrupt-onnx", "corrupt-tflite", "missing-file", "unsupported-ops"],
)
def test_bad_model_is_one_line_error(tmp_path, make_bad, pattern):
    import re

    path = make_bad(tmp_path)
    r = _cli("compile", str(path), "--board", "mps2-an386", "-o", str(tmp_path / "o"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvm-mcu: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in r.stderr


def test_model_too_big_for_lm3s6965evb(tmp_path):
    path = _big_model(tmp_path / "big.onnx")
    r = _cli("verify", str(path), "--board", "lm3s6965evb")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    msg = r.stderr.strip()
    assert "SRAM on lm3s6965evb" in msg and "B too many" in msg
    assert "the largest tensor is" in msg


def test_unknown_board_names_the_valid_ones(tmp_path):
    model = write_model("gemm_head", tmp_path)
    r = _cli("compile", str(model), "--board", "esp32")
    assert r.returncode == 1
    assert "esp32" in r.stderr and "mps2-an386" in r.stderr and "Traceback" not in r.stderr


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvm-mcu: error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            lambda p, m: ["compile", m, "--board", "mps2-an386", "-o", str(p / "afile")],
            r"afile: it is a file",
        ),
        (
            lambda p, m: ["compile", m, "--board", "mps2-an386", "-o", str(p / "afile" / "sub")],
            r"cannot create the output directory .*afile/sub",
        ),
        (
            lambda p, m: [
                "compile",
                m,
                "--board",
                "mps2-an386",
                "-o",
                str(p / "o"),
                "--sram-budget",
                "1e400",
            ],
            r"--sram-budget: '1e400' is more than a 32-bit microcontroller can address",
        ),
        (
            lambda p, m: [
                "compile",
                m,
                "--board",
                "mps2-an386",
                "-o",
                str(p / "o"),
                "--sram-budget",
                "1.2.3k",
            ],
            r"--sram-budget: cannot read '1\.2\.3k' as a size",
        ),
        (
            lambda p, m: [
                "prune",
                m,
                "--board",
                "mps2-an386",
                "--budget",
                "sram=1e400",
                "-o",
                str(p / "s.onnx"),
            ],
            r"budget sram: '1e400' is more than",
        ),
        (
            lambda p, m: ["verify", m, "--board", "mps2-an386", "--input", str(p / "complex.npy")],
            r"input 'x' needs float32 values; .*complex\.npy holds complex128",
        ),
        (
            lambda p, m: ["verify", m, "--board", "mps2-an386", "--input", str(p / "text.npy")],
            r"input 'x' needs float32 values; .*text\.npy holds <U1",
        ),
        (
            lambda p, m: ["quantize", m, "--calibration", str(p / "x.npz"), "-o", str(p)],
            r"cannot write .*: it is a directory",
        ),
    ],
    ids=[
        "output-is-a-file",
        "output-under-a-file",
        "huge-sram-budget",
        "unreadable-sram-budget",
        "huge-prune-budget",
        "complex-input",
        "string-input",
        "quantize-output-is-a-directory",
    ],
)
def test_bad_option_is_one_line_error_before_any_work(tmp_path, args, pattern):
    import re

    model = str(write_model("gemm_head", tmp_path))
    (tmp_path / "afile").write_text("not a directory")
    np.save(tmp_path / "complex.npy", np.zeros((1, 8, 6, 6), complex))
    np.save(tmp_path / "text.npy", np.full((1, 8, 6, 6), "a"))
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 8, 6, 6), np.float32))
    line = _one_line_error(_cli(*args(tmp_path, model)))
    assert re.search(pattern, line), line


def test_internal_error_is_one_line_with_the_traceback_kept(tmp_path, monkeypatch, capsys):
    from tvm_mcu import api

    def broken(*args, **kwargs):
        raise TypeError("a bug in a pass")

    monkeypatch.setattr(api.compiler, "compile_module", broken)
    model = write_model("gemm_head", tmp_path)
    status = main(["compile", str(model), "--board", "mps2-an386", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3 and len(err) == 1, err
    assert err[0].startswith("tvm-mcu: internal error (a bug in tvm-mcu, not a problem with your model")
    assert "TypeError: a bug in a pass" in err[0] and "--debug" in err[0]
    saved = Path(err[0].split("the traceback is in ")[1].split(";")[0])
    assert "Traceback" in saved.read_text() and "broken" in saved.read_text()
    with pytest.raises(TypeError, match="a bug in a pass"):
        main(["--debug", "compile", str(model), "--board", "mps2-an386", "-o", str(tmp_path / "o")])


@pytest.mark.emulator
def test_run_takes_float_input_for_a_quantised_build(tmp_path, capsys):
    from tests.zoo.ort_quantized import FLOAT_MODELS, ort_quantize
    from tests.zoo.qdq_ops import QDQ_OPS  # noqa: F401  (the zoo is importable; the model below is QDQ)

    path = ort_quantize(FLOAT_MODELS["resnet_concat_softmax"](), tmp_path / "r.onnx", activations="uint8")
    out = tmp_path / "out"
    assert main(["compile", str(path), "--board", "mps2-an386", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["dtype"] == "uint8"
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    assert (
        main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--save-output", str(tmp_path / "y.npy")])
        == 0
    )
    assert np.load(tmp_path / "y.npy").dtype == np.uint8


@pytest.mark.emulator
def test_verify_json_has_the_verdict_and_a_mismatch_is_said_on_stderr(tmp_path, capsys, monkeypatch):
    model = write_model("gemm_head", tmp_path)
    assert main(["verify", str(model), "--board", "mps2-an386", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert (
        report["verified"] is True and report["verdict"] == "match" and report["reference"] == "onnxruntime"
    )
    assert captured.err == ""

    from tvm_mcu import api

    real = api.run_compiled

    def corrupted(out_dir, inputs):
        outcome = real(out_dir, inputs)
        return api.RunOutcome([o + 0.5 for o in outcome.outputs], outcome.report)

    monkeypatch.setattr(api, "run_compiled", corrupted)
    assert main(["verify", str(model), "--board", "mps2-an386", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["verified"] is False and report["verdict"] == "mismatch"
    assert (
        captured.err.startswith("MISMATCH: max abs error 0.5") and "largest at output 'probs'" in captured.err
    )


def test_compile_with_halfword_weights_says_which_operators(tmp_path, capsys):
    model = write_model("int8_ds_cnn_block", tmp_path)
    out = tmp_path / "out"
    args = ["compile", str(model), "--board", "mps2-an386", "-o", str(out), "--weights", "int16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["int16_weight_ops"], report.get("int16_weight_ops")
    assert f"weights stored as int16 for: {', '.join(report['int16_weight_ops'])}" in text
    bad = _cli("compile", str(model), "--board", "mps2-an386", "--weights", "int4")
    assert bad.returncode == 2
    assert "invalid choice: 'int4' (choose from 'auto', 'int8', 'int16')" in bad.stderr


def test_compile_with_int4_weights_says_which_operators(tmp_path, capsys):
    from tests.zoo.qdq_ops import int4_cnn

    model = tmp_path / "int4_cnn.onnx"
    model.write_bytes(int4_cnn().SerializeToString())
    out = tmp_path / "out"
    assert main(["compile", str(model), "--board", "mps2-an386", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["int4_weight_ops"], report.get("int4_weight_ops")
    assert f"weights stored as int4 for: {', '.join(report['int4_weight_ops'])}" in text
    assert "(dense, int4" in text  # the operators' table names the format
    assert main(["compile", str(model), "--board", "mps2-an386", "-o", str(out), "--weights", "int8"]) == 0
    text = capsys.readouterr().out
    assert "weights stored as int4" not in text and "(dense, int4" not in text

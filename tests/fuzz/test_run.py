"""The classifier: each kind of outcome of a case maps to its verdict, with a one-line message and a
signature; refusal messages that span lines or name compiler internals are flagged.

Fast: ``api.verify`` (and what the second opinion needs) is replaced by stand-ins that behave as the
real ones do in each situation; the sample test (``test_sample.py``) runs the real thing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tvm_mcu import api
from tvm_mcu.errors import (
    BadOptionError,
    BudgetError,
    FirmwareError,
    ModelError,
    UnsupportedOpError,
    VerificationError,
)
from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz import run as run_mod
from tvm_mcu.fuzz.oracle import Departure
from tvm_mcu.fuzz.run import (
    CRASH,
    PASS,
    QUANTIZER_FAILED,
    REFERENCE_FAILED,
    REFUSED,
    WRONG,
    Case,
    board_for,
    execute,
    int8_variants_for,
    message_problem,
    normalise,
)
from tvm_mcu.fuzz.summary import render_markdown, summarise

MODEL = random_cnn(0).SerializeToString(deterministic=True)
CASE = Case(0, "float", "mps2-an386")
Verify = Callable[..., object]


def _verification(passed: bool) -> SimpleNamespace:
    report = SimpleNamespace(
        max_abs_error=0.0 if passed else 0.5,
        tolerance=1e-4,
        reference="onnxruntime",
        verdict="match" if passed else "mismatch",
        float_ops=(),
        library_warnings=(),
        compressed_weights=(),
    )
    return SimpleNamespace(report=report, outputs=[np.zeros(3, np.float32)], reference=[], passed=passed)


def _verify_returning(v: SimpleNamespace) -> Verify:
    return lambda *args, **kwargs: v


def _verify_raising(exc: BaseException) -> Verify:
    def verify(*args: object, **kwargs: object) -> None:
        raise exc

    return verify


def _deep_keyerror(*args: object, **kwargs: object) -> None:
    {}["missing"]  # noqa: B018 (a bug deep in the compiler)


@pytest.mark.parametrize(
    ("verify", "verdict", "flagged"),
    [
        (_verify_returning(_verification(True)), PASS, False),
        (_verify_raising(UnsupportedOpError("Conv 'conv_3': 3-D kernels are not supported")), REFUSED, False),
        (_verify_raising(BudgetError("the model needs 70000 B of SRAM: 3000 B too many")), REFUSED, False),
        (_verify_raising(UnsupportedOpError("relax.call_tir ('lv6'): no integer lowering")), REFUSED, True),
        (_verify_raising(ModelError("importer failed:\nTraceback ...\n  more")), REFUSED, True),
        (_verify_raising(BadOptionError("input 'x' must have shape [1, 3]")), REFUSED, True),
        (_verify_raising(FirmwareError("firmware.elf on mps2-an386 faulted (HardFault)")), CRASH, False),
        (_verify_raising(VerificationError("the reference gave 2 outputs, the firmware 1")), WRONG, False),
        (_deep_keyerror, CRASH, False),
    ],
    ids=["pass", "refused", "budget", "internal-names", "multi-line", "bad-option", "fault", "count", "bug"],
)
def test_outcome_of_each_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, verify: Verify, verdict: str, flagged: bool
) -> None:
    monkeypatch.setattr(api, "verify", verify)
    monkeypatch.setattr(run_mod, "_inputs", lambda *a: [])
    monkeypatch.setattr(run_mod, "ort_agrees", lambda *a: (True, "max abs error 0, tolerance 1e-4"))
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == verdict
    assert bool(o.bad_message) == flagged
    assert o.failed == (verdict in (WRONG, CRASH) or flagged)
    assert "\n" not in o.message and o.signature.startswith(verdict)
    assert (tmp_path / "model.onnx").read_bytes() == MODEL


def test_a_pass_onnxruntime_does_not_confirm_is_marked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """verify fell back to onnx.reference (onnxruntime could not run the model, or disagreed with both):
    the fuzzer asks onnxruntime again and marks a pass it does not confirm."""
    verification = _verification(True)
    verification.report.reference = "onnx.reference"
    monkeypatch.setattr(api, "verify", _verify_returning(verification))
    monkeypatch.setattr(run_mod, "_inputs", lambda *a: [])
    monkeypatch.setattr(run_mod, "ort_agrees", lambda *a: (False, "max abs error 0.3, tolerance 1e-4"))
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == PASS and o.signature == "pass:onnxruntime disagrees" and not o.failed
    assert "max abs error 0.3" in o.detail
    summary = summarise("float", 0, 1, [o], {}, 1.0)
    assert summary.doubted_passes == (o,) and summary.failures == 0
    assert "Passes onnxruntime does not confirm" in render_markdown(summary)


@pytest.mark.parametrize("reference_passes", [True, False])
def test_an_output_shape_the_model_does_not_declare_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reference_passes: bool
) -> None:
    """TVM's importer and onnx.reference share some shape mistakes (MaxPool SAME_LOWER): verify then
    passes; the model's declared output shapes do not."""
    import onnx

    from tvm_mcu.report import Report

    declared = [
        tuple(d.dim_value for d in o.type.tensor_type.shape.dim)
        for o in onnx.load_from_string(MODEL).graph.output
    ]
    shrunk = [(*shape[:-1], shape[-1] - 1) if shape[-1] > 1 else (*shape[:-1], 2) for shape in declared]

    def verify(model: Path, board: str, out_dir: Path, **kwargs: object) -> SimpleNamespace:
        out_dir.mkdir(parents=True)
        (out_dir / "report.json").write_text("{}")
        return _verification(reference_passes)

    rows = SimpleNamespace(outputs=[SimpleNamespace(shape=shape) for shape in shrunk])
    monkeypatch.setattr(api, "verify", verify)
    monkeypatch.setattr(Report, "read", staticmethod(lambda path: rows))
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == WRONG and o.signature == "wrong:output shape" and o.failed
    assert f"the model declares {list(declared[0])}" in o.message


def test_a_crash_keeps_its_traceback_and_innermost_frame(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(api, "verify", _deep_keyerror)
    o = execute(CASE, MODEL, tmp_path)
    assert o.signature.startswith("crash:KeyError:test_run.py:_deep_keyerror")
    assert "Traceback" in o.detail and "_deep_keyerror" in o.detail


@pytest.mark.parametrize(("ort_agrees", "verdict"), [(True, REFERENCE_FAILED), (False, WRONG)])
def test_a_mismatch_asks_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ort_agrees: bool, verdict: str
) -> None:
    monkeypatch.setattr(api, "verify", _verify_returning(_verification(False)))
    monkeypatch.setattr(run_mod, "_inputs", lambda *a: [])
    monkeypatch.setattr(run_mod, "ort_agrees", lambda *a: (ort_agrees, "max abs error 1e-07, tolerance 1e-4"))
    monkeypatch.setattr(
        run_mod, "first_departure", lambda *a: Departure("MaxPool", "MaxPool 'maxpool_3' ...")
    )
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == verdict
    assert "onnx.reference differs from the firmware by 0.5" in o.message
    if verdict == REFERENCE_FAILED:
        assert o.signature == "reference failed:MaxPool" and "maxpool_3" in o.detail


@pytest.mark.parametrize(
    ("in_reference", "ort_agrees", "departs", "verdict"),
    [
        (True, True, True, REFERENCE_FAILED),
        (True, False, True, CRASH),
        (False, True, True, REFERENCE_FAILED),  # e.g. verify cannot reshape the reference's output
        (False, True, False, CRASH),  # the reference agrees with onnxruntime: verify's own bug
    ],
    ids=["reference-raises", "firmware-wrong-too", "verify-trips-on-reference", "verify-bug"],
)
def test_an_exception_after_the_build_asks_onnxruntime(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    in_reference: bool,
    ort_agrees: bool,
    departs: bool,
    verdict: str,
) -> None:
    from tvm_mcu import reference

    def verify(model: Path, board: str, out_dir: Path, **kwargs: object) -> None:
        (out_dir / "report.json").parent.mkdir(parents=True)
        (out_dir / "report.json").write_text("{}")  # the firmware was built and ran; then:
        if in_reference:  # the oracle itself fails (here on an unreadable model)
            reference.reference_outputs(SimpleNamespace(format="onnx", data=b"not a model", inputs=()), [])
        np.zeros(4).reshape(3)  # verify trips over what the reference returned

    outputs = [np.ones(2, np.float32)]
    departure = Departure("MaxPool(ceil_mode)", "MaxPool 'maxpool_1' ...") if departs else None
    monkeypatch.setattr(api, "verify", verify)
    monkeypatch.setattr(api, "run_compiled", lambda *a: SimpleNamespace(outputs=outputs))
    monkeypatch.setattr(run_mod, "_inputs", lambda *a: [])
    monkeypatch.setattr(run_mod, "ort_agrees", lambda t, b, i, got: (ort_agrees and got is outputs, "close"))
    monkeypatch.setattr(run_mod, "first_departure", lambda *a: departure)
    monkeypatch.setattr(run_mod, "_misshapen", lambda *a: None)  # the shapes are right here
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == verdict
    if verdict == REFERENCE_FAILED:
        assert o.signature == "reference failed:MaxPool(ceil_mode)" and "maxpool_1" in o.detail
        assert o.message.startswith("onnx.reference raised" if in_reference else "verify raised ValueError")
    else:
        assert "Traceback" in o.detail


def test_an_exception_before_the_build_is_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(api, "verify", _deep_keyerror)
    monkeypatch.setattr(run_mod, "ort_agrees", lambda *a: pytest.fail("no firmware to ask about"))
    assert execute(CASE, MODEL, tmp_path).verdict == CRASH


def test_a_failing_quantiser_is_not_the_compilers_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tvm_mcu.ptq

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("calibration went wrong")

    monkeypatch.setattr(tvm_mcu.ptq, "quantize_onnx", broken)
    monkeypatch.setattr(api, "verify", _verify_raising(AssertionError("the compiler must not be reached")))
    o = execute(Case(0, "tvm-mcu", "mps2-an386"), MODEL, tmp_path)
    assert o.verdict == QUANTIZER_FAILED and not o.failed
    assert "calibration went wrong" in o.message


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("Conv 'conv_3': 3-D kernels are not supported (2-D only)", ""),
        ("the model needs 70000 B of SRAM on lm3s6965evb: 3000 B too many", ""),
        ("first line\nsecond line", "spans 2 lines"),
        ("conv2d ('lv8'): no integer lowering", "names the internal 'lv8'"),
        ("relax.nn.conv2d: no integer lowering", "names the internal 'relax.nn'"),
        ("could not legalise: fused_conv2d_add failed", "names the internal 'fused_conv2d_add'"),
        ("Mismatched type: Expected `Array<ir.Expr>`", "names the internal 'ir.Expr'"),
        ("TVM could not legalise model: ValueError in conv: bad", "relays an internal ValueError"),
        ("", "empty message"),
    ],
)
def test_message_problems(message: str, problem: str) -> None:
    found = message_problem(message)
    assert found.startswith(problem) if problem else found == ""


def test_normalise_forgets_paths_and_numbers() -> None:
    a = normalise("/tmp/x/cases/3_float/build/firmware.elf on mps2-an386 timed out after 120 s")
    b = normalise("/other/dir/firmware.elf on mps2-an386 timed out after 60 s")
    assert a == b and "<path>" in a


def test_boards_and_quantisers_rotate() -> None:
    boards = ("a", "b", "c", "d", "e")
    assert [board_for(s, 0, boards) for s in range(6)] == ["a", "b", "c", "d", "e", "a"]
    assert board_for(3, 0, boards) != board_for(3, 1, boards)
    assert [int8_variants_for(s)[1] for s in range(6)] == [
        "ort-s8",
        "ort-u8",
        "ort-s4",
        "ort-u4",
        "ort-s2",
        "ort-s8",
    ]
    assert all(int8_variants_for(s)[0] == "tvm-mcu" for s in range(4))


def test_project_frame_is_where_tvm_mcu_called_into_the_failure() -> None:
    from tvm_mcu.errors import BadOptionError
    from tvm_mcu.fuzz.run import project_frame

    with pytest.raises(BadOptionError) as info:
        api.pack((), [np.zeros(1)])
    assert project_frame(info.value.__traceback__) == "api.py:pack"
    assert project_frame(None) == "?"


def test_a_library_that_warns_is_wrong_even_when_its_numbers_are_right(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    verification = _verification(True)
    verification.report.library_warnings = ("model.c:12: warning: 'x' may be used uninitialized",)
    monkeypatch.setattr(api, "verify", _verify_returning(verification))
    o = execute(CASE, MODEL, tmp_path)
    assert o.verdict == WRONG and o.signature == "wrong:library warning" and o.failed
    assert "may be used uninitialized" in o.message

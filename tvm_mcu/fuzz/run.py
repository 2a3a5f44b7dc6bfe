"""Run one fuzz case (compile, run on QEMU, compare) and classify what happened.

A case is a float model (a seed's, or a reducer's candidate), a variant (``quantize.VARIANTS``) and a
board. ``execute`` writes the model, makes the variant, calls ``tvm_mcu.api.verify`` and turns whatever
happens into an :class:`Outcome`; it never raises. The verdicts:

- **pass**: the firmware's outputs match verify's reference (onnxruntime, or ``onnx.reference`` where
  onnxruntime cannot run the model) within verify's tolerance, or a QDQ model matches operator by
  operator (``tvm_mcu.qdq_check``); a pass resting on ``onnx.reference`` is checked against onnxruntime
  too: one it does not confirm keeps its verdict, with the signature "pass:onnxruntime disagrees";
- **wrong**: the firmware ran and its outputs differ from the reference, and onnxruntime (the second
  reference) does not side with the firmware either; or an output's shape is not the model's, or the
  generated library compiles with a warning;
- **reference failed**: ``onnx.reference`` raised or disagreed with the firmware while onnxruntime
  agrees with the firmware: the oracle, not the compiler, is wrong;
- **refused**: a :class:`~tvm_mcu.errors.TvmMcuError` (unsupported op, does not fit...) with its one-line
  message; a message over several lines, or naming internal Relax/TIR names (``lv12``, ``call_tir``...)
  instead of the user's operators, is flagged (``bad_message``) and counts as a failure;
- **crash**: any other exception (with its traceback), a firmware that faulted, failed to build or timed
  out (``FirmwareError``), a worker process that died or exceeded its time (see ``pool.py``);
- **quantizer failed**: the quantiser itself raised: not the compiler's failure.

An outcome's ``signature`` says which failure it is (verdict, exception type, innermost frame and the
normalised first line of the message): the reducer keeps it while it shrinks the model, and the summary
groups failures by it.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from pathlib import Path
from types import TracebackType

import attrs
import numpy as np
import onnx

from tvm_mcu.fuzz.oracle import Departure, first_departure, ort_agrees
from tvm_mcu.fuzz.quantize import (
    INT8_VARIANTS,
    ORT_S2,
    ORT_S4,
    ORT_S8,
    ORT_U4,
    ORT_U8,
    PRUNE,
    TVM_MCU,
    quantize,
)

logger = logging.getLogger(__name__)

PASS = "pass"
WRONG = "wrong"
REFERENCE_FAILED = "reference failed"
REFUSED = "refused"
CRASH = "crash"
QUANTIZER_FAILED = "quantizer failed"
VERDICTS = (PASS, WRONG, REFERENCE_FAILED, REFUSED, CRASH, QUANTIZER_FAILED)
# A pass whose outputs onnxruntime does not confirm (signature "pass:onnxruntime disagrees").
ORT_DISAGREES = "onnxruntime disagrees"

# Names a user never wrote: Relax bindings and globals, TIR, Relax and TVM IR/FFI names, fused kernels.
_INTERNAL_NAME = re.compile(
    r"\b(lv\d+|gv\d+|call_tir|call_dps_packed|R\.\w+|T\.\w+|relax\.\w+|tir\.\w+|ir\.\w+|ffi\.\w+|fused_\w+)"
)
# A Python or TVM exception relayed inside a refusal: the compiler failed, it did not decide to refuse.
_RELAYED = re.compile(
    r"\b(TypeError|ValueError|AttributeError|KeyError|IndexError|AssertionError|InternalError|TVMError|"
    r"RuntimeError|NotImplementedError)\b"
)


@attrs.frozen
class Case:
    """One compilation to try: a model (named by the seed that generated it), a variant, a board."""

    seed: int
    variant: str
    board: str
    # ``compile --compress-weights``: "all" stores every weight that shrinks Golomb-Rice coded.
    compress: str = "off"

    @property
    def name(self) -> str:
        return f"{self.seed}_{self.variant}"


@attrs.frozen
class Outcome:
    """What one case gave. ``message`` is one line; ``detail`` holds the traceback, the console or the
    error figures; ``bad_message`` says why a refusal's message is not one clear line ("" when it is)."""

    case: Case
    verdict: str
    message: str
    signature: str
    detail: str = ""
    bad_message: str = ""
    seconds: float = 0.0
    # int8 cases: the operators the quantiser left in float, compiled with --allow-float (0: integer only).
    float_ops: int = 0
    # With compressed weights: the weights the firmware stored Golomb-Rice coded (report.json's rows).
    coded_weights: int = 0

    @property
    def failed(self) -> bool:
        """A failure of the compiler the reducer should shrink: wrong, crash, or a badly worded refusal."""
        return self.verdict in (WRONG, CRASH) or (self.verdict == REFUSED and bool(self.bad_message))


def board_for(seed: int, variant_index: int, boards: tuple[str, ...]) -> str:
    """Boards in rotation: consecutive seeds, and a seed's variants, land on different boards."""
    return boards[(seed + variant_index) % len(boards)]


# onnxruntime's variants a seed takes in turn: int8 or uint8 activations with int8 weights, then with
# int4 or uint4 weights (the nibble kernels), then int2 ones (the crumb kernels).
ROTATION = (ORT_S8, ORT_U8, ORT_S4, ORT_U4, ORT_S2)


def int8_variants_for(seed: int) -> tuple[str, str]:
    """The two int8 variants of a seed: tvm-mcu's quantiser, and onnxruntime's, its activations and
    weight widths by seed (``ROTATION``)."""
    return (TVM_MCU, ROTATION[seed % len(ROTATION)])


# ----------------------------------------------------------------------------------- messages
def message_problem(message: str) -> str:
    """Why a refusal's message is not one line naming the user's op or the reason ("" when it is)."""
    text = message.strip()
    if not text:
        return "empty message"
    if "\n" in text:
        return f"spans {len(text.splitlines())} lines"
    found = _INTERNAL_NAME.search(text)
    if found:
        return f"names the internal '{found.group(1)}' instead of the model's operator"
    relayed = _RELAYED.search(text)
    if relayed:
        return f"relays an internal {relayed.group(1)} instead of naming the operator"
    return ""


def normalise(line: str) -> str:
    """A message line with paths, addresses and numbers made generic, so the same failure on another
    model (other shapes, node numbers, directories) has the same signature."""
    line = re.sub(r"(/[\w.+-]+)+/?", "<path>", line)
    line = re.sub(r"0x[0-9a-fA-F]+", "<hex>", line)
    line = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line)
    return line.strip()[:120]


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def innermost_frame(tb: TracebackType | None) -> str:
    """``file:function`` of the frame that raised (file name only, so it is stable across machines)."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.name}"


# The project's own sources (tvm_mcu/, installed passes/ and targets/ included), not site-packages.
_PROJECT = Path(__file__).resolve().parent.parent.parent


def project_frame(tb: TracebackType | None) -> str:
    """``file:function`` of the innermost frame in tvm-mcu's own code: where the project called into
    what failed (TVM's C++ frames say little about which pass was running)."""
    for frame in reversed(traceback.extract_tb(tb)):
        path = Path(frame.filename)
        if not path.is_absolute():
            continue  # C++ frames ("<unknown>") and generated code
        if path.resolve().is_relative_to(_PROJECT) and not {".venv", "fuzz"} & set(path.parts):
            return f"{path.name}:{frame.name}"
    return "?"


def _raised_in_reference(tb: TracebackType | None) -> bool:
    return any(
        Path(f.filename).name == "reference.py" and "tvm_mcu" in f.filename for f in traceback.extract_tb(tb)
    )


def crash_outcome(case: Case, exc: BaseException, seconds: float, verdict: str = CRASH) -> Outcome:
    where = innermost_frame(exc.__traceback__)
    ours = project_frame(exc.__traceback__)
    first = _first_line(exc)
    return Outcome(
        case,
        verdict,
        f"{type(exc).__name__} at {where} (from {ours}): {first}"[:300],
        f"{verdict}:{type(exc).__name__}:{where}:{ours}:{normalise(first)}",
        "".join(traceback.format_exception(exc)),
        seconds=seconds,
    )


def refusal_outcome(case: Case, exc: BaseException, seconds: float) -> Outcome:
    from tvm_mcu.errors import BadOptionError

    message = str(exc)
    problem = message_problem(message)
    if not problem and isinstance(exc, BadOptionError):
        problem = "BadOptionError although the fuzzer gives no option but the board"
    signature = f"{REFUSED}:{type(exc).__name__}"
    if problem:
        # The internal error the refusal wraps, if any, tells one such bug from another.
        cause = exc.__cause__ or exc.__context__
        inner = f":{type(cause).__name__}@{innermost_frame(cause.__traceback__)}" if cause else ""
        signature += f":{normalise(problem)}{inner}"
    return Outcome(
        case,
        REFUSED,
        message.strip().splitlines()[0] if message.strip() else "",
        signature,
        "".join(traceback.format_exception(exc)) if problem else "",
        bad_message=problem,
        seconds=seconds,
    )


# ----------------------------------------------------------------------------------- execution
def execute(case: Case, model: bytes, work_dir: Path) -> Outcome:
    """Compile, run and compare ``model`` (float ONNX bytes) as ``case`` says, in ``work_dir``."""
    from tvm_mcu import api
    from tvm_mcu.errors import FirmwareError, TvmMcuError, VerificationError

    start = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    float_path = work_dir / "model.onnx"
    float_path.write_bytes(model if case.compress == "off" else sparsified(model))
    try:
        target = quantize(float_path, case.variant, case.seed, work_dir / f"model_{case.variant}.onnx")
    except Exception as exc:  # whatever the quantiser raises is its failure, not the compiler's
        return crash_outcome(case, exc, time.perf_counter() - start, QUANTIZER_FAILED)
    build = work_dir / "build"
    try:
        if case.variant == PRUNE:
            target = _pruned(target, case.board, work_dir)
        # A quantiser may leave operators in float (ONNX Runtime does not quantise Div, Sub, ...): the
        # compiler must run those correctly too, so int8 cases compile with --allow-float; the summary
        # counts the models that are integer-only.
        verification = api.verify(
            target,
            case.board,
            build,
            seed=case.seed,
            allow_float=case.variant in INT8_VARIANTS,
            compress=case.compress,
        )
    except (FirmwareError, VerificationError) as exc:
        if isinstance(exc, VerificationError) and "no reference interpreter can run" in str(exc):
            message = _first_line(exc)
            return Outcome(
                case,
                REFERENCE_FAILED,
                message,
                f"{REFERENCE_FAILED}:no oracle",
                seconds=time.perf_counter() - start,
            )
        verdict = WRONG if isinstance(exc, VerificationError) else CRASH
        return crash_outcome(case, exc, time.perf_counter() - start, verdict)
    except TvmMcuError as exc:
        return refusal_outcome(case, exc, time.perf_counter() - start)
    except Exception as exc:  # a bug: classified with its traceback, never swallowed
        misshapen = _misshapen(case, target, build, time.perf_counter() - start)
        blamed = misshapen or _blame_reference(case, target, build, exc)
        return blamed or crash_outcome(case, exc, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    report = verification.report
    misshapen = _misshapen(case, target, build, seconds)
    if misshapen is not None:
        return misshapen
    if report.library_warnings:
        # The generated library must build warning-free (-Wall -Wextra): a warning is a compiler bug even
        # when the numbers come out right.
        first = report.library_warnings[0]
        return Outcome(
            case, WRONG, f"the generated C warns: {first}"[:300], f"{WRONG}:library warning", seconds=seconds
        )
    if verification.passed:
        message = f"max abs error {report.max_abs_error:.3g} against {report.reference}" + (
            f" ({report.verdict})" if report.verdict not in ("", "match") else ""
        )
        # verify prefers onnxruntime; only a pass that rests on the other oracle needs its opinion.
        doubt = (
            ""
            if report.reference == "onnxruntime"
            else _ort_doubts(target, build, case.seed, verification.outputs)
        )
        return Outcome(
            case,
            PASS,
            message,
            f"{PASS}:{ORT_DISAGREES}" if doubt else PASS,
            doubt,
            seconds=seconds,
            float_ops=len(report.float_ops),
            coded_weights=len(report.compressed_weights),
        )
    ref_error = (
        f"onnx.reference differs from the firmware by {report.max_abs_error:.4g} "
        f"(tolerance {report.tolerance:.3g})"
    )
    return _second_opinion(case, target, build, verification.outputs, ref_error, seconds)


# The budget a prune case asks for: this share of the float model's compiled SRAM or, when no width
# meets that (the peak may sit on tensors no pruning narrows), of its MACs, or any fewer MACs at all.
PRUNE_SHARE = 0.8


# With compressed weights, the share of each convolution's and dense layer's weights zeroed (the smallest
# magnitudes) before quantising: a random model's weights spread over the whole int8 range, and their
# Golomb-Rice code would not shrink (none did over 120 cases), so no case would decode anything.
SPARSITY = 0.6


def sparsified(model: bytes) -> bytes:
    """``model`` (ONNX bytes) with the ``SPARSITY`` smallest-magnitude values of every Conv, Gemm and
    MatMul constant weight of 16 or more values set to zero: deterministic, as a pruned model's."""
    from onnx import numpy_helper

    proto = onnx.load_from_string(model)
    weights = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    for init in proto.graph.initializer:
        if init.name not in weights:
            continue
        w = numpy_helper.to_array(init)
        if w.size < 16 or w.dtype != np.float32:
            continue
        order = np.argsort(np.abs(w).reshape(-1), kind="stable")
        flat = w.reshape(-1).copy()
        flat[order[: int(SPARSITY * flat.size)]] = 0.0
        init.CopyFrom(numpy_helper.from_array(flat.reshape(w.shape), init.name))
    return proto.SerializeToString(deterministic=True)


def _pruned(model: Path, board: str, work_dir: Path) -> Path:
    """``tvm-mcu prune`` of the float model to ``PRUNE_SHARE`` of its SRAM as compiled in float, or of
    its MACs when no width meets that, or to one MAC fewer (L1 norms, no training, float figures: the
    float model is the one compiled); the pruned model is the one verified. A model prune cannot take,
    or one no narrower width makes cheaper (nothing to prune), is a TvmMcuError: a refusal."""
    from tvm_mcu import api
    from tvm_mcu.errors import BudgetError
    from tvm_mcu.prune import Budget, prune_model

    report = api.compile_model(model, board, work_dir / "unpruned").report
    out = work_dir / "pruned.onnx"
    sram = Budget(sram=max(1, int(PRUNE_SHARE * (report.arena_bytes + report.io_bytes))))
    macs = Budget(macs=max(1, int(PRUNE_SHARE * report.macs)))
    fewer = Budget(macs=max(1, report.macs - 1))
    for k, budget in enumerate((sram, macs, fewer)):
        try:
            prune_model(
                model,
                board=board,
                budget=budget,
                method="l1",
                out_path=out,
                int8=False,
                workdir=work_dir / f"prune{k}",
            )
            break
        except BudgetError:
            if budget is fewer:
                raise
    return out


def _misshapen(case: Case, target: Path, build: Path, seconds: float) -> Outcome | None:
    """A "wrong" outcome when a compiled output's shape is not the one the model declares (whatever the
    references say: onnx.reference and TVM's importer share some shape mistakes), else None."""
    from tvm_mcu import api
    from tvm_mcu.report import Report

    if not (build / api.REPORT).is_file():
        return None
    declared = [
        tuple(int(d.dim_value) for d in o.type.tensor_type.shape.dim)
        for o in onnx.load(str(target)).graph.output
    ]
    compiled = [tuple(row.shape) for row in Report.read(build / api.REPORT).outputs]
    for k, (want, got) in enumerate(zip(declared, compiled, strict=False)):
        if want and all(want) and int(np.prod(want)) != int(np.prod(got)):
            message = f"output {k} has shape {list(got)}; the model declares {list(want)}"
            return Outcome(case, WRONG, message, f"{WRONG}:output shape", seconds=seconds)
    return None


def _inputs(target: Path, seed: int) -> list[np.ndarray]:
    """The inputs ``verify`` drew for this model and seed."""
    from tvm_mcu import api
    from tvm_mcu.frontend import load_model

    return api.model_inputs(load_model(target), input_path=None, seed=seed)


def _ort_doubts(target: Path, build: Path, seed: int, outputs: list[np.ndarray]) -> str:
    """Why onnxruntime disagrees with a firmware that matched ``onnx.reference`` ("" when it agrees): the
    importer and the reference may share a mistake, which verify alone cannot see."""
    try:
        inputs = _inputs(target, seed)
        agree, how = ort_agrees(target, build, inputs, outputs)
    except Exception as exc:  # no second opinion to give: the pass stands unquestioned
        logger.warning("onnxruntime could not check %s: %s: %s", target, type(exc).__name__, _first_line(exc))
        return ""
    return "" if agree else f"onnxruntime disagrees with the firmware and onnx.reference ({how})"


def _second_opinion(
    case: Case, target: Path, build: Path, outputs: list[np.ndarray], ref_error: str, seconds: float
) -> Outcome:
    """``reference failed`` when onnxruntime agrees with the firmware's ``outputs``, else ``wrong``; a
    reference failure's signature names the op where ``onnx.reference`` first departs from onnxruntime."""
    try:
        inputs = _inputs(target, case.seed)
        agree, how = ort_agrees(target, build, inputs, outputs)
    except Exception as exc:  # onnxruntime cannot run the model: no second opinion
        agree, how = False, f"onnxruntime could not run the model ({type(exc).__name__}: {_first_line(exc)})"
    if not agree:
        return Outcome(case, WRONG, f"{ref_error}; onnxruntime: {how}", WRONG, seconds=seconds)
    message = f"{ref_error}; onnxruntime agrees with the firmware ({how})"
    try:
        departure = first_departure(target, inputs)
    except Exception as exc:  # locating the departure is a courtesy; the verdict stands without it
        departure = Departure("?", f"(locating it failed: {type(exc).__name__}: {_first_line(exc)})")
    return _reference_failed(case, message, departure, seconds)


def _reference_failed(case: Case, message: str, departure: Departure | None, seconds: float) -> Outcome:
    if departure is None:
        departure = Departure("?", "no node (the outputs agree node by node; only the comparison differs)")
    detail = f"onnx.reference first departs from onnxruntime at {departure.description}"
    return Outcome(
        case, REFERENCE_FAILED, message, f"{REFERENCE_FAILED}:{departure.op}", detail, seconds=seconds
    )


def _blame_reference(case: Case, target: Path, build: Path, exc: BaseException) -> Outcome | None:
    """A "reference failed" outcome for ``exc`` (not a TvmMcuError) raised after the firmware was built,
    when the reference and not the firmware is wrong: onnxruntime agrees with the firmware and
    ``onnx.reference`` departs from onnxruntime at some node (it raised, or gave a shape verify could
    not compare). None otherwise: the exception is a crash."""
    from tvm_mcu import api

    start = time.perf_counter()
    if not (build / api.REPORT).is_file():
        return None  # compilation never finished: nothing to ask onnxruntime about
    where = "onnx.reference" if _raised_in_reference(exc.__traceback__) else "verify"
    ref_error = f"{where} raised {type(exc).__name__}: {_first_line(exc)}"
    try:
        inputs = _inputs(target, case.seed)
        outputs = api.run_compiled(build, inputs).outputs
        agree, how = ort_agrees(target, build, inputs, outputs)
        departure = first_departure(target, inputs) if agree else None
    except Exception as second:  # no second opinion: the original exception stands as a crash
        logger.warning("no second opinion on %s: %s: %s", case, type(second).__name__, _first_line(second))
        return None
    if departure is None:
        return None
    message = f"{ref_error}; onnxruntime agrees with the firmware ({how})"
    return _reference_failed(case, message, departure, time.perf_counter() - start)

"""Benchmark sections about models tvm-mcu did not make: ONNX Runtime's quantiser, and the fuzzer.

``ort_section``: four float CNNs (tests/zoo/ort_quantized.py: a MobileNetV2 with Clip and unfolded
BatchNormalization, a ResNet with concat and softmax, an odd-shaped CNN, the demo) quantised by
onnxruntime's ``quantize_static`` (QDQ and QOperator formats, int8 and uint8 activations), compiled
without ``--allow-float``, verified on the FPU-less Cortex-M3 and measured on the Cortex-M4.

``fuzz_section``: seeded random CNNs (``tvm_mcu.fuzz``) compiled, run on QEMU and compared, float,
int8 by both quantisers and float pruned by ``tvm-mcu prune``, counted by verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORT_HEADING = "## Models quantised by ONNX Runtime"
FUZZ_HEADING = "## Fuzzing"
FUZZ_FLOAT = 300
FUZZ_INT8 = 150
# Each prune case compiles its model about ten times (the width search): fewer seeds.
FUZZ_PRUNE = 40
FUZZ_JOBS = 2


def _steps(report: object) -> str:
    r = report
    err, scale = getattr(r, "max_abs_error", None), r.outputs[0].scale  # type: ignore[attr-defined]
    if err is None or not scale:
        return "-"
    return f"{err / scale:.2f}"


def ort_section(tmp: Path) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from tests.zoo.ort_quantized import FLOAT_MODELS, ort_quantize
    from tvm_mcu import api

    cases = [(name, act, "QDQ") for name in FLOAT_MODELS for act in ("int8", "uint8")]
    cases += [("mobilenetv2_clip", "uint8", "QOperator"), ("resnet_concat_softmax", "int8", "QOperator")]
    rows = []
    for name, act, fmt in cases:
        path = ort_quantize(
            FLOAT_MODELS[name](), tmp / f"ort_{name}_{act}_{fmt}.onnx", activations=act, fmt=fmt
        )
        m3 = api.verify(path, "mps2-an385", tmp / f"ort_{name}_{act}_{fmt}_m3", seed=3).report
        m4 = api.verify(path, "mps2-an386", tmp / f"ort_{name}_{act}_{fmt}_m4", seed=3).report
        io = "/".join(sorted({row.dtype for row in (*m4.inputs, *m4.outputs)}))
        routines = ", ".join(m3.float_routines) or "none"
        print(f"ort {name} {act} {fmt}: {m4.verdict}, {m4.instructions} instructions", flush=True)
        rows.append(
            f"| {name} | {fmt} | {act} | {io} | {m4.verdict} | {_steps(m4)} | {routines} | "
            f"{m4.arena_bytes:,} | {m4.flash_bytes:,} | {m4.macs:,} | {m4.instructions:,} | "
            f"{m4.instructions_per_mac:.2f} | {m4.schedule} |"
        )
    return [
        "",
        ORT_HEADING,
        "",
        "Float CNNs written with `onnx.helper` (`tests/zoo/ort_quantized.py`), quantised by onnxruntime's own",
        "`quantize_static` (per-channel int8 weights; activations QInt8 or its default QUInt8; QDQ format, and",
        "the QOperator format of `QLinearConv`/`QGemm`/`com.microsoft` ops), calibrated on 16 seeded normal",
        "samples, compiled **without** `--allow-float`. **verdict**: `tvm-mcu verify` against onnxruntime on a",
        "seeded input (`match`: within one quantisation step; `match per operator`: every quantised operator",
        "within a step of onnxruntime given the same integers, see `tvm_mcu/qdq_check.py`). **steps**: the",
        "largest output error in quantisation steps. **float routines**: linked into the firmware for the",
        "FPU-less mps2-an385 (Cortex-M3). The other figures on mps2-an386 (instructions, not cycles).",
        "",
        "| model | format | activations | interface | verdict | steps | float routines (M3) | arena B | flash B "
        "| MACs | instructions | instr / MAC | schedule |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


def fuzz_section(
    tmp: Path, *, n_float: int = FUZZ_FLOAT, n_int8: int = FUZZ_INT8, n_prune: int = FUZZ_PRUNE
) -> list[str]:
    from tvm_mcu.fuzz.campaign import Campaign, Config
    from tvm_mcu.fuzz.run import REFUSED, VERDICTS
    from tvm_mcu.targets.board import development_boards

    boards = tuple(b.name for b in development_boards())
    summaries = []
    for kind, n in (("float", n_float), ("int8", n_int8), ("prune", n_prune)):
        config = Config(n=n, kind=kind, out_dir=tmp / f"fuzz_{kind}", boards=boards, jobs=FUZZ_JOBS)
        summary = Campaign(config).run()
        print(f"fuzz {kind}: {summary.totals}", flush=True)
        summaries.append((kind, n, summary))
    rows = []
    notes = []
    for kind, n, s in summaries:
        models = len(s.outcomes)
        t = s.totals
        refused = 100 * t[REFUSED] / max(1, models)
        rows.append(
            f"| {kind} | {n} | {models} | "
            + " | ".join(str(t[v]) for v in VERDICTS)
            + f" | {s.bad_refusals} | {refused:.1f} % | {s.seconds / 60:.0f} |"
        )
        if kind == "int8":
            exact, passed = s.integer_only
            notes.append(
                f"- int8: {exact} of {passed} passing quantised models are integer-only; the others keep "
                "operators their quantiser left in float (onnxruntime does not quantise Div or Sub, say), which "
                "the fuzzer compiles with `--allow-float`."
            )
        for g in s.groups:
            cases = ", ".join(f"{o.case.seed}/{o.case.variant}" for o in g.outcomes[:6])
            notes.append(
                f"- {kind} {g.verdict} x{len(g.outcomes)} (seed/variant {cases}): {g.outcomes[0].message}"
            )
        for message, count in s.refusals()[:8]:
            notes.append(f"- {kind} refused x{count}: {message}")
    return [
        "",
        FUZZ_HEADING,
        "",
        "`make fuzz` (`python -m tvm_mcu.fuzz`): seeded random CNNs (`tvm_mcu/fuzz/generate.py`: convolutions",
        "1/3/5 with strides, asymmetric pads, auto_pad and dilation, depthwise and grouped, pools with ceil_mode",
        "and pads, residual adds, concat, BatchNormalization, GAP, Gemm, softmax, reshape, pad, element-wise",
        "activations, several inputs and outputs, opsets 13 to 21), compiled for the five boards in turn, run on",
        "QEMU and compared with onnxruntime (onnx.reference where it cannot run a model). int8: each seed",
        "quantised by `tvm-mcu quantize` and by onnxruntime's `quantize_static` (QInt8 and QUInt8 activations",
        "by turns). prune: each float seed through `tvm-mcu prune` (L1, no training) to 80 % of its SRAM, or of",
        "its MACs when no width meets that, and the pruned model verified.",
        "**wrong**: outputs off the reference (within a step for int8, per operator allowed);",
        "**refused**: a one-line TvmMcuError; **bad messages**: refusals naming internals or over several lines.",
        "",
        "| kind | seeds | models | " + " | ".join(VERDICTS) + " | bad messages | refused | minutes |",
        "|---|---:|---:|" + "---:|" * len(VERDICTS) + "---:|---:|---:|",
        *rows,
        "",
        *notes,
        "",
    ]

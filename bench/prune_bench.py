"""``make bench``, pruning: the differentiable resource model against the compiled firmware.

For each benchmark float model with prunable channel groups, the resource model is built (int8, as
deployed) and its SRAM, flash and MAC predictions are compared with compiled, built firmware at several
widths (every group at 3/4, 1/2 and 1/4, and two seeded random widths).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tvm_mcu import pipeline, resource_model
from tvm_mcu.analysis.channels import ChannelPlan, channel_groups
from tvm_mcu.frontend import load_model

BOARD = "mps2-an386"


def _configs(plan: ChannelPlan, seed: int) -> list[tuple[str, dict[int, tuple[int, ...]]]]:
    rng = np.random.default_rng(seed)
    out = [
        (f"all {f}/4", {g.gid: tuple(range(max(1, g.size * f // 4))) for g in plan.prunable})
        for f in (3, 2, 1)
    ]
    for r in range(2):
        keep = {
            g.gid: tuple(range(int(rng.integers(max(1, g.size // 4), g.size + 1)))) for g in plan.prunable
        }
        out.append((f"random {r + 1}", keep))
    return out


def _models(tmp: Path) -> list[tuple[str, Path]]:
    from tvm_mcu.demo import demo_files

    sys.path.insert(0, str(Path(__file__).parent))  # bench/mobilenetv2.py
    from mobilenetv2 import build as build_mobilenetv2

    demo, _ = demo_files()
    mnv2, _ = build_mobilenetv2(tmp / "mobilenetv2")
    models = [("demo Fashion-MNIST CNN", demo), ("MobileNetV2-style 64x64", mnv2)]
    trained = Path(__file__).parent / "models"
    for name, label in (
        ("fashion_cnn_wide", "Fashion-MNIST CNN 32/64/128 (trained)"),
        ("mobilenetv2_fashion", "MobileNetV2-style Fashion-MNIST (trained)"),
    ):
        if (trained / f"{name}.onnx").is_file():
            models.append((label, trained / f"{name}.onnx"))
    return models


PRUNING_HEADING = "## Pruning: the resource model against the firmware"


def resource_model_section(tmp: Path) -> list[str]:
    lines = [
        "",
        PRUNING_HEADING,
        "",
        f"int8 (PTQ with seeded calibration data), {BOARD}. The model is read off the compiler at full width",
        "and with each prunable group halved; predictions below are for other widths, compared with the",
        "compiled and built firmware (SRAM = arena + inputs/outputs from the plan, flash from the ELF, MACs",
        "from the compiled operators). Error = |predicted - compiled| / compiled.",
        "",
        "| model | groups | build s | widths | schedule (predicted / compiled) | SRAM B pred / fw | flash B "
        "pred / fw | MACs pred / fw | max error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    worst_all = 0.0
    for label, path in _models(tmp):
        imported = load_model(path)
        mod = pipeline.run(pipeline.inference_passes(), imported.mod)
        plan = channel_groups(mod)
        work = tmp / f"rm_{path.stem}"
        t0 = time.perf_counter()
        model = resource_model.build(mod, plan, imported, BOARD, workdir=work / "model")
        seconds = time.perf_counter() - t0
        configs = _configs(plan, 0)
        checks = resource_model.check(model, mod, imported, [k for _, k in configs], work)
        for (name, _), c in zip(configs, checks, strict=True):
            err = max(c.errors().values())
            worst_all = max(worst_all, err)
            p, f = c.predicted, c.compiled
            lines.append(
                f"| {label} | {len(model.groups)} | {seconds:.1f} | {name} {list(c.widths)} | {p.schedule} / "
                f"{f.schedule} | {p.sram:,.0f} / {f.sram:,.0f} | {p.flash:,.0f} / {f.flash:,.0f} | "
                f"{p.macs:,.0f} / {f.macs:,.0f} | {100 * err:.2f} % |"
            )
            print(f"resource model {label} {name}: {100 * err:.2f} %", flush=True)
    lines += ["", f"Largest error over every model and width: **{100 * worst_all:.2f} %**.", ""]
    return lines


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(resource_model_section(Path(tmp))))


# ------------------------------------------------------------------------------------------------------
# Methods at fractions of the int8 peak SRAM: accuracy (float; int8 on QEMU), SRAM, flash, MACs,
# instructions, training time.
METHODS_HEADING = "## Pruning: methods at fractions of the int8 peak SRAM"

QEMU_IMAGES = 300
PLAIN_EPOCHS = 3  # epochs of plain training timed for the overhead of pruning while training
CALIBRATION_IMAGES = 256


@attrs.frozen
class Deployed:
    float_acc: float
    int8_acc: float  # over the first ``tested`` test images (see deploy)
    sram: int
    flash: int
    macs: int
    instructions: int
    schedule: str
    weights: int = 0  # stored weight bytes (Report.stored_weights_bytes)
    images: int = QEMU_IMAGES  # the test images run on QEMU
    tested: int = QEMU_IMAGES  # the test images int8_acc is over: ``images``, or all with every_image
    # With every_image: onnxruntime on the same QDQ model and test images, the predictions that differ
    # from the firmware's and the largest difference of an output, in int8 steps (see ort_outputs).
    ort_acc: float | None = None
    ort_differ: int = 0
    ort_steps: int = 0


def float_accuracy(path: Path, ds: Any) -> float:
    """The float model's accuracy on the whole test split."""
    from tvm_mcu.train.bridge import RelaxModule
    from tvm_mcu.train.loop import evaluate

    mod = pipeline.run(pipeline.inference_passes(), load_model(path).mod)
    return evaluate(RelaxModule(mod), ds.x_test, ds.y_test)


def ort_outputs(q: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's first output of the QDQ model ``q`` for each sample of ``x`` (batch 1 each).

    The model as written (no graph optimisation, as ``tvm_mcu.reference``): float32 arithmetic between
    DequantizeLinear and QuantizeLinear, where tvm-mcu computes each quantised operator exactly in
    integers; a value within float32 error of a rounding tie can round the other way (one step, which
    later layers may carry to the outputs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(q), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.stack([np.asarray(session.run(None, {name: s[None]})[0]).ravel() for s in x])


def _host_library(out_dir: Path, lib_dir: Path) -> Any:
    """The compiled library in ``out_dir`` (its C sources and headers, not the firmware) built by the
    host's gcc and loaded."""
    import shutil

    from tvm_mcu.targets.host import build_host_library

    lib_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted([*out_dir.glob("*.c"), *out_dir.glob("*.h")]):
        shutil.copy2(f, lib_dir / f.name)
    return build_host_library(lib_dir)


def deploy(
    path: Path,
    ds: Any,
    work: Path,
    sram_budget: int | None = None,
    *,
    channels_last: bool | None = False,
    images: int = QEMU_IMAGES,
    every_image: bool = False,
    quantized: bool = False,
    compress: str = "off",
) -> Deployed:
    """Float accuracy on the whole test split; PTQ on real training images; int8 on QEMU (the first
    ``images`` test images); ``channels_last`` as ``compile --channels-last``.

    ``every_image``: the int8 accuracy is instead over the whole test split, computed by the compiled
    library (the same C) built for the host by gcc; on the first ``images`` its outputs must be
    byte-identical to the firmware's on QEMU (VerificationError otherwise: the figure would not be the
    firmware's). onnxruntime runs the same QDQ model on the same images beside it (``ort_*``).

    ``quantized``: ``path`` is a QDQ model already (``prune --weights int4`` / ``--method udc`` write
    one): deployed as it is; its float accuracy is NaN (the caller has the trained one).
    ``compress``: ``compile --compress-weights`` (stored weights Golomb-Rice coded).
    """
    from tvm_mcu import api
    from tvm_mcu.api import FIRMWARE_DIR, REPORT, pack, unpack
    from tvm_mcu.errors import VerificationError
    from tvm_mcu.ptq import quantize_onnx
    from tvm_mcu.report import Report
    from tvm_mcu.targets.board import load_board
    from tvm_mcu.targets.firmware import build_firmware
    from tvm_mcu.targets.host import run_host_library
    from tvm_mcu.targets.runner import run_firmware

    imported = load_model(path)
    if quantized:
        float_acc, q = float("nan"), path
    else:
        float_acc = float_accuracy(path, ds)
        q = work / f"{path.stem}_int8.onnx"
        quantize_onnx(path, {imported.inputs[0].name: ds.x_train[:CALIBRATION_IMAGES]}, q)
    compiled = api.compile_model(
        q,
        BOARD,
        work / f"{path.stem}_build",
        sram_budget=sram_budget,
        channels_last=channels_last,
        compress=compress,
    )
    report = Report.read(compiled.out_dir / REPORT)
    fw = build_firmware(compiled.out_dir, load_board(BOARD), compiled.out_dir / FIRMWARE_DIR)
    out_bytes = max((r.offset + r.bytes for r in report.outputs), default=0)
    host = _host_library(compiled.out_dir, work / f"{path.stem}_host") if every_image else None
    correct, instructions = 0, 0
    for i, (x, y) in enumerate(zip(ds.x_test[:images], ds.y_test[:images], strict=True)):
        packed = pack(report.inputs, [x[None]])
        result = run_firmware(fw, packed, out_bytes)
        if host is not None and run_host_library(host, packed, out_bytes) != result.output:
            raise VerificationError(
                f"{q.name}: on test image {i} the firmware's outputs on QEMU differ from the same "
                "library built for the host; its int8 accuracy over every test image cannot be the host's"
            )
        correct += int(np.argmax(unpack(report.outputs, result.output)[0]) == int(y))
        instructions = result.instructions
    tested, ort_acc, ort_differ, ort_steps = images, None, 0, 0
    if host is not None:
        tested = len(ds.x_test)
        got = np.stack(
            [
                unpack(report.outputs, run_host_library(host, pack(report.inputs, [x[None]]), out_bytes))[0]
                for x in ds.x_test
            ]
        ).reshape(tested, -1)
        correct = int((np.argmax(got, axis=1) == ds.y_test).sum())
        ref = ort_outputs(q, ds.x_test)
        row = report.outputs[0]
        assert row.scale is not None and row.zero_point is not None  # quantize_onnx quantises the outputs
        steps = ref / row.scale + row.zero_point - got
        ort_acc = float((np.argmax(ref, axis=1) == ds.y_test).mean())
        ort_differ = int((np.argmax(ref, axis=1) != np.argmax(got, axis=1)).sum())
        ort_steps = int(np.abs(np.rint(steps)).max(initial=0))
    r = compiled.report
    return Deployed(
        float_acc,
        correct / tested,
        r.arena_bytes + r.io_bytes,
        fw.flash_bytes,
        r.macs,
        instructions,
        r.schedule,
        r.stored_weights_bytes,
        images,
        tested,
        ort_acc,
        ort_differ,
        ort_steps,
    )


# (method, SRAM model): DiffPrune with the compiler's schedule (the Pex co-design) and with the plain
# whole-buffer peak, and the two baselines.
METHODS = (("diff", "compiler"), ("diff", "whole"), ("l1", "compiler"), ("uniform", "compiler"))
FRACTIONS = ((1, 2), (1, 4), (1, 8))
# At the budgets a model lists in ``_Trained.seeded`` the methods are close (within the spread of
# training runs): diff, l1 and uniform are trained again with seeds 1..SEEDS-1 and compared by the mean.
SEEDS = 3


@attrs.frozen
class _Trained:
    """A model trained by train_models.py and how the methods comparison prunes it."""

    label: str
    path: Path
    flash_too: bool  # also a budget of SRAM and flash at 1/4 (the done-when of the pruning issue)
    epochs: int  # training epochs of every method (diff: half pruning while training, half fine-tuning)
    limit: int | None  # training images (None: all 60,000)
    flash_epochs: int | None = None  # the epochs at SRAM 1/4 + flash 1/4, if not ``epochs``
    seeded: tuple[str, ...] = ()  # budgets compared by the mean float accuracy over SEEDS training runs


def _trained_models() -> list[_Trained]:
    here = Path(__file__).parent / "models"
    return [
        # 16 -> 32 epochs is worth 0.2-0.3 points at 1/4 of the SRAM: the done-when budget gets 32.
        # At 1/2 and 1/4 the methods are within about half a point of each other: one run each decides
        # little (diff at 1/2 over seeds 0-2 when it pruned at 1/8's rate, 1e-2: 0.9134, 0.9159, 0.9114).
        _Trained(
            "Fashion-MNIST CNN 32/64/128",
            here / "fashion_cnn_wide.onnx",
            True,
            16,
            None,
            32,
            ("SRAM 1/2", "SRAM 1/4"),
        ),
        # Its full-width epochs are about 5x slower than the CNN's: fewer, on half the images.
        _Trained("MobileNetV2-style (Fashion-MNIST)", here / "mobilenetv2_fashion.onnx", False, 4, 30_000),
    ]


def methods_section(tmp: Path, *, emit: Callable[[list[str]], None] | None = None) -> list[str]:
    """The methods comparison; ``emit`` gets the section so far after every row (a run takes hours)."""
    from tvm_mcu.errors import BudgetError
    from tvm_mcu.prune import Budget, prune_model
    from tvm_mcu.train.bridge import RelaxModule
    from tvm_mcu.train.data import load_dataset
    from tvm_mcu.train.loop import train

    lines = [
        "",
        METHODS_HEADING,
        "",
        f"Float models trained in the repo (`bench/train_models.py`), pruned for {BOARD} (int8 deployment) by",
        "`tvm-mcu prune` with the same training epochs and images for every method (listed per model below;",
        "`diff`: half pruning while training, half fine-tuning; `l1`, `uniform`: pruned at once, then",
        "fine-tuned; labels only, no distillation), then",
        f"quantised (PTQ, {CALIBRATION_IMAGES} training images), compiled and run on QEMU. Float accuracy on",
        f"the 10,000 test images; int8 accuracy on QEMU for the first {QEMU_IMAGES}. SRAM = arena + inputs/",
        "outputs (plan), flash = firmware text + rodata + data (ELF), MACs compiled, instructions counted by",
        "the QEMU plugin (instructions, not cycles); pruned models compiled with `--sram-budget` (the",
        "fastest schedule within the budget). `diff (whole)` prices SRAM by the layer-by-layer",
        "whole-buffer peak instead of the schedule the compiler picks (partial execution): the Pex co-design",
        "comparison. Train s = seconds of training (pruning included). Where the methods come within the",
        f"spread of training runs, diff, l1 and uniform are also trained with seeds 1-{SEEDS - 1} and compared by",
        "the mean float accuracy (the notes below the table; the table's rows are seed 0).",
        "",
        "| model | budget | method | float acc | int8 acc (QEMU) | SRAM B | flash B | MACs | instructions "
        "| schedule | widths | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for m in _trained_models():
        label, path, flash_too, limit = m.label, m.path, m.flash_too, m.limit
        images = f"{limit:,}" if limit else "all 60,000"
        also = f" ({m.flash_epochs} at SRAM 1/4 + flash 1/4)" if flash_too and m.flash_epochs else ""
        notes.append(f"{label}: {m.epochs} epochs{also} on {images} training images for every method")
        if not path.is_file():
            notes.append(f"{label}: {path} is absent (run bench/train_models.py)")
            continue
        ds = load_dataset("fashion-mnist", (1, 1, 28, 28), limit=limit)
        work = tmp / f"methods_{path.stem}"
        work.mkdir(parents=True, exist_ok=True)
        base = deploy(path, ds, work)
        lines.append(
            f"| {label} | none | original | {base.float_acc:.4f} | {base.int8_acc:.3f} | {base.sram:,} | "
            f"{base.flash:,} | {base.macs:,} | {base.instructions:,} | {base.schedule} | full | - |"
        )
        # Plain training epochs of the original, for the overhead of pruning while training.
        imported = load_model(path)
        mod = pipeline.run(pipeline.inference_passes(), imported.mod)
        plain_log = train(RelaxModule(mod), ds, epochs=PLAIN_EPOCHS, progress=False)
        plain_epoch = sum(plain_log.seconds) / PLAIN_EPOCHS
        plan = channel_groups(mod)
        model = resource_model.build(mod, plan, imported, BOARD, workdir=work / "resources")
        budgets = [(f"SRAM {n}/{d}", Budget(sram=base.sram * n // d), m.epochs) for n, d in FRACTIONS]
        if flash_too:
            both = Budget(sram=base.sram // 4, flash=base.flash // 4)
            budgets.insert(2, ("SRAM 1/4 + flash 1/4", both, m.flash_epochs or m.epochs))
        for name, budget, epochs in budgets:
            plain = plain_epoch * epochs
            scores: dict[str, tuple[float, float]] = {}
            runs: dict[str, list[float]] = {}  # float accuracy per seed, at the seeded budgets
            for method, sram_model in METHODS:
                tag = f"{method}{'' if sram_model == 'compiler' else ' (whole)'}"
                stem = f"{path.stem}_{name.replace(' ', '_').replace('/', '')}_{tag.replace(' ', '')}"
                out = work / f"{stem}.onnx"

                run = functools.partial(
                    prune_model,
                    path,
                    board=BOARD,
                    budget=budget,
                    method=method,
                    data="fashion-mnist",
                    epochs=epochs,
                    train_limit=limit,
                    sram_model=sram_model,
                    resources=model,
                )
                t0 = time.perf_counter()
                try:
                    result = run(out_path=out, seed=0)
                except BudgetError as exc:
                    lines.append(f"| {label} | {name} | {tag} | cannot meet: {str(exc)[:120]} |||||||||")
                    if emit is not None:
                        emit([*lines, "", *(f"- {n}" for n in notes), ""])
                    continue
                d = deploy(out, ds, work, sram_budget=budget.sram)
                t = result.training
                secs = sum(t.seconds_per_epoch) if t else 0.0
                widths = "/".join(str(k) for k, _ in result.widths.values())
                lines.append(
                    f"| {label} | {name} | {tag} | {d.float_acc:.4f} | {d.int8_acc:.3f} | {d.sram:,} | "
                    f"{d.flash:,} | {d.macs:,} | {d.instructions:,} | {d.schedule} | {widths} | {secs:.0f} |"
                )
                print(f"pruning {label} {name} {tag}: {d} in {time.perf_counter() - t0:.0f} s", flush=True)
                scores[tag] = (d.float_acc, d.int8_acc)
                if name in m.seeded and sram_model == "compiler":
                    runs[tag] = [d.float_acc]
                    for seed in range(1, SEEDS):
                        run(out_path=work / f"{stem}_seed{seed}.onnx", seed=seed)
                        runs[tag].append(float_accuracy(work / f"{stem}_seed{seed}.onnx", ds))
                        print(f"pruning {label} {name} {tag} seed {seed}: {runs[tag][-1]:.4f}", flush=True)
                if method == "diff" and sram_model == "compiler" and t:
                    gated = t.seconds_per_epoch[: max(1, epochs // 2)]
                    per_epoch = sum(gated) / len(gated) / plain_epoch
                    notes.append(
                        f"{label}, {name}: DiffPrune trained {secs:.0f} s in all against {plain:.0f} s of plain "
                        f"training of the original for the same {epochs} epochs ({secs / plain:.2f}x; a plain "
                        f"epoch timed over {PLAIN_EPOCHS}); an epoch of pruning while training (full width, "
                        f"gated) took {per_epoch:.2f}x a plain epoch"
                    )
                    notes.append(
                        f"{label}, {name}: diff loses {100 * (base.float_acc - d.float_acc):.2f} points of float "
                        f"test accuracy and {100 * (base.int8_acc - d.int8_acc):.1f} of int8 accuracy on QEMU "
                        f"({QEMU_IMAGES} images)"
                    )
                if emit is not None:
                    emit([*lines, "", *(f"- {n}" for n in notes), ""])
            if runs:
                mean = {k: float(np.mean(v)) for k, v in runs.items()}
                order = ", ".join(
                    f"{k} {mean[k]:.4f} ± {float(np.std(runs[k], ddof=1)):.4f} "
                    f"({', '.join(f'{a:.4f}' for a in runs[k])})"
                    for k in sorted(runs, key=lambda k: -mean[k])
                )
                notes.append(
                    f"{label}, {name}: best mean float accuracy over seeds 0-{SEEDS - 1} (the table's row is "
                    f"seed 0) {max(mean, key=lambda k: mean[k])} (mean ± sample std: {order})"
                )
            elif scores:
                best = max(scores, key=lambda k: scores[k][0])
                order = ", ".join(
                    f"{k} {v[0]:.4f}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1][0])
                )
                notes.append(f"{label}, {name}: best float accuracy {best} ({order})")
    return [*lines, "", *(f"- {n}" for n in notes), ""]

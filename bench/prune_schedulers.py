"""``bench/run_bench.py --pruning-schedulers``: DTMM's annealing against filterlet gates (and the global
order) at two budgets on the Fashion-MNIST CNN 32/64/128, with training time.

Each scheduler prunes filterlets of the trained float model (Taylor importance, the same epochs and
images), then the result is quantised (PTQ), compiled channels-last (where the sparse kernels run) and
run on QEMU: int8 accuracy, firmware flash, stored weight bytes and instructions are measured; the
figures the search held to the budget (flash and instructions counted by the cost model) are listed
beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prune_bench import CALIBRATION_IMAGES, QEMU_IMAGES, deploy

from tvm_mcu import pipeline
from tvm_mcu.analysis.sparsity import dense_bytes, weight_sites
from tvm_mcu.frontend import load_model

BOARD = "mps2-an386"
HEADING = "## Pruning schedulers: DTMM's annealing against filterlet gates"
MODEL = Path(__file__).parent / "models" / "fashion_cnn_wide.onnx"
EPOCHS = 4  # every scheduler: global and anneal fine-tune 4; gates gate 2, then fine-tune 2
IMAGES = 30_000  # training images
SCHEDULERS = ("global", "anneal", "gates")


def section(tmp: Path, *, emit: Callable[[list[str]], None] | None = None) -> list[str]:
    from tvm_mcu.errors import BudgetError
    from tvm_mcu.prune import Budget, prune_model
    from tvm_mcu.train.data import load_dataset

    lines = [
        HEADING,
        "",
        f"The Fashion-MNIST CNN 32/64/128 (`bench/models`), filterlets pruned for {BOARD} (int8) by `tvm-mcu",
        "prune --granularity filterlet --importance taylor --scheduler S`: `global` zeroes the weakest",
        "filterlets of the whole model in one order (each layer's Taylor scores divided by their mean);",
        "`anneal` is DTMM's simulated annealing over per-layer keep ratios (66 temperatures, 100 moves",
        "each, +-0.05 per move), each filterlet priced by what it costs in the budgeted figures; `gates`",
        "trains a gate per filterlet with budget losses (DiffPrune at filterlet granularity). Every candidate",
        "is compiled channels-last (`--channels-last`), where the compiler stores the zeros sparse.",
        f"Every scheduler trains {EPOCHS} epochs on {IMAGES:,} training images (global and anneal: fine-tuning",
        f"with the masks held; gates: {EPOCHS // 2} gating, {EPOCHS - EPOCHS // 2} fine-tuning). Budgets: the flash of",
        "the stored weights with the convolutions' at 1/8 (`--budget weights=`), and instructions at 3/5 of",
        "the dense model's as the cost model prices them. **held to the budget**: the figures the search",
        "held to (stored weights as compiled; instructions by the cost model, `tvm_mcu/schedule/cost.py`).",
        f"**measured**: PTQ ({CALIBRATION_IMAGES} training images), compiled channels-last, firmware flash",
        "(ELF), stored weight bytes, and on QEMU the instructions (not cycles) and int8 accuracy on the first",
        f"{QEMU_IMAGES} test images; float accuracy on all 10,000. **search s**: the scheduler's own",
        "time (Taylor scores, annealing, gate bookkeeping: the run's wall time less training);",
        "**train s**: training. The instructions held are the cost model's (its per-layer fits of the dense",
        "and four-pixel sparse kernels); the compiler's schedule (SRAM first) is row bands, whose sparse",
        "layers take four pixels of a row per call; QEMU counts fewer than the model prices (the original's",
        "row: priced and counted).",
        "",
        "| budget | scheduler | float acc | int8 acc (QEMU) | stored weights B held / budget | instr held / budget "
        "| firmware flash B | stored weights B | instructions (QEMU) | schedule | filterlets kept per layer "
        "| search s | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ds = load_dataset("fashion-mnist", (1, 1, 28, 28), limit=IMAGES)
    work = tmp / "schedulers"
    work.mkdir(parents=True, exist_ok=True)
    base = deploy(MODEL, ds, work, channels_last=True)
    first = prune_model(
        MODEL,
        board=BOARD,
        budget=Budget(flash=10**9),
        out_path=work / "same.onnx",
        granularity="filterlet",
        channels_last=True,
    )
    b = first.before
    mod = pipeline.run(pipeline.inference_passes(), load_model(MODEL).mod)
    sites = [s for s in weight_sites(mod) if s.filterlets]
    conv = sum(dense_bytes(s, 1) for s in sites)
    lines.append(
        f"| none | original | - | {base.int8_acc:.3f} | {b.weights:,} | {b.instructions:,} | {base.flash:,} | "
        f"{base.weights:,} | {base.instructions:,} | {base.schedule} | all | - | - |"
    )
    budgets = [
        ("conv weights 1/8", Budget(weights=b.weights - conv + conv // 8)),
        ("instructions 3/5", Budget(instructions=b.instructions * 3 // 5)),
    ]
    notes: list[str] = []
    of = "-"
    for name, budget in budgets:
        for scheduler in SCHEDULERS:
            out = work / f"{name.replace(' ', '_').replace('/', '')}_{scheduler}.onnx"
            t0 = time.perf_counter()
            try:
                r = prune_model(
                    MODEL,
                    board=BOARD,
                    budget=budget,
                    out_path=out,
                    granularity="filterlet",
                    importance="taylor",
                    scheduler=scheduler,
                    data="fashion-mnist",
                    epochs=EPOCHS,
                    train_limit=IMAGES,
                    channels_last=True,
                )
            except BudgetError as exc:
                lines.append(f"| {name} | {scheduler} | cannot meet: {str(exc)[:160]} ||||||||||")
                continue
            wall = time.perf_counter() - t0
            t = r.training
            assert t is not None
            train_s = sum(t.seconds_per_epoch)
            d = deploy(out, ds, work, channels_last=True)
            kept = "/".join(f"{k}" for k, _ in r.sparsity.values())
            of = "/".join(f"{n}" for _, n in r.sparsity.values())
            weights_b = f"{budget.weights:,}" if budget.weights is not None else "-"
            instr_b = f"{budget.instructions:,}" if budget.instructions is not None else "-"
            lines.append(
                f"| {name} | {scheduler} | {t.accuracy_after:.4f} | {d.int8_acc:.3f} | {r.after.weights:,} / {weights_b} "
                f"| {r.after.instructions:,} / {instr_b} | {d.flash:,} | {d.weights:,} | {d.instructions:,} "
                f"| {d.schedule} | {kept} | {wall - train_s:.0f} | {train_s:.0f} |"
            )
            notes.append(f"{name}, {scheduler}: {r.search}")
            print(f"schedulers {name} {scheduler}: {t.accuracy_after:.4f} {d}", flush=True)
            if emit is not None:
                emit([*lines, "", *(f"- {n}" for n in notes), ""])
    # The layers the schedulers prune: those the compiler can store sparse (the first convolution, on
    # one input channel, cannot).
    notes.insert(0, f"filterlets per pruned layer (of): {of}")
    return [*lines, "", *(f"- {n}" for n in notes), ""]

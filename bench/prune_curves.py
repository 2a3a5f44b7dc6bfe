"""``make bench-prune``, curves: int8 accuracy against stored weight bytes and instructions (QEMU) for
channel, filterlet, mixed and unstructured pruning at 1/4 to 1/32 of the original weights (DTMM).

The int8 accuracy is over all 10,000 test images: the compiled library built for the host (the same C
as the firmware), checked byte for byte against the firmware on QEMU on the first test images
(``deploy(every_image=True)``); onnxruntime runs the same QDQ models beside it.

The budget of every point is ``Budget(weights=stored // k)``: the weights as the compiler stores them
(``Report.stored_weights_bytes``: dense, filterlet CSR or element CSR) of the original int8 model
compiled channels-last, divided by ``k``. Not the firmware flash: its code and runtime are a floor
(about 10 KB for these models) that 1/32 of the original's flash cannot reach. The tables give both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tvm_mcu import pipeline, resource_model
from tvm_mcu.analysis.channels import channel_groups
from tvm_mcu.frontend import load_model

from prune_bench import BOARD, CALIBRATION_IMAGES, Deployed, deploy  # isort: skip

CURVES_HEADING = "## Pruning curves: channel, filterlet, mixed and unstructured"
FRACTIONS = (4, 8, 16, 32)  # k: the budget is 1/k of the original's stored weight bytes
# (label, prune_model options): channel pruning is DiffPrune (the channel method of the methods section).
GRANULARITIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("channel", {"method": "diff"}),
    ("filterlet", {"granularity": "filterlet", "importance": "taylor"}),
    ("mixed", {"granularity": "mixed", "importance": "taylor"}),
    ("unstructured", {"granularity": "unstructured", "importance": "taylor"}),
)
# Distinct markers: filterlet and mixed coincide where mixed cuts no channel.
STYLE = {"channel": ("o", 6), "filterlet": ("s", 11), "mixed": ("D", 6), "unstructured": ("^", 6)}
# The claims of the done-when: mixed at least channel everywhere and 1 point better at these k.
MARGIN_AT = (16, 32)
MARGIN = 0.01


@attrs.frozen
class CurveModel:
    """A trained model and the training every granularity gets on it (``run_bench.py --curves-epochs``,
    ``--curves-images``, ``--curves-qemu-images`` override the defaults of ``curve_models``)."""

    label: str
    path: Path
    epochs: int
    limit: int | None  # training images (None: all 60,000)
    images: int  # test images run on QEMU (their outputs checked against the host build's)
    search_steps: int  # mixed's channel stage (bisection steps)
    data: str = "fashion-mnist"


@attrs.frozen
class Point:
    granularity: str
    k: int  # 0: the original
    budget: int  # stored weight bytes allowed
    deployed: Deployed
    train_s: float
    search_s: float
    macs: int  # the kept weights' (prune's figure: a sparse layer's kernel visits nothing else)


def curve_models(root: Path) -> list[CurveModel]:
    here = root / "models"
    # Sized for a quiet 2-core machine, where an epoch of the CNN on the 60,000 training images takes
    # about 16 s (3,750 images/s); DiffPrune's epochs (channel) are about 1.5x a plain epoch. The
    # MobileNetV2-style sibling trains plainly at about 1/3 of the CNN's rate, under DiffPrune at about
    # 1/16 (measured side by side on the shared machine: 1,460 and 460 images/s plain; DiffPrune 111
    # images/s against about 1,500); `mixed` runs DiffPrune's gates for half its epochs, then trains the
    # narrower network. So it gets 4 epochs on 15,000 images (DiffPrune about 4 minutes a run):
    # its training then takes about as long as the CNN's (8 epochs on all 60,000: about 3 minutes a
    # DiffPrune run, 2 a masked fine-tuning). Searches: a measured step (compile + build) takes 1-2 s
    # for the CNN, 5 s for MobileNetV2. Each point is deployed once: float accuracy, PTQ, compile, QEMU
    # on 300 images (0.04-0.05 s each), the host build on 10,000 (2-3 ms each), onnxruntime on 10,000.
    # The whole section: about 80 minutes, 2-3x that on a machine shared with two other jobs (the CNN
    # alone at 4 epochs: 73 minutes on a machine shared with three).
    return [
        CurveModel("Fashion-MNIST CNN 32/64/128", here / "fashion_cnn_wide.onnx", 8, None, 300, 6),
        CurveModel("MobileNetV2-style (Fashion-MNIST)", here / "mobilenetv2_fashion.onnx", 4, 15_000, 300, 6),
    ]


def _row(label: str, p: Point) -> str:
    d = p.deployed
    k = "original" if p.k == 0 else f"1/{p.k}"
    return (
        f"| {label} | {k} | {p.granularity} | {p.budget:,} | {d.float_acc:.4f} | {d.int8_acc:.4f} | "
        f"{d.ort_differ} ({d.ort_steps}) | "
        f"{d.weights:,}{'' if d.weights <= p.budget else ' (over)'} | {d.flash:,} | {p.macs:,} | "
        f"{d.instructions:,} | {p.train_s:.0f} | {p.search_s:.0f} |"
    )


def claims(points: list[Point]) -> list[str]:
    """Whether the done-when claims hold on ``points`` (one model), each with its figures."""
    at = {(p.granularity, p.k): p.deployed for p in points if p.k}
    fractions = sorted({p.k for p in points if p.k})
    out = []
    ks = [k for k in fractions if ("mixed", k) in at and ("channel", k) in at]
    if ks:
        diffs = {k: at[("mixed", k)].int8_acc - at[("channel", k)].int8_acc for k in ks}
        every = all(v >= 0 for v in diffs.values())
        listed = ", ".join(f"1/{k} {100 * v:+.1f}" for k, v in diffs.items())
        out.append(
            f"mixed at least as accurate (int8) as channel at every budget: **{_yes(every)}** "
            f"(mixed - channel, points: {listed})"
        )
        margin = [k for k in MARGIN_AT if k in diffs]
        if margin:
            ok = all(diffs[k] >= MARGIN for k in margin)
            out.append(
                f"mixed at least {100 * MARGIN:.0f} point better than channel at "
                f"{' and '.join(f'1/{k}' for k in margin)}: **{_yes(ok)}**"
            )
        if all(at[("mixed", k)].weights == at[("channel", k)].weights and not diffs[k] for k in ks):
            out.append(
                "mixed pruned what channel did at every budget: no filterlet was cut (a model whose "
                "convolutions are 1x1 and depthwise has none: a 1x1 filterlet is the whole filter, as DTMM "
                "folds it into the filter ratio)"
            )
    for g in ("filterlet", "mixed"):
        ks = [k for k in fractions if (g, k) in at and ("unstructured", k) in at]
        if ks:
            fewer = all(at[(g, k)].instructions < at[("unstructured", k)].instructions for k in ks)
            ratio = ", ".join(
                f"1/{k} {at[(g, k)].instructions / at[('unstructured', k)].instructions:.2f}x" for k in ks
            )
            out.append(
                f"{g} needs fewer instructions than unstructured at every budget: **{_yes(fewer)}** ({ratio})"
            )
    return out


def _yes(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def plot(points: list[Point], label: str, stem: str, docs: Path) -> list[str]:
    """Two PNGs (int8 accuracy against stored weight bytes and against instructions, log x, one line per
    granularity, the original as a star); their markdown links."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = []
    for x_name, x_of, what in (
        ("weights", lambda d: d.weights, "stored weight bytes"),
        ("instructions", lambda d: d.instructions, "instructions per inference (QEMU)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for g, _ in GRANULARITIES:
            marker, size = STYLE[g]
            line = sorted((x_of(p.deployed), p.deployed.int8_acc) for p in points if p.granularity == g)
            if line:
                ax.plot(
                    *zip(*line, strict=True),
                    marker=marker,
                    markersize=size,
                    label=g,
                    zorder=3 if g == "mixed" else 2,
                )
        for p in points:
            if p.k == 0:
                ax.plot(x_of(p.deployed), p.deployed.int8_acc, "k*", markersize=10, label="original")
        ax.set_xscale("log")
        ax.set_xlabel(what)
        ax.set_ylabel("int8 accuracy (10,000 test images)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"pruning_curves_{stem}_{x_name}.png"
        fig.savefig(docs / name, metadata={"Software": None})
        plt.close(fig)
        links.append(f"![{label}: int8 accuracy against {what}]({name})")
    return links


@attrs.frozen
class Prepared:
    """A curve model ready to prune: its data, work directory, deployed original and resource model."""

    ds: Any
    work: Path
    base: Deployed
    model: Any  # resource_model.ResourceModel, built once for every run


def prepare(m: CurveModel, tmp: Path, prefix: str) -> Prepared:
    """Load ``m``'s data, deploy the original (channels-last, every test image) and build its resource
    model, in ``tmp / f"{prefix}_{stem}"``."""
    from tvm_mcu.train.data import load_dataset

    imported = load_model(m.path)
    ds = load_dataset(m.data, imported.inputs[0].shape, limit=m.limit)
    work = tmp / f"{prefix}_{m.path.stem}"
    work.mkdir(parents=True, exist_ok=True)
    base = deploy(m.path, ds, work, channels_last=True, images=m.images, every_image=True)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    model = resource_model.build(mod, channel_groups(mod), imported, BOARD, workdir=work / "resources")
    return Prepared(ds, work, base, model)


def prune_point(
    m: CurveModel, ready: Prepared, weights: int, out: Path, options: dict[str, str], **extra: Any
) -> tuple[Any, Deployed, float, float]:
    """``prune_model`` of ``m`` to ``weights`` stored weight bytes with ``options`` (channels-last, the
    model's training), then deployed (``deploy(every_image=True)``; a quantised result as written): the
    result, the deployed figures, seconds of training and the rest of the run. BudgetError as
    ``prune_model``'s."""
    from tvm_mcu.prune import Budget, prune_model

    t0 = time.perf_counter()
    result = prune_model(
        m.path,
        board=BOARD,
        budget=Budget(weights=weights),
        out_path=out,
        data=m.data,
        epochs=m.epochs,
        train_limit=m.limit,
        resources=ready.model,
        channels_last=True,
        **options,  # type: ignore[arg-type]
        **extra,
    )
    t = result.training
    train_s = sum(t.seconds_per_epoch) if t else 0.0
    search_s = time.perf_counter() - t0 - train_s
    d = deploy(
        out,
        ready.ds,
        ready.work,
        channels_last=True,
        images=m.images,
        every_image=True,
        quantized=bool(result.bits),
        compress=options.get("compress_weights", "off"),
    )
    return result, d, train_s, search_s


def curves_section(
    tmp: Path,
    docs: Path,
    *,
    models: list[CurveModel] | None = None,
    fractions: tuple[int, ...] = FRACTIONS,
    emit: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """The curves section (module docstring); ``emit`` gets it so far after every row."""
    from tvm_mcu.errors import BudgetError

    models = models if models is not None else curve_models(Path(__file__).parent)
    lines = [
        "",
        CURVES_HEADING,
        "",
        f"Float models trained in the repo (`bench/train_models.py`), pruned for {BOARD} by `tvm-mcu prune",
        "--channels-last` at budgets of 1/k of the original's **stored weight bytes**",
        "(`--budget weights=`, `Budget(weights=stored // k)`: the weights as the compiler stores them,",
        "dense, filterlet CSR or element CSR, whichever is least; the code and runtime are not in it: the",
        "firmware flash has them as a floor that 1/32 of the original flash cannot reach). Every",
        "candidate of the searches is compiled channels-last and its figures measured (no counting).",
        "channel = `diff` (DiffPrune: half the epochs pruning while training, half fine-tuning);",
        "filterlet = a gate per filterlet trained with budget losses (the default scheduler with data:",
        "half the epochs gating, half fine-tuning); unstructured ranked by Taylor importance, zeroed",
        "gradually over the first half of the epochs (weakest first, cubic schedule) and held through the",
        "second; mixed = DiffPrune's gates for half the epochs to twice the budget (`MIXED_SPLIT`), then",
        "filterlet gates over the other half. Every method gets the same epochs and training images (per",
        "model below).",
        "Then quantised",
        f"(PTQ, {CALIBRATION_IMAGES} training images), compiled channels-last and run on QEMU. Float accuracy on the",
        "10,000 test images. **int8 acc**: on all 10,000 test images, computed by the compiled library",
        "(the same generated C as the firmware) built for the host by gcc; on the first test images (per",
        "model below) the firmware ran on QEMU and its int8 outputs were checked byte for byte against the",
        "host build's (the run stops at any difference: none). **vs ORT**: onnxruntime on the same QDQ",
        "model (as written, no graph optimisation) and the same 10,000 images: the number of predictions",
        "that differ from the firmware's, and in brackets the largest difference of an output logit in",
        "int8 steps. The two are not bit-exact: onnxruntime computes between DequantizeLinear and",
        "QuantizeLinear in float32, tvm-mcu each quantised operator exactly in integers, so an accumulator",
        "within float32 error of a rounding tie can round one step apart, and later layers can carry the",
        "step to the logits. weights B =",
        'stored weight bytes (report; "(over)" when the fine-tuned model\'s int8 weights no longer fit),',
        "flash B = firmware text + rodata + data (ELF), MACs as `tvm-mcu prune` counts them (compiled; in a",
        "layer stored sparse, the kept weights': the report counts every layer dense), instructions counted",
        "by the QEMU plugin (instructions, not cycles). Train s = seconds of training; search s = the rest",
        "of the pruning run (importance, measured candidates: one compile each).",
        "",
        "| model | budget | granularity | weights budget B | float acc | int8 acc | vs ORT | weights B | "
        "flash B | MACs | instructions | train s | search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    verdicts: list[str] = []

    def send() -> None:
        if emit is not None:
            emit([*lines, "", *(f"- {n}" for n in notes), "", *verdicts, ""])

    for m in models:
        images = f"{m.limit:,}" if m.limit else "all 60,000"
        notes.append(
            f"{m.label}: {m.epochs} epochs on {images} training images for every method, BatchNorm back on "
            "the convolutions while training (`RelaxModule.renormalise`); the firmware run "
            f"on QEMU (instructions; outputs checked against the host build's) on the first {m.images} test "
            "images"
        )
        if not m.path.is_file():
            notes.append(f"{m.label}: {m.path} is absent (run bench/train_models.py)")
            continue
        t_model = time.perf_counter()
        ready = prepare(m, tmp, "curves")
        base = ready.base
        points = [Point("original", 0, base.weights, base, 0.0, 0.0, base.macs)]
        lines.append(_row(m.label, points[0]))
        send()
        for k in fractions:
            weights = base.weights // k
            for g, options in GRANULARITIES:
                out = ready.work / f"{m.path.stem}_{g}_{k}.onnx"
                t0 = time.perf_counter()
                try:
                    result, d, train_s, search_s = prune_point(
                        m, ready, weights, out, options, search_steps=m.search_steps
                    )
                except BudgetError as exc:
                    lines.append(f"| {m.label} | 1/{k} | {g} | {weights:,} | cannot meet: {exc} |||||||||")
                    print(f"curves {m.label} 1/{k} {g}: cannot meet: {exc}", flush=True)
                    send()
                    continue
                p = Point(g, k, weights, d, train_s, search_s, result.after.macs)
                points.append(p)
                lines.append(_row(m.label, p))
                print(f"curves {m.label} 1/{k} {g}: {d} in {time.perf_counter() - t0:.0f} s", flush=True)
                send()
        gaps = [
            abs(p.deployed.ort_acc - p.deployed.int8_acc) for p in points if p.deployed.ort_acc is not None
        ]
        if gaps:
            notes.append(
                f"{m.label}: onnxruntime's int8 accuracy on the same QDQ models is within "
                f"{100 * max(gaps):.2f} points of the firmware's at every point"
            )
        stem = m.path.stem
        links = plot(points, m.label, stem, docs)
        verdicts += [f"### {m.label}", "", *(f"- {c}" for c in claims(points)), "", *links, ""]
        # Named by model: a later run of another model keeps only notes that name theirs (keep_models).
        notes.append(f"{m.label}: its rows took {(time.perf_counter() - t_model) / 60:.0f} minutes")
        send()
    return [*lines, "", *(f"- {n}" for n in notes), "", *verdicts, ""]

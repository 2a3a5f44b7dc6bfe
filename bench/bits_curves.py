"""``make bench-prune``, widths and bits (UDC): int8 accuracy against stored weight bytes for int8
DiffPrune (width only), int4 everywhere (``prune --weights int4``: DiffPrune of the int4 network,
trained quantised), int2 everywhere (``prune --weights int2``: ternary where the kernels read it four
per byte) and the joint search (``prune --method udc``: channels and each layer's int8/int4/int2
width together; and with ``--compress-weights all`` the weights' zeros too, deployed coded), at 1/2 to
1/16 of the original int8 model's stored weights.

Every point is deployed as the other curves are (``prune_bench.deploy(every_image=True)``): compiled
channels-last, the int8 accuracy over all 10,000 test images by the compiled library built for the
host, byte for byte the firmware's on QEMU on the first test images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from prune_bench import BOARD, CALIBRATION_IMAGES, Deployed  # isort: skip
from prune_curves import CurveModel, curve_models, prepare, prune_point  # isort: skip

HEADING = "## Width and bitwidth: int8 DiffPrune, int4 everywhere, joint search (UDC)"
FRACTIONS = (2, 4, 8, 16)  # k: the budget is 1/k of the original int8 model's stored weight bytes
# (label, prune_model options)
METHODS: tuple[tuple[str, dict[str, str]], ...] = (
    ("int8 width", {"method": "diff"}),
    ("int4 width", {"method": "diff", "weights": "int4"}),
    ("int2 width", {"method": "diff", "weights": "int2"}),
    ("joint (udc)", {"method": "udc"}),
    ("joint + zeros, coded", {"method": "udc", "compress_weights": "all"}),
)
# ``--bits-methods``' names of METHODS (their labels have commas).
KEYS = {"int8": "int8 width", "int4": "int4 width", "int2": "int2 width", "udc": "joint (udc)"}
KEYS["udc-zeros"] = "joint + zeros, coded"
# The joint searches, each judged against the width-only methods (WIDTH_ONLY).
JOINT = tuple(m for m, o in METHODS if o.get("method") == "udc")
WIDTH_ONLY = tuple(m for m, _ in METHODS if m not in JOINT)
# The done-when: the joint search at the original int8 model's accuracy less this is at least
# SMALLER times smaller than int8 DiffPrune alone.
ACCURACY_SLACK = 0.005
# One marker a method in the plot (METHODS has at most as many).
MARKERS = "osD^vPX"
SMALLER = 2.0


@attrs.frozen
class Point:
    method: str
    k: int  # 0: the original
    budget: int
    deployed: Deployed
    trained_acc: float  # the fine-tuned network's test accuracy as trained (int4 weights simulated)
    bits: str  # the layers' widths, e.g. "8,4,4,4"
    train_s: float
    search_s: float


def _row(label: str, p: Point) -> str:
    d = p.deployed
    k = "original" if p.k == 0 else f"1/{p.k}"
    trained = "" if math.isnan(p.trained_acc) else f"{p.trained_acc:.4f}"
    return (
        f"| {label} | {k} | {p.method} | {p.budget:,} | {p.bits} | {trained} | {d.int8_acc:.4f} | "
        f"{d.ort_differ} ({d.ort_steps}) | {d.weights:,}{'' if d.weights <= p.budget else ' (over)'} | "
        f"{d.flash:,} | {d.instructions:,} | {p.train_s:.0f} | {p.search_s:.0f} |"
    )


def parse_row(line: str) -> Point | None:
    """The point a table row of :func:`_row` shows (the figures the claims and the plot read; the rest
    of ``Deployed`` zero); None for a row that shows none ("cannot meet")."""
    from prune_bench import Deployed

    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 13 or not cells[1].startswith("1/"):
        return None

    def number(text: str) -> int:
        return int(text.split()[0].replace(",", ""))

    differ, steps = cells[7].replace("(", "").replace(")", "").split()
    trained = float(cells[5]) if cells[5] else math.nan
    d = Deployed(
        math.nan,
        float(cells[6]),
        0,
        number(cells[9]),
        0,
        number(cells[10]),
        "",
        number(cells[8]),
        ort_differ=int(differ),
        ort_steps=int(steps),
    )
    k = int(cells[1][2:])
    return Point(cells[2], k, number(cells[3]), d, trained, cells[4], float(cells[11]), float(cells[12]))


def claims(points: list[Point]) -> list[str]:
    """Whether the done-when claims hold on ``points`` (one model), with their figures."""
    at = {(p.method, p.k): p.deployed for p in points if p.k}
    base = next((p.deployed for p in points if p.k == 0), None)
    ks = sorted({p.k for p in points if p.k})
    out = []
    others = list(WIDTH_ONLY)
    for joint in JOINT:
        if not any(m == joint for m, _ in at):
            continue  # not run
        # The budgets the joint search and a width-only method both reached; each against the best of
        # the width-only methods there.
        both = [k for k in ks if (joint, k) in at and any((m, k) in at for m in others)]

        def best(k: int) -> float:
            return max(at[(m, k)].int8_acc for m in others if (m, k) in at)

        if both:
            dominant = all(at[(joint, k)].int8_acc >= best(k) for k in both)
            listed = ", ".join(f"1/{k} {100 * (at[(joint, k)].int8_acc - best(k)):+.1f}" for k in both)
            out.append(
                f"{joint} at least as accurate (int8) as every width-only method at every budget: "
                f"**{_yes(dominant)}** ({joint} - best other, points: {listed})"
            )
        if base is None:
            continue
        floor = base.int8_acc - ACCURACY_SLACK
        j, w = _least(at, joint, floor), _least(at, METHODS[0][0], floor)
        if j is not None and w is not None:
            out.append(
                f"at the original's int8 accuracy - {100 * ACCURACY_SLACK:.1f} point ({floor:.4f}), {joint} "
                f"{j:,} B against int8 width {w:,} B of stored weights: {w / j:.2f}x smaller, at least "
                f"{SMALLER:g}x: **{_yes(w >= SMALLER * j)}**"
            )
        else:
            out.append(
                f"at the original's int8 accuracy - {100 * ACCURACY_SLACK:.1f} point ({floor:.4f}): "
                f"{joint} {'none' if j is None else f'{j:,} B'}, int8 width "
                f"{'none' if w is None else f'{w:,} B'} of the budgets tried reach it: the 2x claim cannot "
                "be judged from these points"
            )
    return out


def _kept_row(old: list[str], label: str, k: int, method: str) -> str | None:
    """``old``'s table row of ``label`` at 1/``k`` by ``method``, if it has one."""
    prefix = f"| {label} | 1/{k} | {method} |"
    return next((line for line in old if line.startswith(prefix)), None)


def _slug(method: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in method)


def _least(at: dict[tuple[str, int], Deployed], method: str, floor: float) -> int | None:
    """The fewest stored weight bytes of ``method``'s points at an int8 accuracy of ``floor`` or more."""
    fit = [d.weights for (m, _), d in at.items() if m == method and d.int8_acc >= floor]
    return min(fit) if fit else None


def _yes(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def plot(points: list[Point], label: str, stem: str, docs: Path) -> str:
    """A PNG of int8 accuracy against stored weight bytes (log x), one line per method; its link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (m, _), marker in zip(METHODS, MARKERS, strict=False):
        line = sorted((p.deployed.weights, p.deployed.int8_acc) for p in points if p.method == m)
        if line:
            ax.plot(*zip(*line, strict=True), marker=marker, label=m)
    for p in points:
        if p.k == 0:
            ax.plot(p.deployed.weights, p.deployed.int8_acc, "k*", markersize=10, label="original (int8)")
    ax.set_xscale("log")
    ax.set_xlabel("stored weight bytes")
    ax.set_ylabel("int8-activation accuracy (10,000 test images)")
    ax.set_title(label, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"bits_curves_{stem}.png"
    fig.savefig(docs / name, metadata={"Software": None})
    plt.close(fig)
    return f"![{label}: int8-activation accuracy against stored weight bytes]({name})"


def section(
    tmp: Path,
    docs: Path,
    *,
    models: list[CurveModel] | None = None,
    fractions: tuple[int, ...] = FRACTIONS,
    emit: Callable[[list[str]], None] | None = None,
    rerun: tuple[str, ...] | None = None,
    old: list[str] | None = None,
) -> list[str]:
    """The section (module docstring); ``emit`` gets it so far after every row. ``rerun``: only these
    methods (labels) are run; the others' rows are taken from ``old`` (the section as it was: the
    claims and the plot then read them back), and run where it has none (``()``: a resumed run)."""
    from tvm_mcu.errors import BudgetError
    from tvm_mcu.prune_sparse import UDC_IMPORTANCE, UDC_MAX_ZEROS, UDC_MIN_SPLIT, UDC_SPLIT

    models = models if models is not None else curve_models(Path(__file__).parent)
    lines = [
        "",
        HEADING,
        "",
        f"The float models of the curves above, pruned for {BOARD} by `tvm-mcu prune` at budgets of 1/k of",
        "the original int8 model's **stored weight bytes** (`--budget weights=`; int4 weights are stored",
        "two per byte where the blocked SIMD kernels read them, int2 four per byte, the others a byte",
        "each). **int8 width** =",
        "`--method diff` (DiffPrune, int8 weights); **int4 width** = `--method diff --weights int4` (every",
        "convolution and dense layer int4 except those the compiler cannot pack, DiffPrune budgeted for",
        "that, kept channel counts multiples of 8 so that the kernels pack them, trained with the weights",
        "quantised as deployed: straight-through estimator); **int2 width** = `--method diff --weights",
        "int2` (the same with ternary weights where the kernels read them four per byte, scale the mean",
        "magnitude above 0.7x the channel's mean; depthwise layers int4); **joint (udc)** = `--method udc`",
        "(DiffPrune's",
        "channel gates and two gates per layer choosing int8, int4 or int2 (int2 where the kernels read it",
        "four per byte), trained together under the same budget",
        "losses; a missed flash target narrows the lowest-gated layer by one width or cuts the lowest-gated channel,",
        "whichever gate is lower; the search takes half the epochs, then the network found is trained at its",
        "widths from the original weights for all of them, as UDC trains what its search found: 1.5x the",
        "epochs, in train s); **joint + zeros, coded** = `--method udc --compress-weights all` (the",
        f"joint search to {UDC_SPLIT:g}x the budget for half the epochs, DiffPrune's channels again",
        "from the original weights at the widths found for half, to what",
        f"{UDC_MAX_ZEROS:.0%} zeros take off the coded bytes at those widths (`zeros_split`), then the",
        f"weakest weights by {UDC_IMPORTANCE} zeroed until the model compiled with its weights",
        "Golomb-Rice coded meets the budget, gradually over half the rest of the training and held through",
        "the other half: 1.5x the epochs; where those zeros would take under",
        f"{1 - 1 / UDC_MIN_SPLIT:.0%} of the bytes, none: the joint search again to the budget and its",
        "network trained as udc trains it, 2x the epochs;",
        "deployed with `compile --compress-weights all`, its weights B the coded ones: a zero costs a",
        "bit). Every method gets the same epochs (the joint searches' second runs aside) and training",
        "images (per model",
        f"below); int4, int2 and udc write the QDQ model calibrated on {CALIBRATION_IMAGES} training images, on",
        "the network as trained (its weights written back quantised: `RelaxModule.settle_weights`), int8",
        "width is quantised the same way (PTQ). bits = each conv/dense layer's weight width in order.",
        "trained acc = the fine-tuned network's test accuracy as trained (weights at their widths, float",
        "activations). **int8 acc**: activations int8, on all 10,000 test images by the compiled library",
        "built for the host, checked byte for byte against the firmware on QEMU on the first test images.",
        "vs ORT, weights B, flash B, instructions (QEMU plugin: instructions, not cycles), train s and",
        "search s as in the curves above.",
        "",
        "| model | budget | method | weights budget B | bits | trained acc | int8 acc | vs ORT | weights B | "
        "flash B | instructions | train s | search s |",
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
            "the convolutions while training (`RelaxModule.renormalise`)"
        )
        if not m.path.is_file():
            notes.append(f"{m.label}: {m.path} is absent (run bench/train_models.py)")
            continue
        t_model = time.perf_counter()
        ready = prepare(m, tmp, "bits")
        base = ready.base
        points = [Point("original", 0, base.weights, base, base.float_acc, "8", 0.0, 0.0)]
        lines.append(_row(m.label, points[0]))
        send()
        for k in fractions:
            weights = base.weights // k
            for method, options in METHODS:
                kept = (
                    _kept_row(old or [], m.label, k, method)
                    if rerun is not None and method not in rerun
                    else None
                )
                if kept is not None:
                    lines.append(kept)
                    reread = parse_row(kept)
                    if reread is not None:
                        points.append(reread)
                    send()
                    continue
                out = ready.work / f"{m.path.stem}_{_slug(method)}_{k}.onnx"
                t0 = time.perf_counter()
                try:
                    result, d, train_s, search_s = prune_point(m, ready, weights, out, options)
                except BudgetError as exc:
                    lines.append(
                        f"| {m.label} | 1/{k} | {method} | {weights:,} | cannot meet: {exc} ||||||||"
                    )
                    send()
                    continue
                t = result.training
                trained = t.accuracy_after if t else float("nan")
                widths = ",".join(str(b) for b in result.bits.values()) if result.bits else "8"
                p = Point(method, k, weights, d, trained, widths, train_s, search_s)
                points.append(p)
                lines.append(_row(m.label, p))
                print(f"bits {m.label} 1/{k} {method}: {d} in {time.perf_counter() - t0:.0f} s", flush=True)
                send()
        link = plot(points, m.label, m.path.stem, docs)
        verdicts += [
            f"### {m.label} (widths and bits)",
            "",
            *(f"- {c}" for c in claims(points)),
            "",
            link,
            "",
        ]
        # Per model: a later run of another model keeps only notes that name theirs (keep_models).
        if rerun:
            notes.append(
                f"{m.label}: this run: {', '.join(rerun)}, and every row the section lacked; the other "
                "methods' rows are an earlier run's (their code unchanged since)"
            )
        elif rerun is not None:
            notes.append(
                f"{m.label}: a resumed run: the rows an interrupted run had written were kept, the others run"
            )
        notes.append(f"{m.label}: its rows took {(time.perf_counter() - t_model) / 60:.0f} minutes")
        send()
    return [*lines, "", *(f"- {n}" for n in notes), "", *verdicts, ""]

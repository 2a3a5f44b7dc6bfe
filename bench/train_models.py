#!/usr/bin/env python3
"""Train the benchmark's two float Fashion-MNIST CNNs with PyTorch on the CPU and export them to ONNX.

Models (input ``input`` float32 [1, 1, 28, 28], output ``logits`` float32 [1, 10], opset 13, batch 1):

``fashion_cnn_wide``
    3 x [conv3x3 pad 1 (no bias) + BatchNorm + ReLU], 1->32->64->128 channels, a 2x2 max-pool after
    the first two; global average pool, flatten, linear 128->10.
``mobilenetv2_fashion``
    MobileNetV2-style: stem conv3x3 1->16 + BN + ReLU at 28x28; five inverted residual blocks with x4
    expansion (expand 1x1 + BN + ReLU, depthwise 3x3 (+stride) + BN + ReLU, project 1x1 + BN, residual
    Add when stride 1 and cin == cout): 16->16, 16->24 s2, 24->24, 24->32 s2, 32->32; then 1x1 conv
    32->96 + BN + ReLU, global average pool, flatten, linear 96->10. Plain ReLU throughout.

The input is normalised outside the graph: ``x = (pixel / 255 - 0.2860) / 0.3530``. The BatchNorm
layers stay in the ONNX files as ``BatchNormalization`` nodes (exported in eval mode without constant
folding); the tvm-mcu importer folds them.

Outputs in ``--out-dir``: ``<name>.onnx`` per model and ``models.json`` (architecture, parameter count,
epochs, seconds per epoch, test accuracy on the full 10k test set, ONNX ops, and the max abs difference
between ``onnx.reference.ReferenceEvaluator`` and torch on the first 16 test images). With ``--only``
the other entries of an existing ``models.json`` are kept.

Data: the gzip IDX files of the Debian package ``dataset-fashion-mnist``, read by ``tvm_mcu.train.data``.
Training: Adam, lr 2e-3 with per-step cosine decay to 0, batch 128, random horizontal flips, seed 0,
2 torch threads, deterministic algorithms: a rerun on the same machine gives the same weights (only the
timings differ). Each model is reseeded before it is built, so ``--only`` reproduces the full run.

Rerun (about 12 minutes of training on an idle 2-core machine; much longer under load)::

    apt-get install dataset-fashion-mnist
    .venv/bin/pip install -e '.[train]'          # torch==2.13.0, CPU build
    .venv/bin/python bench/train_models.py --out-dir bench/models
    .venv/bin/python bench/train_models.py --out-dir bench/models --only mobilenetv2_fashion --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import version_converter
from onnx.reference import ReferenceEvaluator
from torch import nn

from tvm_mcu.errors import BadOptionError
from tvm_mcu.train.data import FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_dataset

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "models"

# Input normalisation: x = (pixel / 255 - MEAN) / STD (Fashion-MNIST training-set statistics), as
# tvm_mcu.train.data reads the data set.
MEAN = FASHION_MNIST_MEAN
STD = FASHION_MNIST_STD

OPSET = 13
NUM_CHECK_SAMPLES = 16
MAX_ONNX_DIFF = 1e-3


# --------------------------------------------------------------------------- models


def conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_fashion_cnn_wide() -> nn.Module:
    return nn.Sequential(
        conv_bn(1, 32, 3),
        nn.MaxPool2d(2),
        conv_bn(32, 64, 3),
        nn.MaxPool2d(2),
        conv_bn(64, 128, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3 (+stride), linear project 1x1, residual if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            conv_bn(hidden, cout, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


MBV2_BLOCKS = ((16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1))
MBV2_EXPANSION = 4


def build_mobilenetv2_fashion() -> nn.Module:
    return nn.Sequential(
        conv_bn(1, 16, 3),
        *(InvertedResidual(cin, cout, s, MBV2_EXPANSION) for cin, cout, s in MBV2_BLOCKS),
        conv_bn(32, 96, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 10),
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    epochs: int  # default: at most about 6-7 minutes of training on an idle 2-core machine
    architecture: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "fashion_cnn_wide",
            build_fashion_cnn_wide,
            epochs=12,  # about 20 s per epoch idle
            architecture="3 x [conv3x3 pad 1 (no bias) + BatchNorm + ReLU], 1->32->64->128 channels, "
            "max-pool 2x2 after blocks 1 and 2 (28x28 -> 14x14 -> 7x7); global average pool, flatten, "
            "linear 128->10",
        ),
        ModelSpec(
            "mobilenetv2_fashion",
            build_mobilenetv2_fashion,
            epochs=6,  # about 70 s per epoch idle (depthwise convs and BN are slow on the CPU)
            architecture="MobileNetV2-style, plain ReLU: stem conv3x3 s1 1->16 + BN + ReLU (28x28); "
            f"inverted residual blocks, expansion {MBV2_EXPANSION} (expand 1x1 + BN + ReLU, depthwise "
            "3x3 (+stride) + BN + ReLU, project 1x1 + BN, residual Add when stride 1 and cin == cout), "
            "(cin, cout, stride): "
            + ", ".join(f"({c}, {o}, {s})" for c, o, s in MBV2_BLOCKS)
            + "; conv1x1 32->96 + BN + ReLU (7x7); global average pool, flatten, linear 96->10",
        ),
    )
}


def describe(model: nn.Module) -> list[str]:
    """One line per leaf module with its output shape for a [1, 1, 28, 28] input."""
    lines: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if not list(module.children()):

            def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                lines.append(f"{name}: {mod!r} -> {list(out.shape)}")

            hooks.append(module.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return lines


# --------------------------------------------------------------------------- training


def as_input(x: np.ndarray) -> torch.Tensor:
    """A float32 [N, 1, 28, 28] batch as a channels-last tensor (the layout the models train in)."""
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on all of ``x``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(as_input(x[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    model: nn.Module,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    batch: int,
    lr: float,
) -> list[dict[str, float]]:
    """Adam with per-step cosine decay from ``lr`` to 0, random horizontal flips. Returns a per-epoch log."""
    xtr, ytr, xte, yte = data
    rng = np.random.default_rng(seed)
    total_steps = epochs * math.ceil(len(xtr) / batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=0.0)
    loss_fn = nn.CrossEntropyLoss()
    log: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(xtr))
        flip = rng.random(len(xtr)) < 0.5
        total_loss = 0.0
        for i in range(0, len(xtr), batch):
            idx = order[i : i + batch]
            xb = xtr[idx]  # fancy indexing copies: xtr itself is never modified
            fb = flip[idx]
            xb[fb] = xb[fb, :, :, ::-1]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(as_input(xb)), torch.from_numpy(ytr[idx]))
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        secs = time.perf_counter() - t0
        acc = evaluate(model, xte, yte)
        log.append({"epoch": epoch, "loss": total_loss / len(xtr), "test_accuracy": acc, "seconds": secs})
        print(
            f"  epoch {epoch:2d}/{epochs}  loss {total_loss / len(xtr):.4f}  test acc {acc:.4f}  "
            f"({secs:.1f} s)",
            flush=True,
        )
    return log


# --------------------------------------------------------------------------- export and checks


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the legacy TorchScript exporter at opset 13, fixed batch 1, BatchNorm kept.

    torch 2.13's default (dynamo) exporter needs onnxscript and cannot go below opset 18; the legacy
    one honours opset 13 and writes a single file. No constant folding, so BatchNorm is not fused.
    """
    model.eval()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": chosen on purpose, see above.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
        )


# onnx.reference runs BatchNormalization-9 (opsets 9 to 13) in training mode whenever ``momentum`` has a
# value, and the schema always supplies one (0.9), so an inference model would be normalised with the
# statistics of the batch itself (onnx/onnx PR #8442). BatchNormalization-14/15 have an explicit
# ``training_mode`` (default 0): the check converts the model to opset 15 for the evaluator only, as
# tvm_mcu.reference does. The file written stays opset 13.
BATCHNORM_FIXED_OPSET = 15


def reference_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` in a form onnx.reference evaluates correctly (see BATCHNORM_FIXED_OPSET)."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14 and any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        return version_converter.convert_version(proto, BATCHNORM_FIXED_OPSET)
    return proto


def run_reference(sess: ReferenceEvaluator, x: np.ndarray) -> np.ndarray:
    """The ``logits`` of the evaluator for one input batch."""
    (logits,) = sess.run(["logits"], {"input": x})
    return np.asarray(logits)


def check_onnx(path: Path, model: nn.Module, x: np.ndarray) -> dict[str, Any]:
    """Validate the ONNX file and compare ReferenceEvaluator with torch on ``x`` (one image at a time)."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    in_shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if (inp.name, in_shape, out.name, out_shape) != ("input", [1, 1, 28, 28], "logits", [1, 10]):
        raise RuntimeError(f"unexpected ONNX signature: {inp.name}{in_shape} -> {out.name}{out_shape}")

    sess = ReferenceEvaluator(reference_proto(proto))
    ref = np.concatenate([run_reference(sess, x[i : i + 1]) for i in range(len(x))])
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    max_diff = float(np.abs(ref - expected).max())
    same_argmax = bool((ref.argmax(1) == expected.argmax(1)).all())
    if not same_argmax or max_diff > MAX_ONNX_DIFF:
        raise RuntimeError(f"ONNX and torch disagree: max abs diff {max_diff}, same argmax {same_argmax}")

    op_counts: dict[str, int] = {}
    for node in proto.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input": {"name": "input", "shape": in_shape, "dtype": "float32"},
        "output": {"name": "logits", "shape": out_shape, "dtype": "float32"},
        "ops": sorted(op_counts),
        "op_counts": dict(sorted(op_counts.items())),
        "nodes": len(proto.graph.node),
        "initializer_elements": sum(int(np.prod(t.dims)) for t in proto.graph.initializer),
        "max_abs_diff_reference_vs_torch": max_diff,
        "same_argmax_reference_vs_torch": same_argmax,
        "check_images": f"first {len(x)} images of the t10k test set",
        "check_note": f"onnx.reference on the model converted to opset {BATCHNORM_FIXED_OPSET} "
        "(its BatchNormalization-9 ignores inference mode)",
    }


# --------------------------------------------------------------------------- main


def run_model(
    spec: ModelSpec,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build, train, export and check one model; return its ``models.json`` entry."""
    epochs = args.epochs if args.epochs is not None else spec.epochs
    torch.manual_seed(args.seed)
    # Channels-last runs the oneDNN convolutions about twice as fast on the CPU; export uses NCHW.
    model = spec.build().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{spec.name}: {n_params} trainable parameters, {epochs} epochs", flush=True)

    log = train(model, data, epochs, args.seed, args.batch_size, args.lr)
    _, _, xte, yte = data
    acc = evaluate(model, xte, yte)
    secs = [e["seconds"] for e in log]
    print(f"{spec.name}: test accuracy {acc:.4f}  ({sum(secs):.0f} s training)", flush=True)

    path = args.out_dir / f"{spec.name}.onnx"
    export_onnx(model, path)
    report = check_onnx(path, model, xte[:NUM_CHECK_SAMPLES])
    print(
        f"{spec.name}: wrote {path} ({report['bytes']} bytes), ops {report['ops']}, max abs diff "
        f"reference vs torch {report['max_abs_diff_reference_vs_torch']:.2e}",
        flush=True,
    )
    return {
        "architecture": spec.architecture,
        "layers": describe(model),
        "trainable_parameters": n_params,
        "epochs": epochs,
        "seconds_per_epoch": round(sum(secs) / len(secs), 1),
        "seconds_per_epoch_fastest": round(min(secs), 1),
        "seconds_note": "wall time of the training loop (evaluation excluded); it grows with machine "
        "load, the fastest epoch is the closest to an idle machine",
        "training_seconds": round(sum(secs), 1),
        "test_accuracy": acc,
        "max_abs_diff_onnx_reference_vs_torch": report["max_abs_diff_reference_vs_torch"],
        "onnx": report,
        "log": [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in log],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where to write the outputs")
    ap.add_argument("--only", choices=sorted(MODELS), help="train only this model")
    ap.add_argument("--epochs", type=int, help="training epochs (default: per model, see MODELS)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    ap.add_argument("--lr", type=float, default=2e-3, help="initial Adam learning rate (default: 2e-3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN (a guard against reading uninitialised
    # memory); that costs about a fifth of the training time here and does not change any result.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]

    try:
        ds = load_dataset("fashion-mnist", (1, 1, 28, 28))
    except BadOptionError as exc:
        sys.exit(f"error: {exc}")
    data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    print(f"data: {len(data[0])} train, {len(data[2])} test images from {FASHION_MNIST_DIR}", flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "models.json"
    models: dict[str, Any] = {}
    if args.only and json_path.is_file():
        models = json.loads(json_path.read_text()).get("models", {})
    names = [args.only] if args.only else list(MODELS)
    for name in names:
        models[name] = run_model(MODELS[name], data, args)

    summary = {
        "dataset": "Fashion-MNIST (Debian package dataset-fashion-mnist): 60000 train images, "
        "accuracy on all 10000 t10k test images",
        "input_normalisation": {"formula": "x = (pixel / 255 - mean) / std", "mean": MEAN, "std": STD},
        "training": {
            "optimizer": f"Adam, lr {args.lr} with per-step cosine decay to 0, weight decay 0",
            "batch_size": args.batch_size,
            "augmentation": "random horizontal flip (p=0.5)",
            "seed": args.seed,
            "threads": args.threads,
            "torch_version": torch.__version__,
            "deterministic": "torch.use_deterministic_algorithms(True); only the timings vary between runs",
        },
        "export": f"torch.onnx.export legacy (dynamo=False), opset {OPSET}, eval mode, batch 1, "
        "do_constant_folding=False (BatchNormalization kept)",
        "rerun": "python bench/train_models.py --out-dir bench/models",
        "models": {name: models[name] for name in MODELS if name in models},
    }
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

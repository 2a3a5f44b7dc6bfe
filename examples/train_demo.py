#!/usr/bin/env python3
"""Train the bundled demo model of tvm-mcu: a tiny Fashion-MNIST CNN, exported to ONNX.

The outputs are the files shipped in ``tvm_mcu/data/demo/``:

``fashion_cnn.onnx``
    Opset 13, one file (no external data). Input ``input`` float32 [1, 1, 28, 28], output
    ``logits`` float32 [1, 10]. Fixed batch 1, no dynamic axes. The input is *normalised*:
    ``x = (pixel / 255 - MEAN) / STD`` with the constants below; the normalisation is not
    part of the graph.
``samples.npz``
    The first 16 images of the Fashion-MNIST test set (t10k): ``x`` float32 [16, 1, 28, 28]
    (already normalised, exactly the model's input), ``y`` int64 [16], ``raw`` uint8
    [16, 28, 28] (the original pixels), ``classes`` str [10], ``mean`` and ``std`` float32
    scalars, and ``logits`` float32 [16, 10] (the outputs of the ONNX reference evaluator,
    usable as expected values).
``model_card.json``
    Architecture, parameter count, training settings, test accuracy on the full 10k test set,
    ONNX opset and ops, input normalisation and a peak-activation-memory estimate.

The data are read from the gzip IDX files of the Debian package ``dataset-fashion-mnist``
with numpy alone (no torchvision, no download). Training uses PyTorch on the CPU and is
deterministic for a given ``--seed`` (same machine, same thread count).

Setup (pin torch exactly: a range pulls GBs of CUDA wheels)::

    apt-get install dataset-fashion-mnist
    .venv/bin/pip install -e '.[train]'          # torch==2.13.0, CPU build
    .venv/bin/python examples/train_demo.py --out-dir tvm_mcu/data/demo
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "tvm_mcu" / "data" / "demo"

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Input normalisation: x = (pixel / 255 - MEAN) / STD. These are the usual Fashion-MNIST
# constants (the training-set mean and std of pixel / 255, rounded to 4 digits).
MEAN = 0.2860
STD = 0.3530

OPSET = 13
NUM_SAMPLES = 16
ALLOWED_OPS = {
    "Conv",
    "BatchNormalization",
    "Relu",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Gemm",
}


# --------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:  # 0x08: unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train_images, train_labels, test_images, test_labels); images are uint8 [N, 28, 28]."""
    names = {
        "xtr": "train-images-idx3-ubyte.gz",
        "ytr": "train-labels-idx1-ubyte.gz",
        "xte": "t10k-images-idx3-ubyte.gz",
        "yte": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (data_dir / n).is_file()]
    if missing:
        sys.exit(
            f"error: Fashion-MNIST not found in {data_dir} (missing: {', '.join(missing)}).\n"
            "Install it with:  apt-get install dataset-fashion-mnist\n"
            "or pass --data-dir pointing at a folder with the four *-ubyte.gz IDX files."
        )
    arrays = {key: read_idx(data_dir / name) for key, name in names.items()}
    return arrays["xtr"], arrays["ytr"], arrays["xte"], arrays["yte"]


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], the model's input convention."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


# --------------------------------------------------------------------------- model


def build_model():
    """The demo CNN: 3 x [conv3x3 + BN (+ max-pool) + ReLU], global average pool, linear.

    Shapes for a [1, 1, 28, 28] input:
      conv1 1->8   28x28, BN, max-pool -> 14x14, ReLU
      conv2 8->16  14x14, BN, max-pool -> 7x7,   ReLU
      conv3 16->32  7x7,  BN, ReLU, global average pool -> 32
      fc    32->10

    The max-pool comes before the ReLU (as in the classic ``relu(max_pool(conv(x)))`` PyTorch
    MNIST example). ReLU is monotonic, so this equals conv-BN-ReLU-pool up to training, but the
    8x28x28 tensor (24.5 KiB) is then alive only once at a time: the peak activation memory is
    30.6 KiB even when a compiler neither fuses the ReLU into the conv nor runs it in place
    (it would be 49 KiB with the ReLU at 28x28 and no fusion).
    """
    from torch import nn

    def conv_bn(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]

    return nn.Sequential(
        *conv_bn(1, 8),
        nn.MaxPool2d(2),
        nn.ReLU(),
        *conv_bn(8, 16),
        nn.MaxPool2d(2),
        nn.ReLU(),
        *conv_bn(16, 32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def describe(model) -> list[str]:
    """One line per layer with its output shape for a [1, 1, 28, 28] input (for the model card)."""
    import torch

    layers = []
    x = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            layers.append(f"{layer!r} -> {list(x.shape)}")
    return layers


# --------------------------------------------------------------------------- training


def evaluate(model, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def train(model, xtr, ytr, xte, yte, epochs: int, seed: int, batch: int, lr: float) -> list[dict]:
    """Adam + one-cycle LR, random horizontal flips. Returns a per-epoch log."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    steps_per_epoch = (len(xtr) + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    log = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(xtr))
        flip = rng.random(len(xtr)) < 0.5
        total_loss = 0.0
        for i in range(0, len(xtr), batch):
            idx = order[i : i + batch]
            xb = xtr[idx]
            fb = flip[idx]
            xb[fb] = xb[fb, :, :, ::-1]  # fancy indexing made a copy: xtr itself is untouched
            xb_t, yb_t = torch.from_numpy(xb), torch.from_numpy(ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb_t), yb_t)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        secs = time.perf_counter() - t0
        acc = evaluate(model, xte, yte)
        entry = {"epoch": epoch, "loss": total_loss / len(xtr), "test_accuracy": acc, "seconds": secs}
        log.append(entry)
        print(f"epoch {epoch:2d}/{epochs}  loss {entry['loss']:.4f}  test acc {acc:.4f}  ({secs:.1f} s)")
    return log


# --------------------------------------------------------------------------- export and checks


def export_onnx(model, path: Path) -> None:
    """Export with the legacy TorchScript exporter.

    torch 2.13's default (dynamo) exporter needs the extra package onnxscript and cannot go below
    opset 18; the legacy one needs nothing more, honours opset 13 and writes a single file.
    """
    import torch

    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": chosen on purpose, see above.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            do_constant_folding=True,  # folds the (eval-mode) BatchNorms into the Convs
            training=torch.onnx.TrainingMode.EVAL,
        )


def peak_activation_bytes(model_proto) -> dict:
    """Estimate peak activation memory of the ONNX graph run op by op in topological order.

    A tensor is live from the op that produces it (the graph input: from the start) to its last
    consumer; the peak is the largest sum of live tensor sizes while an op runs (its inputs and
    its output both live). No in-place reuse is assumed (a conservative estimate).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model_proto)
    g = inferred.graph
    init = {t.name for t in g.initializer}
    sizes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        sizes[vi.name] = int(np.prod(dims)) * 4  # float32
    last_use = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            if name in sizes and name not in init:
                last_use[name] = i
    for out in g.output:
        last_use[out.name] = len(g.node)
    live = {vi.name for vi in g.input if vi.name not in init}
    peak, peak_node = 0, ""
    for i, node in enumerate(g.node):
        live |= {o for o in node.output if o in sizes}
        cur = sum(sizes[n] for n in live)
        if cur > peak:
            peak, peak_node = cur, f"{node.op_type} ({node.name})"
        live = {n for n in live if last_use.get(n, -1) > i}
    largest = max(sizes[n] for n in sizes if n not in init)
    return {
        "peak_bytes": peak,
        "peak_kib": round(peak / 1024, 1),
        "peak_at": peak_node,
        "largest_tensor_bytes": largest,
        "method": "op by op, inputs + output of the running op + tensors still needed later; "
        "no fusion, no in-place reuse; weights (constants) not counted",
    }


def check_onnx(path: Path, model, x: np.ndarray) -> tuple[dict, np.ndarray]:
    """Check the ONNX file and compare it with torch on ``x``. Returns (report, reference logits)."""
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = sorted({n.op_type for n in proto.graph.node})
    bad = set(ops) - ALLOWED_OPS
    if bad:
        raise RuntimeError(f"ONNX graph uses ops outside the demo's allowed set: {sorted(bad)}")
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    in_shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if (inp.name, in_shape, out.name, out_shape) != ("input", [1, 1, 28, 28], "logits", [1, 10]):
        raise RuntimeError(f"unexpected ONNX signature: {inp.name}{in_shape} -> {out.name}{out_shape}")

    sess = ReferenceEvaluator(proto)
    ref = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    max_diff = float(np.abs(ref - expected).max())
    same_argmax = bool((ref.argmax(1) == expected.argmax(1)).all())
    if not same_argmax or max_diff > 1e-3:
        raise RuntimeError(f"ONNX and torch disagree: max abs diff {max_diff}, same argmax {same_argmax}")
    n_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    report = {
        "opset": opset,
        "ir_version": proto.ir_version,
        "ops": ops,
        "nodes": [n.op_type for n in proto.graph.node],
        "batchnorm_folded_into_conv": "BatchNormalization" not in ops,
        "initializer_elements": n_params,
        "weights_bytes_float32": 4 * n_params,
        "max_abs_diff_vs_torch_on_samples": max_diff,
        "same_argmax_as_torch_on_samples": same_argmax,
        "activation_memory_float32": peak_activation_bytes(proto),
    }
    return report, ref.astype(np.float32)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where to write the outputs")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"folder with the Fashion-MNIST *-ubyte.gz files (default: {DEFAULT_DATA_DIR})",
    )
    ap.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    ap.add_argument("--lr", type=float, default=0.02, help="peak learning rate of the one-cycle schedule")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = ap.parse_args(argv)

    xtr_raw, ytr, xte_raw, yte = load_fashion_mnist(args.data_dir)

    try:
        import onnx  # noqa: F401
        import torch
    except ImportError as e:
        sys.exit(f"error: {e}. Install the training tools: pip install torch==2.13.0 onnx numpy")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    xtr, xte = normalise(xtr_raw), normalise(xte_raw)
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    print(f"data: {len(xtr)} train, {len(xte)} test images from {args.data_dir}")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} trainable parameters")

    t0 = time.perf_counter()
    log = train(model, xtr, ytr, xte, yte, args.epochs, args.seed, args.batch_size, args.lr)
    train_secs = time.perf_counter() - t0
    acc = evaluate(model, xte, yte)
    print(f"test accuracy (10000 images): {acc:.4f}  (training took {train_secs:.0f} s)")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "fashion_cnn.onnx"
    export_onnx(model, onnx_path)

    x_s, y_s, raw_s = xte[:NUM_SAMPLES], yte[:NUM_SAMPLES], np.ascontiguousarray(xte_raw[:NUM_SAMPLES])
    report, ref_logits = check_onnx(onnx_path, model, x_s)
    print(
        f"onnx: opset {report['opset']}, ops {report['ops']}, max abs diff vs torch "
        f"{report['max_abs_diff_vs_torch_on_samples']:.2e}, same argmax: "
        f"{report['same_argmax_as_torch_on_samples']}"
    )

    np.savez(
        args.out_dir / "samples.npz",
        x=x_s,
        y=y_s,
        raw=raw_s,
        classes=np.array(CLASSES),
        mean=np.float32(MEAN),
        std=np.float32(STD),
        logits=ref_logits,
    )

    card = {
        "name": "fashion_cnn",
        "task": "Fashion-MNIST image classification (10 classes)",
        "classes": list(CLASSES),
        "architecture": "3 x conv3x3 pad 1 (no bias) + BatchNorm, 1->8->16->32 channels; blocks 1 and 2: "
        "max-pool 2x2 then ReLU, block 3: ReLU; global average pool, flatten, linear 32->10",
        "layers": describe(model),
        "trainable_parameters": n_params,
        "trainable_parameters_note": "in torch, BN scale/shift included; the ONNX file holds "
        "initializer_elements after BN folding",
        "onnx": {
            "file": onnx_path.name,
            "input": {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"},
            "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"},
            **report,
        },
        "input_normalisation": {
            "formula": "x = (pixel / 255 - mean) / std",
            "mean": MEAN,
            "std": STD,
            "in_graph": False,
        },
        "samples": {
            "file": "samples.npz",
            "source": "the first 16 images of the Fashion-MNIST t10k test set",
            "arrays": {
                "x": "float32 [16,1,28,28], normalised model input",
                "y": "int64 [16], labels",
                "raw": "uint8 [16,28,28], original pixels",
                "classes": "str [10], class names",
                "mean": "float32 scalar",
                "std": "float32 scalar",
                "logits": "float32 [16,10], onnx.reference.ReferenceEvaluator outputs",
            },
        },
        "training": {
            "data": "Fashion-MNIST 60000 train images (Debian package dataset-fashion-mnist)",
            "epochs": args.epochs,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "optimizer": f"Adam, one-cycle LR (peak {args.lr})",
            "augmentation": "random horizontal flip (p=0.5)",
            "torch_version": torch.__version__,
            "threads": args.threads,
            "seconds": round(train_secs, 1),
            "seconds_note": "wall time, varies with machine load: about 4-5 s per epoch on an idle "
            "2-core machine (the only field that differs between two runs with the same seed)",
            "log": [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in log],
        },
        "test_accuracy": acc,
        "test_set": "Fashion-MNIST t10k, all 10000 images",
        "retrain": "python examples/train_demo.py "
        f"--epochs {args.epochs} --seed {args.seed} --lr {args.lr} --batch-size {args.batch_size} "
        "--out-dir tvm_mcu/data/demo",
        "retrain_needs": "pip install torch==2.13.0 onnx numpy; apt-get install dataset-fashion-mnist",
    }
    (args.out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    for name in ("fashion_cnn.onnx", "samples.npz", "model_card.json"):
        print(f"wrote {args.out_dir / name} ({(args.out_dir / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

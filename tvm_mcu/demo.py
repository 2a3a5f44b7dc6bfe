"""The bundled demo: a Fashion-MNIST CNN compiled for a Cortex-M board classifies real test images on QEMU."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from tvm_mcu import api
from tvm_mcu.errors import ModelError
from tvm_mcu.frontend import load_model
from tvm_mcu.reference import reference_outputs


def demo_files() -> tuple[Path, Path]:
    base = resources.files("tvm_mcu") / "data" / "demo"
    model, samples = Path(str(base / "fashion_cnn.onnx")), Path(str(base / "samples.npz"))
    if not model.is_file() or not samples.is_file():
        raise ModelError(f"the demo files are missing from {base} (reinstall tvm-mcu)")
    return model, samples


def run_demo(*, board: str, out_dir: Path, limit: int) -> int:
    """Compile the demo model, run ``limit`` test images on ``board``, print predictions and figures.

    Returns 0 when every emulated prediction equals the reference interpreter's.
    """
    model_path, samples_path = demo_files()
    samples = np.load(samples_path)
    xs, ys, classes = samples["x"][:limit], samples["y"][:limit], [str(c) for c in samples["classes"]]
    print(f"tvm-mcu demo: {model_path.name} -> {board}")
    compiled = api.compile_model(model_path, board, out_dir)
    print(
        f"  compiled in {compiled.report.compile_seconds:.2f} s into {out_dir}/ "
        f"(arena {compiled.report.arena_bytes:,} B, flash {compiled.report.flash_bytes:,} B)"
    )
    model = load_model(model_path)
    print(f"\n  {'image':<7}{'label':<14}{'on ' + board:<18}{'onnx.reference':<16}max |error|")
    correct = agree = 0
    worst = 0.0
    report = compiled.report
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        x = x.reshape(model.inputs[0].shape).astype(np.float32)
        outcome = api.run_compiled(out_dir, [x])
        got = outcome.outputs[0].reshape(-1)
        ref = np.asarray(reference_outputs(model, [x])[0]).reshape(-1)
        err = float(np.max(np.abs(got - ref)))
        worst = max(worst, err)
        p, pr = int(np.argmax(got)), int(np.argmax(ref))
        correct += int(p == int(y))
        agree += int(p == pr)
        mark = "" if p == int(y) else "  (wrong)"
        print(f"  {i:<7}{classes[int(y)]:<14}{classes[p]:<18}{classes[pr]:<16}{err:.2e}{mark}")
        report = outcome.report
    n = len(xs)
    print(
        f"\n  accuracy on these {n} test images: {correct}/{n}; "
        f"emulator agrees with the reference on {agree}/{n}; worst |error| {worst:.2e}"
    )
    print("  figures (measured on the emulated board; instructions, not cycles):")
    print(
        f"    arena {report.arena_bytes:,} B, stack {report.stack_bytes:,} B, "
        f"flash {report.flash_bytes:,} B, static RAM {report.ram_bytes:,} B"
    )
    ipm = f"{report.instructions_per_mac:.2f}" if report.instructions_per_mac is not None else "-"
    print(f"    {report.macs:,} MACs, {report.instructions:,} instructions per inference ({ipm} per MAC)")
    return 0 if agree == n else 1

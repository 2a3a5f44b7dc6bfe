"""Weight widths in prune: --weights int4, --weights int2 and --method udc (channels and each layer's
int8/int4 width searched together) write a quantised model that meets the budget as compiled and runs
exactly."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import onnx
import pytest

pytest.importorskip("torch")

from tests.prune_helpers import int4_initializers  # noqa: E402
from tvm_mcu import api, pipeline  # noqa: E402
from tvm_mcu.errors import BadOptionError  # noqa: E402
from tvm_mcu.frontend import load_model  # noqa: E402
from tvm_mcu.prune import Budget, prune_model  # noqa: E402
from tvm_mcu.prune_bits import all_int2, all_int4, check, describe  # noqa: E402

BOARD = "mps2-an386"
DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))


def _pruned(tmp_path: Path, budget: int = 1500, **options: str) -> tuple[Any, Path]:
    """The demo CNN pruned to ``budget`` bytes of stored weights with ``options``, 2 epochs on 3,000
    images: the result and the written model."""
    out = tmp_path / "pruned.onnx"
    result = prune_model(
        DEMO,
        board=BOARD,
        budget=Budget(weights=budget),
        out_path=out,
        workdir=tmp_path / "work",
        data="fashion-mnist",
        epochs=2,
        train_limit=3000,
        **options,  # type: ignore[arg-type]
    )
    return result, out


@pytest.mark.emulator
def test_the_joint_search_meets_the_budget_as_compiled_and_runs_exactly(tmp_path: Path) -> None:
    # Of the demo CNN's 6,944 B: int8 at its narrowest (8 channels a group) stores 1,712 B, int4 1,136.
    result, out = _pruned(tmp_path, method="udc")
    assert result.after.weights <= 1500
    assert 4 in result.bits.values() and int4_initializers(out) == list(result.bits.values()).count(4)
    # Kept channel counts are multiples of 8 (or whole groups): the kernels pack whole blocks.
    assert all(kept % 8 == 0 or kept == of for kept, of in result.widths.values())
    # The written model is the one measured: the same stored weights, compiled, and it runs exactly.
    checked = api.verify(out, BOARD, tmp_path / "verify")
    assert checked.passed and checked.report.verified
    assert checked.report.stored_weights_bytes == result.after.weights
    compiled = json.loads((tmp_path / "verify" / "report.json").read_text())
    assert compiled["int4_weight_ops"] and compiled["stored_weights_bytes"] == result.after.weights
    assert result.training is not None and result.training.accuracy_after > 0.3  # chance: 0.1
    # The search (1 epoch) found the widths; the network was then trained at them from the start (2).
    assert result.training.epochs == 3 and len(result.training.seconds_per_epoch) == 3
    assert "then trained at those bits from the original weights (2 epochs)" in result.search


def test_widths_refuse_what_they_cannot_take() -> None:
    with pytest.raises(BadOptionError, match="--data"):
        check("udc", "int8", True, "channel", None, 2)
    with pytest.raises(BadOptionError, match="--epochs 2"):
        check("udc", "int8", True, "channel", "fashion-mnist", 1)
    with pytest.raises(BadOptionError, match="drop --float"):
        check("diff", "int4", False, "channel", "fashion-mnist", 2)
    with pytest.raises(BadOptionError, match="granularity channel"):
        check("diff", "int4", True, "filterlet", "fashion-mnist", 2)
    with pytest.raises(BadOptionError, match="drop --weights"):
        check("udc", "int4", True, "channel", "fashion-mnist", 2)
    check("l1", "int8", False, "filterlet", None, 0)  # no widths asked: nothing to refuse


def test_int4_everywhere_is_every_layer_the_compiler_packs() -> None:
    mod = pipeline.run(pipeline.inference_passes(), load_model(DEMO).mod)
    bits = all_int4(mod)
    # Not the first conv (one input channel: no blocked kernel) nor the classifier (10 outputs).
    assert list(bits.values()) == [8, 4, 4, 8]
    assert list(describe(mod, bits)) == ["conv2d lv", "conv2d lv5", "conv2d lv10", "matmul lv17"]


@pytest.mark.emulator
def test_int4_everywhere_takes_depthwise_layers_and_the_written_model_runs_exactly(tmp_path: Path) -> None:
    """A MobileNetV2 block written with onnx.helper: the expand, depthwise and project convolutions all
    int4 (the depthwise one unpacked into the workspace by the compiler); the model prune would write
    at those widths compiles the depthwise weights packed and matches the reference; a grouped
    convolution that is not depthwise (2 inputs a group) stays int8 (``conv_grouped_depthwise``)."""
    from tests.zoo.onnx_models import conv_grouped_depthwise, mobilenet_block
    from tvm_mcu import resource_model

    grouped = tmp_path / "grouped.onnx"
    grouped.write_bytes(conv_grouped_depthwise().SerializeToString())
    bits = all_int4(pipeline.run(pipeline.inference_passes(), load_model(grouped).mod))
    # Groups of 2 inputs: unblocked; 8 groups of 1: depthwise; the 1x1 to 6 outputs: not whole blocks.
    assert list(bits.values()) == [8, 4, 8], bits
    path = tmp_path / "block.onnx"
    path.write_bytes(mobilenet_block().SerializeToString())
    imported = load_model(path)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    bits = all_int4(mod)
    assert list(bits.values()) == [4, 4, 4], bits
    written = resource_model.deployable(mod, imported, tmp_path, int8=True, tag="block", bits=bits)
    assert int4_initializers(written) == 3
    checked = api.verify(written, BOARD, tmp_path / "verify")
    assert checked.passed and checked.report.max_abs_error == 0.0, checked.report.worst_difference
    # The depthwise weights, 144 values, are stored in 72 bytes and unpacked at run time.
    assert checked.report.int4_weight_ops, checked.report.int4_weight_ops
    assert "tvmmcu_dot_unpack4(" in (tmp_path / "verify" / "model.c").read_text()


@pytest.mark.emulator
def test_int2_everywhere_meets_the_budget_as_compiled_and_runs_exactly(tmp_path: Path) -> None:
    """--weights int2: the two middle convolutions ternary (INT2, opset 25), stored four per byte by the
    crumb kernels; the budget is met as compiled. At 1,500 B int4 keeps 8 channels in every group and
    scores about 0.41 after this training, int2 24 in the last and about 0.64."""
    mod = pipeline.run(pipeline.inference_passes(), load_model(DEMO).mod)
    assert list(all_int2(mod).values()) == [8, 2, 2, 8]
    result, out = _pruned(tmp_path, weights="int2")
    assert result.after.weights <= 1500
    assert list(result.bits.values()) == [8, 2, 2, 8]
    assert int4_initializers(out, onnx.TensorProto.INT2) == 2
    model = onnx.load(str(out))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 25
    checked = api.verify(out, BOARD, tmp_path / "verify")
    assert checked.passed and checked.report.verified
    assert checked.report.stored_weights_bytes == result.after.weights
    assert len(checked.report.int2_weight_ops) == 2, checked.report.int2_weight_ops
    assert result.training is not None and result.training.accuracy_after > 0.3  # chance: 0.1


def test_int2_everywhere_leaves_depthwise_layers_int4() -> None:
    """A depthwise convolution's int2 weights would be unpacked as int4 (no crumb kernel reads them):
    they are int4, the expand and project convolutions int2."""
    import tempfile

    from tests.zoo.onnx_models import mobilenet_block

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "block.onnx"
        path.write_bytes(mobilenet_block().SerializeToString())
        mod = pipeline.run(pipeline.inference_passes(), load_model(path).mod)
    assert list(all_int2(mod).values()) == [2, 4, 2]


@pytest.mark.emulator
def test_the_joint_search_takes_int2_below_what_int4_can_reach(tmp_path: Path) -> None:
    """At 1,100 B, below int4's narrowest network (1,136 B), the joint search puts a middle convolution
    to int2 (its second gate): the written model stores it four per byte, as measured, bit-exact."""
    result, out = _pruned(tmp_path, budget=1100, method="udc")
    assert result.after.weights <= 1100 and 2 in result.bits.values(), result.bits
    assert int4_initializers(out, onnx.TensorProto.INT2) == list(result.bits.values()).count(2)
    checked = api.verify(out, BOARD, tmp_path / "verify")
    assert checked.passed and checked.report.verified
    assert checked.report.stored_weights_bytes == result.after.weights
    assert checked.report.int2_weight_ops

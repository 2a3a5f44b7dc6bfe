"""The training bridge: a Relax module evaluated by torch equals the ONNX reference and TVM, trains, and its
weights go back into a new Relax module that differs from the old one only where the weights changed.

Every zoo model and the demo model are checked against ``onnx.reference`` (through ``tvm_mcu.reference``,
which evaluates old-opset BatchNormalization in inference mode); single ops with awkward attributes
(asymmetric and ceil-mode pooling, dilation) against TVM itself, compiled for the host.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import tvm_mcu
from tests.zoo.onnx_models import ONNX_MODELS
from tvm_mcu import _tvm, pipeline
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.errors import BadOptionError, UnsupportedOpError
from tvm_mcu.frontend import ImportedModel, load_model
from tvm_mcu.reference import reference_outputs
from tvm_mcu.train import require_torch, torch_rules
from tvm_mcu.train.bridge import RelaxModule, write_back
from tvm_mcu.train.data import load_dataset
from tvm_mcu.train.loop import distill_loss, evaluate, predict, train

DEMO = Path(tvm_mcu.__file__).parent / "data" / "demo" / "fashion_cnn.onnx"
MODELS = (*ONNX_MODELS, "demo")
# Float tolerance against onnx.reference, per element: |torch - reference| <= ATOL + RTOL * |reference|.
# Measured: at most 5.7e-6 absolute (the demo model, logits up to 22.5), 8 % of this bound.
RTOL = ATOL = 1e-5
BATCH = 3


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the machine has 2 cores, shared
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[ImportedModel, Any]]:
    """name -> (the imported model, its Relax module in inference form), each built once."""
    cache: dict[str, tuple[ImportedModel, Any]] = {}
    directory = tmp_path_factory.mktemp("models")

    def get(name: str) -> tuple[ImportedModel, Any]:
        if name not in cache:
            proto = onnx.load(DEMO) if name == "demo" else ONNX_MODELS[name]()
            path = directory / f"{name}.onnx"
            onnx.save(proto, path)
            model = load_model(path)
            cache[name] = (model, pipeline.run(pipeline.inference_passes(), model.mod))
        return cache[name]

    return get


def _inputs(model: ImportedModel, batch: int = BATCH, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *s.shape[1:])).astype(np.float32) for s in model.inputs]


def _outputs(module: RelaxModule, xs: list[np.ndarray]) -> list[torch.Tensor]:
    out = module(*(torch.from_numpy(x) for x in xs))
    return list(out) if isinstance(out, tuple) else [out]


def _constants(mod: Any) -> list[np.ndarray]:
    """Every constant argument of main's calls, in binding order."""
    found = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, _tvm.RelaxCall):
                found += [_tvm.const_value(a) for a in b.value.args if isinstance(a, _tvm.RelaxConst)]
    return found


def _relax_module(make: Callable[[Any], Any], shape: tuple[int, ...], dtype: str = "float32") -> Any:
    """main(x) { lv12 = make(x); gv = lv12 }: one op under test, bound to a known name."""
    x = relax.Var("x", relax.TensorType(shape, dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            lv = bb.emit(make(x), name_hint="lv12")
            gv = bb.emit_output(lv, name_hint="gv")
        bb.emit_func_output(gv)
    return bb.get()


# ---------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", MODELS)
def test_matches_onnx_reference(name: str, imported: Callable[[str], tuple[ImportedModel, Any]]) -> None:
    model, mod = imported(name)
    xs = _inputs(model)
    with torch.no_grad():
        got = _outputs(RelaxModule(mod), xs)
    per_sample = [reference_outputs(model, [x[k : k + 1] for x in xs]) for k in range(BATCH)]
    assert len(got) == len(model.outputs)
    for o, out in enumerate(got):
        expected = np.concatenate([ref[o] for ref in per_sample])
        np.testing.assert_allclose(out.numpy(), expected, rtol=RTOL, atol=ATOL)


def _pool_cases() -> dict[str, tuple[Callable[[Any], Any], tuple[int, ...]]]:
    nn = relax.op.nn
    w = np.random.default_rng(1).standard_normal((6, 2, 3, 2)).astype(np.float32)
    return {
        "max_pool_ceil_asymmetric": (
            lambda x: nn.max_pool2d(x, (3, 3), (2, 2), (1, 0, 0, 1), ceil_mode=True),
            (1, 3, 9, 9),
        ),
        "max_pool_dilated": (lambda x: nn.max_pool2d(x, (2, 2), (1, 1), (0, 1, 1, 0), (2, 2)), (1, 3, 9, 9)),
        "avg_pool_ceil_include_pad": (
            lambda x: nn.avg_pool2d(x, (3, 3), (2, 2), (1, 0, 0, 1), ceil_mode=True, count_include_pad=True),
            (1, 3, 9, 9),
        ),
        "avg_pool_ceil_exclude_pad": (
            lambda x: nn.avg_pool2d(x, (3, 3), (2, 2), (1, 0, 0, 1), ceil_mode=True, count_include_pad=False),
            (1, 3, 9, 9),
        ),
        "avg_pool_stride_past_kernel": (
            lambda x: nn.avg_pool2d(x, (2, 2), (3, 3), (1, 1, 1, 1), ceil_mode=True, count_include_pad=True),
            (1, 3, 9, 9),
        ),
        "avg_pool_dilated": (
            lambda x: nn.avg_pool2d(
                x, (2, 3), (2, 1), (1, 1, 0, 2), (2, 2), ceil_mode=True, count_include_pad=True
            ),
            (1, 3, 9, 9),
        ),
        "adaptive_avg_pool_uneven": (lambda x: nn.adaptive_avg_pool2d(x, (4, 3)), (1, 3, 9, 7)),
        "conv_grouped_dilated_asymmetric": (
            lambda x: nn.conv2d(x, relax.const(w), (2, 1), (2, 0, 1, 1), (1, 2), groups=2),
            (1, 4, 9, 9),
        ),
        "pad_constant": (lambda x: nn.pad(x, (0, 0, 1, 0, 2, 1, 0, 3), "constant", -1.5), (1, 3, 4, 4)),
        "clip": (lambda x: relax.op.clip(x, -0.5, 0.25), (1, 3, 4, 4)),
        "mean_no_keepdims": (lambda x: relax.op.mean(x, axis=[1, -1], keepdims=False), (1, 3, 4, 5)),
    }


@pytest.mark.parametrize("case", list(_pool_cases()))
def test_op_matches_tvm(case: str) -> None:
    make, shape = _pool_cases()[case]
    mod = _relax_module(make, shape)
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target("llvm")), tvm.cpu())
    x = np.random.default_rng(2).standard_normal((2, *shape[1:])).astype(np.float32)
    expected = np.concatenate([vm["main"](tvm.runtime.tensor(x[k : k + 1])).numpy() for k in range(2)])
    with torch.no_grad():
        got = RelaxModule(mod)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(
    name: str, imported: Callable[[str], tuple[ImportedModel, Any]]
) -> None:
    model, mod = imported(name)
    module = RelaxModule(mod)
    rng = np.random.default_rng(3)
    outs = _outputs(module, _inputs(model))
    # A random weighting of every output, so that a softmax (whose outputs sum to 1) still has gradients.
    loss = sum((o * torch.from_numpy(rng.standard_normal(o.shape).astype(np.float32))).sum() for o in outs)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    params = dict(module.named_parameters())
    assert params, "every zoo model has weights"
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().sum()) > 0, f"{pname} (at {module.param_site(pname)}) got a zero gradient"


# ---------------------------------------------------------------------------------------- parameters
def test_parameters_and_buffers(imported: Callable[[str], tuple[ImportedModel, Any]]) -> None:
    """mobilenet_block: weights and per-channel constants are parameters; the Relu6 is one R.clip whose
    bounds are numbers in the call (no buffers)."""
    _, mod = imported("mobilenet_block")
    module = RelaxModule(mod)
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    assert module.binding_names() == [_tvm.var_name(b.var) for b in bindings]
    for pname, p in module.named_parameters():
        i, j = module.param_site(pname)
        assert pname == f"b{i}_{j}"
        np.testing.assert_array_equal(p.detach().numpy(), _tvm.const_value(bindings[i].value.args[j]))
    assert dict(module.named_buffers()) == {}
    clips = [b.value for b in bindings if _tvm.op_name(b.value) == "relax.clip"]
    assert [(float(c.args[1].value), float(c.args[2].value)) for c in clips] == [(0.0, 6.0), (0.0, 6.0)]
    assert [n for n, _ in RelaxModule(mod).named_parameters()] == [n for n, _ in module.named_parameters()]
    with pytest.raises(KeyError, match="no parameter 'b0_0'"):
        module.param_site("b0_0")


@pytest.mark.parametrize("name", MODELS)
def test_write_back_round_trip_is_identical(
    name: str, imported: Callable[[str], tuple[ImportedModel, Any]]
) -> None:
    _, mod = imported(name)
    new = write_back(mod, RelaxModule(mod))
    assert new is not mod
    _tvm.assert_structural_equal(new, mod)
    assert new.script(show_meta=False) == mod.script(show_meta=False)


@pytest.mark.parametrize("name", ["demo", "mobilenet_block", "two_outputs"])
def test_write_back_changes_exactly_the_modified_constant(
    name: str, imported: Callable[[str], tuple[ImportedModel, Any]]
) -> None:
    model, mod = imported(name)
    before = _constants(mod)
    module = RelaxModule(mod)
    pnames = [n for n, _ in module.named_parameters()]
    target = pnames[len(pnames) // 2]
    with torch.no_grad():
        getattr(module, target).add_(0.25)
    new = write_back(mod, module)
    after = _constants(new)
    changed = [k for k, (a, b) in enumerate(zip(before, after, strict=True)) if not np.array_equal(a, b)]
    assert len(changed) == 1
    i, j = module.param_site(target)
    new_binding = [b for block in new["main"].body.blocks for b in block.bindings][i]
    np.testing.assert_array_equal(
        _tvm.const_value(new_binding.value.args[j]), getattr(module, target).detach()
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, _constants(mod), strict=True)), "input mutated"
    xs = _inputs(model)
    with torch.no_grad():
        for a, b in zip(_outputs(RelaxModule(new), xs), _outputs(module, xs), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _renormalised(mod: Any, model: ImportedModel) -> tuple[RelaxModule, int]:
    module = RelaxModule(mod)
    n = module.renormalise(_inputs(model, batch=64, seed=1)[0])
    return module, n


def _conv_bias_pairs(module: RelaxModule) -> int:
    ops, readers = module.binding_ops(), module.readers()
    return sum(
        1
        for i, op in enumerate(ops)
        if op == "relax.nn.conv2d" and [ops[r] for r in readers[i]] == ["relax.add"]
    )


@pytest.mark.parametrize(
    "name", ["demo", "mobilenet_block", "resnet_block", "conv_bn_swish", "conv_grouped_depthwise"]
)
def test_renormalise_starts_as_the_identity(
    name: str, imported: Callable[[str], tuple[ImportedModel, Any]]
) -> None:
    model, mod = imported(name)
    xs = _inputs(model)
    with torch.no_grad():
        before = _outputs(RelaxModule(mod), xs)
    module, n = _renormalised(mod, model)
    assert n == _conv_bias_pairs(module) > 0
    assert sorted(int(k) for k in module.norms) == sorted(
        i for i, op in enumerate(module.binding_ops()) if op == "relax.nn.conv2d" and str(i) in module.norms
    )
    assert [n for n, _ in module.constants()] == [n for n, _ in RelaxModule(mod).named_parameters()]
    module.eval()
    with torch.no_grad():
        for a, b in zip(_outputs(module, xs), before, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(BadOptionError, match="has its norms already"):
        module.renormalise(xs[0])


def test_renormalise_normalises_a_batch_while_training(
    imported: Callable[[str], tuple[ImportedModel, Any]],
) -> None:
    """In training mode each convolution's output leaves its norm with the batch's mean moved to the
    shift and its deviation to the scale, and the running statistics move towards the batch's."""
    model, mod = imported("mobilenet_block")
    module, _ = _renormalised(mod, model)
    key = next(iter(module.norms))
    norm = module.norms[key]
    with torch.no_grad():
        norm.gain.mul_(2.0)
        norm.bias.add_(0.5)
    scale, shift = (t.detach() for t in norm.scale_shift())
    seen: list[torch.Tensor] = []
    module.taps = {int(key): lambda v: seen.append(v.detach()) or v}
    running = norm.mean.clone()
    module.train()
    x = torch.from_numpy(_inputs(model, batch=32, seed=7)[0] * 3.0 + 1.0)
    module(x)
    (z,) = seen
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), shift, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), scale.abs(), rtol=1e-3, atol=1e-3)
    assert not torch.equal(norm.mean, running)


@pytest.mark.parametrize("bits", [None, 8, 4, 2])
@pytest.mark.parametrize("name", ["demo", "mobilenet_block", "conv_grouped_depthwise"])
def test_write_back_folds_the_norms_exactly(
    name: str, bits: int | None, imported: Callable[[str], tuple[ImportedModel, Any]]
) -> None:
    """The written-back module (norms folded into weights and biases) computes what the renormalised
    module computes in eval mode, also with the weights quantised per output channel (``hold_bits`` on
    both: the quantisers commute with a per-channel scale, negative ones included)."""
    from tvm_mcu.train.bits import hold_bits, weight_keys

    model, mod = imported(name)
    module, _ = _renormalised(mod, model)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for norm in module.norms.values():
            c = norm.gain.shape[0]
            norm.gain.mul_(torch.from_numpy(rng.uniform(-2.0, 2.0, c).astype(np.float32)))
            norm.bias.add_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
            norm.mean.add_(0.1)
            norm.var.mul_(1.5)
    new = write_back(mod, module)
    folded = RelaxModule(new)
    if bits is not None:
        chosen = {k: bits for k in weight_keys(module)}
        hold_bits(module, chosen)
        hold_bits(folded, chosen)
    module.eval()
    xs = _inputs(model)
    with torch.no_grad():
        for a, b in zip(_outputs(folded, xs), _outputs(module, xs), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    assert not all(np.array_equal(a, b) for a, b in zip(_constants(new), _constants(mod), strict=True))
    if bits is not None:
        # Settled, the quantised weights are the parameters: written back, they need no quantiser.
        with torch.no_grad():
            expected = _outputs(module, xs)
        module.settle_weights()
        assert not module.weight_taps
        settled = RelaxModule(write_back(mod, module))
        with torch.no_grad():
            for a, b in zip(_outputs(settled, xs), expected, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_write_back_refuses_a_module_of_another_structure(
    imported: Callable[[str], tuple[ImportedModel, Any]],
) -> None:
    _, demo = imported("demo")
    _, other = imported("mobilenet_block")
    with pytest.raises(BadOptionError, match="another structure"):
        write_back(other, RelaxModule(demo))


# ---------------------------------------------------------------------------------------- refusals
def test_an_op_the_registry_refuses_is_refused_with_its_reason() -> None:
    mod = _relax_module(
        lambda x: relax.op.take(x, relax.const(np.array([0, 2], np.int64)), axis=1), (1, 3, 4, 4)
    )
    with pytest.raises(
        UnsupportedOpError,
        match=r"relax\.take \(binding 'lv12'\) has no torch rule: gather \(take\) has no training rule",
    ):
        RelaxModule(mod)


_W_HWIO = relax.const(np.zeros((3, 3, 3, 4), np.float32))
# One minimal case per reason a rule declines: (make, input shape, input dtype, message).
REFUSALS: dict[str, tuple[Callable[[Any], Any], tuple[int, ...], str, str]] = {
    "conv2d_nhwc": (
        lambda x: relax.op.nn.conv2d(x, _W_HWIO, data_layout="NHWC", kernel_layout="HWIO"),
        (1, 6, 6, 3),
        "float32",
        r"relax\.nn\.conv2d \(binding 'lv12'\) has no torch rule for data_layout 'NHWC' \(supported: NCHW\)",
    ),
    "max_pool_nhwc": (
        lambda x: relax.op.nn.max_pool2d(x, (2, 2), layout="NHWC"),
        (1, 6, 6, 3),
        "float32",
        r"relax\.nn\.max_pool2d \(binding 'lv12'\) has no torch rule for layout 'NHWC'",
    ),
    "softmax_over_batch": (
        lambda x: relax.op.nn.softmax(x, axis=0),
        (1, 10),
        "float32",
        r"relax\.nn\.softmax \(binding 'lv12'\) has no torch rule for softmax over axis 0",
    ),
    "mean_over_everything": (lambda x: relax.op.mean(x), (1, 10), "float32", r"relax\.mean .* for axis None"),
    "concat_over_batch": (
        lambda x: relax.op.concat([x, x], axis=0),
        (1, 10),
        "float32",
        r"relax\.concat .* for concat over axis 0",
    ),
    "reshape_of_batch": (
        lambda x: relax.op.reshape(x, (3, 16)),
        (1, 3, 4, 4),
        "float32",
        r"relax\.reshape \(binding 'lv12'\) has no torch rule for target shape \(3, 16\)",
    ),
    "permute_of_batch": (
        lambda x: relax.op.permute_dims(x, [1, 0, 2, 3]),
        (1, 3, 4, 4),
        "float32",
        r"relax\.permute_dims .* for axes \(1, 0, 2, 3\)",
    ),
    "pad_reflect_channels": (
        lambda x: relax.op.nn.pad(x, (0, 0, 1, 1, 0, 0, 0, 0), "reflect"),
        (1, 3, 4, 4),
        "float32",
        r"relax\.nn\.pad .* for pad_mode='reflect' on the channel axis",
    ),
    "pad_of_batch": (
        lambda x: relax.op.nn.pad(x, (1, 0, 0, 0, 0, 0, 0, 0), "constant", 0.0),
        (1, 3, 4, 4),
        "float32",
        r"relax\.nn\.pad .* \(pads the batch axis\)",
    ),
    "int8_input": (relax.op.nn.relu, (1, 3, 4, 4), "int8", r"input 'x' has no torch rule for a int8 tensor"),
    "float16_matmul": (
        lambda x: relax.op.matmul(x, relax.const(np.zeros((4, 2), np.float16)), out_dtype="float16"),
        (1, 4),
        "float16",
        r"float16",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_attribute_without_rule_is_refused(case: str) -> None:
    make, shape, dtype, message = REFUSALS[case]
    mod = _relax_module(make, shape, dtype)
    with pytest.raises(UnsupportedOpError, match=message):
        RelaxModule(mod)


def test_attribute_unknown_to_the_rule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that does not declare an attribute (as after a TVM upgrade adds one) refuses the call."""
    rule = torch_rules.RULES["relax.nn.leakyrelu"]
    monkeypatch.setitem(torch_rules.RULES, "relax.nn.leakyrelu", torch_rules.Rule(rule.fn, frozenset()))
    mod = _relax_module(lambda x: relax.op.nn.leakyrelu(x, 0.2), (1, 3, 4, 4))
    with pytest.raises(UnsupportedOpError, match=r"relax\.nn\.leakyrelu .* for the attributes \['alpha'\]"):
        RelaxModule(mod)


def test_forward_checks_its_inputs(imported: Callable[[str], tuple[ImportedModel, Any]]) -> None:
    _, mod = imported("demo")
    module = RelaxModule(mod)
    with pytest.raises(BadOptionError, match=r"input 0 has shape \(2, 1, 27, 28\)"):
        module(torch.zeros(2, 1, 27, 28))
    with pytest.raises(BadOptionError, match="takes 1 inputs, got 2"):
        module(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28))


def test_missing_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BadOptionError, match=r"training needs PyTorch: pip install -e '\.\[train\]'"):
        require_torch()


# ---------------------------------------------------------------------------------------- taps
def _binding(module: RelaxModule, name: str) -> int:
    return module.binding_names().index(name)


def _params_of(module: RelaxModule, op: str) -> list[torch.nn.Parameter]:
    """The parameters that are arguments of ``op`` calls, in binding order."""
    return [p for n, p in module.named_parameters() if module.binding_ops()[module.param_site(n)[0]] == op]


def test_zero_gate_tap_leaves_only_the_bias(imported: Callable[[str], tuple[ImportedModel, Any]]) -> None:
    """demo: gating the last ReLU (lv13) to zero makes every logit the classifier's bias."""
    model, mod = imported("demo")
    plain = RelaxModule(mod)
    index = _binding(plain, "lv13")
    assert plain.binding_ops()[index] == "relax.nn.relu"
    gated = RelaxModule(mod, taps={index: lambda t: t * torch.zeros(1, t.shape[1], 1, 1)})
    bias = _params_of(gated, "relax.add")[-1]
    with torch.no_grad():
        (logits,) = _outputs(gated, _inputs(model))
        (reference,) = _outputs(plain, _inputs(model))
    torch.testing.assert_close(logits, bias.detach().expand(BATCH, -1), rtol=0, atol=0)
    assert not torch.allclose(reference, logits)


def test_channel_gate_equals_zeroing_the_channels_weights(
    imported: Callable[[str], tuple[ImportedModel, Any]],
) -> None:
    """demo: lv13 -> mean -> reshape -> matmul, so gating channel c off equals zeroing row c of the weight."""
    model, mod = imported("demo")
    gate = torch.ones(1, 32, 1, 1)
    gate[0, 5] = 0.0
    plain = RelaxModule(mod)
    gated = RelaxModule(mod, taps={_binding(plain, "lv13"): lambda t: t * gate})
    (weight,) = _params_of(plain, "relax.matmul")
    with torch.no_grad():
        weight[5].zero_()
        torch.testing.assert_close(_outputs(gated, _inputs(model))[0], _outputs(plain, _inputs(model))[0])


def test_tap_at_a_missing_binding_is_refused(imported: Callable[[str], tuple[ImportedModel, Any]]) -> None:
    _, mod = imported("demo")
    with pytest.raises(BadOptionError, match=r"taps at binding indices \[99\]; main has bindings 0\.\.14"):
        RelaxModule(mod, taps={99: lambda t: t})


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def fashion_2000() -> Any:
    return load_dataset("fashion-mnist", (1, 1, 28, 28), limit=2000)


def _demo_with_blank_head(mod: Any) -> RelaxModule:
    """The demo model with its classifier weight zeroed: a clear loss for one epoch to bring down."""
    module = RelaxModule(mod)
    (weight,) = _params_of(module, "relax.matmul")
    with torch.no_grad():
        weight.zero_()
    return module


def _loss(module: RelaxModule, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(_outputs(module, [x])[0], torch.from_numpy(y)))


def test_training_lowers_the_loss_and_is_deterministic(
    imported: Callable[[str], tuple[ImportedModel, Any]], fashion_2000: Any
) -> None:
    _, mod = imported("demo")
    data = fashion_2000
    runs = []
    for _ in range(2):
        module = _demo_with_blank_head(mod)
        before = _loss(module, data.x_train, data.y_train)
        log = train(module, data, epochs=1, batch_size=64, seed=0, progress=False, cosine=False)
        runs.append((log, [p.detach().clone() for p in module.parameters()]))
        assert _loss(module, data.x_train, data.y_train) < 0.8 * before
    (log_a, params_a), (log_b, params_b) = runs
    assert log_a.loss == log_b.loss and log_a.samples_per_epoch == 2000 and len(log_a.seconds) == 1
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))


def test_extra_loss_and_on_step_hooks(
    imported: Callable[[str], tuple[ImportedModel, Any]], fashion_2000: Any
) -> None:
    """A constant extra loss adds exactly itself to the logged loss and changes no gradient."""
    _, mod = imported("demo")
    data = attrs.evolve(fashion_2000, x_train=fashion_2000.x_train[:200], y_train=fashion_2000.y_train[:200])
    plain, hooked = RelaxModule(mod), RelaxModule(mod)
    steps: list[tuple[int, int]] = []
    base = train(plain, data, epochs=2, batch_size=64, seed=1, progress=False)
    log = train(
        hooked,
        data,
        epochs=2,
        batch_size=64,
        seed=1,
        extra_loss=lambda: torch.tensor(0.5),
        on_step=lambda epoch, step: steps.append((epoch, step)),
        progress=False,
    )
    assert steps == [(e, s) for e in range(2) for s in range(4)]
    np.testing.assert_allclose(log.loss, np.array(base.loss) + 0.5, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), hooked.parameters(), strict=True))


def test_progress_goes_to_stderr(
    imported: Callable[[str], tuple[ImportedModel, Any]],
    fashion_2000: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, mod = imported("demo")
    data = attrs.evolve(fashion_2000, x_train=fashion_2000.x_train[:64], y_train=fashion_2000.y_train[:64])
    train(RelaxModule(mod), data, epochs=2, batch_size=32, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [line.split("  ")[0] for line in captured.err.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert "images/s" in captured.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(
    imported: Callable[[str], tuple[ImportedModel, Any]], fashion_2000: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, mod = imported("demo")
    data = attrs.evolve(fashion_2000, x_train=fashion_2000.x_train[:64], y_train=fashion_2000.y_train[:64])
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(RelaxModule(mod), data, epochs=1, batch_size=32, progress=True)
    frames = terminal.getvalue().split("\r")
    assert frames[1].startswith("epoch 1/1 [" + "#" * 15 + "." * 15 + "] 1/2 loss ")
    assert frames[2].startswith("epoch 1/1 [" + "#" * 30 + "] 2/2 loss ")
    assert frames[3].startswith("epoch 1/1  loss") and frames[3].endswith("\n")


def test_evaluate_top1(imported: Callable[[str], tuple[ImportedModel, Any]], fashion_2000: Any) -> None:
    """The shipped demo model scores about 0.90 on Fashion-MNIST (model_card.json); a blank head 0.1."""
    _, mod = imported("demo")
    x, y = fashion_2000.x_test[:1000], fashion_2000.y_test[:1000]
    assert evaluate(RelaxModule(mod), x, y, batch_size=300) > 0.85
    assert evaluate(_demo_with_blank_head(mod), x, y) < 0.2
    with pytest.raises(BadOptionError, match="as many labels as samples"):
        evaluate(RelaxModule(mod), x, y[:10])


def test_distillation_follows_the_teacher_against_the_labels(
    imported: Callable[[str], tuple[ImportedModel, Any]], fashion_2000: Any
) -> None:
    """Labels shuffled, teacher logits from the trained demo: only distillation can teach the student
    the teacher's predictions."""
    _, mod = imported("demo")
    teacher = predict(RelaxModule(mod), fashion_2000.x_train)
    shuffled = attrs.evolve(fashion_2000, y_train=np.random.default_rng(0).permutation(fashion_2000.y_train))
    agree = []
    for logits in (None, teacher):
        student = _demo_with_blank_head(mod)
        train(student, shuffled, epochs=2, batch_size=64, lr=1e-2, progress=False, teacher=logits)
        agree.append(
            float(
                np.mean(
                    predict(student, fashion_2000.x_test).argmax(1)
                    == np.asarray(predict(RelaxModule(mod), fashion_2000.x_test).argmax(1))
                )
            )
        )
    assert agree[1] > 0.7 and agree[0] < 0.5, agree
    assert float(distill_loss(torch.from_numpy(teacher), torch.from_numpy(teacher))) == pytest.approx(
        0, abs=1e-6
    )
    with pytest.raises(BadOptionError, match="teacher logits for 3 samples"):
        train(RelaxModule(mod), fashion_2000, epochs=1, progress=False, teacher=teacher[:3])


def test_intermediates_are_released_after_their_last_use(
    imported: Callable[[str], tuple[ImportedModel, Any]],
) -> None:
    """The interpreter drops each intermediate once its last reader has run: holding them all made a
    batch of 512 through a MobileNetV2-style model take over 20 GB."""
    import weakref

    model, mod = imported("resnet_block")
    refs: list[weakref.ref] = []

    def keep_ref(value: torch.Tensor) -> torch.Tensor:
        refs.append(weakref.ref(value))
        return value

    module = RelaxModule(mod)
    module.taps = {i: keep_ref for i in range(len(module.binding_ops()))}
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((4, *model.inputs[0].shape[1:]), np.float32)
    )
    with torch.no_grad():
        out = module(x)
    alive = [r() for r in refs if r() is not None]
    assert len(refs) == len(module.binding_ops()) > 3
    assert all(t is out or (isinstance(out, tuple) and any(t is o for o in out)) for t in alive), len(alive)

"""Weight bitwidth while training: the forward pass sees exactly the weights the quantiser stores; the
gates choose int8 or int4 per layer with straight-through gradients."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")

import torch  # noqa: E402

from tests.prune_helpers import inference_model  # noqa: E402
from tvm_mcu import pipeline, resource_model  # noqa: E402
from tvm_mcu.analysis.channels import channel_groups  # noqa: E402
from tvm_mcu.errors import BadOptionError  # noqa: E402
from tvm_mcu.frontend import load_model  # noqa: E402
from tvm_mcu.passes.relax.prune_channels import PruneChannels  # noqa: E402
from tvm_mcu.train.bits import (  # noqa: E402
    INIT_THETA,
    INIT_THETA2,
    BitGates,
    fake_quant,
    hold_bits,
    quantisation_error,
    quantized,
    sensitivity_prior,
    weight_keys,
)
from tvm_mcu.train.bridge import RelaxModule, write_back  # noqa: E402
from tvm_mcu.train.data import load_dataset  # noqa: E402
from tvm_mcu.train.diffprune import INIT_THETA as DIFFPRUNE_INIT_THETA  # noqa: E402
from tvm_mcu.train.diffprune import diffprune  # noqa: E402

DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))


@pytest.fixture(scope="module")
def demo() -> tuple:
    imported = load_model(DEMO)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    return imported, mod


def _dequantized_weights(path: Path) -> list[np.ndarray]:
    """The weights a QDQ model stores, dequantised: every DequantizeLinear of an initialiser with 2+ dims."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or inits[node.input[0]].ndim < 2:
            continue
        q = inits[node.input[0]].astype(np.float64)
        scale = inits[node.input[1]].astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        out.append((q * scale.reshape(shape)).astype(np.float32))
    return out


@pytest.mark.parametrize("bits", [8, 4, 2, 48])
def test_fake_quant_is_what_the_quantiser_stores(demo: tuple, tmp_path: Path, bits: int) -> None:
    imported, mod = demo
    module = RelaxModule(mod)
    keys = weight_keys(module)
    assert len(keys) >= 3  # the demo CNN's convolutions and its dense layer
    # 48: the first and last layers int4, the others int8 (per-layer widths as the joint search gives).
    order = sorted(keys)
    width = {k: bits if bits != 48 else (4 if k in (order[0], order[-1]) else 8) for k in order}
    params = dict(module.named_parameters())
    trained = [
        quantized(params[f"b{b}_{a}"], width[(b, a)], axis).detach().numpy()
        for (b, a), (_, axis) in keys.items()
    ]
    path = resource_model.deployable(mod, imported, tmp_path, int8=True, tag="q", bits=width)
    stored = _dequantized_weights(path)
    kinds = {i.data_type for i in onnx.load(str(path)).graph.initializer if i.name.endswith("quantized")}
    assert (onnx.TensorProto.INT4 in kinds) == (bits in (4, 48))
    assert (onnx.TensorProto.INT2 in kinds) == (bits == 2)
    # Each layer's int8 weights as trained are bit for bit the ones the quantiser writes (a dense
    # layer's stored transposed, as Gemm's B).
    assert len(stored) == len(trained)
    unmatched = list(stored)
    for t in trained:
        hit = [
            i
            for i, s in enumerate(unmatched)
            if any(s.shape == v.shape and np.array_equal(s, v) for v in (t, t.T))
        ]
        assert hit, f"no stored weight equals the trained int8 weights of shape {t.shape}"
        unmatched.pop(hit[0])


def test_fake_quant_passes_gradients_straight_through() -> None:
    w = torch.tensor([[0.31, -0.7, 0.05], [0.0, 0.0, 0.0]], requires_grad=True)
    q = fake_quant(w, 4, 0)
    # Row 0: scale 0.7 / 7 = 0.1, so 0.31 -> 3 steps, 0.05 -> 0 (half to even); the zero row stays 0.
    assert torch.allclose(q.detach(), torch.tensor([[0.3, -0.7, 0.0], [0.0, 0.0, 0.0]]))
    (q * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.arange(6.0).reshape(2, 3))
    # int4 loses more than int8, and a layer's error is a fraction of its norm.
    x = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    assert 0 < quantisation_error(x, 8, 0) < quantisation_error(x, 4, 0) < 0.2


def test_the_sensitivity_prior_starts_the_layers_int4_disturbs_least_lowest(demo: tuple) -> None:
    """The joint search's int8 gates start by how much int4 disturbs each layer's weights: the most
    disturbed at INIT_THETA (offset 0), the others lower in proportion, the least PRIOR_SPREAD * (1 -
    its error / the most's) below."""
    from tvm_mcu.train.bits import PRIOR_SPREAD

    _, mod = demo
    module = RelaxModule(mod)
    keys = weight_keys(module)
    params = {module.param_site(n): p.detach().numpy() for n, p in module.named_parameters()}
    errors = {k: quantisation_error(params[k], 4, keys[k][1]) for k in keys}
    prior = sensitivity_prior(module, keys)
    top = max(errors, key=lambda k: errors[k])
    assert prior[top] == 0.0 and len(set(errors.values())) > 1
    for k in keys:
        assert prior[k] == pytest.approx(-PRIOR_SPREAD * (1 - errors[k] / errors[top]))
        assert -PRIOR_SPREAD <= prior[k] <= 0.0
    # Gates built with it start there; the ranking by error is the ranking of the gates.
    gates = BitGates(keys, prior)
    order = sorted(keys)
    by_gate = sorted(order, key=lambda k: float(gates.theta.detach()[order.index(k)]))
    assert by_gate == sorted(order, key=lambda k: errors[k])


def test_gates_choose_int8_or_int4_and_price_the_bytes(demo: tuple) -> None:
    _, mod = demo
    module = RelaxModule(mod)
    keys = weight_keys(module)
    gates = BitGates(keys)
    gates.attach(module)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32))
    gates.begin_step()
    int8_out = module(x).detach()
    with torch.no_grad():
        gates.theta.fill_(-0.5)  # every layer int4
    gates.begin_step()
    int4_out = module(x)
    assert gates.bits() == {k: 4 for k in keys}
    # The forward pass is the network with every weight at int4, as hold_bits computes it.
    fixed = RelaxModule(mod)
    hold_bits(fixed, {k: 4 for k in keys})
    assert torch.equal(int4_out.detach(), fixed(x).detach())
    assert not torch.equal(int4_out.detach(), int8_out)
    # Gradients reach every gate (its salience) and, through the bytes, the budget.
    full = {k: 1000.0 for k in keys}
    loss = int4_out.square().mean() + gates.weight_bytes(full) / 1e4
    loss.backward()
    assert gates.theta.grad is not None and bool((gates.theta.grad != 0).all())
    assert float(gates.weight_bytes(full).detach()) == pytest.approx(500.0 * len(keys))


def test_gates_start_int8_with_int2_as_near_as_a_channel(demo: tuple) -> None:
    """Every weight starts int8 (its first gate at a layer's strongest channel); the second gate starts
    where DiffPrune's channel gates start (INIT_THETA2 = its INIT_THETA), not at the first gate's height:
    so started, the joint search chose int2 for seven of MobileNetV2-style's 18 layers at 1/4 (0.8735)
    where at 1.5 it kept them int4 (0.8458, below int2 width's 0.8713)."""
    _, mod = demo
    keys = weight_keys(RelaxModule(mod))
    gates = BitGates(keys, two_bit=frozenset(keys))
    gates.begin_step()
    assert set(gates.bits().values()) == {8}
    assert torch.equal(gates.theta2.detach(), torch.full((len(keys),), INIT_THETA2))
    assert INIT_THETA2 == DIFFPRUNE_INIT_THETA < INIT_THETA


def test_second_gates_choose_int2_where_the_kernels_read_it_and_price_a_quarter(demo: tuple) -> None:
    """The weights of ``two_bit`` go int2 when both gates are off (ternary, as hold_bits quantises
    them), the others stay int4; the bytes are a quarter and a half; the second gates get gradients
    only where int2 is possible; int2 is refused for a weight no kernel reads four per byte."""
    _, mod = demo
    module = RelaxModule(mod)
    keys = weight_keys(module)
    order = sorted(keys)
    two = frozenset(order[1:3])  # the middle convolutions (the crumb kernels read them)
    gates = BitGates(keys, two_bit=two)
    gates.attach(module)
    with torch.no_grad():
        gates.theta.fill_(-0.5)
        gates.theta2.fill_(-0.5)
    gates.begin_step()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32))
    out = module(x)
    want = {k: 2 if k in two else 4 for k in keys}
    assert gates.bits() == want
    fixed = RelaxModule(mod)
    hold_bits(fixed, want)
    assert torch.equal(out.detach(), fixed(x).detach())
    full = {k: 1000.0 for k in keys}
    assert float(gates.weight_bytes(full).detach()) == pytest.approx(250.0 * 2 + 500.0 * (len(keys) - 2))
    (out.square().mean() + gates.weight_bytes(full) / 1e4).backward()
    assert gates.theta2.grad is not None
    grads = {k: float(gates.theta2.grad[i]) for i, k in enumerate(gates.keys)}
    assert all((g != 0) == (k in two) for k, g in grads.items()), grads
    with pytest.raises(BadOptionError, match="cannot be int2"):
        BitGates(keys, two_bit=two).fix({order[0]: 2})


@pytest.mark.parametrize("name", ["resnet_block", "mobilenet_block", "conv_flatten_fc", "inception_concat"])
def test_site_weights_count_the_elements_left_after_pruning(name: str, tmp_path: Path) -> None:
    _, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    groups = tuple(g.gid for g in plan.prunable if g.size >= 2)
    module = RelaxModule(mod)
    params = dict(module.named_parameters())
    shapes = {k: tuple(params[f"b{k[0]}_{k[1]}"].shape) for k in weight_keys(module)}
    products = resource_model.site_weights(plan, groups, shapes)
    assert products and groups
    full = np.array([g.size for g in plan.prunable if g.size >= 2], float)
    assert all(p(np.zeros(len(groups))) == np.prod(shapes[k]) for k, p in products.items())
    rng = np.random.default_rng(3)
    for _ in range(3):
        keep = {
            g.gid: tuple(sorted(rng.choice(g.size, int(rng.integers(1, g.size + 1)), replace=False)))
            for g in plan.prunable
            if g.size >= 2
        }
        k = np.array([len(keep[gid]) for gid in groups], float)
        pruned = dict(RelaxModule(PruneChannels(keep=keep)(mod)).named_parameters())
        for key, p in products.items():
            assert p(k - full) == pruned[f"b{key[0]}_{key[1]}"].numel(), (name, key)


def test_joint_search_meets_a_flash_budget_with_bits_and_channels(demo: tuple, tmp_path: Path) -> None:
    imported, mod = demo
    plan = channel_groups(mod)
    model = resource_model.build(mod, plan, imported, "mps2-an386", workdir=tmp_path / "rm")
    module = RelaxModule(mod)
    keys = weight_keys(module)
    params = dict(module.named_parameters())
    shapes = {k: tuple(params[f"b{k[0]}_{k[1]}"].shape) for k in keys}
    # Started below the channels' gates (0.5 instead of 1.5): the budget flips bits before channels.
    bits = BitGates(keys, init={k: -1.0 for k in keys})
    joint = resource_model.with_bits(
        model, resource_model.site_weights(plan, model.groups, shapes), frozenset(keys), bits
    )
    full = model.figures(model.full)
    # Half the weights' bytes less than the full model: int4 everywhere alone would reach it.
    weights = sum(float(np.prod(s)) for s in shapes.values())
    budget = {"flash": full.flash - 0.4 * weights}
    ds = load_dataset("fashion-mnist", imported.inputs[0].shape, limit=4000)
    gates, log = diffprune(module, plan, joint, ds, budget, epochs=1, progress=False, bits=bits)
    k = model.counts(log.keep)
    assert joint.figures(k).flash <= budget["flash"]
    chosen = bits.bits()
    assert 4 in chosen.values()  # some layers int4 ...
    assert model.figures(k).flash > budget["flash"]  # ... without which the kept channels miss it
    # The network trained is the pruned one at those bits: the cut module quantised the same way
    # computes the same outputs.
    x = torch.from_numpy(ds.x_test[:16])
    with torch.no_grad():
        want = module(x)
    module.taps, module.weight_taps = {}, {}
    cut = RelaxModule(PruneChannels(keep=log.keep)(write_back(mod, module)))
    hold_bits(cut, chosen)
    with torch.no_grad():
        got = cut(x)
    assert torch.allclose(got, want, atol=1e-5)

"""Weight bitwidth while training (UDC's bitwidth axis): the deployed weights' quantisation in the forward
pass, and gates per layer choosing int8, int4 or int2.

The quantiser (``tvm-mcu quantize``) stores a convolution's or dense layer's weights per output channel,
symmetric: ``scale = max|w| / qmax``, ``q = round(w / scale)`` (half to even) in ``[-qmax, qmax]``, with
``qmax = 2 ** (bits - 1) - 1`` (127 for int8, 7 for int4, 1 for int2: ternary). :func:`fake_quant` computes
exactly those dequantised values (float64 arithmetic, float32 scale, as the quantiser does), so the network
trained is the network deployed, and passes the gradient straight through to the float weights (Bengio et
al.'s straight-through estimator; quantisation-aware training).

:class:`BitGates` gives every layer a gate ``theta``: ``theta > 0`` keeps its weights int8, otherwise
int4. Like DiffPrune's channel gates (:mod:`tvm_mcu.train.diffprune`) the forward pass takes the hard
choice and the backward pass goes through ``sigmoid(theta)``: the weight tap is ``q4 + h * (q8 - q4)``
with ``h`` the hard gate, so a gate's gradient is the task loss's change between the layer's int8 and
int4 weights (its salience), and a flash budget loss prices its bytes (``weight_bytes``: half for int4).
A second gate ``theta2`` per layer chooses, below int8, between int4 and int2 (``theta2 <= 0``), the same
way (tap ``q2 + h2 * (q4 - q2)`` in place of ``q4``; a quarter of the bytes), for the layers whose kernels
read int2 four per byte (``two_bit``: not depthwise ones). ``prune --weights int2`` fixes both gates off
there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tvm_mcu.errors import BadOptionError
from tvm_mcu.train import require_torch

require_torch()

import torch  # noqa: E402

from tvm_mcu.train.bridge import RelaxModule  # noqa: E402

BITS = (2, 4, 8)
# Gates start here: int8 (the cheaper int4 is what the budget loss pushes towards), as high as a
# layer's strongest channel gate starts (DiffPrune's INIT_THETA + PRIOR_WEIGHT): ranked against the
# channels on one scale, a layer's precision starts as its strongest channel. At 0.5, below almost
# every channel, the bits went first: Fashion-MNIST CNN at 1/8 of the stored weights, both middle
# convolutions int4 and 0.9042 int8-activation accuracy; at 1.5, the same widths with more channels
# and 0.9074 (int8 DiffPrune alone 0.9065; one run each, test-set figures).
INIT_THETA = 1.5
# Where the second gate (int4 while above 0, else int2) starts: lower than the int8 gate, as the
# channels' gates start (DiffPrune's INIT_THETA). MobileNetV2-style model at 1/4 of its stored weights
# (4 epochs on 15,000 images, int8 accuracy): at 1.5 the search kept most layers int4 (0.8458, below
# int2 width's 0.8713); at 0.5 it put seven int2 (bits 8,2,4,2,4,4,4,4,4,4,4,4,2,2,4,2,2,8) and
# reached 0.8735. (The 1.5 it replaced was chosen while int2 layers were deployed with the free
# weights, not the ones trained: ``RelaxModule.settle_weights``.)
INIT_THETA2 = 0.5
# How far below INIT_THETA the int8 gate of the layer int4 disturbs least starts (``sensitivity_prior``):
# DiffPrune's channel gates start between INIT_THETA - 1 and INIT_THETA (its INIT_THETA and PRIOR_WEIGHT).
PRIOR_SPREAD = 1.0
# The ops whose constant weights are stored at a bitwidth, and the argument holding them.
WEIGHT_OPS = {"relax.nn.conv2d": 1, "relax.matmul": 1}

Key = tuple[int, int]
Tap = Callable[[torch.Tensor], torch.Tensor]
# A weight's input-channel axis and its channels' hard keep mask of the step (``BitGates.attach``).
InputMask = tuple[int, Callable[[], torch.Tensor]]


def qmax(bits: int) -> int:
    """The largest stored magnitude of a symmetric ``bits``-bit weight: 127 for int8, 7 for int4, 1 for
    int2 (ternary, as ``ptq.common.INT2_QMAX``)."""
    if bits not in BITS:
        raise BadOptionError(f"weights are int8, int4 or int2, got {bits} bits")
    return 2 ** (bits - 1) - 1


def output_axis(op: str, ndim: int) -> int:
    """The output-channel axis of a weight: 0 of a convolution's OIHW, the last of matmul's (in, out)."""
    return 0 if op == "relax.nn.conv2d" else ndim - 1


def channel_scales(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """``max|w| / qmax`` per slice along ``axis`` as float32 (1 / qmax for an all-zero slice), shaped to
    broadcast against ``w``: the quantiser's scales (``ptq.write.weight_scales``)."""
    if bits == 2:  # ternary: the quantiser's own rule (ptq.write.weight_scales), computed by it
        from tvm_mcu.ptq.write import weight_scales

        scales = weight_scales(w.detach().cpu().numpy(), axis, qmax(bits))
        shape = [1] * w.dim()
        shape[axis] = -1
        return torch.from_numpy(scales).reshape(shape)
    a = w.detach().abs().to(torch.float64)
    dims = [d for d in range(w.dim()) if d != axis]
    amax = a.amax(dim=dims, keepdim=True) if dims else a
    return (torch.where(amax > 0, amax, torch.ones_like(amax)) / qmax(bits)).to(torch.float32)


def quantized(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """The dequantised ``bits``-bit weights the quantiser stores for ``w`` (no gradient)."""
    scale = channel_scales(w, bits, axis).to(torch.float64)
    m = qmax(bits)
    q = torch.clamp(torch.round(w.detach().to(torch.float64) / scale), -m, m)
    return (q * scale).to(w.dtype)


def fake_quant(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """``w`` as deployed at ``bits`` bits forward, the identity backward (straight-through)."""
    return w + (quantized(w, bits, axis) - w).detach()


def weight_keys(module: RelaxModule) -> dict[Key, tuple[str, int]]:
    """The constant weights of the module's convolutions and matmuls: (binding, argument) -> (op, the
    output-channel axis)."""
    ops = module.binding_ops()
    out: dict[Key, tuple[str, int]] = {}
    for name, p in module.constants():
        binding, arg = module.param_site(name)
        op = ops[binding]
        if WEIGHT_OPS.get(op) == arg and p.dim() >= 2:
            out[(binding, arg)] = (op, output_axis(op, p.dim()))
    return out


def _name(key: Key) -> str:
    return f"b{key[0]}_{key[1]}"


def _compose(outer: Callable[[torch.Tensor], torch.Tensor], inner: Tap | None) -> Tap:
    return outer if inner is None else (lambda w: outer(inner(w)))


def hold_bits(module: RelaxModule, bits: Mapping[Key, int]) -> None:
    """Train ``module`` with the weights at ``bits`` quantised as deployed (after any tap already on
    them, e.g. filterlet masks): quantisation-aware fine-tuning at a fixed bitwidth per layer."""
    sites = weight_keys(module)
    for key, b in sorted(bits.items()):
        if key not in sites:
            raise BadOptionError(f"binding {key[0]} has no convolution or matmul weight to quantise")
        name = _name(key)
        module.weight_taps[name] = _compose(_fixed(b, sites[key][1]), module.weight_taps.get(name))


def _fixed(bits: int, axis: int) -> Tap:
    def tap(w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, bits, axis)

    return tap


class BitGates(torch.nn.Module):
    """A gate per weight of ``keys``: int8 while ``theta > 0``, else int4, or int2 for the weights of
    ``two_bit`` (those the kernels read four per byte) whose second gate ``theta2`` is not above 0
    (module docstring)."""

    def __init__(
        self,
        keys: Mapping[Key, tuple[str, int]],
        init: Mapping[Key, float] | None = None,
        two_bit: frozenset[Key] = frozenset(),
    ) -> None:
        super().__init__()
        self.keys = sorted(keys)
        self.axis = {k: keys[k][1] for k in self.keys}
        start = [INIT_THETA + float((init or {}).get(k, 0.0)) for k in self.keys]
        self.theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
        # The second gate: int4 while theta2 > 0, else int2; only the weights of two_bit may go int2.
        self.theta2 = torch.nn.Parameter(torch.full((len(self.keys),), INIT_THETA2, dtype=torch.float32))
        self.two_bit = frozenset(k for k in two_bit if k in keys)
        self._may2 = torch.tensor([k in self.two_bit for k in self.keys], dtype=torch.float32)
        self._h: torch.Tensor | None = None
        self._h2: torch.Tensor | None = None
        self.fixed = False  # the widths are given (``fix``): no gradient, no flips by the budget

    def fix(self, bits: Mapping[Key, int]) -> None:
        """Hold every weight at ``bits`` (8 where not given; 4, or 2 for a weight of ``two_bit``): the
        network is trained as quantised at those widths and the search leaves them."""
        with torch.no_grad():
            for i, k in enumerate(self.keys):
                b = bits.get(k, 8)
                qmax(b)  # refuses a width the quantiser cannot store
                if b == 2 and k not in self.two_bit:
                    raise BadOptionError(f"weight {k} cannot be int2: no kernel reads it four per byte")
                self.theta[i] = INIT_THETA if b == 8 else -INIT_THETA
                self.theta2[i] = -INIT_THETA if b == 2 else INIT_THETA
        self.theta.requires_grad_(False)
        self.theta2.requires_grad_(False)
        self.fixed = True

    def hard(self) -> torch.Tensor:
        """1 for the weights kept int8, 0 for int4 or int2, with sigmoid gradients (straight-through)."""
        soft = torch.sigmoid(self.theta)
        return (self.theta > 0).to(soft.dtype) + soft - soft.detach()

    def hard2(self) -> torch.Tensor:
        """1 where the low width is int4, 0 where int2 (only weights of ``two_bit``), straight-through."""
        soft = torch.sigmoid(self.theta2)
        h2 = (self.theta2 > 0).to(soft.dtype) + soft - soft.detach()
        return self._may2 * h2 + (1 - self._may2)

    def begin_step(self) -> torch.Tensor:
        self._h = self.hard()
        self._h2 = self.hard2()
        return self._h

    def int8(self, grad: bool) -> Any:
        """1 per weight kept int8, 0 per int4 or int2: the straight-through tensor of this step
        (``grad``), or numpy (``resource_model.Bitwidths``)."""
        if grad:
            return self._h if self._h is not None else self.hard()
        return (self.theta.detach() > 0).numpy().astype(float)

    def low_part(self, grad: bool) -> Any:
        """Per weight, the part of its int8 bytes its low width stores: 1/2 for int4, 1/4 for int2 (a
        tensor of this step with ``grad``, else numpy)."""
        if grad:
            h2 = self._h2 if self._h2 is not None else self.hard2()
            return 0.25 + 0.25 * h2
        on4 = (self.theta2.detach() > 0).numpy() | ~self._may2.numpy().astype(bool)
        return 0.25 + 0.25 * on4.astype(float)

    def bits(self) -> dict[Key, int]:
        """The bitwidth each weight has now."""
        on = (self.theta.detach() > 0).numpy()
        low = self.low_part(grad=False)
        return {k: 8 if bool(on[i]) else (4 if low[i] > 0.25 else 2) for i, k in enumerate(self.keys)}

    def parameters_to_train(self) -> list[torch.nn.Parameter]:
        """The gates' parameters (the second gate's only where a weight may go int2)."""
        return [self.theta, self.theta2] if self.two_bit else [self.theta]

    def freeze(self) -> None:
        self.theta.requires_grad_(False)
        self.theta2.requires_grad_(False)

    def attach(self, module: RelaxModule, kept_inputs: Mapping[Key, InputMask] | None = None) -> None:
        """Put the gated quantisation on ``module``'s weights (after the taps already there).

        ``kept_inputs``: per weight, (axis, a function giving the hard 0/1 mask of its input channels
        this step): channel pruning's gates. A pruned input channel's weights are left out of the
        scales, as they are once the channel is cut (its activations are zero, so nothing else
        changes), so the network trained is the deployed one (int2's mean-magnitude scale counts them
        while they are gated, not once cut: the fine-tuning after the cut trains the deployed one)."""
        for i, key in enumerate(self.keys):
            name = _name(key)
            tap = self._tap(i, self.axis[key], (kept_inputs or {}).get(key), key in self.two_bit)
            module.weight_taps[name] = _compose(tap, module.weight_taps.get(name))

    def _tap(self, i: int, axis: int, kept: InputMask | None, may2: bool) -> Tap:
        def tap(w: torch.Tensor) -> torch.Tensor:
            if kept is not None:
                shape = [1] * w.dim()
                shape[kept[0]] = -1
                w = w * kept[1]().detach().view(shape)
            h = (self._h if self._h is not None else self.hard())[i]
            q8, low = fake_quant(w, 8, axis), fake_quant(w, 4, axis)
            if may2:
                h2 = (self._h2 if self._h2 is not None else self.hard2())[i]
                q2 = fake_quant(w, 2, axis)
                # The second gate's gradient is (q4 - q2) . dL/dw, as the first's below.
                low = q2 + h2 * (low - q2)
            # Both terms carry w's straight-through gradient; the gate's is (q8 - low) . dL/dw.
            return low + h * (q8 - low)

        return tap

    def weight_bytes(self, full_bytes: Mapping[Key, float | torch.Tensor]) -> torch.Tensor:
        """Bytes of the gated weights stored packed: each weight's int8 bytes (a number or a tensor of
        the kept channels' bytes, differentiable) times 1 for int8, 1/2 for int4, 1/4 for int2."""
        h = self._h if self._h is not None else self.hard()
        low = self.low_part(grad=True)
        total = torch.zeros(())
        for i, key in enumerate(self.keys):
            b = full_bytes.get(key)
            if b is None:
                continue
            total = total + b * (low[i] + (1 - low[i]) * h[i])
        return total


def sensitivity_prior(module: RelaxModule, keys: Mapping[Key, tuple[str, int]]) -> dict[Key, float]:
    """Per weight of ``keys``, where its int8 gate starts below ``INIT_THETA``: ``-PRIOR_SPREAD`` times
    how much less int4 disturbs it than the most disturbed weight (:func:`quantisation_error`, relative).

    The gate then starts as high as a layer's strongest channel where int4 hurts most and towards its
    weakest where int4 hurts least, so the budget's first flips go to the layers that quantise well
    rather than waiting for the task loss to move the gates, which it does slowly: on the
    MobileNetV2-style model at 1/2 of its stored weights (2 epochs of gating on 15,000 images), 12 of
    18 layers stayed int8 with every gate starting at ``INIT_THETA``; with the prior 8 of 18 do (int8
    acc of the network found, trained at its widths: 0.8653; int8 width 0.8649, int4 width 0.8727, one
    run each: fine-tuning alone moves this model by about a point). The second gate starts at
    ``INIT_THETA2`` for every layer."""
    errors: dict[Key, float] = {}
    for name, p in module.constants():
        site = module.param_site(name)
        if site in keys:
            errors[site] = quantisation_error(p.detach().cpu().numpy(), 4, keys[site][1])
    top = max(errors.values(), default=0.0)
    return {k: -PRIOR_SPREAD * (1.0 - e / top) if top > 0 else 0.0 for k, e in errors.items()}


def quantisation_error(w: np.ndarray, bits: int, axis: int) -> float:
    """Relative L2 error of ``w`` quantised at ``bits`` bits (a layer's sensitivity prior)."""
    t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    q = quantized(t, bits, axis)
    norm = float(t.norm())
    return float((q - t).norm()) / norm if norm > 0 else 0.0

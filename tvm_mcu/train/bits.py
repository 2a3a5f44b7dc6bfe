"""Weight bitwidth while training (UDC's bitwidth axis): the deployed weights' quantisation in the forward
pass, and one gate per layer choosing int8 or int4.

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
``prune --weights int2`` fixes the gates off with int2 as the low width (a quarter of the bytes).
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
    for name, p in module.named_parameters():
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
    """A gate per weight of ``keys``: int8 while ``theta > 0``, else its low width, int4 unless
    :meth:`fix` gives int2 (module docstring)."""

    def __init__(self, keys: Mapping[Key, tuple[str, int]], init: Mapping[Key, float] | None = None) -> None:
        super().__init__()
        self.keys = sorted(keys)
        self.low: dict[Key, int] = {k: 4 for k in self.keys}  # a gate's width when off
        self.axis = {k: keys[k][1] for k in self.keys}
        start = [INIT_THETA + float((init or {}).get(k, 0.0)) for k in self.keys]
        self.theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
        self._h: torch.Tensor | None = None
        self.fixed = False  # the widths are given (``fix``): no gradient, no flips by the budget

    def fix(self, bits: Mapping[Key, int]) -> None:
        """Hold every weight at ``bits`` (8 where not given; 4 or 2 otherwise): the network is trained as
        quantised at those widths and the search leaves them."""
        with torch.no_grad():
            for i, k in enumerate(self.keys):
                self.theta[i] = INIT_THETA if bits.get(k, 8) == 8 else -INIT_THETA
                if bits.get(k, 8) < 8:
                    qmax(bits[k])  # refuses a width the quantiser cannot store
                    self.low[k] = bits[k]
        self.theta.requires_grad_(False)
        self.fixed = True

    def hard(self) -> torch.Tensor:
        """1 for the weights kept int8, 0 for int4, with sigmoid gradients (straight-through)."""
        soft = torch.sigmoid(self.theta)
        return (self.theta > 0).to(soft.dtype) + soft - soft.detach()

    def begin_step(self) -> torch.Tensor:
        self._h = self.hard()
        return self._h

    def int8(self, grad: bool) -> Any:
        """1 per weight kept int8, 0 per int4: the straight-through tensor of this step (``grad``), or
        numpy (``resource_model.Bitwidths``)."""
        if grad:
            return self._h if self._h is not None else self.hard()
        return (self.theta.detach() > 0).numpy().astype(float)

    def bits(self) -> dict[Key, int]:
        """The bitwidth each weight has now."""
        on = (self.theta.detach() > 0).numpy()
        return {k: 8 if bool(on[i]) else self.low[k] for i, k in enumerate(self.keys)}

    def attach(self, module: RelaxModule, kept_inputs: Mapping[Key, InputMask] | None = None) -> None:
        """Put the gated quantisation on ``module``'s weights (after the taps already there).

        ``kept_inputs``: per weight, (axis, a function giving the hard 0/1 mask of its input channels
        this step): channel pruning's gates. A pruned input channel's weights are left out of the
        scales, as they are once the channel is cut (its activations are zero, so nothing else
        changes), so the network trained is the deployed one."""
        for i, key in enumerate(self.keys):
            name = _name(key)
            tap = self._tap(i, self.axis[key], (kept_inputs or {}).get(key))
            module.weight_taps[name] = _compose(tap, module.weight_taps.get(name))

    def _tap(self, i: int, axis: int, kept: InputMask | None) -> Tap:
        def tap(w: torch.Tensor) -> torch.Tensor:
            if kept is not None:
                shape = [1] * w.dim()
                shape[kept[0]] = -1
                w = w * kept[1]().detach().view(shape)
            h = (self._h if self._h is not None else self.hard())[i]
            q8, q4 = fake_quant(w, 8, axis), fake_quant(w, self.low[self.keys[i]], axis)
            # Both terms carry w's straight-through gradient; the gate's is (q8 - q4) . dL/dw.
            return q4 + h * (q8 - q4)

        return tap

    def weight_bytes(self, full_bytes: Mapping[Key, float | torch.Tensor]) -> torch.Tensor:
        """Bytes of the gated weights stored packed: each weight's int8 bytes (a number or a tensor of
        the kept channels' bytes, differentiable) times 1 for int8, 1/2 for int4, 1/4 for int2."""
        h = self._h if self._h is not None else self.hard()
        total = torch.zeros(())
        for i, key in enumerate(self.keys):
            b = full_bytes.get(key)
            if b is None:
                continue
            part = self.low[key] / 8
            total = total + b * (part + (1 - part) * h[i])
        return total


def quantisation_error(w: np.ndarray, bits: int, axis: int) -> float:
    """Relative L2 error of ``w`` quantised at ``bits`` bits (a layer's sensitivity prior)."""
    t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    q = quantized(t, bits, axis)
    norm = float(t.norm())
    return float((q - t).norm()) / norm if norm > 0 else 0.0

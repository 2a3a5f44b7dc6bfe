"""A float Relax module as a trainable PyTorch module, and its trained weights written back to Relax.

Not TVM's ``relax_to_pyfunc_converter``: that one drops conv and pool attributes and passes unknown ops
through. Here every op has an explicit rule (``torch_rules.RULES``) that reads every attribute, and
anything without one is refused when the module is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm, ops
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.analysis.channels import bindings as main_bindings
from tvm_mcu.errors import BadOptionError, UnsupportedOpError
from tvm_mcu.train import require_torch

require_torch()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from tvm_mcu.train.torch_rules import RULES, NoRule, Rule  # noqa: E402

Tap = Callable[[torch.Tensor], torch.Tensor]

# Batch of the construction-time dry run: 2, so that a rule mixing samples shows up as a wrong shape.
_DRY_BATCH = 2
# BatchNorm put back while training (``RelaxModule.renormalise``): PyTorch's defaults.
NORM_EPS = 1e-5
NORM_MOMENTUM = 0.1
# Images whose statistics start the running mean and variance (so the module starts as it was).
NORM_CALIBRATION = 512


@attrs.frozen
class _Arg:
    """How to get one argument at run time: ``env`` (a slot), ``tensor`` (a parameter or buffer by name),
    ``value`` (a Python number or shape) or ``tuple`` (a list of those)."""

    kind: str
    ref: Any


@attrs.frozen
class _Step:
    index: int
    name: str  # the bound var's name
    op: str  # Relax op name, or "alias" / "tuple" / "get_item"
    rule: Rule
    args: tuple[_Arg, ...]
    attrs: Mapping[str, Any]

    @property
    def subject(self) -> str:
        """How error messages name the binding."""
        return f"{self.op} (binding '{self.name}')" if "." in self.op else f"binding '{self.name}'"


@contextlib.contextmanager
def _refusal(subject: str) -> Iterator[None]:
    """Turns a rule's NoRule into the UnsupportedOpError the user sees, naming op and binding."""
    try:
        yield
    except NoRule as e:
        raise UnsupportedOpError(f"{subject} has no torch rule for {e}") from e


_ALIAS = Rule(lambda args, a: args[0], frozenset())
_TUPLE = Rule(lambda args, a: tuple(args), frozenset())
_GET_ITEM = Rule(lambda args, a: args[0][a["index"]], frozenset({"index"}))


def _tensor_types(ty: Any) -> list[Any]:
    """The tensor types of a binding (several for a tuple); raises NoRule for anything else."""
    if isinstance(ty, _tvm.TensorType):
        return [ty]
    fields = getattr(ty, "fields", None)
    if fields is None:
        raise NoRule(f"a value of type {ty} (tensors and tuples of tensors only)")
    return [t for f in fields for t in _tensor_types(f)]


def _static_float32(ty: Any) -> tuple[int, ...]:
    try:
        shape = _tvm.tensor_shape(ty)
    except ValueError as e:
        raise NoRule(f"a tensor of dynamic shape ({e})") from e
    if _tvm.tensor_dtype(ty) != "float32":
        raise NoRule(f"a {_tvm.tensor_dtype(ty)} tensor (the training bridge takes float32 models)")
    return shape


class _Norm(nn.Module):
    """BatchNorm on one convolution's output (NCHW, per channel), starting as the identity.

    Training mode normalises by the batch's statistics and updates the running ones; eval mode uses the
    running ones, so an eval-mode forward is exactly the folded network (:meth:`fold`). Its scale and
    shift are ``std0 * gain`` and ``mean0 + std0 * bias`` (``std0``, ``mean0``: the calibration's
    statistics; ``gain`` starts at 1, ``bias`` at 0), so that Adam's steps, about the rate in size
    whatever a parameter's magnitude, move each channel relative to its own spread rather than by the
    rate in absolute terms (a channel's outputs may spread 0.01 or 10). MobileNetV2-style, int8 width at
    1/4 of its stored weights (int8 accuracy, one run each): 0.8628 with a plain scale and shift, 0.8661
    so."""

    mean: torch.Tensor
    var: torch.Tensor
    mean0: torch.Tensor
    std0: torch.Tensor

    def __init__(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("var", var.clone())
        self.register_buffer("mean0", mean.clone())
        self.register_buffer("std0", torch.sqrt(var + NORM_EPS))
        self.gain = nn.Parameter(torch.ones_like(mean))
        self.bias = nn.Parameter(torch.zeros_like(mean))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.std0 * self.gain, self.mean0 + self.std0 * self.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        # PyTorch's fused kernel: the running variance takes the batch's unbiased one, as BatchNorm2d.
        return F.batch_norm(
            z,
            self.mean,
            self.var,
            scale,
            shift,
            training=self.training and len(z) > 1,
            momentum=NORM_MOMENTUM,
            eps=NORM_EPS,
        )

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b): the eval-mode norm is ``z * a + b`` per channel."""
        with torch.no_grad():
            scale, shift = self.scale_shift()
            a = scale / torch.sqrt(self.var + NORM_EPS)
            return a, shift - self.mean * a


class RelaxModule(nn.Module):
    """``main`` of a float Relax module in inference form, evaluated binding by binding with torch.

    Parameters
    ----------
    mod
        What ``pipeline.run(pipeline.inference_passes(), load_model(path).mod)`` returns: batch 1, NCHW,
        float32, every BatchNorm folded into constants.
    taps
        Binding index -> function applied to that binding's value right after it is computed (the
        pruning code multiplies a group's output by a gate vector this way). Indices are positions in
        ``binding_names()``.

    ``weight_taps`` (public, empty at first): parameter name (``b{binding}_{arg}``) -> function applied
    to that weight wherever the forward pass reads it (filterlet gates multiply a convolution's weight
    by their masks this way); the parameter itself is unchanged.

    Every float32 constant with ndim >= 1 becomes a trainable ``nn.Parameter`` named ``b{binding}_{arg}``
    (its site: binding index, argument index); scalar constants become buffers of the same naming.
    :meth:`constants` lists those parameters (``renormalise`` adds others: its norms').
    ``forward(*inputs)`` takes batched NCHW tensors (any batch N) and returns a tensor, or a tuple when
    ``main`` returns a tuple.

    Raises
    ------
    UnsupportedOpError
        for an op, attribute value or value type without a torch rule, naming the op and the binding.
    """

    def __init__(self, mod: _tvm.IRModule, taps: Mapping[int, Tap] | None = None) -> None:
        super().__init__()
        func = mod["main"]
        bindings = main_bindings(func)
        self._names = [_tvm.var_name(b.var) for b in bindings]
        self._sites: dict[str, tuple[int, int]] = {}
        self._input_shapes: list[tuple[int, ...]] = []
        slots: dict[Any, int] = {}
        for p in func.params:
            subject = f"input '{_tvm.var_name(p)}'"
            with _refusal(subject):
                shape = _static_float32(p.ty)
            if not shape or shape[0] != 1:
                raise UnsupportedOpError(
                    f"{subject} has shape {shape}; the training bridge needs batch 1 models"
                )
            slots[p] = len(slots)
            self._input_shapes.append(shape)
        self._steps: list[_Step] = []
        self._shapes: list[list[tuple[int, ...]]] = []
        for i, b in enumerate(bindings):
            self._steps.append(self._step(i, b, slots))
            with _refusal(self._steps[-1].subject):
                self._shapes.append([_static_float32(t) for t in _tensor_types(b.var.ty)])
            slots[b.var] = len(slots)
        with _refusal("the output of main"):
            self._output = self._arg(func.body.body, slots, site=None)
        self._readers = self._slot_readers()
        self._release = self._last_uses()
        # Public: the pruning code may change the taps between training runs.
        self.taps: dict[int, Tap] = {}
        self.weight_taps: dict[str, Tap] = {}
        # Convolution binding (as str) -> its BatchNorm while training (``renormalise``).
        self.norms = nn.ModuleDict()
        self._dry_run()
        self.taps = dict(taps or {})
        bad = sorted(k for k in self.taps if not 0 <= k < len(self._steps))
        if bad:
            raise BadOptionError(
                f"taps at binding indices {bad}; main has bindings 0..{len(self._steps) - 1}"
            )

    # ------------------------------------------------------------------------------- construction
    def _slot_readers(self) -> list[list[int]]:
        """Per env slot (inputs, then bindings), the steps that read it in order; -1: ``main``'s output."""
        readers: list[list[int]] = [[] for _ in range(len(self._input_shapes) + len(self._steps))]
        for step in self._steps:
            for a in step.args:
                for r in _env_refs(a):
                    readers[r].append(step.index)
        for r in _env_refs(self._output):
            readers[r].append(-1)
        return readers

    def _last_uses(self) -> list[list[int]]:
        """Per step, the env slots read for the last time there (not the output's), to drop after it:
        an interpreter that keeps every intermediate alive holds a whole batch of every activation at
        once (MobileNetV2-style, batch 512: over 20 GB)."""
        release: list[list[int]] = [[] for _ in self._steps]
        for r, steps in enumerate(self._readers):
            if steps and -1 not in steps:
                release[steps[-1]].append(r)
        return release

    def _step(self, i: int, b: Any, slots: dict[Any, int]) -> _Step:
        name = self._names[i]
        subject = f"binding '{name}'"
        value = b.value
        with _refusal(subject):
            if not isinstance(b, relax.VarBinding):
                raise NoRule(f"a {type(b).__name__} binding")
            if isinstance(value, _tvm.RelaxVar):
                return _Step(i, name, "alias", _ALIAS, (self._arg(value, slots, None),), {})
            if isinstance(value, relax.Tuple):
                args = tuple(self._arg(f, slots, None) for f in value.fields)
                return _Step(i, name, "tuple", _TUPLE, args, {})
            if isinstance(value, relax.TupleGetItem):
                args = (self._arg(value.tuple_value, slots, None),)
                return _Step(i, name, "get_item", _GET_ITEM, args, {"index": int(value.index)})
            if not isinstance(value, _tvm.RelaxCall):
                raise NoRule(f"a {type(value).__name__} value")
        op = _tvm.op_name(value) or str(value.op)
        subject = f"{op} (binding '{name}')"
        rule = RULES.get(op)
        if rule is None:
            raise UnsupportedOpError(f"{subject} has no torch rule: {ops.refusal('train', op)}")
        attr_values = _tvm.attr_values(value.attrs)
        with _refusal(subject):
            unknown = sorted(set(attr_values) ^ rule.attrs)
            if unknown:
                raise NoRule(f"the attributes {unknown}")
            args = tuple(self._arg(a, slots, (i, j)) for j, a in enumerate(value.args))
        return _Step(i, name, op, rule, args, attr_values)

    def _arg(self, expr: Any, slots: dict[Any, int], site: tuple[int, int] | None) -> _Arg:
        if isinstance(expr, _tvm.RelaxVar):
            return _Arg("env", slots[expr])
        if isinstance(expr, _tvm.RelaxConst):
            if site is None:
                raise NoRule("a constant outside a call's arguments (only those become parameters)")
            return _Arg("tensor", self._constant(expr, site))
        if isinstance(expr, relax.Tuple):
            return _Arg("tuple", tuple(self._arg(f, slots, None) for f in expr.fields))
        if isinstance(expr, relax.ShapeExpr):
            if not all(isinstance(v, _tvm.tirx.IntImm) for v in expr.values):
                raise NoRule(f"the symbolic shape {expr}")
            return _Arg("value", tuple(int(v) for v in expr.values))
        if isinstance(expr, _tvm.tirx.IntImm | _tvm.tirx.FloatImm):
            return _Arg("value", expr.value)
        raise NoRule(f"an argument of kind {type(expr).__name__}")

    def _constant(self, c: Any, site: tuple[int, int]) -> str:
        value = _tvm.const_value(c)
        if value.dtype != np.float32:
            raise NoRule(f"a {value.dtype} constant (the training bridge takes float32 models)")
        name = f"b{site[0]}_{site[1]}"
        tensor = torch.from_numpy(np.array(value, copy=True))
        if value.ndim >= 1:
            self.register_parameter(name, nn.Parameter(tensor))
            self._sites[name] = site
        else:
            self.register_buffer(name, tensor)
        return name

    def _dry_run(self) -> None:
        """Evaluate every binding on zeros of batch 2: rules refuse attribute values now, not while
        training, and every binding's shape is checked against Relax's with the batch following N."""
        inputs = [torch.zeros((_DRY_BATCH, *s[1:])) for s in self._input_shapes]
        with torch.no_grad():
            self._run(inputs, check=True)

    # ------------------------------------------------------------------------------- evaluation
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._input_shapes):
            raise BadOptionError(f"the model takes {len(self._input_shapes)} inputs, got {len(inputs)}")
        for k, (x, shape) in enumerate(zip(inputs, self._input_shapes, strict=True)):
            if tuple(x.shape[1:]) != shape[1:]:
                raise BadOptionError(
                    f"input {k} has shape {tuple(x.shape)}; the model takes (N, *{shape[1:]})"
                )
        result: torch.Tensor | tuple[torch.Tensor, ...] = self._run(list(inputs), check=False)
        return result

    def _run(self, inputs: list[torch.Tensor], *, check: bool) -> Any:
        tensors: dict[str, Any] = {**self._parameters, **self._buffers}
        for name, weight_tap in self.weight_taps.items():
            tensors[name] = weight_tap(tensors[name])
        env: list[Any] = list(inputs)
        norms: dict[str, nn.Module] = dict(self.norms.items())

        def resolve(arg: _Arg) -> Any:
            if arg.kind == "env":
                return env[arg.ref]
            if arg.kind == "tensor":
                return tensors[arg.ref]
            if arg.kind == "tuple":
                return [resolve(a) for a in arg.ref]
            return arg.ref

        for step in self._steps:
            args = [resolve(a) for a in step.args]
            if check:
                with _refusal(step.subject):
                    value = step.rule.fn(args, step.attrs)
                self._check_shapes(step, value, len(inputs[0]))
            else:
                value = step.rule.fn(args, step.attrs)
            norm = norms.get(str(step.index))
            if norm is not None:
                value = norm(value)
            tap = self.taps.get(step.index)
            if tap is not None:
                value = tap(value)
            env.append(value)
            for r in self._release[step.index]:
                env[r] = None
        out = resolve(self._output)
        return tuple(out) if isinstance(out, list) else out

    def _check_shapes(self, step: _Step, value: Any, batch: int) -> None:
        got = [tuple(t.shape) for t in (value if isinstance(value, tuple) else (value,))]
        relax_shapes = self._shapes[step.index]
        want = [(batch, *s[1:]) if s and s[0] == 1 else s for s in relax_shapes]
        if got != want or any(not s or s[0] != 1 for s in relax_shapes):
            raise UnsupportedOpError(
                f"{step.subject} has no torch rule that keeps the batch axis: Relax shapes {relax_shapes}, "
                f"torch gives {got} for batch {batch}"
            )

    # ------------------------------------------------------------------------------- introspection
    def binding_names(self) -> list[str]:
        """The names of ``main``'s bound vars, in binding order (the indices of ``taps``)."""
        return list(self._names)

    def param_site(self, name: str) -> tuple[int, int]:
        """(binding index, argument index) of the constant a parameter stands for."""
        if name not in self._sites:
            raise KeyError(f"no parameter '{name}' (parameters: {', '.join(self._sites)})")
        return self._sites[name]

    def readers(self) -> dict[int, tuple[int, ...]]:
        """Binding index -> the indices of the bindings that read its value (-1: ``main``'s output)."""
        first = len(self._input_shapes)
        return {i: tuple(sorted(set(self._readers[first + i]))) for i in range(len(self._steps))}

    def binding_ops(self) -> list[str]:
        """The op of each binding (``alias``, ``tuple`` or ``get_item`` for those that are not calls)."""
        return [s.op for s in self._steps]

    def constants(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters that stand for the Relax module's constants (``b{binding}_{arg}``)."""
        for name in self._sites:
            yield name, self._parameters[name]  # type: ignore[misc]

    # ------------------------------------------------------------------------------- BatchNorm
    def _biased_convolutions(self) -> dict[int, tuple[str, str]]:
        """Convolution binding -> (its weight's parameter, the bias's) for each ``conv2d`` whose one
        reader adds a constant of shape (1, C, 1, 1) to it: where a BatchNorm was folded."""
        readers = self.readers()
        out: dict[int, tuple[str, str]] = {}
        for step in self._steps:
            if step.op != "relax.nn.conv2d" or len(step.args) < 2 or step.args[1].kind != "tensor":
                continue
            rs = readers[step.index]
            if len(rs) != 1 or rs[0] < 0:
                continue
            add = self._steps[rs[0]]
            if add.op != "relax.add" or len(add.args) != 2 or add.args[1].kind != "tensor":
                continue
            weight, bias = step.args[1].ref, add.args[1].ref
            first = len(self._input_shapes) + step.index
            channels = self._shapes[step.index][0][1]
            if add.args[0].kind != "env" or add.args[0].ref != first or bias not in self._sites:
                continue
            if tuple(getattr(self, bias).shape) == (1, channels, 1, 1) and weight in self._sites:
                out[step.index] = (weight, bias)
        return out

    def renormalise(self, x: np.ndarray) -> int:
        """Put a BatchNorm back on each convolution followed by a constant bias (where one was folded),
        starting as the identity: its running statistics are those of the convolution's output on the
        first ``NORM_CALIBRATION`` images of ``x`` (NCHW batch), its scale and shift undo them. Trained
        in training mode (batch statistics), folded into the weights and biases by :meth:`folded` and
        :func:`write_back`. Returns how many convolutions got one. The rules read convolutions as
        NCHW/OIHW only, so the channel axes are known. Once per module.

        Why: the models arrive with BatchNorm folded, and training a deep folded network is training it
        without normalisation: cutting channels shifts every later layer's input statistics with
        nothing to re-centre them, and Adam's first steps at the pruning rates shake it (MobileNetV2-
        style, 1 epoch at 1e-2 from the trained weights: test accuracy 0.9159 -> 0.5429).

        Weight taps stay exact under folding where they commute with a positive or negative scale per
        output channel: masks (zeros stay zeros) and the per-channel symmetric quantisers
        (``train.bits``: the scale is max |w| / qmax, or ternary's, per output channel).
        """
        if len(self.norms):
            # Calibrating again would measure through the norms and replace them: their fold lost.
            raise BadOptionError("renormalise: the module has its norms already")
        sites = self._biased_convolutions()
        if not sites or len(x) == 0:
            return 0
        sample = torch.from_numpy(np.ascontiguousarray(x[:NORM_CALIBRATION], dtype=np.float32))
        seen: dict[int, list[torch.Tensor]] = {i: [] for i in sites}
        saved = dict(self.taps)

        def recorder(i: int, inner: Tap | None) -> Tap:
            def tap(v: torch.Tensor) -> torch.Tensor:
                seen[i].append(v.detach())
                return v if inner is None else inner(v)

            return tap

        self.taps.update({i: recorder(i, saved.get(i)) for i in sites})
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for k in range(0, len(sample), 128):
                    self._run([sample[k : k + 128]], check=False)
        finally:
            self.taps = saved
            self.train(was_training)
        for i, values in seen.items():
            z = torch.cat(values).to(torch.float64)
            mean = z.mean(dim=(0, 2, 3))
            var = z.var(dim=(0, 2, 3), unbiased=False)
            self.norms[str(i)] = _Norm(mean.to(torch.float32), var.to(torch.float32))
        return len(sites)

    def settle_weights(self) -> None:
        """Replace each parameter that has a weight tap by what the tap makes of it, and drop the taps:
        the parameters become the weights the forward pass used (quantised weights on their grid,
        masked ones zero), so :func:`write_back` writes the network that was trained, not the free
        weights a straight-through estimator updates behind the quantiser.

        Why: the quantiser calibrates the activations on the float model it is given. Written with the
        free weights, that is another network than the one trained: with BatchNorm back the norms follow
        the quantised convolutions' statistics, the free weights' outputs spread differently, and the
        mismatch compounds layer after layer (MobileNetV2-style, int2 width at 1/4: the calibrated range
        of the last activation 6,675 against 413 for the network trained; int8 accuracy 0.43 against
        0.80 trained)."""
        with torch.no_grad():
            params = dict(self.named_parameters())
            for name, tap in self.weight_taps.items():
                params[name].copy_(tap(params[name]))
        self.weight_taps = {}

    def folded(self) -> dict[str, torch.Tensor]:
        """Each constant's parameter (:meth:`constants`) as the deployed network has it: the norms
        folded in (weight times ``a`` per output channel, bias plus ``b``: the norm sits between the
        convolution and its bias), detached."""
        out = {name: p.detach() for name, p in self.constants()}
        sites = self._biased_convolutions()
        for key, norm in self.norms.items():
            weight, bias = sites[int(key)]
            a, b = norm.fold()  # type: ignore[operator]
            out[weight] = out[weight] * a.view(-1, *([1] * (out[weight].dim() - 1)))
            out[bias] = out[bias] + b.view(1, -1, 1, 1)
        return out


def _env_refs(arg: _Arg) -> list[int]:
    """The env slots (inputs, then bindings) an argument reads."""
    if arg.kind == "env":
        return [arg.ref]
    if arg.kind == "tuple":
        return [r for a in arg.ref for r in _env_refs(a)]
    return []


def write_back(mod: _tvm.IRModule, module: RelaxModule) -> _tvm.IRModule:
    """A new IRModule: ``mod`` with each constant that is a parameter of ``module`` replaced by that
    parameter's current value (float32), with any BatchNorm of ``module.renormalise`` folded in.
    Everything else (bindings, names, scalar constants, attributes, other functions) is unchanged;
    ``mod`` itself is not modified.

    Raises BadOptionError when ``module`` was not built from a module of the same structure.
    """
    func = mod["main"]
    bindings = main_bindings(func)
    ops = [_tvm.op_name(b.value) if isinstance(b.value, _tvm.RelaxCall) else None for b in bindings]
    if len(bindings) != len(module.binding_ops()) or any(
        o is not None and o != m for o, m in zip(ops, module.binding_ops(), strict=True)
    ):
        raise BadOptionError(
            "write_back: the torch module was built from a Relax module of another structure"
        )
    new_consts: dict[tuple[int, int], Any] = {}
    for name, param in module.folded().items():
        i, j = module.param_site(name)
        old = bindings[i].value.args[j]
        if not isinstance(old, _tvm.RelaxConst) or _tvm.const_value(old).shape != tuple(param.shape):
            raise BadOptionError(
                f"write_back: parameter '{name}' has no constant of shape {tuple(param.shape)}"
            )
        value = param.detach().to("cpu", torch.float32).numpy()
        new_consts[(i, j)] = _tvm.relax_const(np.ascontiguousarray(value, dtype=np.float32))

    bb = relax.BlockBuilder(
        tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs)
    )
    attrs_ = dict(func.attrs) if func.attrs is not None else {}
    index = 0
    # The new constants have the old shapes, so every var keeps its type: the bindings reuse the vars
    # (and their names, even duplicated ones) instead of fresh ones.
    with _tvm.building_function(bb, "main", list(func.params), attrs=attrs_):
        for block in func.body.blocks:
            with bb.dataflow() if isinstance(block, relax.DataflowBlock) else contextlib.nullcontext():
                for b in block.bindings:
                    value = b.value
                    if isinstance(value, _tvm.RelaxCall):
                        args = [new_consts.get((index, j), a) for j, a in enumerate(value.args)]
                        value = bb.normalize(_tvm.call_with_args(value, args))
                    bb.emit_normalized(relax.VarBinding(b.var, value))
                    index += 1
        bb.emit_func_output(func.body.body)
    return bb.get()

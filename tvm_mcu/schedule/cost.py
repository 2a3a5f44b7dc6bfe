"""The one cost model: estimated instructions of the generated kernels.

The scheduler ranks candidate schedules with it (:mod:`tvm_mcu.schedule.choice`: the smallest SRAM
within ``MAX_OVERHEAD`` extra instructions; :mod:`tvm_mcu.schedule.partial`: where to cut row chains)
and the resource model prices a pruned model's schedule with the same numbers
(:mod:`tvm_mcu.resource_model`). Reports never use it: they give QEMU's exact counts.

Calibrated on mps2-an386 (Cortex-M4 with DSP), QEMU instruction counts of the MLPerf Tiny models
(docs/BENCHMARKS.md, "Kernels against CMSIS-NN"):

- int8 kernels (``passes/tir/dot_kernels.py``): KWS 2.05, ResNet-8 1.66, anomaly detection 1.46
  instructions per MAC over the whole model (requantisation, pooling and additions included): 2.0
  (rounded up: the overheads of in-place staging and line buffers are then not overstated).
- float kernels (``passes/tir/float_kernels.py``, plain C, FPU multiply-accumulate): KWS 2.81, the
  Fashion-MNIST CNN 5.76 (NCHW windows per input channel, not split at the borders): 3.0
  (KWS's figure rounded up, as for int8; TVM's loops gave 8.8 and 15.7).
- an NCHW model's int8 convolutions (ONNX QDQ models: no dot kernels over channels) stay TVM's loops:
  9.0, their calibration before the kernels.
- an in-place kernel stages its output and copies it back: for KWS's pointwise convolutions about 4
  instructions per element, while its depthwise convolutions, staged a channel plane at a time, run
  faster in place than layer by layer (5.5 against 10.2 per MAC: their loops split their borders
  better); in all KWS runs 16 % faster in place. Per staged element: 3 for float kernels (a load, a
  store and the loop), 1 for the integer ones (the net of the two).
- an accumulating chain's consumer re-enters its output once per slice: accumulator load and store and
  loop set-up, about 16 instructions per element and slice (MobileNetV2-style benchmark).
- a row band's line buffer shifts its kept rows once per row: a contiguous copy, 1 per element.

A convolution layer alone, for pruning's per-layer pricing (:mod:`tvm_mcu.analysis.sparsity`), costs
per multiply-accumulate plus a fixed part per output (the call, the accumulators' set-up, the
requantising epilogue). Fitted (least squares) to the per-layer table of docs/BENCHMARKS.md ("Sparse
layers of real networks": the Fashion-MNIST CNN's and a ResNet-8's 3x3 convolutions, layer by layer on
mps2-an386, 24 sparse and 24 dense measurements):

- dense (the SIMD kernels): 1.32 per MAC and 52 per output (every layer within 0.5 %);
- filterlet CSR (the four-pixel kernel, borders included): 1.41 per kept MAC and 36 per output
  (within 7 %);
- element CSR: about 4.5 per kept MAC (3.8-4.9 measured on its bench), 36 per output.

Pruning prices a candidate's instructions with these, as it prices its flash and MACs by counting;
reports give QEMU's counts.

Weights stored Golomb-Rice coded (CompressWeights) cost ``DECODE_PER_BYTE`` instructions per decoded
byte (bench --only compress, the M4: 31.4 for a dense layer's chunks, 33.3 for a 3x3 convolution's with
its loops), each chunk decoded once per visit of its block loop: once per inference layer by layer and in
channel slices, once per output row in a row band (the blocks' loop moves outside one row's pixels
only), once per output pixel for an operator in place (the loop does not move).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from tvm_mcu.schedule.graph import Graph, Step

# Op families whose instructions scale with their MACs.
_COMPUTE = ("conv2d", "matmul", "dense", "chain")


@attrs.frozen
class Costs:
    """Instructions per unit of work of one kind of kernels."""

    per_mac: float
    per_staged_element: float = 3.0
    per_accumulator_pass: float = 16.0
    per_shifted_element: float = 1.0
    # A partial-execution chain's loop over its slices, as a fraction of the model's instructions.
    chain_overhead: float = 0.002

    def instructions(self, macs: Mapping[str, int]) -> float:
        """The model's estimated instructions from its MACs per step (at least one MAC's)."""
        return max(sum(macs.values()), 1) * self.per_mac


INT8 = Costs(per_mac=2.0, per_staged_element=1.0)
FLOAT = Costs(per_mac=3.0)
INT8_NCHW = Costs(per_mac=9.0)


def for_model(graph: Graph, channels_last: bool) -> Costs:
    """The costs of ``graph``'s kernels: the SIMD integer kernels' when every computing step produces
    8-bit integers and the convolutions are channels-last (NHWC: the dot kernels' contiguous
    reductions); an NCHW model's int8 convolutions stay TVM's loops; float models run the float
    kernels."""
    outputs = [graph.tensors[s.output].dtype for s in graph.steps if s.kind in _COMPUTE]
    if not outputs or not all(d in ("int8", "uint8") for d in outputs):
        return FLOAT
    return INT8 if channels_last else INT8_NCHW


@attrs.frozen
class LayerCosts:
    """Instructions of one convolution layer's kernel: per multiply-accumulate it does and per output."""

    per_mac: float
    per_output: float

    def instructions(self, macs: int, outputs: int) -> float:
        return macs * self.per_mac + outputs * self.per_output


# int8 convolution layers, dense and in each sparse format (keyed by the pruning unit whose zeros the
# format skips: tvm_mcu.analysis.sparsity's granularities); the MACs of a sparse one are its kept ones.
CONV_INT8 = LayerCosts(per_mac=1.32, per_output=52.0)
SPARSE = {
    "filterlet": LayerCosts(per_mac=1.41, per_output=36.0),
    "unstructured": LayerCosts(per_mac=4.5, per_output=36.0),
}


def conv_layer(itemsize: int) -> LayerCosts:
    """A dense convolution layer's costs: int8 (itemsize 1) or float (the float kernels, per MAC)."""
    return CONV_INT8 if itemsize == 1 else LayerCosts(per_mac=FLOAT.per_mac, per_output=0.0)


# Instructions per byte tvmmcu_rice_decode writes (module docstring).
DECODE_PER_BYTE = 31.4


def _visits(step: Step, shape: tuple[int, ...]) -> int:
    """How often ``step`` decodes each chunk of a compressed weight of its layer (output ``shape``,
    channels-last) per inference."""
    if len(shape) != 4:
        return 1
    if step.in_place == "pointwise":
        return int(shape[1] * shape[2])
    if step.partial.startswith("rows"):
        axis = next((int(f[5:]) for f in step.partial.split(":") if f.startswith("axis=")), 1)
        return int(shape[axis])
    return 1


def decoded_once(graph: Graph, names: frozenset[str]) -> frozenset[str]:
    """The weights of ``names`` that the schedule ``graph`` would decode once per inference if stored
    coded: no step reading one runs it in a row band or in place pixel by pixel (:func:`_visits`)."""
    again = {
        n
        for step in graph.steps
        if step.partial.startswith("rows") or step.in_place == "pointwise"
        for n in step.inputs
        if n in names
    }
    return frozenset(names - again)


def decode_instructions(graph: Graph, layers: Graph, compressed: frozenset[str]) -> float:
    """Estimated instructions of decoding the weights named ``compressed`` (stored Golomb-Rice coded)
    in one inference under the schedule ``graph``; ``layers``: the model's graph one step per layer
    (the output shape of each weight's layer, which a chain step of ``graph`` hides)."""
    shapes = {
        name: tuple(layers.tensors[s.output].shape)
        for s in layers.steps
        for name in s.inputs
        if name in compressed
    }
    total = 0.0
    for step in graph.steps:
        for name in step.inputs:
            if name in compressed and name in graph.weights:
                visits = _visits(step, shapes.get(name, ()))
                total += visits * int(graph.weights[name].nbytes) * DECODE_PER_BYTE
    return total

"""The random-model fuzzer: seeded float ONNX CNNs (``generate``), their int8 variants (``quantize``),
each compiled, run on QEMU and compared with the reference (``run``, in worker processes: ``pool``),
failures shrunk to small reproducers (``reduce``), whole campaigns with a summary (``campaign``,
``python -m tvm_mcu.fuzz``, ``make fuzz``)."""

from tvm_mcu.fuzz.generate import random_cnn

__all__ = ["random_cnn"]

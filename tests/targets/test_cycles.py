"""The cycle estimate: the plugin's instruction classes on a known instruction mix, and the estimate from
a class profile with the core's published timings (an estimate, labelled so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.targets.test_firmware_on_emulator import write_lib
from tvm_mcu.targets import build_firmware, load_board, run_firmware
from tvm_mcu.targets.cycles import CLASSES, TIMINGS, estimate_cycles

# 64 SMLADs, 64 loads and 64 stores in straight-line code (volatile asm: GCC keeps each), then a return.
MIX_C = (
    '#include "model.h"\n'
    "int32_t tvmmcu_model_run(const void *input, void *output) {\n"
    "  const int32_t *x = (const int32_t *)input;\n"
    "  int32_t *y = (int32_t *)output;\n"
    "  int32_t acc = 0, v;\n"
    + "".join(
        '  __asm__ volatile("ldr %0, [%1]" : "=r"(v) : "r"(x) : "memory");\n'
        '  __asm__ volatile("smlad %0, %1, %1, %0" : "+r"(acc) : "r"(v));\n'
        '  __asm__ volatile("str %0, [%1]" : : "r"(acc), "r"(y) : "memory");\n'
        for _ in range(64)
    )
    + "  return 0;\n}\n"
)


@pytest.mark.emulator
def test_the_plugin_counts_instructions_by_class(tmp_path: Path) -> None:
    board = load_board("mps2-an386")
    lib = write_lib(tmp_path / "lib", "mix", MIX_C, inputs=16, outputs=16)
    fw = build_firmware(lib, board, tmp_path / "fw")
    result = run_firmware(fw, bytes(16), 16)
    classes = dict(result.instruction_classes)
    assert list(classes) == list(CLASSES)
    assert classes["mul"] >= 64 and classes["load"] >= 64 and classes["store"] >= 64
    # Every instruction of the call is in a class but the few the plugin counts by callback (markers).
    counted = sum(n for c, n in classes.items() if c != "multi_regs")
    assert 0 <= result.instructions - counted <= 8
    assert result.estimated_cycles == estimate_cycles("cortex-m4", classes, result.instructions)
    assert result.estimated_cycles is not None and result.estimated_cycles > result.instructions


def test_the_estimate_prices_each_class_at_the_cores_timing() -> None:
    profile = {c: 0 for c in CLASSES} | {"alu": 100, "load": 10, "mla": 5, "multi": 2, "multi_regs": 8}
    m4 = TIMINGS["cortex-m4"]
    want = 100 * m4["alu"] + 10 * m4["load"] + 5 * m4["mla"] + 2 * m4["multi"] + 8 * m4["multi_regs"]
    assert estimate_cycles("cortex-m4", profile, 117) == round(want)
    # Instructions the profile does not cover count one cycle each; an M7 loads in one cycle.
    assert estimate_cycles("cortex-m4", profile, 120) == round(want) + 3
    assert estimate_cycles("cortex-m7", profile, 117) < estimate_cycles("cortex-m4", profile, 117)  # type: ignore[operator]
    assert estimate_cycles("riscv", profile, 117) is None

"""Estimated cycles of one inference: the QEMU plugin's instruction-class profile of the model call times
the core's published instruction timings. An **estimate**, labelled so wherever it is shown: QEMU counts
instructions exactly but models no pipeline, cache, flash wait state or bus; the timings below assume
zero-wait-state memory, a taken branch for every branch instruction (a refill of 1 cycle on the M3/M4,
predicted on the M7) and no load/store pipelining (a lower cost for back-to-back loads is not taken).

Classes (the plugin's, from each instruction's mnemonic as QEMU disassembles it):

- ``alu``: data processing, moves, compares, bit fields, saturation, SIMD add/subtract (SADD16 ...),
  ``it``;
- ``mul``: 32-bit multiplies and the DSP multiply(-accumulate)s of one cycle (MUL, SMULL, UMLAL, SMLAD,
  SMUAD, SMMUL, SMLABB ...); ``mla``: MLA, MLS;
- ``div``: SDIV, UDIV (2-12 cycles by the quotient's size: counted at the middle, 7);
- ``load`` / ``store``: one register (LDR*, STR*, LDREX ...); ``multi``: LDM, STM, PUSH, POP, with
  ``multi_regs`` the registers they move (1 + N cycles);
- ``branch``: B, BL, BX, BLX, CBZ, CBNZ, TBB, TBH, and a POP or LDM that loads the PC;
- ``fpu``: VADD, VMUL, VMOV ... (one cycle), ``fmac``: VMLA, VFMA, VMLS, VFMS, VNMLA ... ; ``fdiv``:
  VDIV, VSQRT; ``fmem``: VLDR, VSTR, VPUSH, VPOP, VLDM, VSTM.

Timings: Cortex-M4 Technical Reference Manual (ARM DDI 0439B) 3.3.1 Table 3-1 and, for the FPU, 7.2.3
Table 7-1; Cortex-M3 TRM (ARM DDI 0337I) 18.2 Table 18-1 (no DSP or FPU); the Cortex-M7 is dual-issue
with single-cycle loads from tightly coupled memory and a branch predictor, which its TRM gives no
instruction table for: its column is the M4's with loads, MLA and predicted branches at one cycle and no
dual issue counted (an upper estimate).
"""

from __future__ import annotations

from collections.abc import Mapping

CLASSES = (
    "alu",
    "mul",
    "mla",
    "div",
    "load",
    "store",
    "multi",
    "multi_regs",
    "branch",
    "fpu",
    "fmac",
    "fdiv",
    "fmem",
)

# Cycles per instruction of each class (``multi_regs``: per register moved, on top of ``multi``).
_M4 = {
    "alu": 1.0,
    "mul": 1.0,
    "mla": 2.0,
    "div": 7.0,
    "load": 2.0,
    "store": 1.0,
    "multi": 1.0,
    "multi_regs": 1.0,
    "branch": 2.0,
    "fpu": 1.0,
    "fmac": 3.0,
    "fdiv": 14.0,
    "fmem": 2.0,
}
TIMINGS: dict[str, Mapping[str, float]] = {
    "cortex-m4": _M4,
    "cortex-m3": {**_M4, "fpu": 0.0, "fmac": 0.0, "fdiv": 0.0, "fmem": 0.0},
    "cortex-m7": {**_M4, "load": 1.0, "mla": 1.0, "branch": 1.0, "fmac": 1.0},
    "cortex-m33": {**_M4, "fpu": 0.0, "fmac": 0.0, "fdiv": 0.0, "fmem": 0.0},
}


def estimate_cycles(cpu: str, classes: Mapping[str, int], instructions: int) -> int | None:
    """Estimated cycles of ``instructions`` whose class profile is ``classes`` on ``cpu`` (None: no
    timings for that core). Instructions the profile does not cover (the marker and driver instructions
    the plugin counts by callback) are counted at one cycle each."""
    table = TIMINGS.get(cpu)
    if table is None:
        return None
    counted = sum(n for c, n in classes.items() if c != "multi_regs")
    cycles = sum(table[c] * n for c, n in classes.items() if c in table)
    return round(cycles + max(instructions - counted, 0))

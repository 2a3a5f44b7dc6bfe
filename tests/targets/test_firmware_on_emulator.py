"""Build hand-written model libraries into firmware and run them on every emulated board.

The libraries stand in for generated code: they follow the model.h contract (TVMMCU_INPUT_BYTES,
TVMMCU_OUTPUT_BYTES, tvmmcu_model_run) and are small enough that each QEMU run takes ~0.05 s.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.errors import BadOptionError, BudgetError, FirmwareError
from tvm_mcu.targets import Firmware, build_firmware, ensure_plugin, list_boards, load_board, run_firmware
from tvm_mcu.targets.runner import qemu_command

pytestmark = pytest.mark.emulator

BOARDS = [b.name for b in list_boards()]
IN_BYTES = 64
SCRATCH_BYTES = 2048

MODEL_H = """\
#ifndef MODEL_H
#define MODEL_H
#include <stdint.h>
#define TVMMCU_INPUT_BYTES {inputs}
#define TVMMCU_OUTPUT_BYTES {outputs}
int32_t tvmmcu_model_run(const void *input, void *output);
#endif
"""

# out[i] = in[i] * 2 + 1 over int8 (wrapping), then expf(in[0] / 16) as a float32, to prove libm links.
AFFINE_C = """\
#include <math.h>
#include <string.h>
#include "model.h"

int32_t tvmmcu_model_run(const void *input, void *output)
{
    const int8_t *in = (const int8_t *)input;
    int8_t *out = (int8_t *)output;
    for (int i = 0; i < TVMMCU_INPUT_BYTES; ++i) {
        out[i] = (int8_t)(in[i] * 2 + 1);
    }
    const float e = expf((float)in[0] / 16.0f);
    memcpy(out + TVMMCU_INPUT_BYTES, &e, sizeof e);
    return 0;
}
"""

# Same outputs as the first bytes of a scratch array that lives on the stack.
DEEP_STACK_C = f"""\
#include "model.h"

int32_t tvmmcu_model_run(const void *input, void *output)
{{
    volatile uint8_t scratch[{SCRATCH_BYTES}];
    const uint8_t *in = (const uint8_t *)input;
    uint8_t *out = (uint8_t *)output;
    for (unsigned i = 0; i < sizeof scratch; ++i) {{
        scratch[i] = (uint8_t)(in[i % TVMMCU_INPUT_BYTES] + i);
    }}
    for (unsigned i = 0; i < TVMMCU_OUTPUT_BYTES; ++i) {{
        out[i] = scratch[i * 31u];
    }}
    return 0;
}}
"""


def write_lib(root: Path, name: str, model_c: str, inputs: int = IN_BYTES, outputs: int = IN_BYTES) -> Path:
    lib = root / name
    lib.mkdir(parents=True)
    (lib / "model.h").write_text(MODEL_H.format(inputs=inputs, outputs=outputs))
    (lib / "model.c").write_text(model_c)
    return lib


def body(statements: str) -> str:
    """A model.c whose tvmmcu_model_run runs ``statements``."""
    return (
        '#include "model.h"\n'
        "int32_t tvmmcu_model_run(const void *input, void *output)\n"
        f"{{\n    (void)input;\n    (void)output;\n{statements}\n}}\n"
    )


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    root = tmp_path_factory.mktemp("libs")
    return {
        "affine": write_lib(root, "affine", AFFINE_C, outputs=IN_BYTES + 4),
        "deep": write_lib(root, "deep", DEEP_STACK_C),
        "empty": write_lib(root, "empty", body("    return 0;")),
    }


@pytest.fixture(scope="module")
def build(libs, tmp_path_factory):
    """build(lib, board) -> Firmware, each built once per module."""
    built: dict[tuple[str, str], Firmware] = {}

    def get(lib: str, board: str) -> Firmware:
        if (lib, board) not in built:
            out = tmp_path_factory.mktemp(f"fw-{lib}-{board}")
            built[lib, board] = build_firmware(libs[lib], load_board(board), out)
        return built[lib, board]

    return get


@pytest.fixture(scope="module")
def input_bytes() -> bytes:
    return np.random.default_rng(0).integers(-128, 128, IN_BYTES, dtype=np.int8).tobytes()


@pytest.mark.parametrize("board", BOARDS, ids=BOARDS)
def test_affine_model_runs_exactly_and_deterministically(build, input_bytes, board):
    fw = build("affine", board)
    assert fw.warnings == ()
    assert (fw.input_bytes, fw.output_bytes) == (IN_BYTES, IN_BYTES + 4)
    first = run_firmware(fw, input_bytes, IN_BYTES + 4)
    second = run_firmware(fw, input_bytes, IN_BYTES + 4)

    x = np.frombuffer(input_bytes, np.int8)
    expected = (x.astype(np.int16) * 2 + 1).astype(np.int8).tobytes()
    assert first.output[:IN_BYTES] == expected
    # newlib's expf is within 1 ulp of the exact value (float32 ulp ~ 1.2e-7 relative).
    (e,) = np.frombuffer(first.output[IN_BYTES:], np.float32)
    assert math.isclose(float(e), math.exp(float(x[0]) / 16.0), rel_tol=2.5e-7)

    assert first.rc == 0
    assert first.output == second.output
    assert 0 < first.instructions < first.total_instructions
    assert (first.instructions, first.total_instructions) == (second.instructions, second.total_instructions)
    assert first.stack_bytes == second.stack_bytes
    assert 0 <= first.stack_bytes < 512
    assert (first.flash_bytes, first.ram_bytes) == (fw.flash_bytes, fw.ram_bytes)


@pytest.mark.parametrize("board", BOARDS, ids=BOARDS)
def test_stack_figure_follows_a_stack_array(build, input_bytes, board):
    small = run_firmware(build("affine", board), input_bytes, IN_BYTES + 4)
    deep = run_firmware(build("deep", board), input_bytes, IN_BYTES)
    scratch = [(input_bytes[i % IN_BYTES] + i) % 256 for i in range(SCRATCH_BYTES)]
    assert deep.output == bytes(scratch[i * 31] for i in range(IN_BYTES))
    assert SCRATCH_BYTES <= deep.stack_bytes < SCRATCH_BYTES + 64
    assert deep.stack_bytes > small.stack_bytes


def test_same_core_same_count(build, input_bytes):
    """lm3s6965evb and mps2-an385 are both Cortex-M3 with the same flags: the same code, the same count."""
    counts = {b: run_firmware(build("affine", b), input_bytes, IN_BYTES + 4).instructions for b in BOARDS}
    assert counts["lm3s6965evb"] == counts["mps2-an385"]


@pytest.mark.parametrize("board", BOARDS, ids=BOARDS)
def test_empty_model_costs_only_the_call(build, board):
    """`return 0;` is 2 instructions; the harness adds 6 (roi_begin's return, argument set-up, the
    call, saving rc, the call of roi_end)."""
    empty = run_firmware(build("empty", board), bytes(IN_BYTES), IN_BYTES)
    assert empty.output == bytes(IN_BYTES)
    assert empty.instructions == 8
    assert empty.stack_bytes == 0


def test_firmware_record_sizes(build):
    fw = build("affine", "mps2-an386")
    assert fw.elf.is_file() and fw.map_file.is_file()
    assert list(fw.sections)[0] == ".isr_vector"
    assert fw.ram_bytes == fw.sections[".data"] + fw.sections[".bss"]
    assert fw.flash_bytes == sum(size for name, size in fw.sections.items() if name != ".bss")
    assert fw.sections[".bss"] >= 2 * IN_BYTES  # the harness's input and output buffers


def test_firmware_is_byte_identical_across_directories(libs, tmp_path):
    board = load_board("mps2-an386")
    a = build_firmware(libs["affine"], board, tmp_path / "a")
    b = build_firmware(libs["affine"], board, tmp_path / "b" / "nested")
    assert a.elf.read_bytes() == b.elf.read_bytes()


def test_library_warnings_are_returned(tmp_path):
    lib = write_lib(tmp_path, "warn", body("    int unused;\n    return 0;"))
    fw = build_firmware(lib, load_board("mps2-an385"), tmp_path / "out")
    assert len(fw.warnings) == 1
    assert "model.c:6:9: warning: unused variable 'unused'" in fw.warnings[0]


def test_compile_error_is_a_firmware_error(tmp_path):
    lib = write_lib(tmp_path, "broken", body("    return undeclared;"))
    with pytest.raises(FirmwareError, match="(?s)failed on model.c.*'undeclared' undeclared"):
        build_firmware(lib, load_board("mps2-an385"), tmp_path / "out")


def test_undefined_symbol_is_a_firmware_error(tmp_path):
    lib = write_lib(
        tmp_path, "undef", body("    extern int32_t tvmmcu_missing(void);\n    return tvmmcu_missing();")
    )
    with pytest.raises(
        FirmwareError, match="(?s)linking firmware for mps2-an385 failed.*undefined reference"
    ):
        build_firmware(lib, load_board("mps2-an385"), tmp_path / "out")


def test_missing_model_header_is_rejected(tmp_path):
    (tmp_path / "model.c").write_text("int x;\n")
    with pytest.raises(BadOptionError, match="needs model.h and at least one .c file"):
        build_firmware(tmp_path, load_board("mps2-an385"), tmp_path / "out")


ARENA_C = """\
#include "model.h"
uint8_t tvmmcu_test_arena[{size}];
int32_t tvmmcu_model_run(const void *input, void *output)
{{
    const uint8_t *in = (const uint8_t *)input;
    uint8_t *out = (uint8_t *)output;
    tvmmcu_test_arena[in[0] * 100u] = in[1];
    out[0] = tvmmcu_test_arena[in[2] * 100u];
    return 0;
}}
"""


def test_static_array_larger_than_sram_is_a_budget_error(tmp_path):
    lib = write_lib(tmp_path, "arena", ARENA_C.format(size=200 * 1024), inputs=4, outputs=4)
    with pytest.raises(BudgetError) as err:
        build_firmware(lib, load_board("lm3s6965evb"), tmp_path / "out")
    message = str(err.value)
    # .bss = the array + the harness's 4 + 4 byte buffers + 12 bytes of newlib/runtime statics.
    bss = int(message.split(".bss ")[1].split(" B")[0])
    assert 200 * 1024 + 8 <= bss < 200 * 1024 + 64
    assert f"plus the 4096-byte stack needs {bss + 4096} bytes" in message
    assert "lm3s6965evb has 65536 bytes of SRAM" in message
    assert f"({bss + 4096 - 65536} bytes over; largest: tvmmcu_test_arena 204800 B" in message


def test_static_array_that_leaves_no_room_for_the_stack_is_a_budget_error(tmp_path):
    """.bss fits the 64 KiB region, but not together with the 4 KiB stack: the linker ASSERT fires."""
    lib = write_lib(tmp_path, "arena", ARENA_C.format(size=62 * 1024), inputs=4, outputs=4)
    with pytest.raises(BudgetError, match=r"4096-byte stack needs 6[6-9]\d\d\d bytes.*65536 bytes of SRAM"):
        build_firmware(lib, load_board("lm3s6965evb"), tmp_path / "out")


def test_constant_table_larger_than_flash_is_a_budget_error(tmp_path):
    model_c = (
        '#include "model.h"\n'
        "const uint8_t tvmmcu_test_table[300 * 1024] = {1};\n"
        "int32_t tvmmcu_model_run(const void *input, void *output)\n"
        "{\n    ((uint8_t *)output)[0] = tvmmcu_test_table[((const uint8_t *)input)[0] * 1000u];\n"
        "    return 0;\n}\n"
    )
    lib = write_lib(tmp_path, "table", model_c, inputs=4, outputs=4)
    with pytest.raises(
        BudgetError, match=r"needs 30\d\d\d\d bytes of flash, but lm3s6965evb has 262144 bytes"
    ):
        build_firmware(lib, load_board("lm3s6965evb"), tmp_path / "out")


@pytest.fixture
def run_lib(tmp_path):
    def run(statements: str, board: str = "mps2-an385", **kwargs):
        lib = write_lib(tmp_path, "lib", body(statements))
        fw = build_firmware(lib, load_board(board), tmp_path / "out")
        return run_firmware(fw, bytes(IN_BYTES), IN_BYTES, **kwargs)

    return run


def test_nonzero_model_status_is_a_firmware_error(run_lib):
    with pytest.raises(
        FirmwareError, match=r"status 3: tvmmcu_model_run returned a non-zero status \(model rc=-7\)"
    ):
        run_lib("    return -7;")


@pytest.mark.parametrize("board", ["mps2-an385", "mps2-an521"], ids=["an385", "an521"])
def test_fault_is_reported_with_its_name(run_lib, board):
    with pytest.raises(FirmwareError, match=r"status 13: BusFault(.|\n)*tvmmcu: fault BusFault pc=0x"):
        run_lib("    return *(volatile int32_t *)0xF0000000u;", board)


def test_stack_overflow_is_a_budget_error(run_lib):
    statements = (
        "    volatile uint8_t big[8192];\n"
        "    for (unsigned i = 0; i < sizeof big; ++i) big[i] = (uint8_t)i;\n"
        "    return big[100] - 100;"
    )
    with pytest.raises(BudgetError, match="overflowed the 4096-byte stack reserve of lm3s6965evb"):
        run_lib(statements, "lm3s6965evb")


def test_endless_model_times_out(run_lib):
    with pytest.raises(FirmwareError, match="did not finish within 0.5 s"):
        run_lib("    for (;;) {\n    }", timeout_s=0.5)


@pytest.mark.parametrize("nbytes", [IN_BYTES - 1, IN_BYTES + 1], ids=["short", "long"])
def test_harness_rejects_an_input_file_of_the_wrong_size(build, tmp_path, nbytes):
    fw = build("empty", "mps2-an385")
    (tmp_path / "input.bin").write_bytes(bytes(nbytes))
    cmd = qemu_command(fw, ensure_plugin(), tmp_path / "counts.txt")
    proc = subprocess.run(
        cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 5
    assert proc.stdout == f"tvmmcu: input.bin holds {nbytes} bytes, the model takes {IN_BYTES}\n"
    assert not (tmp_path / "output.bin").exists()


def test_input_size_mismatch_is_rejected_before_running(build):
    with pytest.raises(BadOptionError, match="takes 64 input bytes and gives 68 output bytes.*passed 3"):
        run_firmware(build("affine", "mps2-an385"), b"abc", IN_BYTES + 4)


# Three operator calls: spin(10), spin(1000) calling spin(5) itself (a nested call stays in its step),
# a memcpy by the driver (in no step), then spin(100). ``spin`` loops ``n`` times on a volatile.
STEPS_C = """\
#include <string.h>
#include "model.h"

static volatile int32_t sink;

__attribute__((noinline)) int32_t tvmmcu_op_spin(int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        sink = sink + i;
    }
    return 0;
}

__attribute__((noinline)) int32_t tvmmcu_op_outer(int32_t n)
{
    tvmmcu_op_spin(5);
    return tvmmcu_op_spin(n);
}

int32_t tvmmcu_model_run(const void *input, void *output)
{
    if (tvmmcu_op_spin(10) != 0) {
        return 1;
    }
    if (tvmmcu_op_outer(1000) != 0) {
        return 2;
    }
    memcpy(output, input, TVMMCU_OUTPUT_BYTES);
    if (tvmmcu_op_spin(100) != 0) {
        return 3;
    }
    return 0;
}
"""


@pytest.mark.parametrize("board", ["mps2-an385", "mps2-an386"], ids=["an385", "an386"])
def test_instructions_are_attributed_to_each_operator_call(tmp_path, board):
    fw = build_firmware(write_lib(tmp_path, "steps", STEPS_C), load_board(board), tmp_path / "out")
    assert len(fw.op_entries) == 2 and fw.driver is not None
    result = run_firmware(fw, bytes(range(IN_BYTES)), IN_BYTES)
    assert result.output == bytes(range(IN_BYTES))
    first, nested, last = result.step_instructions
    # The loop body costs the same per iteration in every call: the counts grow with n alone.
    per_iteration = (last - first) / 90
    assert per_iteration >= 3 and per_iteration == int(per_iteration)
    assert nested == pytest.approx(first + 995 * per_iteration, abs=40)  # + the outer call's frame
    driver = result.instructions - sum(result.step_instructions)
    assert IN_BYTES // 4 <= driver < 200  # the copy and the calls, not the loops


def test_the_counter_finds_the_functions_the_code_generator_names():
    from tvm_mcu.codegen import c_ops
    from tvm_mcu.targets.firmware import OP_SYMBOL_PREFIX

    assert c_ops.OP_PREFIX == OP_SYMBOL_PREFIX

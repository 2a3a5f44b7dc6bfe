"""Build files around a generated library, for a user's own firmware (``compile --emit cmake,zephyr``).

- ``cmake``: ``CMakeLists.txt`` defining the static library target ``tvmmcu_model`` (``model.c``, its
  directory as the public include directory, ``libm``); ``cmake/arm-none-eabi-<board>.cmake``, a
  toolchain file with the board's CPU flags; ``example/``, a minimal application to copy: ``main.c``
  fills the input (an example input, ``example_input.h``; through ``tvmmcu_model_input(k)`` for a
  library compiled with ``--io-in-arena``), calls ``tvmmcu_model_run`` and prints the outputs as hex
  bytes, with the bare-metal start-up, semihosting console and linker script that run it
  on the board's QEMU machine (a real board's own start-up and linker script replace those three).
- ``zephyr``: a Zephyr module in ``zephyr/``: ``module.yml``, ``CMakeLists.txt`` (``zephyr_library``
  over ``model.c`` when ``CONFIG_TVMMCU_MODEL``) and ``Kconfig``; for the board's Zephyr name. Zephyr
  itself is not installed by tvm-mcu: the module is written, not built.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from tvm_mcu.targets.board import Board
from tvm_mcu.targets.firmware import render_linker_script

EMITS = ("cmake", "zephyr")
# The bare-metal runtime files the example needs (targets/runtime): start-up, its console, exit codes.
_RUNTIME = ("startup.c", "console.h", "exit_codes.h", "semihost.h")


def toolchain_name(board: Board) -> str:
    return f"arm-none-eabi-{board.name}.cmake"


def _library_cmake(model: str) -> str:
    return f"""\
# The generated library of model '{model}' as a static library target, by tvm-mcu.
# Use it from your firmware's CMakeLists.txt:
#   add_subdirectory(path/to/this/directory tvmmcu_model)
#   target_link_libraries(your_firmware PRIVATE tvmmcu_model)
# and include "model.h" (tvmmcu_model_run). Cross-compile with the toolchain file in cmake/.
cmake_minimum_required(VERSION 3.16)
project(tvmmcu_model LANGUAGES C)

add_library(tvmmcu_model STATIC ${{CMAKE_CURRENT_LIST_DIR}}/model.c)
target_include_directories(tvmmcu_model PUBLIC ${{CMAKE_CURRENT_LIST_DIR}})
set_target_properties(tvmmcu_model PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
# The figures in report.json were measured at -O2 with one section per function and datum.
target_compile_options(tvmmcu_model PRIVATE -O2 -ffunction-sections -fdata-sections)
target_link_libraries(tvmmcu_model PUBLIC m)
"""


def _toolchain_cmake(board: Board) -> str:
    flags = " ".join(board.cpu_flags)
    return f"""\
# CMake toolchain file for {board.description}, by tvm-mcu.
#   cmake -DCMAKE_TOOLCHAIN_FILE=cmake/{toolchain_name(board)} -S <source> -B <build>
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_ASM_COMPILER arm-none-eabi-gcc)
# No operating system to link a test program against: CMake's compiler checks build a library.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
# The core's flags (the board profile's cpu_flags), for every object and the link.
set(CMAKE_C_FLAGS_INIT "{flags}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "{flags} --specs=nano.specs")
"""


_EXAMPLE_CMAKE = """\
# A minimal application around the model: fill the input, run it, print the outputs. Built for the
# board's QEMU machine (startup.c, semihost.h, link.ld); on a real board, keep main.c and link the
# library into your firmware with its own start-up and linker script.
#   cmake -DCMAKE_TOOLCHAIN_FILE=../cmake/{toolchain} -S . -B build && cmake --build build
#   qemu-system-arm -M {machine} -display none -serial none -monitor none -chardev stdio,id=sh0 \
#     -semihosting-config enable=on,target=native,chardev=sh0 -kernel build/example.elf
cmake_minimum_required(VERSION 3.16)
project(tvmmcu_example LANGUAGES C)

add_subdirectory(${{CMAKE_CURRENT_LIST_DIR}}/.. tvmmcu_model)
add_executable(example.elf main.c startup.c)
set_target_properties(example.elf PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
target_compile_options(example.elf PRIVATE -O2 -ffunction-sections -fdata-sections -Wall -Wextra)
target_link_libraries(example.elf PRIVATE tvmmcu_model)
target_link_options(
  example.elf PRIVATE -nostartfiles -Wl,--gc-sections -T${{CMAKE_CURRENT_LIST_DIR}}/link.ld
)
"""

# Both example applications print their outputs so (hex bytes, 32 a line).
_PRINT_HEX = """\
static void print_hex(const uint8_t *bytes, uint32_t n)
{
    static const char digits[] = "0123456789abcdef";
    char line[2 * 32 + 2];
    for (uint32_t at = 0; at < n; at += 32) {
        uint32_t k = 0;
        for (uint32_t i = at; i < n && i < at + 32; ++i) {
            line[k++] = digits[bytes[i] >> 4];
            line[k++] = digits[bytes[i] & 15];
        }
        line[k++] = '\\n';
        line[k] = '\\0';
        tvmmcu_sh_puts(line);
    }
}
"""

_EXAMPLE_MAIN = """\
/* A minimal application around the model '{model}', by tvm-mcu: fill the input, run the model, print
 * the outputs (hex bytes, packed as model.h lays them out). Replace the input with your data and the
 * printing with your use of the outputs. */
#include <stdint.h>
#include <string.h>

#include "example_input.h"
#include "model.h"
#include "semihost.h"

/* tvmmcu_model_run needs 8-byte-aligned buffers of TVMMCU_INPUT_BYTES and TVMMCU_OUTPUT_BYTES. */
static uint8_t input[TVMMCU_INPUT_BYTES] __attribute__((aligned(8)));
static uint8_t output[TVMMCU_OUTPUT_BYTES] __attribute__((aligned(8)));

{print_hex}
int main(void)
{{
    memcpy(input, tvmmcu_example_input, sizeof input); /* your sensor data here */
    const int32_t rc = tvmmcu_model_run(input, output);
    if (rc != 0) {{
        tvmmcu_sh_puts("tvmmcu_model_run failed\\n");
        return (int)rc;
    }}
    tvmmcu_sh_puts("output:\\n");
    print_hex(output, TVMMCU_OUTPUT_BYTES);
    return 0;
}}
"""


_EXAMPLE_MAIN_IO_IN_ARENA = """\
/* A minimal application around the model '{model}', by tvm-mcu: fill the inputs, run the model, print
 * the outputs (hex bytes, one output after another). The library holds its inputs and outputs in
 * its arena (compiled with --io-in-arena): tvmmcu_model_input(k) and tvmmcu_model_output(k) say where.
 * Replace the input with your data and the printing with your use of the outputs. */
#include <stdint.h>
#include <string.h>

#include "example_input.h"
#include "model.h"
#include "semihost.h"

{print_hex}
int main(void)
{{
    /* your sensor data here: every input, before every run (the run reuses their bytes) */
{fill}
    const int32_t rc = tvmmcu_model_run();
    if (rc != 0) {{
        tvmmcu_sh_puts("tvmmcu_model_run failed\\n");
        return (int)rc;
    }}
    tvmmcu_sh_puts("output:\\n");
{show}
    return 0;
}}
"""


def _example_main(model: str, n_inputs: int, n_outputs: int, io_in_arena: bool) -> str:
    if not io_in_arena:
        return _EXAMPLE_MAIN.format(model=model, print_hex=_PRINT_HEX)
    fill = "\n".join(
        f"    memcpy(tvmmcu_model_input({k}), tvmmcu_example_input + TVMMCU_INPUT{k}_OFFSET, "
        f"TVMMCU_INPUT{k}_BYTES);"
        for k in range(n_inputs)
    )
    show = "\n".join(
        f"    print_hex((const uint8_t *)tvmmcu_model_output({k}), TVMMCU_OUTPUT{k}_BYTES);"
        for k in range(n_outputs)
    )
    return _EXAMPLE_MAIN_IO_IN_ARENA.format(model=model, fill=fill, show=show, print_hex=_PRINT_HEX)


def _example_input(data: bytes) -> str:
    rows = [", ".join(str(b) for b in data[k : k + 16]) for k in range(0, len(data), 16)]
    body = ",\n    ".join(rows) or "0"
    return (
        "/* An example input for the model (tvm-mcu's seeded random input, packed as model.h lays the\n"
        " * inputs out): replace it with real data. */\n"
        "#ifndef TVMMCU_EXAMPLE_INPUT_H\n#define TVMMCU_EXAMPLE_INPUT_H\n\n#include <stdint.h>\n\n"
        f"static const uint8_t tvmmcu_example_input[{max(len(data), 1)}] = {{\n    {body}\n}};\n\n"
        "#endif\n"
    )


def _zephyr_files(model: str, board: Board) -> dict[str, str]:
    return {
        "module.yml": (
            f"# Zephyr module of the tvm-mcu library of model '{model}' (board {board.zephyr_board}).\n"
            "# Add this directory's parent to ZEPHYR_EXTRA_MODULES and set CONFIG_TVMMCU_MODEL=y.\n"
            "name: tvmmcu_model\n"
            "build:\n"
            "  cmake: zephyr\n"
            "  kconfig: zephyr/Kconfig\n"
        ),
        "CMakeLists.txt": (
            f"# The tvm-mcu library of model '{model}' as a Zephyr library.\n"
            "if(CONFIG_TVMMCU_MODEL)\n"
            "  zephyr_library_named(tvmmcu_model)\n"
            "  zephyr_library_sources(${CMAKE_CURRENT_LIST_DIR}/../model.c)\n"
            "  zephyr_include_directories(${CMAKE_CURRENT_LIST_DIR}/..)\n"
            "  zephyr_library_link_libraries(m)\n"
            "endif()\n"
        ),
        "Kconfig": (
            "config TVMMCU_MODEL\n"
            f'\tbool "tvm-mcu model {model}"\n'
            "\thelp\n"
            f"\t  The C library tvm-mcu generated for model {model} (built for {board.zephyr_board}):\n"
            "\t  tvmmcu_model_run() in model.h, a static arena, no heap.\n"
        ),
    }


def write_project(
    out_dir: Path,
    board: Board,
    model: str,
    emit: tuple[str, ...],
    example_input: bytes,
    *,
    io_in_arena: bool = False,
    n_inputs: int = 1,
    n_outputs: int = 1,
) -> None:
    """Write the build files ``emit`` names (``EMITS``) into the library directory ``out_dir``.

    ``io_in_arena``: the library holds its ``n_inputs`` inputs and ``n_outputs`` outputs in its arena
    (the example fills and prints them through ``tvmmcu_model_input``/``_output``)."""
    if "cmake" in emit:
        (out_dir / "CMakeLists.txt").write_text(_library_cmake(model))
        (out_dir / "cmake").mkdir(exist_ok=True)
        (out_dir / "cmake" / toolchain_name(board)).write_text(_toolchain_cmake(board))
        example = out_dir / "example"
        example.mkdir(exist_ok=True)
        (example / "CMakeLists.txt").write_text(
            _EXAMPLE_CMAKE.format(toolchain=toolchain_name(board), machine=board.qemu_machine)
        )
        (example / "main.c").write_text(_example_main(model, n_inputs, n_outputs, io_in_arena))
        (example / "example_input.h").write_text(_example_input(example_input))
        (example / "link.ld").write_text(render_linker_script(board))
        runtime = importlib.resources.files("tvm_mcu.targets") / "runtime"
        for name in _RUNTIME:
            (example / name).write_text((runtime / name).read_text(encoding="utf-8"))
    if "zephyr" in emit:
        zephyr = out_dir / "zephyr"
        zephyr.mkdir(exist_ok=True)
        for name, text in _zephyr_files(model, board).items():
            (zephyr / name).write_text(text)

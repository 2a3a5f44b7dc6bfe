"""``compile --emit cmake,zephyr``: the library as a CMake target with a toolchain file for the board,
and an example application a user copies. The example is configured and built with CMake (Debian's),
run on the board's QEMU machine, and prints the outputs ``tvm-mcu run`` gives for the same input; the
Zephyr module is written (Zephyr is not installed here: its files are checked, not built)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.zoo import write_model
from tvm_mcu import api
from tvm_mcu.frontend import load_model
from tvm_mcu.targets import load_board
from tvm_mcu.targets.runner import console_command

pytestmark = pytest.mark.emulator


def _run_example(out: Path, board: str, tmp_path: Path) -> bytes:
    cmake = shutil.which("cmake")
    assert cmake is not None, "cmake is installed by make setup (Debian package cmake)"
    build = tmp_path / "build"
    toolchain = out / "cmake" / f"arm-none-eabi-{board}.cmake"
    configure = [cmake, f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-S", str(out / "example"), "-B", str(build)]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    built = subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True, text=True)
    assert "warning" not in built.stdout.lower() + built.stderr.lower(), built.stdout + built.stderr
    qemu = console_command(load_board(board), build / "example.elf")
    ran = subprocess.run(qemu, check=True, capture_output=True, text=True, timeout=120)
    lines = ran.stdout.replace("\r", "").split("output:\n", 1)[1].split()
    return bytes.fromhex("".join(lines))


@pytest.mark.parametrize(
    ("name", "board"),
    [
        ("int8_resnet_block", "mps2-an386"),
        ("mobilenet_block", "mps2-an500"),
        ("int8_ds_cnn_block", "nucleo-l4r5zi"),
    ],
)
def test_the_example_builds_with_cmake_and_prints_what_run_gives(
    name: str, board: str, tmp_path: Path
) -> None:
    model_path = write_model(name, tmp_path)
    out = tmp_path / "out"
    api.compile_model(model_path, board, out, emit=("cmake", "zephyr"))
    printed = _run_example(out, board, tmp_path)
    inputs = api.model_inputs(load_model(model_path), input_path=None, seed=0)
    run = api.run_compiled(out, inputs)
    expected = b"".join(np.ascontiguousarray(o).tobytes() for o in run.outputs)
    assert len(run.outputs) == 1  # one output: packed at offset 0
    assert printed == expected
    # The Zephyr module: module.yml naming its CMake and Kconfig, a library over model.c.
    module = (out / "zephyr" / "module.yml").read_text()
    assert "cmake: zephyr" in module and "kconfig: zephyr/Kconfig" in module
    zephyr_cmake = (out / "zephyr" / "CMakeLists.txt").read_text()
    assert "zephyr_library_sources(${CMAKE_CURRENT_LIST_DIR}/../model.c)" in zephyr_cmake
    assert "config TVMMCU_MODEL" in (out / "zephyr" / "Kconfig").read_text()
    assert load_board(board).zephyr_board in module


def test_emit_names_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tvm_mcu import cli

    model_path = write_model("int8_conv_same_relu", tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["compile", str(model_path), "--board", "mps2-an386", "--emit", "cmake,bazel"])
    assert "unknown build files ['bazel']; choose from cmake, zephyr" in capsys.readouterr().err

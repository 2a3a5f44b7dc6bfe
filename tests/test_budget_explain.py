"""``--sram-budget`` (fits with the fewest extra instructions, or one clear error) and ``tvm-mcu explain``."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.zoo import write_model
from tvm_mcu.compiler import compile_module
from tvm_mcu.errors import BudgetError
from tvm_mcu.frontend import load_model
from tvm_mcu.schedule.choice import parse_bytes

MODEL = "int8_ds_cnn_block"  # peak at a depthwise/pointwise pair: in place halves it


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tvm-mcu"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    return load_model(write_model(MODEL, tmp_path_factory.mktemp("m")))


def _sram(c) -> int:
    return max(c.profile)


def test_budget_picks_the_cheapest_schedule_that_fits(imported) -> None:
    plain = compile_module(imported.mod, model_name=MODEL, in_place=False, partial_execution=False)
    best = compile_module(imported.mod, model_name=MODEL)
    assert best.schedule != "layer by layer" and _sram(best) < _sram(plain)
    # A budget the plain schedule meets: no extra instructions are spent.
    roomy = compile_module(imported.mod, model_name=MODEL, sram_budget=_sram(plain))
    assert roomy.schedule == "layer by layer" and _sram(roomy) <= _sram(plain)
    # A budget only the in-place schedule meets.
    tight = compile_module(imported.mod, model_name=MODEL, sram_budget=_sram(plain) - 1)
    assert tight.schedule != "layer by layer" and _sram(tight) <= _sram(plain) - 1


def test_budget_that_nothing_meets_names_the_bottleneck(imported) -> None:
    best = compile_module(imported.mod, model_name=MODEL)
    budget = _sram(best) - 100
    with pytest.raises(BudgetError, match=r"cannot meet the SRAM budget of \d+ B") as info:
        compile_module(imported.mod, model_name=MODEL, sram_budget=budget)
    msg = str(info.value)
    assert f"needs {_sram(best)} B" in msg and "100 B over" in msg
    peak_step = max(range(len(best.profile)), key=lambda i: (best.profile[i], -i))
    assert f"step {peak_step} '{best.graph.steps[peak_step].name}'" in msg
    # Not strict (how pruning measures a model still over its budget): the default choice, and the
    # budget it misses is not recorded as met.
    lenient = compile_module(imported.mod, model_name=MODEL, sram_budget=budget, strict_budget=False)
    assert lenient.schedule == best.schedule and lenient.sram_budget is None
    assert lenient.library.files == best.library.files


@pytest.mark.parametrize(
    "text,expected",
    [("32KiB", 32768), ("32k", 32768), ("32KB", 32000), ("1MiB", 1 << 20), ("4096", 4096), ("1.5KiB", 1536)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-3KiB", "12 parsecs", "0.3"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size|whole number"):
        parse_bytes(text)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


@pytest.mark.emulator
def test_cli_budget_error_and_explain_plot(tmp_path: Path) -> None:
    model = write_model(MODEL, tmp_path)
    out = tmp_path / "out"
    r = _cli("compile", str(model), "--board", "mps2-an386", "-o", str(out), "--sram-budget", "100")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"budget of 100 B: .* B over\. The bottleneck is step", lines[0])

    r = _cli("compile", str(model), "--board", "mps2-an386", "-o", str(out), "--sram-budget", "64KiB")
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "schedule.json").read_text())
    assert record["sram_budget_bytes"] == 65536 and record["peak_bytes"] <= 65536

    r = _cli("explain", str(out))
    assert r.returncode == 0, r.stderr
    assert "schedule:" in r.stdout and "<- peak" in r.stdout
    for step in record["steps"]:
        assert step["name"][:20] in r.stdout
    chunks = _png_chunks((out / "schedule.png").read_bytes())
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width >= 400 and height >= 300
    texts = dict(body.split(b"\x00", 1) for k, body in chunks if k == b"tEXt")
    series = texts[b"Series"].decode().split("; ")
    assert series == ["layer by layer (whole buffers)", "chosen schedule", "SRAM budget"]


def test_explain_without_a_compiled_directory_is_a_clear_error(tmp_path: Path) -> None:
    r = _cli("explain", str(tmp_path))
    assert r.returncode == 1 and "schedule.json not found" in r.stderr and "Traceback" not in r.stderr

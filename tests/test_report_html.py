"""report.html beside report.json: one self-contained page, rendered by a real browser (Debian's
headless Chromium, installed by make setup): the screenshot is not blank and the console is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.zoo import write_model
from tvm_mcu import api


def test_compile_writes_a_self_contained_page(tmp_path: Path) -> None:
    out = tmp_path / "out"
    api.compile_model(write_model("int8_resnet_block", tmp_path), "mps2-an386", out, sram_budget=64 * 1024)
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r'(src|href)="(https?:|/)', page)  # nothing fetched from elsewhere
    assert "<svg" in page and "budget 65,536 B" in page  # the memory timeline against the budget
    for heading in ("Figures", "Memory per step", "Schedule", "Operators"):
        assert f"<h2>{heading}</h2>" in page
    assert "instructions (not cycles)" in page


@pytest.mark.emulator
def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    from matplotlib.image import imread

    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is installed by make setup (Debian package chromium)"
    out = tmp_path / "out"
    v = api.verify(write_model("int8_ds_cnn_block", tmp_path), "mps2-an386", out, seed=1)
    assert v.passed
    page = (out / "report.html").read_text()
    assert "instructions (not cycles)" in page and f"{v.report.instructions:,}" in page  # run figures
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1000,1200",
            "--enable-logging=stderr",
            "--v=0",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    pixels = imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 900
    # Not blank: text, table rules and the chart's bars in several shades.
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 20
    assert (pixels[..., :3].mean(axis=-1) < 0.5).mean() > 0.01

"""docs/passes.md is generated from the passes (up to date), and its examples run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tvm_mcu.passes.doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "passes.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_reference_is_generated_from_the_passes() -> None:
    assert DOC.read_text() == render(), "regenerate: python -m tvm_mcu.passes.doc > docs/passes.md"


def test_every_exported_pass_is_listed() -> None:
    from tvm_mcu.passes import relax, tir

    text = DOC.read_text()
    for name in (*relax.__all__, *tir.__all__):
        assert f"### {name}\n" in text, name


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{k}" for k in range(len(BLOCKS))])
def test_the_examples_run(code: str, tmp_path: Path) -> None:
    assert len(BLOCKS) >= 3
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "docs/passes.md", "exec"), {"__name__": "example"})  # noqa: S102
    finally:
        os.chdir(here)

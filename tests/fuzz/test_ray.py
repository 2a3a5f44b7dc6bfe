"""The fuzzer's cases as Ray tasks on a local Ray head (the distributed extra, which make setup installs):
the same outcomes as the serial campaign."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_mcu.fuzz.campaign import Campaign, Config
from tvm_mcu.targets.board import development_boards

pytestmark = pytest.mark.emulator


def _outcomes(tmp: Path, **ray: object) -> list[tuple[str, str, str, str]]:
    boards = tuple(b.name for b in development_boards())
    config = Config(n=2, kind="float", out_dir=tmp, boards=boards, start=40, jobs=1, reduce=False, **ray)
    Campaign(config).run()
    import json

    lines = (tmp / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [(r["case"]["board"], r["verdict"], r["signature"], r["message"]) for r in rows]


def test_a_ray_campaign_gives_the_serial_outcomes(tmp_path: Path) -> None:
    serial = _outcomes(tmp_path / "serial")
    on_ray = _outcomes(tmp_path / "ray", workers=2)
    assert len(serial) == 2 and on_ray == serial
    assert all(verdict in ("pass", "refused") for _, verdict, _, _ in serial), serial


def test_without_ray_the_message_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tvm_mcu.errors import ToolchainError
    from tvm_mcu.fuzz.distributed import RayRunner

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    with pytest.raises(ToolchainError, match=r"pip install 'tvm-mcu\[distributed\]'"):
        RayRunner(workers=2, address=None, timeout_s=10)

"""Progress bars of the long jobs: drawn on a terminal's standard error, silent on a pipe or a file and
with --json; the jobs' own result lines unchanged."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from tvm_mcu.progress import Bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_redraws_in_place_on_a_terminal_and_clears() -> None:
    tty = _Terminal()
    with Bar(4, "prune", stream=tty) as bar:
        bar.update(note="level 0.500 fits")
        bar.update(3)
        drawn = tty.getvalue()
    assert drawn.count("\r") >= 2
    assert "prune [######..................] 1/4" in drawn and "level 0.500 fits" in drawn
    assert "3/4" in drawn and "<" in drawn  # an estimate of what is left
    assert tty.getvalue().endswith("\r")  # cleared: the next line starts clean


def test_a_bar_is_silent_on_a_pipe_or_when_turned_off() -> None:
    pipe = io.StringIO()
    with Bar(3, "fuzz", stream=pipe) as bar:
        bar.update()
    off = _Terminal()
    with Bar(3, "fuzz", stream=off, enabled=False) as bar:
        bar.update()
    assert pipe.getvalue() == "" and off.getvalue() == ""


def _outcome(seed: int, verdict: str) -> object:
    from tvm_mcu.fuzz.run import Case, Outcome

    return Outcome(Case(seed, "float", "mps2-an386"), verdict, "" if verdict == "pass" else "differs", "")


def test_fuzz_draws_a_bar_on_a_terminal_and_prints_only_what_did_not_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tvm_mcu.fuzz.__main__ import _Progress

    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    progress = _Progress()
    for k, verdict in enumerate(["pass", "wrong", "pass"]):
        progress(_outcome(k, verdict), k + 1, 3)  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("[2/3]") and "wrong: differs" in out[0]
    assert "fuzz [" in tty.getvalue() and "1 not passed" in tty.getvalue()


def test_fuzz_prints_a_line_per_case_on_a_pipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tvm_mcu.fuzz.__main__ import _Progress

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    progress = _Progress()
    for k in range(2):
        progress(_outcome(k, "pass"), k + 1, 2)  # type: ignore[arg-type]
    assert len(capsys.readouterr().out.splitlines()) == 2 and pipe.getvalue() == ""


def test_prune_with_json_asks_for_no_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tvm_mcu import cli, prune

    asked: dict[str, object] = {}

    def fake(*args: object, **kwargs: object) -> object:
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(prune, "prune_model", fake)
    for flags, want in (([], True), (["--json"], False)):
        asked.clear()
        status = cli.main(
            ["prune", "m.onnx", "--board", "mps2-an386", "--budget", "sram=1KiB", "-o", "o.onnx", *flags]
        )
        assert status != 0  # the fake stopped it
        assert asked["progress"] is want

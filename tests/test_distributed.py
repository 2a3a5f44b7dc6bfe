"""Work as Ray tasks on a local Ray head (the distributed extra, which make setup installs): the pool keeps
its tasks' order and errors; prune --workers compiles and builds the candidates as tasks, its bisections
speculated, and gives the serial run's result, to the byte, in fewer rounds. Without Ray, the flags give
the install command, not a traceback."""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prune_helpers import digits_cnn
from tvm_mcu import cli
from tvm_mcu.distributed import Workers
from tvm_mcu.errors import BadOptionError, ToolchainError
from tvm_mcu.prune import Budget, PruneResult, prune_model, result_json

pytestmark = pytest.mark.emulator

BOARD = "mps2-an386"
WORKERS = 3


@pytest.fixture(scope="module")
def ray_head() -> Iterator[None]:
    """One local Ray head for the module (starting one takes seconds); prune joins it, and leaves it up."""
    import ray

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _square(k: int, delay: float) -> tuple[int, int]:
    time.sleep(delay)
    return k * k, os.getpid()


def _refuse(k: int) -> int:
    if k == 3:
        raise BadOptionError(f"task {k} refused")
    return k


def test_the_pool_keeps_its_tasks_order_and_their_errors(ray_head: None) -> None:
    delays = [0.4, 0.0, 0.2, 0.0, 0.1]  # later tasks finish first
    argsets = list(enumerate(delays))
    serial = Workers()
    want = [(k * k, os.getpid()) for k in range(len(delays))]
    assert serial.width == 1 and serial.map(_square, argsets) == want
    with Workers(workers=WORKERS) as pool:
        assert pool.width == WORKERS
        on_ray = pool.map(_square, argsets)
        streamed = list(pool.imap(_square, argsets))
        with pytest.raises(BadOptionError, match="task 3 refused") as refused:
            pool.map(_refuse, [(2,), (3,), (4,)])
    assert [v for v, _ in on_ray] == [v for v, _ in streamed] == [v for v, _ in want]
    assert os.getpid() not in {pid for _, pid in on_ray}  # they ran in Ray's workers
    assert type(refused.value) is BadOptionError  # itself, not wrapped in Ray's error


def test_a_task_imports_from_the_pools_pythonpath(ray_head: None, tmp_path: Path) -> None:
    """bench/'s modules are not installed: a task of one finds it on the path the pool gives."""
    (tmp_path / "bench_helper.py").write_text("def where(x):\n    return __file__, x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import bench_helper

        with Workers(workers=WORKERS, pythonpath=(tmp_path,)) as pool:
            assert pool.map(bench_helper.where, [(1,)]) == [(str(tmp_path / "bench_helper.py"), 2)]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("bench_helper", None)


def _same(serial: PruneResult, on_ray: PruneResult, budget: Budget, tmp: Path) -> None:
    assert on_ray.keep == serial.keep and on_ray.widths == serial.widths
    assert on_ray.before == serial.before and on_ray.after == serial.after
    assert on_ray.measured == serial.measured and on_ray.sparsity == serial.sparsity
    assert result_json(on_ray, budget) == result_json(serial, budget)
    assert (tmp / "ray.onnx").read_bytes() == (tmp / "serial.onnx").read_bytes()
    assert on_ray.rounds < serial.rounds == serial.compiles <= on_ray.compiles


def test_l1_on_ray_gives_the_serial_widths_and_figures_in_fewer_rounds(
    ray_head: None, tmp_path: Path
) -> None:
    model = digits_cnn(tmp_path / "digits.onnx")
    budget = Budget(macs=40_000)
    options = {"board": BOARD, "budget": budget, "int8": False, "method": "l1", "search_steps": 4}
    serial = prune_model(model, out_path=tmp_path / "serial.onnx", **options)  # type: ignore[arg-type]
    on_ray = prune_model(model, out_path=tmp_path / "ray.onnx", workers=WORKERS, **options)  # type: ignore[arg-type]
    assert any(kept < of for kept, of in serial.widths.values()) and not serial.after.excess(budget)
    _same(serial, on_ray, budget, tmp_path)
    # Original, narrowest, then the narrowest level and four steps: serially 7 rounds; three at once
    # take the level and two steps, then the last two steps.
    assert (serial.rounds, on_ray.rounds) == (7, 4)


def test_without_ray_the_flags_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = digits_cnn(tmp_path / "digits.onnx")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    with pytest.raises(ToolchainError, match=r"pip install 'tvm-mcu\[distributed\]'"):
        prune_model(model, board=BOARD, budget=Budget(macs=1), out_path=tmp_path / "x.onnx", workers=2)
    argv = ["prune", str(model), "--board", BOARD, "--budget", "macs=1", "-o", str(tmp_path / "x.onnx")]
    assert cli.main([*argv, "--ray-address", "auto"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tvm-mcu: error: --workers/--ray-address") and "Traceback" not in err


def test_a_cluster_that_is_not_there_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(**options: object) -> None:
        raise ConnectionError("Could not find any running Ray instance.")  # ray.init's own words

    no_cluster = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", no_cluster)
    with pytest.raises(ToolchainError, match="cannot join the Ray cluster at --ray-address auto: Could not"):
        Workers(address="auto")

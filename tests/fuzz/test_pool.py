"""Worker processes: a case's answer comes back, a worker killed by a signal or overrunning its time
becomes a crash outcome, and the pool carries on with a fresh worker.

The handlers are module-level functions (the spawned workers import them by name); no TVM is involved.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tvm_mcu.fuzz.pool import Task, WorkerPool
from tvm_mcu.fuzz.run import CRASH, PASS, Case, Outcome


def _answer(task: Task) -> Outcome:
    return Outcome(task.case, PASS, f"pid {os.getpid()}", PASS)


def _by_seed(task: Task) -> Outcome:
    """Seed 1 segfaults, seed 2 hangs, others answer."""
    if task.case.seed == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    if task.case.seed == 2:
        time.sleep(60)
    return _answer(task)


def _task(seed: int, tmp: Path) -> Task:
    return Task(Case(seed, "float", "mps2-an386"), b"", tmp / str(seed))


def test_a_worker_serves_many_cases(tmp_path: Path) -> None:
    pool = WorkerPool(1, tmp_path / "logs", handler=_answer)
    try:
        first, second = pool.run(_task(0, tmp_path)), pool.run(_task(3, tmp_path))
    finally:
        pool.close()
    assert first.verdict == second.verdict == PASS
    assert first.message == second.message  # the same worker process answered both


def test_death_and_timeout_are_crashes_and_the_pool_survives(tmp_path: Path) -> None:
    pool = WorkerPool(1, tmp_path / "logs", handler=_by_seed, timeout_s=3)
    try:
        before = pool.run(_task(0, tmp_path))
        died = pool.run(_task(1, tmp_path))
        hung = pool.run(_task(2, tmp_path))
        after = pool.run(_task(0, tmp_path))
    finally:
        pool.close()
    assert died.verdict == CRASH and died.signature == "crash:worker died:signal SIGSEGV"
    assert hung.verdict == CRASH and hung.signature == "crash:timeout" and 3 <= hung.seconds < 30
    assert after.verdict == PASS and after.message != before.message  # a new worker
    assert (tmp_path / "logs" / "worker-0.log").is_file()

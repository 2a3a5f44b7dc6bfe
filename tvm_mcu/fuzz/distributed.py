"""The fuzzer's cases as Ray tasks (``--workers N`` on this machine, ``--ray-address`` for a cluster): the
optional extra ``pip install 'tvm-mcu[distributed]'`` (:mod:`tvm_mcu.distributed`); without it a campaign
runs in local worker processes (``pool.WorkerPool``), the default.

A task runs :func:`tvm_mcu.fuzz.run.execute` on a Ray worker, exactly as a local worker process does, in
the case's directory (on a cluster, the output directory must be on storage every node sees). A task
that overruns the case timeout is cancelled and gives the same crash outcome as a local worker that
overruns; so a Ray campaign's outcomes equal the serial campaign's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tvm_mcu.distributed import Workers
from tvm_mcu.fuzz.pool import Task
from tvm_mcu.fuzz.run import CRASH, Outcome, execute


def _execute(case: Any, model: bytes, work: str) -> Outcome:
    return execute(case, model, Path(work))


class RayRunner:
    """Runs tasks as Ray tasks, one CPU each: on a local Ray started with ``workers`` CPUs, or on the
    cluster at ``address``; the same interface as ``WorkerPool`` (``run``, ``close``)."""

    def __init__(self, *, workers: int | None, address: str | None, timeout_s: float) -> None:
        self._workers = Workers(workers=workers or (None if address else 1), address=address)
        self._ray = self._workers.ray
        self._timeout_s = timeout_s
        self._task = self._workers.remote(_execute)

    def run(self, task: Task) -> Outcome:
        ray = self._ray
        start = time.perf_counter()
        ref = self._task.remote(task.case, task.model, str(task.work_dir))
        try:
            outcome: Outcome = ray.get(ref, timeout=self._timeout_s)
            return outcome
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return Outcome(
                task.case,
                CRASH,
                f"timeout: the case ran for more than {self._timeout_s:.0f} s",
                f"{CRASH}:timeout",
                seconds=time.perf_counter() - start,
            )
        except ray.exceptions.RayError as exc:  # the task's worker died, or Ray lost it
            return Outcome(
                task.case,
                CRASH,
                f"the Ray task died while compiling or running the case ({type(exc).__name__})",
                f"{CRASH}:ray task died:{type(exc).__name__}",
                seconds=time.perf_counter() - start,
            )

    def close(self) -> None:
        self._workers.close()

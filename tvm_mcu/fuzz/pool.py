"""Worker processes that run fuzz cases: importing TVM takes seconds, so a worker runs many cases; a case
that kills its worker (a segfault in TVM) or overruns its time only costs that worker.

Each worker is a spawned process in a session of its own, so on a timeout the whole group (the worker,
its gcc and QEMU children) is killed by its id; the next case starts a fresh worker. ``WorkerPool.run`` is
thread-safe and blocks until the case is done: a caller runs ``jobs`` cases at once from a thread pool.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import attrs

from tvm_mcu.fuzz.run import CRASH, Case, Outcome, execute

logger = logging.getLogger(__name__)

# A fuzz model compiles and runs in seconds; minutes mean an endless loop (QEMU has its own 120 s limit).
CASE_TIMEOUT_S = 300.0


@attrs.frozen
class Task:
    """A case with the float model it compiles and the directory it works in."""

    case: Case
    model: bytes = attrs.field(repr=False)
    work_dir: Path


def run_task(task: Task) -> Outcome:
    """What a worker does with a task: compile, run and classify the case."""
    return execute(task.case, task.model, task.work_dir)


Handler = Callable[[Task], Outcome]


def _worker_main(conn: Connection, log_path: str, handler: Handler) -> None:
    """Run tasks from ``conn`` through ``handler`` until it closes; stdout and stderr (TVM's C++ logging
    included) go to the worker's log file."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        logger.info("case %s in %s", task.case, task.work_dir)
        conn.send(handler(task))


class _Worker:
    def __init__(self, ctx: Any, log_path: Path, handler: Handler) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, str(log_path), handler), daemon=True)
        self.process.start()
        child.close()

    def kill(self) -> None:
        """Kill the worker's process group (itself and any gcc or QEMU it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.kill()


class WorkerPool:
    """``jobs`` worker processes, started when first needed, replaced when one dies. ``handler`` (a
    module-level function: it is pickled by name into the spawned workers) runs each task."""

    def __init__(
        self, jobs: int, log_dir: Path, *, timeout_s: float = CASE_TIMEOUT_S, handler: Handler = run_task
    ) -> None:
        self._handler = handler
        self._ctx = multiprocessing.get_context("spawn")
        self._log_dir = Path(log_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._timeout_s = timeout_s
        self._slots: queue.Queue[tuple[int, _Worker | None]] = queue.Queue()
        for k in range(jobs):
            self._slots.put((k, None))

    def run(self, task: Task) -> Outcome:
        """Run ``task`` on an idle worker; a worker that dies or overruns gives a crash outcome."""
        slot, worker = self._slots.get()
        try:
            if worker is None:
                worker = _Worker(self._ctx, self._log_dir / f"worker-{slot}.log", self._handler)
            start = time.perf_counter()
            worker.conn.send(task)
            ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], self._timeout_s)
            seconds = time.perf_counter() - start
            if worker.conn in ready:
                with contextlib.suppress(EOFError):  # EOF: it died instead of answering
                    outcome: Outcome = worker.conn.recv()
                    return outcome
            worker.process.join(timeout=1)
            code = worker.process.exitcode
            worker.kill()
            worker = None
            if not ready:
                return Outcome(
                    task.case,
                    CRASH,
                    f"timeout: the case ran for more than {self._timeout_s:.0f} s",
                    f"{CRASH}:timeout",
                    seconds=seconds,
                )
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
            return Outcome(
                task.case,
                CRASH,
                f"the worker process died ({how}) while compiling or running the case",
                f"{CRASH}:worker died:{how}",
                seconds=seconds,
            )
        finally:
            self._slots.put((slot, worker))

    def close(self) -> None:
        while not self._slots.empty():
            _, worker = self._slots.get_nowait()
            if worker is not None:
                worker.stop()

"""Measurement work as Ray tasks (``--workers N`` on this machine, ``--ray-address`` for a cluster): the
optional extra ``pip install 'tvm-mcu[distributed]'``, used by ``prune``, ``python -m tvm_mcu.fuzz`` and
``bench/run_bench.py``. Without those flags every task runs in this process, one after another (the
default), and gives the same results.

A task is a module-level function (pickled by name) called with picklable arguments: file paths,
options, attrs records, never TVM objects. On a cluster every path a task reads or writes must be on
storage that every node sees. Ray is started here with ``workers`` CPUs, or joined at ``address``;
:meth:`Workers.close` shuts down only a Ray that this process started.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tvm_mcu.errors import BadOptionError, ToolchainError, TvmMcuError

T = TypeVar("T")

INSTALL = (
    "pip install 'tvm-mcu[distributed]' (or, in the repository, .venv/bin/pip install -e '.[distributed]')"
)


def ray_module() -> Any:
    """The ``ray`` package, or a ToolchainError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ToolchainError(
            f"--workers/--ray-address run the work as Ray tasks: install Ray with {INSTALL}"
        ) from exc
    return ray


class Workers:
    """Where tasks run: in this process, one after another (neither ``workers`` nor ``address``), or as
    Ray tasks of one CPU each on a local Ray started with ``workers`` CPUs, or on the cluster at
    ``address``. :meth:`submit` starts a task, :meth:`gather` waits for several, in their order."""

    def __init__(
        self, *, workers: int | None = None, address: str | None = None, pythonpath: Sequence[Path] = ()
    ) -> None:
        if workers is not None and workers < 1:
            raise BadOptionError(f"--workers {workers}: give 1 or more")
        self.ray: Any = None
        self._owns = False
        self._remote: dict[Callable[..., Any], Any] = {}
        self.width = 1  # how many tasks run at once
        self._preloading: list[Any] = []
        # Directories a task imports from besides the installed packages (bench/'s modules): on the
        # workers' PYTHONPATH, so a function of such a module is found by its name there.
        self._env: dict[str, Any] = {}
        if pythonpath:
            paths = [str(p) for p in pythonpath] + [v for v in [os.environ.get("PYTHONPATH")] if v]
            self._env = {"runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}}
        if not workers and not address:
            return
        ray = ray_module()
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            # Ray's own start-up lines stay out of the command's output (its warnings do not).
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if address:
                try:
                    ray.init(address=address, **options)
                except ConnectionError as exc:
                    raise ToolchainError(
                        f"cannot join the Ray cluster at --ray-address {address}: {exc} (start one with "
                        "`ray start --head`, or give its address)"
                    ) from None
            else:
                ray.init(num_cpus=workers, **options)
        self.width = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    @property
    def serial(self) -> bool:
        return self.ray is None

    def remote(self, fn: Callable[..., Any]) -> Any:
        """``fn`` as a Ray remote function of one CPU, never retried (a task that fails, fails)."""
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0, **self._env)(fn)
        return self._remote[fn]

    def submit(self, fn: Callable[..., T], *args: Any) -> Any:
        """Start ``fn(*args)``: a Ray object reference, or (serial) its value, computed now."""
        if self.serial:
            return fn(*args)
        return self.remote(fn).remote(*args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The values of ``handles`` (from :meth:`submit`), in their order. A task's TvmMcuError is
        raised here as itself (one clear line), not wrapped in Ray's error."""
        if self.serial:
            return list(handles)
        try:
            return list(self.ray.get(list(handles)))
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, TvmMcuError):
                raise exc.cause from None
            raise

    def preload(self, module: str) -> None:
        """Import ``module`` in each worker now, without waiting: a worker's first task otherwise pays
        for importing TVM (seconds), and the first round of a search would pay it ``width`` times over."""
        if not self.serial:
            self._preloading = [self.submit(_import, module) for _ in range(self.width)]

    def map(self, fn: Callable[..., T], argsets: Iterable[Sequence[Any]]) -> list[T]:
        """``[fn(*args) for args in argsets]``, the calls run as tasks at once (serial: in order)."""
        return self.gather([self.submit(fn, *args) for args in argsets])

    def imap(self, fn: Callable[..., T], argsets: Iterable[Sequence[Any]]) -> Iterator[T]:
        """The values of :meth:`map` one by one, in order, each as soon as it is ready: on Ray every
        call starts at once; serially each is computed when it is asked for (so a caller's progress
        lines come as they did before)."""
        if self.serial:
            for args in argsets:
                yield fn(*args)
            return
        for handle in [self.submit(fn, *args) for args in argsets]:
            yield self.gather([handle])[0]

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()
            self._owns = False

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _import(module: str) -> None:
    importlib.import_module(module)

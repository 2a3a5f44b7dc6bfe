"""A fuzz campaign: N seeds, their variants on rotating boards, run in worker processes, failures reduced,
a summary written.

Layout of the output directory::

    DIR/cases/<seed>_<variant>/model.onnx            the float model of the seed
    DIR/cases/<seed>_<variant>/model_<variant>.onnx  the quantised model the compiler saw (int8)
    DIR/cases/<seed>_<variant>/build/                the compiled library and firmware (failures only)
    DIR/cases/<seed>_<variant>/repro_<seed>_<variant>.onnx       the reduced float model
    DIR/cases/<seed>_<variant>/repro_<seed>_<variant>_q.onnx     ... quantised as the compiler saw it
    DIR/cases/<seed>_<variant>/repro_<seed>_<variant>.json       verdict, message, how to reproduce
    DIR/results.jsonl                                one outcome per line, as cases finish
    DIR/summary.json, DIR/summary.md                 counts per verdict, variant and board; failures
    DIR/logs/worker-<k>.log                          what the workers (and TVM) logged

Failures with the same signature are one bug seen several times: the first ``per_signature`` of each are
reduced, the others' JSON points at that reproducer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import onnx

from tvm_mcu.fuzz.distributed import RayRunner
from tvm_mcu.fuzz.generate import random_cnn
from tvm_mcu.fuzz.pool import CASE_TIMEOUT_S, Task, WorkerPool
from tvm_mcu.fuzz.quantize import FLOAT, PRUNE
from tvm_mcu.fuzz.reduce import DEFAULT_MAX_TESTS, reduce_model
from tvm_mcu.fuzz.run import Case, Outcome, board_for, int8_variants_for
from tvm_mcu.fuzz.summary import Repro, Summary, render_markdown, reported, summarise

logger = logging.getLogger(__name__)

KINDS = ("float", "int8", "prune")
# Where `make` installs the project (the reproduce commands are run from the project's root).
VENV_BIN = ".venv/bin"


@attrs.frozen
class Config:
    """What a campaign runs. ``variants`` empty: the kind's own (float; or per seed, tvm-mcu and one of
    ort-s8 / ort-u8)."""

    n: int
    kind: str
    out_dir: Path
    boards: tuple[str, ...]
    start: int = 0
    jobs: int = 2
    variants: tuple[str, ...] = ()
    reduce: bool = True
    max_tests: int = DEFAULT_MAX_TESTS
    per_signature: int = 1
    timeout_s: float = CASE_TIMEOUT_S
    # Run the cases as Ray tasks (fuzz.distributed): on a local Ray with this many CPUs, or on the
    # cluster at ``ray_address``; neither: local worker processes (``jobs`` of them).
    workers: int | None = None
    ray_address: str | None = None
    # ``compile --compress-weights`` of every case ("off" or "all").
    compress: str = "off"


def cases_for(config: Config) -> list[Case]:
    cases = []
    for seed in range(config.start, config.start + config.n):
        own = {"float": (FLOAT,), "prune": (PRUNE,)}.get(config.kind) or int8_variants_for(seed)
        variants = config.variants or own
        cases += [
            Case(seed, v, board_for(seed, k, config.boards), config.compress) for k, v in enumerate(variants)
        ]
    return cases


def model_bytes(seed: int) -> bytes:
    return random_cnn(seed).SerializeToString(deterministic=True)


def outcome_json(o: Outcome) -> dict[str, object]:
    return {**attrs.asdict(o, recurse=True), "failed": o.failed}


def reproduce_commands(case: Case, model: Path, quantized: Path | None) -> list[str]:
    """Shell commands, from the project's root, that re-run a case: the fuzzer's own (which quantises the
    float model again as the variant says), and plain ``tvm-mcu verify`` on the model the compiler saw."""
    fuzz = f"{VENV_BIN}/python -m tvm_mcu.fuzz --model {model} --variant {case.variant}"
    compiled = quantized if quantized is not None else model
    coded = f" --compress-weights {case.compress}" if case.compress != "off" else ""
    return [
        f"{fuzz} --board {case.board} --seed {case.seed}{coded}",
        f"{VENV_BIN}/tvm-mcu verify {compiled} --board {case.board} --seed {case.seed}{coded}",
    ]


class Campaign:
    """Runs the cases of a :class:`Config`, reduces its failures and writes the summary."""

    def __init__(self, config: Config, progress: Callable[[Outcome, int, int], None] | None = None) -> None:
        self.config = config
        self.progress = progress
        self.cases_dir = config.out_dir / "cases"
        self.pool: WorkerPool | RayRunner
        if config.workers or config.ray_address:
            self.pool = RayRunner(
                workers=config.workers, address=config.ray_address, timeout_s=config.timeout_s
            )
        else:
            self.pool = WorkerPool(config.jobs, config.out_dir / "logs", timeout_s=config.timeout_s)

    def run(self) -> Summary:
        start = time.perf_counter()
        cfg = self.config
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        cases = cases_for(cfg)
        results_path = cfg.out_dir / "results.jsonl"
        results_path.write_text("")
        outcomes: list[Outcome] = []
        try:
            # A thread per case in flight: each waits on its worker process or Ray task.
            with concurrent.futures.ThreadPoolExecutor(cfg.workers or cfg.jobs) as ex:
                for outcome in ex.map(self._run_case, cases):
                    outcomes.append(outcome)
                    with results_path.open("a") as f:
                        f.write(json.dumps(outcome_json(outcome)) + "\n")
                    if self.progress:
                        self.progress(outcome, len(outcomes), len(cases))
            repros = self._reduce_all(outcomes) if cfg.reduce else {}
        finally:
            self.pool.close()
        summary = summarise(cfg.kind, cfg.start, cfg.n, outcomes, repros, time.perf_counter() - start)
        record = {"config": {k: str(v) for k, v in attrs.asdict(cfg).items()}, **summary.to_json()}
        (cfg.out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
        (cfg.out_dir / "summary.md").write_text(render_markdown(summary))
        return summary

    def _case_dir(self, case: Case) -> Path:
        return self.cases_dir / case.name

    def _run_case(self, case: Case) -> Outcome:
        work = self._case_dir(case)
        shutil.rmtree(work, ignore_errors=True)
        outcome = self.pool.run(Task(case, model_bytes(case.seed), work))
        if not reported(outcome):
            shutil.rmtree(work / "build", ignore_errors=True)  # only failures keep their firmware
        return outcome

    # ------------------------------------------------------------------------------- reduction
    def _reduce_all(self, outcomes: Sequence[Outcome]) -> dict[str, Repro]:
        """Reduce the first ``per_signature`` failures of each signature; returns {case name: Repro}."""
        chosen: list[Outcome] = []
        per_sig: collections.Counter[str] = collections.Counter()
        for o in outcomes:
            if reported(o) and per_sig[o.signature] < self.config.per_signature:
                per_sig[o.signature] += 1
                chosen.append(o)
        repros: dict[str, Repro] = {}
        with concurrent.futures.ThreadPoolExecutor(self.config.jobs) as ex:
            for o, repro in zip(chosen, ex.map(self.reduce_one, chosen), strict=True):
                repros[o.case.name] = repro
        by_sig = {o.signature: repros[o.case.name] for o in chosen}
        for o in outcomes:
            if reported(o) and o.case.name not in repros:
                self._write_record(o, by_sig[o.signature], own=False)
        return repros

    def reduce_one(self, outcome: Outcome) -> Repro:
        case = outcome.case
        logger.info("reducing %s on %s: %s", case.name, case.board, outcome.signature)
        original = onnx.load_from_string(model_bytes(case.seed))
        scratch = self.config.out_dir / "reduce" / case.name
        counter = itertools.count()

        def still_fails(model: onnx.ModelProto) -> bool:
            work = scratch / f"t{next(counter)}"
            got = self.pool.run(Task(case, model.SerializeToString(deterministic=True), work))
            shutil.rmtree(work, ignore_errors=True)
            return got.signature == outcome.signature

        reduction = reduce_model(original, still_fails, max_tests=self.config.max_tests)
        shutil.rmtree(scratch, ignore_errors=True)
        # Run the reduced model once more, in the case's directory, for its own message and files.
        stem = f"repro_{case.name}"
        work = self._case_dir(case) / f"{stem}_run"
        shutil.rmtree(work, ignore_errors=True)
        final = self.pool.run(Task(case, reduction.model.SerializeToString(deterministic=True), work))
        model_path = self._case_dir(case) / f"{stem}.onnx"
        model_path.write_bytes(reduction.model.SerializeToString(deterministic=True))
        quantized = None
        if case.variant != FLOAT and (work / f"model_{case.variant}.onnx").is_file():
            quantized = self._case_dir(case) / f"{stem}_q.onnx"
            shutil.copyfile(work / f"model_{case.variant}.onnx", quantized)
        repro = Repro(
            model_path,
            quantized,
            self._case_dir(case) / f"{stem}.json",
            len(original.graph.node),
            len(reduction.model.graph.node),
            reduction.tests,
        )
        self._write_record(outcome, repro, own=True, final=final, steps=reduction.steps)
        return repro

    def _write_record(
        self,
        outcome: Outcome,
        repro: Repro,
        *,
        own: bool,
        final: Outcome | None = None,
        steps: tuple[str, ...] = (),
    ) -> None:
        case = outcome.case
        record: dict[str, object] = {
            "case": attrs.asdict(case),
            "verdict": outcome.verdict,
            "message": outcome.message,
            "signature": outcome.signature,
            "bad_message": outcome.bad_message,
            "detail": outcome.detail,
            "original": str(self._case_dir(case) / "model.onnx"),
            "reproducer": str(repro.model),
            "reproducer_quantized": str(repro.quantized) if repro.quantized else None,
            "reduced_here": own,
            "nodes": [repro.nodes_before, repro.nodes_after],
            "reducer_tests": repro.tests,
        }
        if own:
            record["reduction_steps"] = list(steps)
            if final is not None:
                record["reproducer_outcome"] = {
                    "verdict": final.verdict,
                    "message": final.message,
                    "signature": final.signature,
                    "same_signature": final.signature == outcome.signature,
                }
            record["reproduce"] = reproduce_commands(case, repro.model, repro.quantized)
            repro.record.write_text(json.dumps(record, indent=2) + "\n")
        else:
            record["reproduce"] = reproduce_commands(case, self._case_dir(case) / "model.onnx", None)
            path = self._case_dir(case) / f"failure_{case.name}.json"
            path.write_text(json.dumps(record, indent=2) + "\n")

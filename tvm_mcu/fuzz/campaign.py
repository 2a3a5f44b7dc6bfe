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
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import onnx

from tvm_mcu.fuzz.generate import random_cnn
from tvm_mcu.fuzz.pool import CASE_TIMEOUT_S, Task, WorkerPool
from tvm_mcu.fuzz.quantize import FLOAT
from tvm_mcu.fuzz.reduce import DEFAULT_MAX_TESTS, reduce_model
from tvm_mcu.fuzz.run import (
    REFERENCE_FAILED,
    REFUSED,
    VERDICTS,
    Case,
    Outcome,
    board_for,
    int8_variants_for,
)

logger = logging.getLogger(__name__)

KINDS = ("float", "int8")


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


@attrs.frozen
class Repro:
    """A failure's reproducer files (the reduced float model, and as quantised) and its record."""

    model: Path
    quantized: Path | None
    record: Path
    nodes_before: int
    nodes_after: int
    tests: int


def cases_for(config: Config) -> list[Case]:
    cases = []
    for seed in range(config.start, config.start + config.n):
        own = (FLOAT,) if config.kind == "float" else int8_variants_for(seed)
        variants = config.variants or own
        cases += [Case(seed, v, board_for(seed, k, config.boards)) for k, v in enumerate(variants)]
    return cases


def model_bytes(seed: int) -> bytes:
    return random_cnn(seed).SerializeToString(deterministic=True)


def outcome_json(o: Outcome) -> dict[str, object]:
    return {**attrs.asdict(o, recurse=True), "failed": o.failed}


def reproduce_commands(case: Case, model: Path, quantized: Path | None) -> list[str]:
    """Shell commands that re-run a case: the fuzzer's own (re-quantising), and plain ``tvm-mcu verify``."""
    py = f"{Path(sys.executable).name} -m tvm_mcu.fuzz"
    commands = [f"{py} --model {model} --variant {case.variant} --board {case.board} --seed {case.seed}"]
    compiled = quantized if quantized is not None else model
    commands.append(f"tvm-mcu verify {compiled} --board {case.board} --seed {case.seed}")
    return commands


class Campaign:
    """Runs the cases of a :class:`Config`, reduces its failures and writes the summary."""

    def __init__(self, config: Config, progress: Callable[[Outcome, int, int], None] | None = None) -> None:
        self.config = config
        self.progress = progress
        self.cases_dir = config.out_dir / "cases"
        self.pool = WorkerPool(config.jobs, config.out_dir / "logs", timeout_s=config.timeout_s)

    def run(self) -> dict[str, object]:
        start = time.perf_counter()
        cfg = self.config
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        cases = cases_for(cfg)
        results_path = cfg.out_dir / "results.jsonl"
        results_path.write_text("")
        outcomes: list[Outcome] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(cfg.jobs) as ex:
                for outcome in ex.map(self._run_case, cases):
                    outcomes.append(outcome)
                    with results_path.open("a") as f:
                        f.write(json.dumps(outcome_json(outcome)) + "\n")
                    if self.progress:
                        self.progress(outcome, len(outcomes), len(cases))
            repros = self._reduce_all(outcomes) if cfg.reduce else {}
        finally:
            self.pool.close()
        summary = summarise(cfg, outcomes, repros, time.perf_counter() - start)
        (cfg.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (cfg.out_dir / "summary.md").write_text(render_markdown(summary))
        return summary

    def _case_dir(self, case: Case) -> Path:
        return self.cases_dir / case.name

    def _run_case(self, case: Case) -> Outcome:
        work = self._case_dir(case)
        shutil.rmtree(work, ignore_errors=True)
        outcome = self.pool.run(Task(case, model_bytes(case.seed), work))
        if outcome.verdict not in (REFERENCE_FAILED,) and not outcome.failed:
            shutil.rmtree(work / "build", ignore_errors=True)  # only failures keep their firmware
        return outcome

    # ------------------------------------------------------------------------------- reduction
    def _reduce_all(self, outcomes: Sequence[Outcome]) -> dict[str, Repro]:
        """Reduce the first ``per_signature`` failures of each signature; returns {case name: Repro}."""
        chosen: list[Outcome] = []
        per_sig: collections.Counter[str] = collections.Counter()
        for o in outcomes:
            if (o.failed or o.verdict == REFERENCE_FAILED) and per_sig[
                o.signature
            ] < self.config.per_signature:
                per_sig[o.signature] += 1
                chosen.append(o)
        repros: dict[str, Repro] = {}
        with concurrent.futures.ThreadPoolExecutor(self.config.jobs) as ex:
            for o, repro in zip(chosen, ex.map(self.reduce_one, chosen), strict=True):
                repros[o.case.name] = repro
        by_sig = {o.signature: repros[o.case.name] for o in chosen}
        for o in outcomes:
            if (o.failed or o.verdict == REFERENCE_FAILED) and o.case.name not in repros:
                self._write_record(o, by_sig[o.signature], own=False)
        return repros

    def reduce_one(self, outcome: Outcome) -> Repro:
        case = outcome.case
        original = onnx.load_from_string(model_bytes(case.seed))
        scratch = self.config.out_dir / "reduce" / case.name
        counter = iter(range(1_000_000))

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


# ----------------------------------------------------------------------------------- summary
def summarise(
    config: Config, outcomes: Sequence[Outcome], repros: dict[str, Repro], seconds: float
) -> dict[str, object]:
    def counts(key: Callable[[Outcome], str]) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for o in outcomes:
            row = table.setdefault(key(o), dict.fromkeys(VERDICTS, 0))
            row[o.verdict] += 1
        return dict(sorted(table.items()))

    by_sig: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        if o.failed or o.verdict == REFERENCE_FAILED:
            by_sig[o.signature].append(o)
    signatures = []
    for sig, group in sorted(by_sig.items(), key=lambda kv: -len(kv[1])):
        repro = next((repros[o.case.name] for o in group if o.case.name in repros), None)
        signatures.append(
            {
                "signature": sig,
                "verdict": group[0].verdict,
                "count": len(group),
                "cases": [o.case.name for o in group],
                "message": group[0].message,
                "reproducer": str(repro.model) if repro else None,
                "reproducer_quantized": str(repro.quantized) if repro and repro.quantized else None,
                "nodes": [repro.nodes_before, repro.nodes_after] if repro else None,
            }
        )
    refusals = collections.Counter(o.message for o in outcomes if o.verdict == REFUSED and not o.bad_message)
    total = dict.fromkeys(VERDICTS, 0)
    for o in outcomes:
        total[o.verdict] += 1
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in attrs.asdict(config).items()},
        "models": len(outcomes),
        "seconds": round(seconds, 1),
        "counts": total,
        "bad_refusals": sum(1 for o in outcomes if o.verdict == REFUSED and o.bad_message),
        "per_variant": counts(lambda o: o.case.variant),
        "per_board": counts(lambda o: o.case.board),
        "signatures": signatures,
        "refusals": [{"message": m, "count": c} for m, c in refusals.most_common()],
        "failures": [
            {
                "case": o.case.name,
                "board": o.case.board,
                "verdict": o.verdict,
                "message": o.message,
                "bad_message": o.bad_message,
                "signature": o.signature,
            }
            for o in outcomes
            if o.failed or o.verdict == REFERENCE_FAILED
        ],
        "quantizer_failures": [
            {"case": o.case.name, "message": o.message} for o in outcomes if o.verdict == "quantizer failed"
        ],
    }


def _table(title: str, rows: dict[str, dict[str, int]]) -> list[str]:
    lines = [f"| {title} | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    lines += [f"| {k} | " + " | ".join(str(r[v]) for v in VERDICTS) + " |" for k, r in rows.items()]
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict[str, object]) -> str:
    """The summary as markdown: counts, tables per variant and board, failures by signature, refusals."""
    cfg = summary["config"]
    assert isinstance(cfg, dict)
    counts = summary["counts"]
    assert isinstance(counts, dict)
    out = [
        f"# Fuzz run: {summary['models']} models, kind {cfg['kind']}, seeds {cfg['start']}.."
        f"{int(cfg['start']) + int(cfg['n']) - 1}",
        "",
        ", ".join(f"{k}: {v}" for k, v in counts.items())
        + f" (refusals with a bad message: {summary['bad_refusals']}); {summary['seconds']} s",
        "",
        *_table("variant", summary["per_variant"]),  # type: ignore[arg-type]
        "",
        *_table("board", summary["per_board"]),  # type: ignore[arg-type]
        "",
        "## Failures by signature",
        "",
    ]
    signatures = summary["signatures"]
    assert isinstance(signatures, list)
    if not signatures:
        out.append("None.")
    for s in signatures:
        out += [
            f"- **{s['verdict']}** x{s['count']} `{_md(s['signature'])}`",
            f"  - {_md(s['message'])}",
            f"  - cases: {', '.join(s['cases'])}",
            f"  - reproducer: {s['reproducer'] or '(not reduced)'}"
            + (f" ({s['nodes'][0]} -> {s['nodes'][1]} nodes)" if s["nodes"] else ""),
        ]
        if s["reproducer_quantized"]:
            out.append(f"  - as quantised: {s['reproducer_quantized']}")
    out += ["", "## Refusals", ""]
    refusals = summary["refusals"]
    assert isinstance(refusals, list)
    out += [f"- x{r['count']}: {_md(r['message'])}" for r in refusals] or ["None."]
    quant = summary["quantizer_failures"]
    assert isinstance(quant, list)
    if quant:
        out += ["", "## Quantiser failures", ""]
        out += [f"- {q['case']}: {_md(q['message'])}" for q in quant]
    return "\n".join(out) + "\n"

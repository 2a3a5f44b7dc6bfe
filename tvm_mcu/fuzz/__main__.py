"""``python -m tvm_mcu.fuzz``: the fuzzer's command line (``make fuzz`` runs it).

    python -m tvm_mcu.fuzz --n 300 --kind float --out out/fuzz/float
    python -m tvm_mcu.fuzz --n 150 --kind int8 --jobs 2
    python -m tvm_mcu.fuzz --n 40 --kind prune
    python -m tvm_mcu.fuzz --model repro_12_ort-s8.onnx --variant ort-s8 --board mps2-an386 --seed 12

The first forms run a campaign (see ``campaign.py``) and print the counts; the last runs one case in this
process and prints its outcome (what a reproducer's JSON tells you to run). Exit status: 0 when no case
failed (wrong, crash or a badly worded refusal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from tvm_mcu.fuzz.campaign import KINDS, Campaign, Config
from tvm_mcu.fuzz.quantize import VARIANTS
from tvm_mcu.fuzz.reduce import DEFAULT_MAX_TESTS
from tvm_mcu.fuzz.run import Case, Outcome, execute
from tvm_mcu.progress import Bar


def _parser() -> argparse.ArgumentParser:
    from tvm_mcu.targets.board import development_boards, list_boards

    boards = [b.name for b in list_boards()]
    rotation = [b.name for b in development_boards()]
    p = argparse.ArgumentParser(prog="python -m tvm_mcu.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="number of seeds (default 100)")
    p.add_argument("--kind", choices=KINDS, default="float")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--out", type=Path, help="output directory (default out/fuzz/KIND)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument(
        "--workers",
        type=int,
        help="run the cases as Ray tasks on a local Ray with this many CPUs "
        "(pip install 'tvm-mcu[distributed]')",
    )
    p.add_argument("--ray-address", help="run the cases as Ray tasks on the Ray cluster at this address")
    p.add_argument(
        "--boards",
        nargs="+",
        choices=boards,
        default=rotation,
        help="boards, in rotation (default: the development boards)",
    )
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, help="variants of every seed (default: the kind's)"
    )
    p.add_argument(
        "--compress-weights",
        choices=("off", "all"),
        default="off",
        help="compile every case with --compress-weights all, each model with 60 %% of its weights "
        "zeroed first (a pruned model's): the weights that shrink stored Golomb-Rice coded, decoded at "
        "run time (default off)",
    )
    p.add_argument("--no-reduce", action="store_true", help="do not reduce failures")
    p.add_argument("--max-tests", type=int, default=DEFAULT_MAX_TESTS, help="compilations per reduction")
    p.add_argument("--per-signature", type=int, default=1, help="failures reduced per distinct signature")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per case before its worker is killed"
    )
    one = p.add_argument_group("one case")
    one.add_argument("--model", type=Path, help="run this float ONNX model as one case and print the outcome")
    one.add_argument("--variant", choices=VARIANTS, default="float")
    one.add_argument("--board", choices=boards, default="mps2-an386")
    one.add_argument("--seed", type=int, default=0, help="input seed of verify (and calibration)")
    return p


class _Progress:
    """A line per case (a pipe, a file, CI's log); on a terminal, a bar and a line per case that did
    not pass."""

    def __init__(self) -> None:
        self.bar: Bar | None = None
        self.failed = 0

    def __call__(self, o: Outcome, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Bar(total, "fuzz")
        passed = o.verdict == "pass"
        self.failed += not passed
        mark = "" if passed else f": {o.message[:160]}"
        if not self.bar.enabled or not passed:
            self.bar.clear()
            print(f"[{done}/{total}] {o.case.name} on {o.case.board}: {o.verdict}{mark}", flush=True)
        self.bar.update(done, note=f"{self.failed} not passed" if self.failed else "")
        if done == total:
            self.bar.clear()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.model is not None:
        case = Case(args.seed, args.variant, args.board, args.compress_weights)
        with tempfile.TemporaryDirectory(prefix="tvmmcu-fuzz-") as tmp:
            o = execute(case, args.model.read_bytes(), Path(tmp))
        print(f"{o.verdict}: {o.message}\nsignature: {o.signature}")
        if o.bad_message:
            print(f"bad message: {o.bad_message}")
        if o.detail:
            print(o.detail)
        return 1 if o.failed else 0
    config = Config(
        n=args.n,
        kind=args.kind,
        out_dir=args.out or Path("out") / "fuzz" / args.kind,
        boards=tuple(args.boards),
        start=args.start,
        jobs=args.jobs,
        variants=tuple(args.variants or ()),
        reduce=not args.no_reduce,
        max_tests=args.max_tests,
        per_signature=args.per_signature,
        timeout_s=args.timeout,
        workers=args.workers,
        ray_address=args.ray_address,
        compress=args.compress_weights,
    )
    summary = Campaign(config, _Progress()).run()
    totals = ", ".join(f"{k}: {v}" for k, v in summary.totals.items())
    print(f"{totals} (bad refusal messages: {summary.bad_refusals})")
    print(f"summary: {config.out_dir / 'summary.md'}")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())

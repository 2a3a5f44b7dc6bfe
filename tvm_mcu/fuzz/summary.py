"""A campaign's summary: counts per verdict, variant and board, failures grouped by signature with their
reproducers, refusal messages; written as ``summary.json`` and ``summary.md``."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from tvm_mcu.fuzz.run import PASS, QUANTIZER_FAILED, REFERENCE_FAILED, REFUSED, SPARSITY, VERDICTS, Outcome

Counts = dict[str, int]


@attrs.frozen
class Repro:
    """A failure's reproducer files (the reduced float model, and as quantised) and its record."""

    model: Path
    quantized: Path | None
    record: Path
    nodes_before: int
    nodes_after: int
    tests: int


@attrs.frozen
class SignatureGroup:
    """The failures that share a signature, and the reproducer reduced for them (if any)."""

    signature: str
    outcomes: tuple[Outcome, ...]
    repro: Repro | None

    @property
    def verdict(self) -> str:
        return self.outcomes[0].verdict


def reported(o: Outcome) -> bool:
    """Outcomes listed (and reduced) as failures: the compiler's, and the reference's."""
    return o.failed or o.verdict == REFERENCE_FAILED


@attrs.frozen
class Summary:
    kind: str
    first_seed: int
    seeds: int
    seconds: float
    outcomes: tuple[Outcome, ...]
    groups: tuple[SignatureGroup, ...]

    def counts(self, key: Callable[[Outcome], str] | None = None) -> dict[str, Counts]:
        """Verdict counts per ``key`` (variant, board...), or overall under "all"."""
        table: dict[str, Counts] = {}
        for o in self.outcomes:
            row = table.setdefault(key(o) if key else "all", dict.fromkeys(VERDICTS, 0))
            row[o.verdict] += 1
        return dict(sorted(table.items()))

    @property
    def totals(self) -> Counts:
        return self.counts().get("all", dict.fromkeys(VERDICTS, 0))

    @property
    def bad_refusals(self) -> int:
        return sum(1 for o in self.outcomes if o.verdict == REFUSED and o.bad_message)

    @property
    def doubted_passes(self) -> tuple[Outcome, ...]:
        """Passes onnxruntime does not confirm (the firmware and onnx.reference may share a mistake)."""
        return tuple(o for o in self.outcomes if o.verdict == PASS and o.signature != PASS)

    @property
    def integer_only(self) -> tuple[int, int]:
        """(passes with no float operator, passes) of the quantised variants."""
        passes = [o for o in self.outcomes if o.verdict == PASS and o.case.variant != "float"]
        return sum(1 for o in passes if o.float_ops == 0), len(passes)

    @property
    def coded(self) -> tuple[int, int, int]:
        """(weights stored Golomb-Rice coded, passes with any, passes) of the cases compiled with
        compressed weights."""
        passes = [o for o in self.outcomes if o.verdict == PASS and o.case.compress != "off"]
        return sum(o.coded_weights for o in passes), sum(1 for o in passes if o.coded_weights), len(passes)

    @property
    def failures(self) -> int:
        """Wrong outputs, crashes and badly worded refusals: what must be 0."""
        return sum(1 for o in self.outcomes if o.failed)

    def refusals(self) -> list[tuple[str, int]]:
        """Clean refusal messages, most frequent first."""
        clean = (o.message for o in self.outcomes if o.verdict == REFUSED and not o.bad_message)
        return collections.Counter(clean).most_common()

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "seeds": [self.first_seed, self.first_seed + self.seeds - 1],
            "models": len(self.outcomes),
            "seconds": round(self.seconds, 1),
            "counts": self.totals,
            "failures": self.failures,
            "integer_only_passes": list(self.integer_only),
            "coded_weights_passes": list(self.coded),
            "bad_refusals": self.bad_refusals,
            "doubted_passes": [{"case": o.case.name, "detail": o.detail} for o in self.doubted_passes],
            "per_variant": self.counts(lambda o: o.case.variant),
            "per_board": self.counts(lambda o: o.case.board),
            "signatures": [
                {
                    "signature": g.signature,
                    "verdict": g.verdict,
                    "count": len(g.outcomes),
                    "cases": [o.case.name for o in g.outcomes],
                    "message": g.outcomes[0].message,
                    "reproducer": str(g.repro.model) if g.repro else None,
                    "reproducer_quantized": str(g.repro.quantized) if g.repro and g.repro.quantized else None,
                    "nodes": [g.repro.nodes_before, g.repro.nodes_after] if g.repro else None,
                }
                for g in self.groups
            ],
            "refusals": [{"message": m, "count": n} for m, n in self.refusals()],
            "quantizer_failures": [
                {"case": o.case.name, "message": o.message}
                for o in self.outcomes
                if o.verdict == QUANTIZER_FAILED
            ],
            "outcomes": [
                {
                    "case": o.case.name,
                    "board": o.case.board,
                    "verdict": o.verdict,
                    "message": o.message,
                    "bad_message": o.bad_message,
                    "signature": o.signature,
                    "float_ops": o.float_ops,
                    "coded_weights": o.coded_weights,
                    "seconds": round(o.seconds, 2),
                }
                for o in self.outcomes
            ],
        }


def summarise(
    kind: str,
    first_seed: int,
    seeds: int,
    outcomes: Sequence[Outcome],
    repros: dict[str, Repro],
    seconds: float,
) -> Summary:
    """Group ``outcomes`` by signature; ``repros`` maps case names to the reproducers reduced for them."""
    by_sig: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        if reported(o):
            by_sig[o.signature].append(o)
    groups = []
    for sig, group in sorted(by_sig.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        repro = next((repros[o.case.name] for o in group if o.case.name in repros), None)
        groups.append(SignatureGroup(sig, tuple(group), repro))
    return Summary(kind, first_seed, seeds, seconds, tuple(outcomes), tuple(groups))


def _table(title: str, rows: dict[str, Counts]) -> list[str]:
    lines = [f"| {title} | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    lines += [f"| {k} | " + " | ".join(str(r[v]) for v in VERDICTS) + " |" for k, r in rows.items()]
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: Summary) -> str:
    """Counts, tables per variant and board, failures by signature, refusals, quantiser failures."""
    last = summary.first_seed + summary.seeds - 1
    totals = summary.totals
    out = [
        f"# Fuzz run: {len(summary.outcomes)} models ({summary.kind}), seeds {summary.first_seed}..{last}",
        "",
        ", ".join(f"{k}: {v}" for k, v in totals.items())
        + f" (refusals with a bad message: {summary.bad_refusals}); {summary.seconds:.0f} s",
        "",
        f"Failures (wrong, crash, badly worded refusals): {summary.failures}; refusals: "
        f"{100 * totals[REFUSED] / max(1, len(summary.outcomes)):.1f} % of the models.",
        "",
        *(
            [
                f"Quantised models that passed with integer code only: {summary.integer_only[0]} of "
                f"{summary.integer_only[1]} (the others kept operators their quantiser left in float, "
                "compiled with --allow-float).",
                "",
            ]
            if summary.kind != "float"
            else []
        ),
        *(
            [
                f"Compressed weights (--compress-weights {summary.outcomes[0].case.compress}): "
                f"{summary.coded[0]} weights stored Golomb-Rice coded in {summary.coded[1]} of the "
                f"{summary.coded[2]} passes (each model's weights {int(100 * SPARSITY)} % zeros; the "
                "others' weights do not shrink, or their schedule reads them a channel at a time).",
                "",
            ]
            if summary.coded[2]
            else []
        ),
        *_table("variant", summary.counts(lambda o: o.case.variant)),
        "",
        *_table("board", summary.counts(lambda o: o.case.board)),
        "",
        "## Failures by signature",
        "",
    ]
    if not summary.groups:
        out.append("None.")
    for g in summary.groups:
        out += [
            f"- **{g.verdict}** x{len(g.outcomes)} `{_md(g.signature)}`",
            f"  - {_md(g.outcomes[0].message)}",
            f"  - cases: {', '.join(o.case.name + ' (' + o.case.board + ')' for o in g.outcomes)}",
        ]
        if g.repro is None:
            out.append("  - reproducer: (not reduced)")
        else:
            out.append(
                f"  - reproducer: {g.repro.model} ({g.repro.nodes_before} -> {g.repro.nodes_after} nodes, "
                f"{g.repro.tests} compilations)"
            )
            if g.repro.quantized:
                out.append(f"  - as quantised: {g.repro.quantized}")
    if summary.doubted_passes:
        out += ["", "## Passes onnxruntime does not confirm", ""]
        out += [f"- {o.case.name} ({o.case.board}): {_md(o.detail)}" for o in summary.doubted_passes]
    out += ["", "## Refusals", ""]
    out += [f"- x{n}: {_md(m)}" for m, n in summary.refusals()] or ["None."]
    quant = [o for o in summary.outcomes if o.verdict == QUANTIZER_FAILED]
    if quant:
        out += ["", "## Quantiser failures", ""]
        out += [f"- {o.case.name}: {_md(o.message)}" for o in quant]
    return "\n".join(out) + "\n"

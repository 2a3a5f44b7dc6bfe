"""``tvm-mcu explain``: the schedule of a compiled model as text and as a plot of live SRAM per step.

``schedule.json`` (written by ``compile``) records the operator order, what each step does (in place,
split), its live bytes under the chosen schedule and under the plain layer-by-layer one, and the
budget. This module turns it into a table and a PNG; it never recompiles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tvm_mcu.compiler import Compiled
from tvm_mcu.errors import BadOptionError
from tvm_mcu.passes.tir.partial_execution import parse_spec
from tvm_mcu.report import Report

SCHEDULE = "schedule.json"
PLOT = "schedule.png"
# Names of the plotted series, also stored in the PNG's metadata (tEXt "Series").
SERIES_BEFORE = "layer by layer (whole buffers)"
SERIES_AFTER = "chosen schedule"
SERIES_BUDGET = "SRAM budget"


def schedule_json(c: Compiled) -> dict[str, Any]:
    """The record ``explain`` reads: one row per step of the chosen schedule."""
    g = c.graph
    steps = []
    for i, s in enumerate(g.steps):
        steps.append(
            {
                "index": i,
                "name": s.name,
                "kind": s.kind,
                "callee": s.callee,
                "in_place": s.in_place or None,
                "inputs": [n for n in s.inputs if g.tensors[n].kind != "weight"],
                "output": s.output,
                "output_bytes": g.tensors[s.output].nbytes,
                "workspace_bytes": s.workspace_bytes,
                "live_bytes": c.profile[i] if i < len(c.profile) else None,
                "live_bytes_layer_by_layer": c.profile_before[i] if i < len(c.profile_before) else None,
            }
        )
    return {
        **({"io_in_arena": True} if c.plan.io_in_arena else {}),
        **({"io_apart": True} if c.plan.io_apart else {}),
        "schedule": c.schedule,
        "sram_budget_bytes": c.sram_budget,
        "peak_bytes": max(c.profile, default=0),
        "peak_bytes_layer_by_layer": max(c.profile_before, default=0),
        # Chains run a slice of channels ({"mode": "channels", "axis", "slice", "accumulate", "steps"})
        # or a band of rows ({"mode": "rows", "axis", "steps"}) at a time.
        "chains": {s.name: {**parse_spec(s.partial), "steps": list(s.chain)} for s in g.steps if s.partial},
        "arena_bytes": c.plan.arena_bytes,
        "arena_lower_bound_bytes": c.plan.lower_bound,
        "whole_buffer_bound_bytes": c.whole_buffer_bound.peak_bytes,
        "note": "live bytes = arena buffers live at the step, the model's inputs and outputs among them "
        "(--io-in-arena)"
        if c.plan.holds_io
        else "live bytes = arena buffers live at the step + the library's input and output buffers, "
        "apart from the arena as sharing it saved nothing (--io-in-arena)"
        if c.plan.io_apart
        else "live bytes = arena buffers live at the step + the caller's input and output buffers",
        "steps": steps,
    }


def read(directory: Path) -> dict[str, Any]:
    path = Path(directory) / SCHEDULE
    if not path.is_file():
        raise BadOptionError(f"{path} not found: is {directory} a directory written by 'tvm-mcu compile'?")
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def with_run(record: dict[str, Any], report: Report) -> dict[str, Any]:
    """``record`` with each step's MACs and, once the model has run, its instructions (report.json)."""
    if len(report.ops) != len(record["steps"]):
        return record
    steps = [
        {
            **s,
            "macs": op.macs,
            "instructions": op.instructions,
            "instructions_per_mac": op.instructions_per_mac,
        }
        for s, op in zip(record["steps"], report.ops, strict=True)
    ]
    return {
        **record,
        "steps": steps,
        "instructions": report.instructions,
        "driver_instructions": report.driver_instructions,
    }


def render_text(record: dict[str, Any]) -> str:
    holds_io = record.get("io_in_arena") and not record.get("io_apart")
    lines = [
        f"schedule: {record['schedule']}",
        f"peak SRAM ({'arena with I/O' if holds_io else 'arena + I/O'}, stack excluded): "
        f"{record['peak_bytes']:,} B; "
        f"layer by layer: {record['peak_bytes_layer_by_layer']:,} B; "
        f"whole-buffer bound (best order): {record['whole_buffer_bound_bytes']:,} B",
        f"arena {record['arena_bytes']:,} B, "
        f"lower bound of this schedule {record['arena_lower_bound_bytes']:,} B",
    ]
    if record.get("sram_budget_bytes"):
        lines.append(f"budget: {record['sram_budget_bytes']:,} B")
    ran = record.get("instructions") is not None
    if ran:
        lines.append(
            f"instructions (QEMU, not cycles): {record['instructions']:,}, of which "
            f"{record['driver_instructions']:,} in the driver (calls, copies) and the harness"
        )
    lines.append("")
    lines.append(
        f"{'#':>3}  {'step':<20} {'kind':<14} {'how':<26} {'out B':>8} {'scratch':>8} "
        f"{'live B':>9} {'before':>9}" + (f" {'instructions':>12} {'share':>6} {'per MAC':>8}" if ran else "")
    )
    peak = record["peak_bytes"]
    for s in record["steps"]:
        how = s["in_place"] + " in place" if s["in_place"] else ""
        chain = record.get("chains", {}).get(s["name"])
        if chain is not None:
            how = _short(chain) + (" +in place" if s["in_place"] else "")
        mark = "  <- peak" if s["live_bytes"] == peak else ""
        lines.append(
            f"{s['index']:>3}  {s['name'][:20]:<20} {s['kind'][:14]:<14} {how[:26]:<26} "
            f"{s['output_bytes']:>8,} {s['workspace_bytes']:>8,} {s['live_bytes']:>9,} "
            f"{s['live_bytes_layer_by_layer']:>9,}"
            + (_instructions(s, record["instructions"]) if ran else "")
            + mark
        )
    chains = record.get("chains", {})
    if chains:
        lines.append("")
        lines.append("partial execution: step = operators of the chain")
        for name, chain in chains.items():
            if chain["mode"] == "rows":
                how = f"one row at a time (rows on axis {chain['axis']}), line buffers between operators"
            else:
                how = f"axis {chain['axis']}, {chain['slice']}-channel slices"
                how += ", accumulating" if chain.get("accumulate") else ""
            lines.append(f"  {name} = {' -> '.join(chain['steps'])} ({how})")
    return "\n".join(line.rstrip() for line in lines)


def _instructions(step: dict[str, Any], total: int) -> str:
    n = step.get("instructions")
    if n is None:  # a copy: the driver's memcpy
        return f" {'-':>12} {'':>6} {'':>8}"
    per_mac = step.get("instructions_per_mac")
    return f" {n:>12,} {100 * n / max(total, 1):>5.1f}% " + (
        f"{per_mac:>8.2f}" if per_mac is not None else f"{'':>8}"
    )


def _short(chain: dict[str, Any]) -> str:
    if chain["mode"] == "rows":
        return "row bands"
    return f"Pex {chain['slice']}ch" + (" acc" if chain.get("accumulate") else "")


def plot(record: dict[str, Any], path: Path, *, title: str = "") -> Path:
    """Write a PNG of live bytes per step, before and after, with the budget line if there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = record["steps"]
    x = list(range(len(steps)))
    before = [s["live_bytes_layer_by_layer"] for s in steps]
    after = [s["live_bytes"] for s in steps]
    series = [SERIES_BEFORE, SERIES_AFTER]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(steps) + 3), 4.0), dpi=100)
    ax.step(x, before, where="mid", label=SERIES_BEFORE, color="#999999", linewidth=2)
    ax.step(x, after, where="mid", label=SERIES_AFTER, color="#1f77b4", linewidth=2)
    budget = record.get("sram_budget_bytes")
    if budget:
        ax.axhline(budget, color="#d62728", linestyle="--", label=SERIES_BUDGET)
        series.append(SERIES_BUDGET)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s['index']} {s['kind']}" for s in steps], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("live SRAM, bytes (arena + I/O)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or f"live SRAM per step ({record['schedule']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Series": "; ".join(series), "Software": "tvm-mcu"})
    plt.close(fig)
    return path

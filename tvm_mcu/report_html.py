"""``report.html`` beside ``report.json``: one self-contained page (no script, no external file) a person
reads: the figures and how each was measured, the memory timeline per step against the budget, the
schedule, and the per-operator table (bytes, MACs, instructions, weight storage)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from tvm_mcu.report import IO_IN_ARENA, Report

SCHEDULE = "schedule.json"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1b1b1b; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; margin-bottom: 16px; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef2f7; } td.l, th.l { text-align: left; }
.pass { color: #11702b; font-weight: 600; } .fail { color: #b00020; font-weight: 600; }
svg text { font: 11px system-ui, sans-serif; }
"""


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]], left: int = 1, text: tuple[int, ...] = ()) -> str:
    """A table, the first ``left`` columns and the columns ``text`` left-aligned (the rest: numbers)."""

    def cell(tag: str, k: int, v: Any) -> str:
        cls = ' class="l"' if k < left or k in text else ""
        return f"<{tag}{cls}>{v if tag == 'th' else _n(v)}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", k, html.escape(h)) for k, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell("td", k, v) for k, v in enumerate(r)) + "</tr>" for r in rows]
    return "\n".join(out) + "</table>"


def _timeline(steps: list[dict[str, Any]], budget: int | None, arena: int) -> str:
    """Bars of the bytes live at each step (this schedule) beside layer by layer's, the budget as a
    line: an inline SVG."""
    if not steps:
        return "<p>No steps.</p>"
    width, height, left, bottom = 760, 220, 70, 40
    top = max(
        [s["live_bytes"] for s in steps] + [s["live_bytes_layer_by_layer"] for s in steps] + [budget or 0]
    )
    top = max(top, 1)
    slot = (width - left - 10) / len(steps)

    def y(v: float) -> float:
        return height - bottom - (height - bottom - 10) * v / top

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="live bytes per step">']
    parts.append(f'<line x1="{left}" y1="{y(0)}" x2="{width - 10}" y2="{y(0)}" stroke="#888"/>')
    for frac in (0.5, 1.0):
        v = top * frac
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4}" text-anchor="end">{v:,.0f} B</text>')
    for k, s in enumerate(steps):
        x = left + k * slot
        w = max(slot * 0.38, 1)
        for dx, value, color in (
            (0, s["live_bytes_layer_by_layer"], "#c9d3e0"),
            (w, s["live_bytes"], "#2f6fb3"),
        ):
            parts.append(
                f'<rect x="{x + dx + slot * 0.1:.1f}" y="{y(value):.1f}" width="{w:.1f}" '
                f'height="{y(0) - y(value):.1f}" fill="{color}">'
                f"<title>step {s['index']} {html.escape(s['name'])}: {value:,} B</title></rect>"
            )
        if len(steps) <= 40:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
                f"{s['index']}</text>"
            )
    if budget:
        parts.append(
            f'<line x1="{left}" y1="{y(budget):.1f}" x2="{width - 10}" y2="{y(budget):.1f}" stroke="#b00020" '
            'stroke-dasharray="5,3"/>'
        )
        parts.append(
            f'<text x="{width - 12}" y="{y(budget) - 4:.1f}" text-anchor="end">budget {budget:,} B</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}">step (dark: this schedule, light: layer by layer; '
        f"arena {arena:,} B)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def render(report: Report, schedule: dict[str, Any] | None) -> str:
    r = report
    verdict = r.verdict or ("not run" if r.instructions is None else "ran")
    cls = "pass" if r.verified else ("fail" if r.verified is False else "")
    in_arena = r.io_convention == IO_IN_ARENA and r.io_placement is None
    figures: list[list[Any]] = [
        [
            "peak SRAM (arena with inputs/outputs + stack)"
            if in_arena
            else "peak SRAM (arena + inputs/outputs + stack)",
            r.peak_sram_bytes,
            "memory plan + stack painted on QEMU",
        ],
        [
            "arena",
            r.arena_bytes,
            f"static memory plan ({_n(r.plan_strategy)}); lower bound {_n(r.arena_lower_bound_bytes)}",
        ],
        [
            "inputs and outputs",
            r.io_bytes,
            "in the arena (--io-in-arena, TFLite Micro's convention): tvmmcu_model_input(k) and "
            "tvmmcu_model_output(k) give them, an input's bytes reused once it is dead"
            if in_arena
            else "tvmmcu_model_input(k) and tvmmcu_model_output(k) give them (--io-in-arena), "
            f"{r.io_placement}"
            if r.io_placement
            else "the caller's buffers, packed, passed to tvmmcu_model_run",
        ],
        ["stack", r.stack_bytes, "peak depth of the model call, painted stack on QEMU"],
        ["flash", r.flash_bytes, "firmware ELF (code, weights, harness)"],
        ["weights as stored", r.stored_weights_bytes, f"of {_n(r.weights_bytes)} dense"],
        ["MACs", r.macs, "counted from the model"],
        ["instructions (not cycles)", r.instructions, "QEMU plugin, exact count of one inference"],
        ["instructions per MAC", r.instructions_per_mac, ""],
        [
            "cycles (an estimate)",
            r.estimated_cycles,
            "instruction classes counted on QEMU x the core's published timings; no caches or wait states",
        ],
        [
            "latency at the board's clock (an estimate)",
            r.estimated_latency_ms,
            "ms: estimated cycles / clock",
        ],
        ["compile time (s)", r.compile_seconds, "host"],
        ["max abs error", r.max_abs_error, f"against {_n(r.reference)} (tolerance {_n(r.tolerance)})"],
    ]
    ops = [
        [
            o.name,
            o.kind,
            o.macs,
            o.output_bytes,
            o.scratch_bytes,
            o.instructions,
            o.instructions_per_mac,
            o.weights_format,
            o.weights_bytes,
            o.index_bytes,
            f"{o.filterlets_kept}/{o.filterlets}" if o.filterlets else "-",
        ]
        for o in r.ops
    ]
    steps = (schedule or {}).get("steps", [])
    step_rows = [
        [
            s["index"],
            s["name"],
            s["kind"],
            s["in_place"] or "-",
            s["output_bytes"],
            s["workspace_bytes"],
            s["live_bytes"],
        ]
        for s in steps
    ]
    body = [
        f"<h1>{html.escape(r.model)} on {html.escape(r.board)}</h1>",
        f'<div class="sub">{html.escape(r.format)} model, schedule <b>{html.escape(r.schedule or "-")}</b>, '
        f"layout {html.escape(r.layout or '-')}, inputs and outputs {html.escape(r.io_convention)}; "
        f'verdict <span class="{cls}">{html.escape(verdict)}</span></div>',
        "<h2>Figures</h2>",
        _table(["figure", "value", "how it was measured"], figures, text=(2,)),
        "<h2>Memory per step</h2>",
        _timeline(steps, r.sram_budget_bytes, r.arena_bytes),
        "<h2>Schedule</h2>",
        _table(["step", "name", "kind", "in place", "output B", "workspace B", "live B"], step_rows, left=3),
        "<h2>Operators</h2>",
        _table(
            [
                "name",
                "kind",
                "MACs",
                "output B",
                "scratch B",
                "instructions",
                "per MAC",
                "weights",
                "weights B",
                "index B",
                "filterlets kept",
            ],
            ops,
            left=2,
        ),
    ]
    if r.float_ops:
        body.append(f"<p>Operators run in float: {html.escape(', '.join(r.float_ops))}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tvm-mcu: {html.escape(r.model)} on {html.escape(r.board)}</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write(report: Report, path: Path) -> None:
    """``path`` (report.html) from ``report`` and the schedule.json beside it, if there is one."""
    schedule_path = path.with_name(SCHEDULE)
    schedule = json.loads(schedule_path.read_text()) if schedule_path.is_file() else None
    path.write_text(render(report, schedule))

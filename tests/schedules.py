"""Which of a model's candidate schedules a test runs on the board."""

from __future__ import annotations

import re

_SLICES = re.compile(r"accumulating, (\d+)-channel slices")


def sample(labels: list[str]) -> list[str]:
    """``labels`` (``compiler.plan_schedules``' candidates, in order) less the accumulating channel slices
    that add no case: every kind of schedule once, and of the accumulating slices the narrowest (a
    slice splits the kernels' blocks of four channels) and four channels wide (a block a slice)."""
    widths = sorted(int(m.group(1)) for label in labels if (m := _SLICES.search(label)))
    keep = {widths[0], 4} if widths else set()
    return [label for label in labels if (m := _SLICES.search(label)) is None or int(m.group(1)) in keep]

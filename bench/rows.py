"""A benchmark row: our figure and the baseline's, per repeat, with the issue's target."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    workload: str
    name: str
    unit: str
    baseline_name: str
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: str = ""
    # (median ours, median ratio) -> met; None: no target for this row.
    check: Callable[[float, float], bool] | None = None
    bitwise: list[bool] = field(default_factory=list)
    notes: str = ""

    def ratios(self) -> list[float]:
        """ours / baseline per repeat (paired: measured side by side in the same repeat)."""
        return [o / b for o, b in zip(self.ours, self.baseline, strict=False) if b]

    def met(self) -> bool | None:
        if self.check is None or not self.ours or not self.ratios():
            return None
        return self.check(statistics.median(self.ours), statistics.median(self.ratios()))

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "name": self.name,
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "ours": self.ours,
            "baseline": self.baseline,
            "ratios": self.ratios(),
            "ours_stats": stats(self.ours),
            "baseline_stats": stats(self.baseline),
            "ratio_stats": stats(self.ratios()),
            "target": self.target,
            "met": self.met(),
            "bitwise": all(self.bitwise) if self.bitwise else None,
            "notes": self.notes,
        }


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}

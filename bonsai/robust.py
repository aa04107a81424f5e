"""Robust location and scale (median and MAD), the one way Bonsai asks "how unusual is this value":
the spike detector, the report's per-category loss and the audit's length outliers all use it, because
a mean and standard deviation are pulled by the very outliers they are meant to find."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

MAD_TO_SIGMA = 1.4826  # MAD x this = sigma for normal data


def center_and_sigma(values: Iterable[float], floor: float) -> tuple[float, float]:
    """Median, and the MAD around it as a sigma (at least `floor`, so identical values divide safely)."""
    values = list(values)
    center = statistics.median(values)
    return center, max(MAD_TO_SIGMA * statistics.median(abs(x - center) for x in values), floor)


def by_group(groups: Mapping[str, list[float]], floor: float) -> dict[str, tuple[float, float]]:
    """center_and_sigma for each group (e.g. each category)."""
    return {name: center_and_sigma(values, floor) for name, values in groups.items()}


def step_noise(series: list[float]) -> float:
    """The noise of a series from its step-to-step differences, taken around zero (not around their
    median: a regular up-down pattern has a median difference with no spread around it). Differences
    of independent noise have sqrt(2) times its sigma. A trend does not inflate it."""
    return MAD_TO_SIGMA * statistics.median(abs(b - a) for a, b in zip(series, series[1:])) / math.sqrt(2)

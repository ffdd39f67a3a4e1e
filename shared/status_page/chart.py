"""A model's metric trend as SVG geometry: one point per registered version, champion and rejected marked.

Pure: the template draws what `trend_chart` computes, so the chart needs no JavaScript and a test can
count its points without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.services.status import ModelStatus

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36  # margins: room for the axis labels


@dataclass(frozen=True)
class Point:
    version: str
    metric: float | None  # None: the version has no metric; drawn on the baseline, hollow
    x: float
    y: float
    champion: bool
    rejected: bool

    @property
    def css(self) -> str:
        return " ".join(["point", *(["champion"] if self.champion else []), *(["rejected"] if self.rejected else []),
                         *(["unscored"] if self.metric is None else [])])

    @property
    def label(self) -> str:
        value = "no metric" if self.metric is None else f"{self.metric:.4g}"
        marks = [*(["champion"] if self.champion else []), *(["rejected"] if self.rejected else [])]
        return f"version {self.version}: {value}" + (f" ({', '.join(marks)})" if marks else "")


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    points: tuple[Point, ...]
    low: float
    high: float
    baseline: float  # y of the x axis
    left: float
    right: float  # x of the right end of the axis
    path: str  # the polyline through the scored points ("" with fewer than two)
    label: str  # the chart's accessible name

    @property
    def ticks(self) -> tuple[tuple[float, str], ...]:
        """Three y-axis labels: low, middle, high."""
        span = self.high - self.low
        return tuple((self._y(v), f"{v:.4g}") for v in (self.low, self.low + span / 2, self.high))

    def _y(self, value: float) -> float:
        span = (self.high - self.low) or 1.0
        return round(TOP + (self.high - value) / span * (self.baseline - TOP), 1)


def trend_chart(model: ModelStatus) -> Chart:
    """The chart of `model`'s versions, oldest to newest left to right, scaled to the metric's range."""
    scored = [v.metric for v in model.versions if v.metric is not None]
    low, high = (min(scored), max(scored)) if scored else (0.0, 1.0)
    if high == low:
        low, high = low - 0.05, high + 0.05
    pad = (high - low) * 0.1
    low, high = low - pad, high + pad
    baseline = HEIGHT - BOTTOM
    count = len(model.versions)
    step = (WIDTH - LEFT - RIGHT) / max(count - 1, 1)
    points = []
    for index, v in enumerate(model.versions):
        x = round(LEFT + (index * step if count > 1 else (WIDTH - LEFT - RIGHT) / 2), 1)
        y = baseline if v.metric is None else round(TOP + (high - v.metric) / (high - low) * (baseline - TOP), 1)
        points.append(Point(version=v.version, metric=v.metric, x=x, y=y, champion=v.champion,
                            rejected=bool(v.rejected)))
    line = [f"{p.x},{p.y}" for p in points if p.metric is not None]
    champion = next((p.version for p in points if p.champion), None)
    label = (f"{model.metric} of {model.name} by version: {count} version(s)"
             + (f", champion version {champion}" if champion else ", no champion")
             + f", {sum(p.rejected for p in points)} rejected")
    return Chart(width=WIDTH, height=HEIGHT, points=tuple(points), low=low, high=high, baseline=baseline,
                 left=LEFT, right=WIDTH - RIGHT, path=" ".join(line) if len(line) > 1 else "", label=label)

"""The demo's comparison table (devstack/demo_tables.py): the recorded numbers, formatted, never recomputed."""

from __future__ import annotations

import json
from typing import Any

from devstack.demo_tables import comparison_lines, parse_recorded


def comparison(**overrides: Any) -> dict[str, Any]:
    """A comparison.json as the compare step writes it (H-compare's contract)."""
    document: dict[str, Any] = {
        "schema": "evergreen.comparison/1",
        "evaluation": {"data_asset": "churn-holdout", "data_version": "3", "rows": 5000, "label_column": "churned"},
        "seed": 7, "resamples": 1000, "confidence": 0.95, "metric": "roc_auc", "direction": "higher_is_better",
        "challenger": {"model": "churn-model:4", "metrics": {"roc_auc": 0.822731, "accuracy": 0.81}},
        "champion": {"model": "churn-model:3", "metrics": {"roc_auc": 0.796442, "accuracy": 0.80}},
        "difference": {"metric": "roc_auc", "estimate": 0.026289, "low": 0.019448, "high": 0.032516},
        "slices": [
            {"column": "region", "value": "north", "rows": 1272, "challenger": 0.70, "champion": 0.760736,
             "difference": -0.060736},
            {"column": "region", "value": "south", "rows": 1260, "challenger": 0.83, "champion": 0.814941,
             "difference": 0.015059},
            {"column": "region", "value": "tiny", "rows": 12, "challenger": 0.5, "champion": 0.9, "difference": -0.4},
            {"column": "contract", "value": "two-year", "rows": 994, "challenger": None, "champion": None,
             "difference": None},
        ],
    }
    document.update(overrides)
    return document


def test_a_comparison_shows_rows_both_metrics_and_the_interval() -> None:
    lines = comparison_lines(comparison(), indent="")
    assert lines[0] == "comparison on churn-holdout:3: 5000 rows, 1000 paired resamples, seed 7"
    assert lines[1].split() == ["challenger", "churn-model:4", "roc_auc", "0.823"]
    assert lines[2].split() == ["champion", "churn-model:3", "roc_auc", "0.796"]
    assert lines[3] == "  difference +0.026, 95% interval [+0.019, +0.033]"


def test_slices_show_their_rows_and_difference_and_mark_only_large_regressions() -> None:
    lines = comparison_lines(comparison(), min_slice_rows=200, max_slice_regression=0.02, indent="")
    region = next(line for line in lines if line.strip().startswith("region:"))
    assert "north (1272) 0.700/0.761 -0.061 ← regressed" in region
    assert "south (1260) 0.830/0.815 +0.015," in region  # better: not marked
    assert "tiny (12) 0.500/0.900 -0.400" in region and "-0.400 ←" not in region  # below min_slice_rows
    contract = next(line for line in lines if line.strip().startswith("contract:"))
    assert contract.strip() == "contract: two-year (994) —/— —"  # undefined on that slice: no number invented


def test_lower_is_better_marks_a_slice_that_got_larger() -> None:
    slices = [{"column": "area", "value": "centre", "rows": 500, "challenger": 9.0, "champion": 6.0,
               "difference": 3.0},
              {"column": "area", "value": "suburb", "rows": 500, "challenger": 5.0, "champion": 6.0,
               "difference": -1.0}]
    lines = comparison_lines(comparison(direction="lower_is_better", metric="rmse", slices=slices),
                             max_slice_regression=0.5, indent="")
    area = next(line for line in lines if line.strip().startswith("area:"))
    assert "centre (500) 9.000/6.000 +3.000 ← regressed" in area
    assert "suburb (500) 5.000/6.000 -1.000" in area and area.count("←") == 1


def test_a_model_scored_alone_has_no_champion_line_and_no_interval() -> None:
    alone = comparison(champion=None, difference=None,
                       slices=[{"column": "region", "value": "north", "rows": 1272, "challenger": 0.71,
                                "champion": None, "difference": None}])
    lines = comparison_lines(alone, indent="")
    assert not any(line.strip().startswith("champion") for line in lines)
    assert "  scored alone (no champion to compare with)" in lines
    assert any(line.strip() == "region: north (1272) 0.710" for line in lines)


def test_the_recorded_detail_is_read_back_including_left_out_slices() -> None:
    recorded = comparison(slices="7 slices left out (too long for the audit log)")
    document = parse_recorded(json.dumps(recorded, separators=(",", ":")))
    assert document is not None
    assert comparison_lines(document, indent="")[-1] == "  slices: 7 slices left out (too long for the audit log)"
    assert parse_recorded("") is None and parse_recorded("not json") is None and parse_recorded("[1]") is None

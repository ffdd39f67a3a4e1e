"""The fair-gate demo's data (issue 13): training drops and evaluation drops with known effects.

Every drop comes from `ml/src/make_churn_data.py` (one generator for the demo, the tests and the
pipeline's own tests). The "world" the evaluation data describes has two features a model can miss:
regions churn at different base rates (`region_effects`), and in `north` support calls go the other
way (`odd_region`). Each training drop is chosen so that the model the retraining pipeline fits on it
(`ml/pipeline.yml`: logistic regression on every column) has a known relationship to the champion:

| drop | the model fitted on it | compared on | expected |
|---|---|---|---|
| `first` | few noisy rows, no region: weak | `holdout-1`, alone | first_model |
| `rolled-back` | as `better`, another seed | `holdout-1` vs `first` | above 0: promoted, then its rollout fails |
| `better` | many clean rows, no region | `holdout-1` vs `first` | interval above 0: promoted |
| `noisy` | as `better`, 10 % label noise | `holdout-1` vs `better` | interval around 0: not_significant |
| `slice` | sees region; north learnt as the rest | `holdout-1` vs `better` | north below 0: slice_regressed |
| `retrain` | trained after the drift | `holdout-1` vs `better` | interval below 0: rejected |
| `retrain` again | retrained when the champion decays | `holdout-2` vs `better` | interval above 0: promoted |

`holdout-2` is the world after a drift (long-tenure customers now churn): the champion (`better`) scores
far lower on it than on `holdout-1`, which is what the decaying-champion loop notices. The demo uploads
`retrain` before `holdout-2`, so it is the newest training data when the champion decays: judged on the
old evaluation rows it loses; the degradation retrains it, and judged on the new rows it wins.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from devstack.procs import REPO_ROOT

log = logging.getLogger(__name__)

ML_SRC = REPO_ROOT / "ml" / "src"
TRAINING_DATASET = "churn-training"
HOLDOUT_DATASET = "churn-holdout"
WORLD: dict[str, Any] = {"odd_region": "north", "region_effects": True}
DRIFTED: dict[str, Any] = {**WORLD, "drift": 1.0}


@dataclass(frozen=True)
class DemoDrop:
    """One drop to upload: which dataset it lands in and the generator's arguments."""

    name: str
    dataset: str
    rows: int
    seed: int
    label_noise: float = 0.0
    extra_columns: bool = False
    world: dict[str, Any] = field(default_factory=dict)
    shows: str = ""


FIRST = DemoDrop("first", TRAINING_DATASET, 400, 11, 0.6, world=WORLD, shows="the first model, scored alone")
ROLLED_BACK = DemoDrop("rolled-back", TRAINING_DATASET, 4000, 16, world=WORLD,
                       shows="a clearly better model whose deployment the demo breaks: rolled back")
BETTER = DemoDrop("better", TRAINING_DATASET, 4000, 12, world=WORLD, shows="a clearly better model: promoted")
NOISY = DemoDrop("noisy", TRAINING_DATASET, 4000, 13, 0.1, world=WORLD,
                 shows="a noise-level difference: not_significant")
SLICE = DemoDrop("slice", TRAINING_DATASET, 4000, 14, extra_columns=True, world={"region_effects": True},
                 shows="better overall, worse in north: slice_regressed")
RETRAIN = DemoDrop("retrain", TRAINING_DATASET, 4000, 15, extra_columns=True, world=DRIFTED,
                   shows="retrained after the drift: promoted over the decayed champion")
HOLDOUT_1 = DemoDrop("holdout-1", HOLDOUT_DATASET, 5000, 21, extra_columns=True, world=WORLD,
                     shows="the evaluation rows of scenarios 1-4")
HOLDOUT_2 = DemoDrop("holdout-2", HOLDOUT_DATASET, 5000, 22, extra_columns=True, world=DRIFTED,
                     shows="the world after the drift: the champion has decayed")


@dataclass(frozen=True)
class Scenario:
    """A comparison the demo shows: challenger drop, champion drop (None: scored alone), holdout, outcome."""

    challenger: DemoDrop
    champion: DemoDrop | None
    holdout: DemoDrop
    outcome: str  # the gate's code: first_model, promoted, not_significant, slice_regressed


SCENARIOS = (
    Scenario(FIRST, None, HOLDOUT_1, "first_model"),
    Scenario(ROLLED_BACK, FIRST, HOLDOUT_1, "promoted"),
    Scenario(BETTER, FIRST, HOLDOUT_1, "promoted"),
    Scenario(NOISY, BETTER, HOLDOUT_1, "not_significant"),
    Scenario(SLICE, BETTER, HOLDOUT_1, "slice_regressed"),
    Scenario(RETRAIN, BETTER, HOLDOUT_2, "promoted"),
)
# The order the demo uploads them: the first holdout, then each training drop in turn; the drifted
# holdout last (it is what shows the champion's decay and retrains the newest training drop, `retrain`).
UPLOAD_ORDER = (HOLDOUT_1, FIRST, ROLLED_BACK, BETTER, NOISY, SLICE, RETRAIN, HOLDOUT_2)
SLICE_COLUMNS = ("region", "contract")
REGRESSED_SLICE = ("region", "north")


@cache
def generator() -> ModuleType:
    """ml/src/make_churn_data.py as a module (ml/src is not a package: it is the steps' code folder)."""
    spec = importlib.util.spec_from_file_location("evergreen_make_churn_data", ML_SRC / "make_churn_data.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ML_SRC / 'make_churn_data.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_drop(drop: DemoDrop, folder: Path, *, success_marker: bool = True) -> list[Path]:
    """Write `drop` as a folder of one CSV (plus `_SUCCESS`, which seals a folder dataset's batch)."""
    paths: list[Path] = generator().write_drop(
        folder, drop.rows, drop.seed, drop.label_noise, 1, drop.extra_columns, success_marker, **drop.world
    )
    log.info("demo drop %s (%s): %d rows written to %s", drop.name, drop.dataset, drop.rows, folder)
    return paths


def write_all(root: Path) -> dict[str, Path]:
    """Every demo drop under `root/<dataset>/<drop>/`, in upload order; returns drop name → folder."""
    folders: dict[str, Path] = {}
    for drop in UPLOAD_ORDER:
        folders[drop.name] = root / drop.dataset / drop.name
        write_drop(drop, folders[drop.name])
    return folders

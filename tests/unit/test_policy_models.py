"""The `models:` section of evergreen.yaml: promotion rules, checked at start-up with their paths."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from shared.config.policy import load_policy, parse_policy
from shared.config.promotion import PromotionPolicy
from shared.domain.vocabulary import Direction
from shared.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
DATASETS = [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file", "datastore": "landing"}]


def promotion(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metric": "roc_auc", "direction": "higher_is_better", "endpoint": "churn-endpoint",
        "deployment": {"instance_type": "Standard_DS3_v2", "code": "ml/src", "scoring_script": "score.py"},
        "smoke_test": {"request": {"input_data": [{"a": 1}]}},
    }
    doc.update(overrides)
    return doc


def parse(*models: dict[str, Any]) -> Any:
    return parse_policy({"datasets": DATASETS, "models": list(models)})


def test_the_shipped_policy_promotes_churn_model_onto_churn_endpoint() -> None:
    policy = load_policy(REPO / "evergreen.yaml", landing_container="landing")
    model = policy.model("churn-model")
    assert model is not None
    assert model.promotion.endpoint == "churn-endpoint"
    assert model.promotion.canary_steps[-1] == 100
    deployment = model.promotion.deployment
    assert (REPO / (deployment.code or "") / (deployment.scoring_script or "")).is_file()
    assert policy.model("unknown") is None


def test_defaults_are_safe_for_azure() -> None:
    rule = parse({"name": "m", "promotion": promotion()}).models[0].promotion
    assert rule.poll_interval_seconds == 30 and rule.grace_period_seconds == 300
    assert rule.canary_steps == (10, 50, 100)
    assert rule.replace_unscored_champion is False  # an unscored champion is kept unless the policy opts in


@pytest.mark.parametrize(("override", "path", "fragment"), [
    ({"canary_steps": [50, 10, 100]}, "models[0].promotion.canary_steps", "must increase"),
    ({"canary_steps": [10, 50]}, "models[0].promotion.canary_steps", "last step must be 100"),
    ({"endpoint": "-bad"}, "models[0].promotion.endpoint", "3-32 characters"),
    ({"direction": "up"}, "models[0].promotion.direction", "higher_is_better"),
    ({"poll_interval_seconds": 0}, "models[0].promotion.poll_interval_seconds", "greater than 0"),
    ({"deployment": {"instance_type": "Standard_DS3_v2", "code": "ml/src"}}, "models[0].promotion.deployment",
     "set both code and scoring_script"),
    ({"deployment": {"instance_type": "Standard_DS3_v2", "code": "../x", "scoring_script": "s.py"}},
     "models[0].promotion.deployment", "relative to the app root"),
    ({"smoke_test": {"request": {}}}, "models[0].promotion.smoke_test.request", "non-empty"),
    ({"replace_unscored_champion": "yes please"}, "models[0].promotion.replace_unscored_champion",
     "valid boolean"),
])
def test_bad_promotion_rules_name_their_path(override: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse({"name": "m", "promotion": promotion(**override)})
    assert any(p.startswith(path) and fragment in p for p in caught.value.problems), caught.value.problems


def test_one_entry_per_model_and_one_model_per_endpoint() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse({"name": "m", "promotion": promotion()}, {"name": "m", "promotion": promotion(endpoint="other-ep")})
    assert any("repeated: m" in p for p in caught.value.problems)
    with pytest.raises(ConfigurationError) as caught:
        parse({"name": "a", "promotion": promotion()}, {"name": "b", "promotion": promotion()})
    assert any("churn-endpoint named by more than one model" in p for p in caught.value.problems)


@pytest.mark.parametrize(("spelling", "expected"), [
    ("higher_is_better", Direction.HIGHER_IS_BETTER), ("lower_is_better", Direction.LOWER_IS_BETTER),
    ("max", Direction.HIGHER_IS_BETTER), ("min", Direction.LOWER_IS_BETTER), (" MAX ", Direction.HIGHER_IS_BETTER),
])
def test_direction_has_one_spelling_and_the_legacy_one_still_parses_with_a_warning(
        spelling: str, expected: Direction, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.domain.vocabulary"):
        rule = parse({"name": "m", "promotion": promotion(direction=spelling)}).models[0].promotion
    assert rule.direction is expected
    assert rule.rule().direction is expected
    legacy = spelling.strip().lower() in ("max", "min")
    assert legacy == any("deprecated" in r.getMessage() for r in caplog.records), caplog.records


def test_the_policy_models_live_in_config_and_the_gate_rule_in_the_domain() -> None:
    import shared.domain.gate as gate

    assert not hasattr(gate, "PromotionPolicy")
    assert isinstance(PromotionPolicy.model_validate(promotion()).rule(), gate.PromotionRule)

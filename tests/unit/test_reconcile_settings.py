"""EVERGREEN_RECONCILE_SCHEDULE: a setting with a default, validated like the retention schedule; the timer binds it."""

from __future__ import annotations

import pytest

from shared.config.settings import load_settings
from shared.errors import ConfigurationError

ENV = {"AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "rg", "AZUREML_WORKSPACE_NAME": "ws",
       "EVERGREEN_EVENTS_TOPIC_ENDPOINT": "https://topic", "AzureWebJobsStorage": "UseDevelopmentStorage=true",
       "DATA_STORAGE": "UseDevelopmentStorage=true"}


def test_the_reconcile_schedule_defaults_to_every_five_minutes() -> None:
    assert load_settings(ENV).reconcile_schedule == "0 */5 * * * *"
    assert load_settings({**ENV, "EVERGREEN_RECONCILE_SCHEDULE": "0 */1 * * * *"}).reconcile_schedule == "0 */1 * * * *"


def test_a_bad_reconcile_schedule_is_named() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({**ENV, "EVERGREEN_RECONCILE_SCHEDULE": "*/5 * * * *"})
    assert any(p.startswith("EVERGREEN_RECONCILE_SCHEDULE: '*/5 * * * *' is not a valid 6-field")
               for p in raised.value.problems)


def test_the_timer_binds_the_setting() -> None:
    import azure.functions as func

    from functions.reconcile import bp

    app = func.FunctionApp()
    app.register_functions(bp)
    [fn] = [f for f in app.get_functions() if f.get_function_name() == "reconcile"]
    [timer] = [b for b in fn.get_bindings() if b.type == "timerTrigger"]
    assert timer.schedule == "%EVERGREEN_RECONCILE_SCHEDULE%"


def test_the_rescore_schedule_has_a_default_is_validated_and_bound_by_its_timer() -> None:
    """EVERGREEN_RESCORE_SCHEDULE (the champion monitor): default daily 04:30 UTC, checked like the others."""
    assert load_settings(ENV).rescore_schedule == "0 30 4 * * *"
    assert load_settings({**ENV, "EVERGREEN_RESCORE_SCHEDULE": "0 0 */6 * * *"}).rescore_schedule == "0 0 */6 * * *"
    with pytest.raises(ConfigurationError) as bad:
        load_settings({**ENV, "EVERGREEN_RESCORE_SCHEDULE": "daily"})
    assert any(p.startswith("EVERGREEN_RESCORE_SCHEDULE: ") for p in bad.value.problems)
    import azure.functions as func

    from functions.monitor import bp

    app = func.FunctionApp()
    app.register_functions(bp)
    [fn] = [f for f in app.get_functions() if f.get_function_name() == "rescore"]
    [timer] = [b for b in fn.get_bindings() if b.type == "timerTrigger"]
    assert timer.schedule == "%EVERGREEN_RESCORE_SCHEDULE%"

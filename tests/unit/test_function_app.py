"""The Function App's wiring: cheap to import, fails loudly on bad settings, functions as declared."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "AZURE_RESOURCE_GROUP": "rg",
    "AZUREML_WORKSPACE_NAME": "ws",
    "EVERGREEN_EVENTS_TOPIC_ENDPOINT": "https://topic.westeurope-1.eventgrid.azure.net/api/events",
    "AzureWebJobsStorage__accountName": "appstore",
    "DATA_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
}


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prefixes = ("AZURE", "EVERGREEN", "DATA_STORAGE", "AzureWeb")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_importing_function_app_does_not_import_azure_ai_ml():
    result = run("import sys, function_app; print('azure.ai.ml' in sys.modules)", ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_functions_are_declared_by_the_app_itself():
    code = ("import json, function_app; print(json.dumps({f.get_function_name(): json.loads(f.get_raw_bindings()[0])"
            " for f in function_app.app.get_functions()}))")
    result = run(code, ENV)
    assert result.returncode == 0, result.stderr
    functions = json.loads(result.stdout)
    blob = functions["on_blob_created"]
    assert (blob["type"], blob["source"], blob["path"], blob["connection"]) == (
        "blobTrigger", "EventGrid", "%EVERGREEN_LANDING_CONTAINER%/{name}", "DATA_STORAGE")
    assert functions["seal_batch"]["type"] == "queueTrigger"
    assert functions["seal_batch"]["queueName"] == "evergreen-batch-seal"


def test_bad_settings_fail_at_start_up_with_every_problem_named():
    env = {k: v for k, v in ENV.items() if k not in ("AZURE_RESOURCE_GROUP", "DATA_STORAGE__blobServiceUri")}
    env["EVERGREEN_LANDING_CONTAINER"] = "NO"
    result = run("import function_app", env)
    assert result.returncode != 0
    assert "ConfigurationError: App settings is invalid (3 problem(s))" in result.stderr
    for name in ("AZURE_RESOURCE_GROUP", "DATA_STORAGE", "EVERGREEN_LANDING_CONTAINER"):
        assert name in result.stderr


def test_a_bad_policy_fails_at_start_up_with_paths(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("datasets:\n  - name: x\n    container: landing\n    prefix: x\n    type: uri_file\n"
                      "    datastore: landing\n")
    result = run("import function_app", {**ENV, "EVERGREEN_POLICY_PATH": str(policy)})
    assert result.returncode != 0
    assert "datasets[0].prefix: must end with '/'" in result.stderr


def test_every_trigger_goes_through_the_edge_and_shows_the_host_its_binding():
    code = """
import inspect, json, typing, function_app
out = {}
for f in function_app.app.get_functions():
    user = f.get_user_function()
    trigger = json.loads(f.get_raw_bindings()[0])
    hints = typing.get_type_hints(user)
    out[f.get_function_name()] = {
        "trigger": trigger["type"], "binds": trigger["name"], "params": list(inspect.signature(user).parameters),
        "annotation": getattr(hints.get(trigger["name"]), "__name__", None),
        "edge": user.__module__.startswith("functions.") and hasattr(user, "handler"),
    }
print(json.dumps(out))
"""
    result = run(code, ENV)
    assert result.returncode == 0, result.stderr
    functions = json.loads(result.stdout)
    expected = {
        "on_blob_created": ("blobTrigger", "client", "BlobClient"),
        "seal_batch": ("queueTrigger", "msg", "QueueMessage"),
        "retry_blob": ("queueTrigger", "msg", "QueueMessage"),
        "on_data_version_registered": ("eventGridTrigger", "event", "EventGridEvent"),
        "on_run_event": ("eventGridTrigger", "event", "EventGridEvent"),
        "retrain_due": ("queueTrigger", "msg", "QueueMessage"),
        "on_model_registered": ("eventGridTrigger", "event", "EventGridEvent"),
        "registry_webhook": ("httpTrigger", "req", "HttpRequest"),
        "advance_rollout": ("queueTrigger", "msg", "QueueMessage"),
        "retry_candidate": ("queueTrigger", "msg", "QueueMessage"),
        "retention": ("timerTrigger", "timer", "TimerRequest"),
        "reconcile": ("timerTrigger", "timer", "TimerRequest"),
        "rescore": ("timerTrigger", "timer", "TimerRequest"),
        "status_page": ("httpTrigger", "req", "HttpRequest"),
        "status_json": ("httpTrigger", "req", "HttpRequest"),
    }
    assert set(functions) == set(expected)
    for name, (trigger, binds, annotation) in expected.items():
        seen = functions[name]
        assert (seen["trigger"], seen["binds"], seen["params"], seen["annotation"], seen["edge"]) == (
            trigger, binds, [binds], annotation, True), name

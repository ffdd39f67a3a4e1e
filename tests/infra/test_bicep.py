"""infra/ keeps its promises: least-privilege roles, no secrets in app settings, Flex Consumption, and Event
Grid subscriptions that are exactly the local subscription file.

The Bicep compiler cannot run here; pycep-parser parses every template and tests/infra/bicep.py evaluates the
expressions that matter (see its docstring for what that can and cannot prove).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import checks
from tests.infra.bicep import Template

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def test_every_template_parses() -> None:
    files = checks.bicep_files(INFRA)
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {"main.bicep", checks.SUBSCRIPTIONS_MODULE}
    for path in files:
        assert Template.load(path).tree, path


def test_role_ids_in_roles_bicep_are_the_documented_built_in_roles() -> None:
    roles = Template.load(INFRA / "modules" / "roles.bicep").evaluator().variable("builtInRoles")
    assert sorted(roles.values()) == sorted(checks.ROLE_IDS.values())


def test_role_assignments_are_exactly_the_least_privilege_set() -> None:
    assert checks.role_problems(INFRA) == []


def test_every_file_subscription_is_deployed_with_the_file_settings() -> None:
    assert checks.subscription_problems(INFRA) == []
    assert set(checks.deployed_subscriptions(INFRA)) == {s["name"] for s in checks.load_subscriptions(INFRA)}


def test_topic_keys_map_to_the_right_event_grid_topics() -> None:
    assert checks.topic_problems(INFRA) == []


def test_a_subscription_added_to_the_file_is_deployed_without_touching_bicep(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    document = json.loads((infra / "eventgrid-subscriptions.json").read_text())
    document["subscriptions"] += [
        {"name": "model-registered", "topic": "workspace",
         "destination": {"function": "on_model_registered", "kind": "eventGridTrigger"},
         "filter": {"includedEventTypes": ["Microsoft.MachineLearningServices.ModelRegistered"],
                    "advancedFilters": [{"operatorType": "StringIn", "key": "data.ModelTags.evergreen",
                                         "values": ["true"]}]},
         "retryPolicy": {"maxDeliveryAttempts": 10, "eventTimeToLiveInMinutes": 60},
         "deadLetter": {"container": "deadletter-ml"}},
        {"name": "extra-evergreen-subscription", "topic": "evergreen",
         "destination": {"function": "on_data_version_registered", "kind": "eventGridTrigger"},
         "filter": {"includedEventTypes": ["Evergreen.DataVersionRegistered"], "subjectBeginsWith": "datasets/"},
         "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}},
    ]
    (infra / "eventgrid-subscriptions.json").write_text(json.dumps(document))

    assert checks.subscription_problems(infra) == []
    deployed = checks.deployed_subscriptions(infra)
    assert deployed["model-registered"]["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions"
    assert deployed["model-registered"]["properties"]["destination"] == {
        "endpointType": "AzureFunction", "properties": {"resourceId": "<functionApp.id>/functions/on_model_registered"}}
    assert deployed["extra-evergreen-subscription"]["type"] == "Microsoft.EventGrid/topics/eventSubscriptions"
    assert deployed["extra-evergreen-subscription"]["properties"]["deadLetterWithResourceIdentity"] is None
    # The new dead-letter container is created, and writable by every topic's identity.
    app = Template.load(infra / "modules" / "app.bicep").evaluator()
    assert app.variable("deadLetterContainers") == ["deadletter", "deadletter-ml"]


def test_dead_letter_containers_are_those_the_file_names() -> None:
    named = sorted({s["deadLetter"]["container"] for s in checks.load_subscriptions(INFRA) if "deadLetter" in s})
    for module in ("app.bicep", "dead-letter-access.bicep"):
        assert sorted(Template.load(INFRA / "modules" / module).evaluator().variable("deadLetterContainers")) == named


def test_app_settings_hold_no_keys_or_connection_strings() -> None:
    assert checks.app_setting_problems(INFRA) == []


def test_only_application_insights_connection_string_is_allowed_and_it_holds_no_credential() -> None:
    settings, _ = checks.app_settings(INFRA)
    assert [k for k in settings if "connection" in k.lower()] == [checks.ALLOWED_CONNECTION_STRING]
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=<identity.properties>.clientId;Authorization=AAD")


def test_function_app_is_flex_consumption_python_311_with_identity_only_access() -> None:
    assert checks.hosting_problems(INFRA) == []


def test_existing_workspace_and_data_account_are_parameters() -> None:
    assert checks.parameter_problems(INFRA) == []


def test_file_subjects_name_the_local_landing_container() -> None:
    """The file names the container the local stack uses; Bicep moves it to the deployed one."""
    container = checks.file_landing_container(INFRA)
    assert container == Template.load(INFRA / "main.bicep").parameters["landingContainerName"]["default"]
    storage = [s for s in checks.load_subscriptions(INFRA) if s["topic"] == "storage"
               and s["destination"]["function"] == "on_blob_created"]
    assert storage, "no storage subscription feeds on_blob_created"
    for entry in storage:
        assert entry["filter"]["subjectBeginsWith"] == f"/blobServices/default/containers/{container}/"


def test_a_renamed_landing_container_moves_every_storage_subject_filter() -> None:
    assert checks.subscription_problems(INFRA, landing="drops") == []
    deployed = checks.deployed_subscriptions(INFRA, {"landingContainerName": "drops"})["landing-blob-created"]
    text = json.dumps(deployed["properties"]["filter"])
    assert "/containers/landing/" not in text
    assert deployed["properties"]["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/drops/"
    snapshots = [f for f in deployed["properties"]["filter"]["advancedFilters"] if f["key"] == "subject"]
    assert snapshots and snapshots[0]["values"] == ["/blobServices/default/containers/drops/blobs/_evergreen/"]
    # Subjects of the other topics are left alone.
    other = checks.deployed_subscriptions(INFRA, {"landingContainerName": "drops"})["data-version-registered"]
    assert other["properties"]["filter"]["subjectBeginsWith"] == "datasets/"


def test_blob_created_filter_takes_every_api_that_completes_a_blob() -> None:
    """PutBlob, PutBlockList, CopyBlob, FlushWithClose (Data Lake) and SftpCommit (SFTP uploads)."""
    entry = next(s for s in checks.load_subscriptions(INFRA) if s["name"] == "landing-blob-created")
    api = next(f for f in entry["filter"]["advancedFilters"] if f["key"] == "data.api")
    assert api["operatorType"] == "StringIn"
    assert set(api["values"]) == {"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose", "SftpCommit"}


def test_only_the_blob_trigger_subscription_looks_up_the_blobs_extension_key() -> None:
    deployed = checks.deployed_subscriptions(INFRA)
    for entry in checks.load_subscriptions(INFRA):
        calls = deployed[entry["name"]]["listCalls"]
        if entry["destination"]["kind"] == "blobTrigger":
            assert calls == ["listKeys(<functionApp.id>/host/default)"], entry["name"]
        else:
            assert calls == [], entry["name"]


def test_blob_data_contributor_is_granted_per_container_not_on_the_data_account() -> None:
    assert checks.data_container_problems(INFRA) == []
    grants, _ = checks.grants(INFRA)
    data = [g for g in grants if g.file == "data-access.bicep" and g.role == "Storage Blob Data Contributor"]
    assert [g.scope_type for g in data] == ["Microsoft.Storage/storageAccounts/blobServices/containers"]


def test_an_existing_system_topic_can_be_reused_instead_of_created() -> None:
    assert checks.topic_reuse_problems(INFRA) == []
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["dataSystemTopicName"]["value"] == "${EVERGREEN_DATA_SYSTEM_TOPIC=}"
    assert params["workspaceSystemTopicName"]["value"] == "${EVERGREEN_WORKSPACE_SYSTEM_TOPIC=}"


# --- the functions the subscriptions deliver to -------------------------------------------------------------
@pytest.fixture(scope="module")
def app_functions() -> dict[str, dict[str, Any]]:
    """Trigger binding of each function of function_app (get_functions() once, in a clean interpreter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "EVERGREEN", "DATA_STORAGE", "AzureWeb"))}
    env.update({
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000", "AZURE_RESOURCE_GROUP": "rg",
        "AZUREML_WORKSPACE_NAME": "ws",
        "EVERGREEN_EVENTS_TOPIC_ENDPOINT": "https://topic.westeurope-1.eventgrid.azure.net/api/events",
        "AzureWebJobsStorage__accountName": "appstore",
        "DATA_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
    })
    code = ("import json, function_app; print(json.dumps({f.get_function_name(): json.loads(f.get_raw_bindings()[0])"
            " for f in function_app.app.get_functions()}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    functions: dict[str, dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return functions


def test_every_subscription_destination_is_a_function_of_the_app_with_that_trigger(
        app_functions: dict[str, dict[str, Any]]) -> None:
    for entry in checks.load_subscriptions(INFRA):
        function, kind = entry["destination"]["function"], entry["destination"]["kind"]
        assert function in app_functions, f"{entry['name']}: function_app has no function {function}"
        trigger = app_functions[function]
        assert trigger["type"] == kind, f"{entry['name']}: {function} is a {trigger['type']}, file says {kind}"
        if kind == "blobTrigger":
            # Flex Consumption supports only the Event Grid-sourced blob trigger; DATA_STORAGE is the data account.
            assert (trigger.get("source"), trigger.get("connection")) == ("EventGrid", "DATA_STORAGE")
            assert trigger["path"].startswith("%EVERGREEN_LANDING_CONTAINER%/")


# --- azd and workflows -------------------------------------------------------------------------------------
def test_azure_yaml_deploys_the_app_to_functions_and_creates_subscriptions_after_deploy() -> None:
    config = yaml.safe_load((REPO / "azure.yaml").read_text())
    assert config["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert config["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    hook = REPO / config["hooks"]["postdeploy"]["posix"]["run"]
    assert hook.is_file() and os.access(hook, os.X_OK)
    for script in (hook, REPO / config["hooks"]["postdeploy"]["windows"]["run"]):
        text = script.read_text()
        # Waits for the key (warming the app), then provisions with the subscriptions.
        assert "EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS" in text, script
        assert "systemKeys.blobs_extension" in text and "azd provision --no-prompt" in text, script
        assert text.index("systemKeys.blobs_extension") < text.index("azd provision --no-prompt"), script
    # The service tag azd deploys to is on the function app.
    assert "'azd-service-name': 'api'" in (INFRA / "modules" / "app.bicep").read_text()


def test_azd_parameters_cover_every_required_parameter() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    main = Template.load(INFRA / "main.bicep").parameters
    required = {name for name, p in main.items() if p.get("default") is None}
    assert required <= set(params)
    assert set(params) <= set(main)
    assert params["deployEventSubscriptions"]["value"] == "${EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=false}"


def test_ci_runs_make_test_and_deploy_uses_oidc_without_stored_secrets() -> None:
    ci_text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    ci = yaml.safe_load(ci_text)
    steps = ci["jobs"]["test"]["steps"]
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert any(s.get("with", {}).get("node-version") == "20" for s in steps)
    assert any(s.get("run") == ".ci/run" for s in steps)
    assert "make test" in (REPO / ".ci" / "run").read_text()

    deploy_text = (REPO / ".github" / "workflows" / "deploy.yml").read_text()
    deploy = yaml.safe_load(deploy_text)
    assert deploy["permissions"]["id-token"] == "write"
    assert "${{ secrets." not in deploy_text.replace(" ", "").replace("${{secrets.", "${{ secrets.")
    login = next(s for s in deploy["jobs"]["deploy"]["steps"] if str(s.get("uses", "")).startswith("azure/login"))
    assert login["with"] == {"client-id": "${{ vars.AZURE_CLIENT_ID }}", "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
                             "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}"}
    runs = " ".join(str(s.get("run", "")) for s in deploy["jobs"]["deploy"]["steps"])
    assert "--federated-credential-provider github" in runs
    assert "azd provision" in runs and "azd deploy" in runs


def test_every_hook_has_a_posix_and_a_windows_twin() -> None:
    """azd refuses a hook without a configuration for the running OS (on Windows: "hook configuration ... is
    invalid"), so each hook has both, sh and pwsh, and both scripts exist."""
    hooks = yaml.safe_load((REPO / "azure.yaml").read_text())["hooks"]
    assert hooks
    for name, hook in hooks.items():
        assert set(hook) >= {"posix", "windows"}, name
        assert (hook["posix"]["shell"], hook["windows"]["shell"]) == ("sh", "pwsh"), name
        assert hook["windows"]["run"].endswith(".ps1") and hook["posix"]["run"].endswith(".sh"), name
        for os_name in ("posix", "windows"):
            assert (REPO / hook[os_name]["run"]).is_file(), (name, os_name)
            assert hook[os_name].get("continueOnError") is False, (name, os_name)


def test_deploy_waits_for_the_test_and_bicep_jobs() -> None:
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert {"test", "bicep"} <= set(ci["jobs"])
    assert "main" in ci[True]["push"]["branches"]  # PyYAML reads the `on:` key as True
    deploy = yaml.safe_load((REPO / ".github" / "workflows" / "deploy.yml").read_text())
    triggers = deploy[True]
    assert set(triggers) == {"workflow_dispatch", "workflow_run"}, "a push trigger would deploy before CI ends"
    assert triggers["workflow_run"] == {"workflows": [ci["name"]], "types": ["completed"], "branches": ["main"]}
    job = deploy["jobs"]["deploy"]
    assert "github.event.workflow_run.conclusion == 'success'" in job["if"]
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.event.workflow_run.head_sha || github.sha }}"


def test_queue_triggers_listen_on_the_account_with_the_queue_role(app_functions: dict[str, dict[str, Any]]) -> None:
    """Storage Queue Data Contributor is granted on Evergreen's storage account, so every queue
    (evergreen-blob-retry, evergreen-retrain-check, evergreen-promotion-retry, ...) is covered."""
    queues = {f: t for f, t in app_functions.items() if t["type"] == "queueTrigger"}
    assert {t["queueName"] for t in queues.values()} >= {
        "evergreen-blob-retry", "evergreen-retrain-check", "evergreen-promotion-retry"}
    for function, trigger in queues.items():
        assert trigger.get("connection") in (None, "", "AzureWebJobsStorage"), function
    assert checks.Grant("app.bicep", "Storage Queue Data Contributor", "Microsoft.Storage/storageAccounts",
                        "stevergreen${resourceToken}", checks.IDENTITY) in checks.grants(INFRA)[0]


def test_readme_documents_what_deployment_does_not_do() -> None:
    """Findings that stay as they are are documented in the README's "Deploy to Azure" section."""
    readme = (REPO / "README.md").read_text()
    deploy = readme[readme.index("## Deploy to Azure"):]
    # Incremental deployments never delete a subscription removed from the file.
    assert "never deletes" in deploy and "event-subscription delete" in deploy
    # Reusing an existing system topic, and its identity.
    assert "EVERGREEN_DATA_SYSTEM_TOPIC" in deploy and "EVERGREEN_WORKSPACE_SYSTEM_TOPIC" in deploy
    assert "system-assigned identity" in deploy
    # The webhook secret goes to Key Vault, not to the azd env file (plain text).
    assert "azd env set EVERGREEN_WEBHOOK_SECRET" not in readme
    assert "az keyvault secret set" in deploy
    # The instance cap is per scale group.
    assert "scale group" in deploy


# --- the checks catch regressions ----------------------------------------------------------------------------
def copy_infra(tmp_path: Path) -> Path:
    target = tmp_path / "infra"
    shutil.copytree(INFRA, target)
    return target


MUTATIONS = [
    pytest.param("modules/event-subscriptions.bicep",
                 "subjectBeginsWith: subjectIn(sub.filter.?subjectBeginsWith ?? '', oldPrefix, newPrefix)",
                 "subjectBeginsWith: '/blobServices/default/containers/'", checks.subscription_problems,
                 "filter.subjectBeginsWith", id="subscription-filter-hardcoded"),
    pytest.param("modules/event-subscriptions.bicep",
                 "subjectBeginsWith: subjectIn(sub.filter.?subjectBeginsWith ?? '', oldPrefix, newPrefix)",
                 "subjectBeginsWith: sub.filter.?subjectBeginsWith ?? ''",
                 lambda infra: checks.subscription_problems(infra, landing="drops"),
                 "filter.subjectBeginsWith", id="landing-container-not-substituted"),
    pytest.param("modules/event-subscriptions.bicep",
                 "advancedFilters: advancedFiltersIn(sub.filter.?advancedFilters ?? [], oldPrefix, newPrefix)",
                 "advancedFilters: sub.filter.?advancedFilters ?? []",
                 lambda infra: checks.subscription_problems(infra, landing="drops"),
                 "filter.advancedFilters", id="snapshot-filter-not-substituted"),
    pytest.param("modules/event-subscriptions.bicep", "properties: subscriptionProperties(sub, destinationFor(sub, "
                 "functionApp.id, functionApp.properties.defaultHostName, (sub.destination.kind == 'blobTrigger') ? "
                 "listKeys('${functionApp.id}/host/default', '2023-12-01').systemKeys.blobs_extension : ''), "
                 "deadLetterStorageAccountId, (topicKey == 'storage') ? fileLandingPrefix : '', landingPrefix)\n}]\n\n"
                 "resource customTopicSubscriptions",
                 "properties: subscriptionProperties(sub, destinationFor(sub, functionApp.id, "
                 "functionApp.properties.defaultHostName, listKeys('${functionApp.id}/host/default', '2023-12-01')"
                 ".systemKeys.blobs_extension), deadLetterStorageAccountId, (topicKey == 'storage') ? "
                 "fileLandingPrefix : '', landingPrefix)\n}]\n\nresource customTopicSubscriptions",
                 checks.subscription_problems, "although it is no blob trigger", id="key-looked-up-for-every-entry"),
    pytest.param("modules/app.bicep", "dependsOn: [deploymentContainer, ", "dependsOn: [",
                 checks.hosting_problems, "deployment container", id="site-before-its-package-container"),
    pytest.param("modules/data-access.bicep", "  scope: dataContainer[i]\n", "  scope: dataAccount\n",
                 checks.role_problems, "unexpected role assignment", id="data-role-on-the-whole-account"),
    pytest.param("main.bicep", "    containerNames: dataContainerNames\n", "    containerNames: []\n",
                 checks.data_container_problems, "containerNames", id="landing-container-role-dropped"),
    pytest.param("main.bicep", "    existingSystemTopicName: dataSystemTopicName\n", "",
                 checks.topic_reuse_problems, "existingSystemTopicName", id="topic-reuse-not-wired"),
    pytest.param("modules/workspace-access.bicep",
                 "resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!reuseSystemTopic) {",
                 "resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {",
                 checks.topic_reuse_problems, "system topics in play", id="topic-created-although-reused"),
    pytest.param("main.bicep", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount",
                 "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount",
                 checks.parameter_problems, "maximumInstanceCount bounds", id="instance-cap-floor-40"),
    pytest.param("modules/event-subscriptions.bicep", "maxDeliveryAttempts: sub.retryPolicy.maxDeliveryAttempts",
                 "maxDeliveryAttempts: 10", checks.subscription_problems, "retryPolicy", id="retry-policy-ignored"),
    pytest.param("modules/event-subscriptions.bicep", "blobContainerName: sub.deadLetter.container",
                 "blobContainerName: 'deadletter-all'", checks.subscription_problems, "dead letter",
                 id="dead-letter-container-ignored"),
    pytest.param("main.bicep", "module storageSubscriptions 'modules/event-subscriptions.bicep' = if "
                 "(deployEventSubscriptions) {", "module storageSubscriptions 'modules/event-subscriptions.bicep' = {",
                 checks.subscription_problems, "not gated", id="subscriptions-before-code"),
    pytest.param("modules/data-access.bicep", "  scope: poisonQueue\n", "", checks.role_problems,
                 "whole resource group", id="role-scope-widened-to-resource-group"),
    pytest.param("modules/data-access.bicep", "roleDefinitions', builtInRoles.storageBlobDataContributor)",
                 "roleDefinitions', builtInRoles.storageBlobDataOwner)", checks.role_problems,
                 "unexpected role assignment",
                 id="data-role-raised-to-owner"),
    pytest.param("modules/app.bicep", "  AzureWebJobsStorage__accountName: appStorage.name\n",
                 "  AzureWebJobsStorage__accountName: appStorage.name\n  AzureWebJobsStorage: 'DefaultEndpointsProtocol"
                 "=https;AccountName=${appStorage.name};AccountKey=${appStorage.listKeys().keys[0].value}'\n",
                 checks.app_setting_problems, "AzureWebJobsStorage", id="storage-connection-string"),
    pytest.param("modules/app.bicep", "'@Microsoft.KeyVault(SecretUri=${vault.properties.vaultUri}secrets/"
                 "${webhookSecretName})'", "webhookSecret", checks.app_setting_problems, "EVERGREEN_WEBHOOK_SECRET",
                 id="webhook-secret-inlined"),
    pytest.param("modules/app.bicep", "        version: '3.11'", "        version: '3.12'",
                 checks.hosting_problems, "python 3.11", id="runtime-changed"),
]


@pytest.mark.parametrize(("file", "old", "new", "check", "expected"), MUTATIONS)
def test_check_catches_regression(tmp_path: Path, file: str, old: str, new: str, check: Any, expected: str) -> None:
    infra = copy_infra(tmp_path)
    assert check(infra) == [], "the unmutated copy must pass"
    text = (infra / file).read_text()
    assert text.count(old) == 1, f"mutation anchor not found once in {file}: {old!r}"
    (infra / file).write_text(text.replace(old, new))
    problems = check(infra)
    assert any(expected in problem for problem in problems), problems

"""Invariants of infra/, as functions that return the problems they find (empty list: all good).

They take the infra directory as an argument so that tests can also run them on a mutated copy and prove that
each one catches the regression it is meant to catch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.infra.bicep import Opaque, Template, body, loop

# Built-in role definition ids, from https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
# (MicrosoftDocs/azure-docs articles/role-based-access-control/built-in-roles.md). Kept here independently of
# infra/modules/roles.bicep so that a typo there is caught.
ROLE_IDS = {
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
ROLE_NAMES = {guid: name for name, guid in ROLE_IDS.items()}

IDENTITY = "Evergreen identity"
TOPIC = "topic identity"


@dataclass(frozen=True, order=True)
class Grant:
    """One role assignment: which template, which role, on what (type and name expression), to whom."""

    file: str
    role: str
    scope_type: str
    scope_name: str
    principal: str


# Every role assignment Evergreen makes, each on the narrowest resource that works. Any other assignment,
# or one on a wider scope (resource group, subscription), is a finding.
EXPECTED_GRANTS = {
    # The Functions host needs Blob Data Owner on AzureWebJobsStorage (docs: "Connecting to host storage with
    # an identity"); queues and ledger tables live there too.
    Grant("app.bicep", "Storage Blob Data Owner", "Microsoft.Storage/storageAccounts", "stevergreen${resourceToken}",
          IDENTITY),
    Grant("app.bicep", "Storage Queue Data Contributor", "Microsoft.Storage/storageAccounts",
          "stevergreen${resourceToken}", IDENTITY),
    Grant("app.bicep", "Storage Table Data Contributor", "Microsoft.Storage/storageAccounts",
          "stevergreen${resourceToken}", IDENTITY),
    Grant("app.bicep", "Monitoring Metrics Publisher", "Microsoft.Insights/components",
          "appi-evergreen-${resourceToken}", IDENTITY),
    Grant("app.bicep", "Key Vault Secrets User", "Microsoft.KeyVault/vaults", "kv-evg-${resourceToken}", IDENTITY),
    Grant("app.bicep", "EventGrid Data Sender", "Microsoft.EventGrid/topics", "evgt-evergreen-${resourceToken}",
          IDENTITY),
    # One per container Evergreen uses (the landing container, and those blob retention rules name), never
    # the whole data account: data_container_problems checks what the loop runs over.
    Grant("data-access.bicep", "Storage Blob Data Contributor",
          "Microsoft.Storage/storageAccounts/blobServices/containers", "name", IDENTITY),
    Grant("data-access.bicep", "Storage Queue Data Contributor",
          "Microsoft.Storage/storageAccounts/queueServices/queues", "poisonQueueName", IDENTITY),
    Grant("workspace-access.bicep", "AzureML Data Scientist", "Microsoft.MachineLearningServices/workspaces",
          "workspaceName", IDENTITY),
    Grant("dead-letter-access.bicep", "Storage Blob Data Contributor",
          "Microsoft.Storage/storageAccounts/blobServices/containers", "name", TOPIC),
}

# Values that reveal a key or a connection string in an app setting.
SECRET_MARKERS = ("accountkey", "sharedaccesskey", "listkeys", "list_func", "connectionstring", "sharedaccesssignature",
                  "defaultendpointsprotocol")
# The one allowed exception: Application Insights' connection string carries the instrumentation key, an
# identifier rather than a credential; the component has local auth disabled, so ingestion needs the Entra
# token configured by APPLICATIONINSIGHTS_AUTHENTICATION_STRING.
ALLOWED_CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"

# Topic key of the subscription file -> (main.bicep module that makes the topic, output holding its name,
# resource type of the subscriptions, topicType of the system topic or None for the custom topic).
TOPICS = {
    "storage": ("dataAccess", "systemTopicName", "Microsoft.EventGrid/systemTopics/eventSubscriptions",
                "Microsoft.Storage.StorageAccounts"),
    "workspace": ("workspaceAccess", "systemTopicName", "Microsoft.EventGrid/systemTopics/eventSubscriptions",
                  "Microsoft.MachineLearningServices.Workspaces"),
    "evergreen": ("app", "eventsTopicName", "Microsoft.EventGrid/topics/eventSubscriptions", None),
}
SUBSCRIPTIONS_MODULE = "modules/event-subscriptions.bicep"


def load_subscriptions(infra: Path) -> list[dict[str, Any]]:
    subscriptions: list[dict[str, Any]] = json.loads((infra / "eventgrid-subscriptions.json").read_text())[
        "subscriptions"]
    return subscriptions


def bicep_files(infra: Path) -> list[Path]:
    return sorted(infra.rglob("*.bicep"))


def _module_calls(main: Template, path: str) -> dict[str, dict[str, Any]]:
    return {symbol: module for symbol, module in main.modules.items() if module_path(module) == path}


def module_path(module: dict[str, Any]) -> str:
    path: str = module["detail"]["path"]
    return path


# --- Event Grid subscriptions ------------------------------------------------------------------------------
def deployed_subscriptions(infra: Path, main_params: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """What the templates create for each subscription of the file: name -> resource type, topic, properties,
    and the list functions (listKeys) evaluated for it. `main_params`: values of main.bicep's parameters."""
    main = Template.load(infra / "main.bicep")
    module_template = Template.load(infra / SUBSCRIPTIONS_MODULE)
    result: dict[str, dict[str, Any]] = {}
    for symbol, module in _module_calls(main, SUBSCRIPTIONS_MODULE).items():
        params = main.evaluator(main_params).eval(body(module)["params"])
        evaluator = module_template.evaluator(params)
        for resource_symbol, resource in module_template.resources.items():
            detail = loop(resource)
            if resource["existing"] or detail is None:
                continue
            for item in evaluator.eval(detail["array_name"]):
                scope = {detail["item_name"]: item}
                config = body(resource)
                name = evaluator.eval(config["name"], scope)
                if name in result:
                    raise AssertionError(f"subscription {name!r} is declared twice ({symbol}.{resource_symbol})")
                evaluator.list_calls.clear()
                properties = evaluator.eval(config["properties"], scope)
                result[name] = {
                    "module": symbol,
                    "module_condition": module["config"].get("condition"),
                    "type": resource["type"],
                    "topicKey": params["topicKey"],
                    "topicName": params["topicName"],
                    "parent": config.get("parent"),
                    "properties": properties,
                    "listCalls": list(evaluator.list_calls),
                    "deadLetterAccount": params["deadLetterStorageAccountId"],
                }
    return result


def _expected_destination(entry: dict[str, Any]) -> dict[str, Any] | str:
    function, kind = entry["destination"]["function"], entry["destination"]["kind"]
    if kind == "blobTrigger":
        return {"endpointType": "WebHook", "urlPattern": (
            r"https://<functionApp\.properties>\.defaultHostName/runtime/webhooks/blobs"
            rf"\?functionName=Host\.Functions\.{re.escape(function)}"
            r"&code=<listKeys\(<functionApp\.id>/host/default\)>\.systemKeys\.blobs_extension")}
    if kind == "eventGridTrigger":
        return {"endpointType": "AzureFunction", "resourceId": f"<functionApp.id>/functions/{function}"}
    return f"unknown destination kind {kind!r}"


def file_landing_container(infra: Path) -> str:
    """The landing container the file's storage subjects name (the local stack's)."""
    container: str = json.loads((infra / "eventgrid-subscriptions.json").read_text())["landingContainer"]
    return container


def expected_filter(entry: dict[str, Any], file_container: str, landing: str) -> dict[str, Any]:
    """The filter Azure should get for a file entry: storage subjects moved to the deployed landing container."""
    old, new = (f"/blobServices/default/containers/{c}/" for c in (file_container, landing))

    def moved(subject: str) -> str:
        is_moved = entry["topic"] == "storage" and subject.lower().startswith(old.lower())
        return new + subject[len(old):] if is_moved else subject

    advanced = [{**f, "values": [moved(v) for v in f["values"]]} if f["key"] == "subject" and "values" in f else f
                for f in entry["filter"].get("advancedFilters", [])]
    return {
        "includedEventTypes": entry["filter"]["includedEventTypes"],
        "subjectBeginsWith": moved(entry["filter"].get("subjectBeginsWith", "")),
        "subjectEndsWith": entry["filter"].get("subjectEndsWith", ""),
        "advancedFilters": advanced,
    }


def subscription_problems(infra: Path, landing: str | None = None) -> list[str]:
    """Every entry of the file becomes exactly one subscription, on its topic, with its own settings; storage
    subjects name the deployed landing container (`landing`: main.bicep's landingContainerName, default if None);
    the blobs_extension key is looked up only for blob-trigger entries."""
    problems: list[str] = []
    entries = load_subscriptions(infra)
    main_params = None if landing is None else {"landingContainerName": landing}
    deployed = deployed_subscriptions(infra, main_params)
    if landing is None:
        landing = str(Template.load(infra / "main.bicep").parameters["landingContainerName"]["default"])
    file_container = file_landing_container(infra)
    names = [entry["name"] for entry in entries]
    if len(set(names)) != len(names):
        problems.append(f"duplicate subscription names in the file: {names}")
    for extra in sorted(set(deployed) - set(names)):
        problems.append(f"{extra}: deployed but not in eventgrid-subscriptions.json")
    for entry in entries:
        name = entry["name"]
        got = deployed.get(name)
        if got is None:
            problems.append(f"{name}: in the file but no template deploys it")
            continue
        module, output, resource_type, _ = TOPICS.get(entry["topic"], ("?", "?", "?", None))
        where = f"{name} (topic {entry['topic']})"
        if got["topicKey"] != entry["topic"] or got["topicName"] != f"<{module}.outputs>.{output}":
            problems.append(f"{where}: attached to {got['topicName']} via topicKey {got['topicKey']!r}")
        if got["type"] != resource_type:
            problems.append(f"{where}: resource type {got['type']}, expected {resource_type}")
        if got["module_condition"] != "deployEventSubscriptions":
            problems.append(f"{where}: not gated by deployEventSubscriptions (functions must exist first)")
        props = got["properties"]
        for key, value in expected_filter(entry, file_container, landing).items():
            if props["filter"].get(key) != value:
                problems.append(f"{where}: filter.{key} is {props['filter'].get(key)!r}, expected {value!r}")
        if entry["destination"]["kind"] != "blobTrigger" and got["listCalls"]:
            problems.append(f"{where}: evaluates {got['listCalls']} although it is no blob trigger (only the "
                            "blob trigger's webhook needs the blobs_extension key)")
        if props.get("retryPolicy") != entry["retryPolicy"]:
            problems.append(f"{where}: retryPolicy {props.get('retryPolicy')!r}, file says {entry['retryPolicy']!r}")
        problems += _dead_letter_problems(where, entry, props, got["deadLetterAccount"])
        problems += _destination_problems(where, entry, props.get("destination") or {})
    return problems


def _dead_letter_problems(where: str, entry: dict[str, Any], props: dict[str, Any], account: Any) -> list[str]:
    dead_letter = props.get("deadLetterWithResourceIdentity")
    if "deadLetter" not in entry:
        return [] if dead_letter is None else [f"{where}: dead-lettering configured but the file has none"]
    if dead_letter is None:
        return [f"{where}: the file asks for dead-lettering, the template has none"]
    expected = {
        "identity": {"type": "SystemAssigned"},
        "deadLetterDestination": {"endpointType": "StorageBlob", "properties": {
            "resourceId": "<app.outputs>.appStorageAccountId", "blobContainerName": entry["deadLetter"]["container"]}},
    }
    actual = json.loads(json.dumps(dead_letter))
    actual["deadLetterDestination"]["properties"]["resourceId"] = str(account)
    return [] if actual == expected else [f"{where}: dead letter {actual!r}, expected {expected!r}"]


def _destination_problems(where: str, entry: dict[str, Any], destination: dict[str, Any]) -> list[str]:
    expected = _expected_destination(entry)
    if isinstance(expected, str):
        return [f"{where}: {expected}"]
    if destination.get("endpointType") != expected["endpointType"]:
        return [f"{where}: endpointType {destination.get('endpointType')!r}, expected {expected['endpointType']!r}"]
    properties = destination.get("properties") or {}
    if "urlPattern" in expected and not re.fullmatch(expected["urlPattern"], str(properties.get("endpointUrl"))):
        return [f"{where}: webhook URL {properties.get('endpointUrl')!r} does not match {expected['urlPattern']}"]
    if "resourceId" in expected and properties.get("resourceId") != expected["resourceId"]:
        return [f"{where}: function resource id {properties.get('resourceId')!r}, expected {expected['resourceId']!r}"]
    return []


def topic_problems(infra: Path) -> list[str]:
    """Each topic key of the file maps to the right Event Grid topic (source type) in the templates."""
    problems: list[str] = []
    main = Template.load(infra / "main.bicep")
    for key, (module_symbol, output, _, topic_type) in TOPICS.items():
        module = main.modules.get(module_symbol)
        if module is None:
            problems.append(f"{key}: main.bicep has no module {module_symbol}")
            continue
        template = Template.load(infra / module_path(module))
        outputs = template.tree.get("outputs") or {}
        topic_symbol = str(template.evaluator().eval(outputs.get(output, {}).get("value"))).strip("<>").split(".")[0]
        topic = template.resources.get(topic_symbol)
        wanted_type = "Microsoft.EventGrid/topics" if topic_type is None else "Microsoft.EventGrid/systemTopics"
        if topic is None or topic["type"] != wanted_type:
            problems.append(f"{key}: output {output} of {module_path(module)} is not a {wanted_type}")
            continue
        properties = body(topic)["properties"]
        if topic_type is not None and properties.get("topicType") != topic_type:
            problems.append(f"{key}: system topic type {properties.get('topicType')!r}, expected {topic_type!r}")
        if body(topic).get("identity") != {"type": "SystemAssigned"}:
            problems.append(f"{key}: topic needs a system-assigned identity to dead-letter without keys")
    return problems


# --- role assignments --------------------------------------------------------------------------------------
def grants(infra: Path) -> tuple[set[Grant], list[str]]:
    """Every role assignment of every template, and anything about them that cannot be resolved."""
    found: set[Grant] = set()
    problems: list[str] = []
    for path in bicep_files(infra):
        template = Template.load(path)
        evaluator = template.evaluator()
        for symbol, resource in template.resources_of_type("Microsoft.Authorization/roleAssignments"):
            config = body(resource)
            where = f"{path.name}:{symbol}"
            role_id = str(evaluator.eval(config["properties"]["roleDefinitionId"]))
            guids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", role_id)
            if "subscription_resource_id(Microsoft.Authorization/roleDefinitions" not in role_id or len(guids) != 1:
                problems.append(f"{where}: roleDefinitionId {role_id!r} is not "
                                "subscriptionResourceId(roleDefinitions, <guid>)")
                continue
            role = ROLE_NAMES.get(guids[0], f"unknown role {guids[0]}")
            scope_symbol = _scope_symbol(config.get("scope"))
            scope_resource = template.resources.get(scope_symbol) if isinstance(scope_symbol, str) else None
            if scope_resource is None:
                problems.append(f"{where}: scope {scope_symbol!r} is not a resource of the template "
                                "(a role assignment without one applies to the whole resource group)")
                continue
            principal_expr = str(evaluator.eval(config["properties"]["principalId"], _loop_scope(resource)))
            principal = {"<identity.properties>.principalId": IDENTITY, "<param identityPrincipalId>": IDENTITY,
                         "<param topicPrincipalIds>.p": TOPIC}.get(principal_expr, principal_expr)
            found.add(Grant(path.name, role, scope_resource["type"], str(body(scope_resource)["name"]), principal))
            if config["properties"].get("principalType") != "ServicePrincipal":
                problems.append(f"{where}: principalType must be ServicePrincipal (managed identities)")
    return found, problems


def _scope_symbol(scope: Any) -> Any:
    """`scope: x` or `scope: x[i]` (an element of a resource loop) -> `x`."""
    if isinstance(scope, dict) and scope.get("operator", {}).get("type") == "index_accessor":
        return scope["operator"]["operands"]["operand_1"]
    return scope


def _loop_scope(resource: dict[str, Any]) -> dict[str, Any]:
    """Binds a loop variable to a symbolic value, so that `pair.p` reads as `<param topicPrincipalIds>.p`."""
    detail = loop(resource)
    return {detail["item_name"]: Opaque("<param topicPrincipalIds>")} if detail else {}


def role_problems(infra: Path) -> list[str]:
    found, problems = grants(infra)
    problems += _principal_wiring_problems(infra)
    for grant in sorted(found - EXPECTED_GRANTS):
        problems.append(f"unexpected role assignment: {grant}")
    for grant in sorted(EXPECTED_GRANTS - found):
        problems.append(f"missing role assignment: {grant}")
    return problems


def _principal_wiring_problems(infra: Path) -> list[str]:
    """Modules' principal parameters really are Evergreen's identity and the three topics' identities."""
    main = Template.load(infra / "main.bicep")
    evaluator = main.evaluator()
    wiring = {symbol: evaluator.eval(body(module)["params"]) for symbol, module in main.modules.items()}
    identity = "<app.outputs>.identityPrincipalId"
    problems = [f"main.bicep: {symbol} gets identityPrincipalId {params['identityPrincipalId']!r}"
                for symbol, params in wiring.items() if params.get("identityPrincipalId", identity) != identity]
    topic_principals = sorted(str(p) for p in (wiring.get("deadLetterAccess") or {}).get("topicPrincipalIds", []))
    expected = sorted(["<dataAccess.outputs>.systemTopicPrincipalId",
                       "<workspaceAccess.outputs>.systemTopicPrincipalId", "<app.outputs>.eventsTopicPrincipalId"])
    if topic_principals != expected:
        problems.append(f"main.bicep: dead-letter writers are {topic_principals}, expected {expected}")
    return problems


# --- app settings ------------------------------------------------------------------------------------------
def app_settings(infra: Path) -> tuple[dict[str, Any], str]:
    """The evaluated app settings of the function app, and the raw expression text they come from."""
    template = Template.load(infra / "modules" / "app.bicep")
    evaluator = template.evaluator()
    settings: dict[str, Any] = {}
    raw: list[Any] = []
    for _, resource in template.resources_of_type("Microsoft.Web/sites/config"):
        config = body(resource)
        if config.get("name") == "appsettings":
            value = config["properties"]
            raw.append(template.tree["variables"][value]["value"] if isinstance(value, str) else value)
            settings.update(evaluator.eval(value))
    for _, site in template.resources_of_type("Microsoft.Web/sites"):
        listed = (body(site).get("properties", {}).get("siteConfig") or {}).get("appSettings") or []
        raw.append(listed)
        settings.update({item["name"]: evaluator.eval(item["value"]) for item in evaluator.eval(listed)})
    return settings, json.dumps(raw)


REQUIRED_SETTINGS = {
    "AzureWebJobsStorage__accountName": "<appStorage.name>",
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": "<identity.properties>.clientId",
    "DATA_STORAGE__blobServiceUri": "<dataAccount.properties>.primaryEndpoints.blob",
    "DATA_STORAGE__credential": "managedidentity",
    "DATA_STORAGE__clientId": "<identity.properties>.clientId",
    "AZURE_CLIENT_ID": "<identity.properties>.clientId",
    "AZURE_SUBSCRIPTION_ID": "<subscription()>.subscriptionId",
    "AZURE_RESOURCE_GROUP": "<param workspaceResourceGroupName>",
    "AZUREML_WORKSPACE_NAME": "<param workspaceName>",
    "EVERGREEN_EVENTS_TOPIC_ENDPOINT": "<eventsTopic.properties>.endpoint",
    "EVERGREEN_LANDING_CONTAINER": "<param landingContainerName>",
    "EVERGREEN_RETENTION_SCHEDULE": "<param retentionSchedule>",
    "EVERGREEN_RECONCILE_SCHEDULE": "0 */5 * * * *",
    "EVERGREEN_RESCORE_SCHEDULE": "0 30 4 * * *",
    "EVERGREEN_WEBHOOK_SECRET": "@Microsoft.KeyVault(SecretUri=<vault.properties>.vaultUri"
                                "secrets/evergreen-webhook-secret)",
}


def app_setting_problems(infra: Path) -> list[str]:
    problems: list[str] = []
    settings, raw = app_settings(infra)
    for key, value in REQUIRED_SETTINGS.items():
        if str(settings.get(key)) != value:
            problems.append(f"app setting {key} = {settings.get(key)!r}, expected {value!r}")
    for key in ("AzureWebJobsStorage", "DATA_STORAGE", "EVERGREEN_EVENTS_TOPIC_KEY", "FUNCTIONS_WORKER_RUNTIME",
                "FUNCTIONS_EXTENSION_VERSION", "APPINSIGHTS_INSTRUMENTATIONKEY"):
        if key in settings:
            problems.append(f"app setting {key} must not exist (a secret, or deprecated on Flex Consumption)")
    for key, value in settings.items():
        text = f"{key}={value}".lower().replace("_", "")
        if key == ALLOWED_CONNECTION_STRING:
            if str(value) != "<appInsights.properties>.ConnectionString":
                problems.append(f"{key} must be the component's ConnectionString property, got {value!r}")
            continue
        for marker in SECRET_MARKERS:
            if marker.replace("_", "") in text:
                problems.append(f"app setting {key} looks like a key or connection string ({marker}): {value!r}")
    allowed_raw = raw.replace('"ConnectionString"', "")
    for marker in ("listKeys", "list_func", "AccountKey", "SharedAccessKey", "connectionString"):
        if marker.lower() in allowed_raw.lower():
            problems.append(f"app settings expression mentions {marker}")
    return problems


# --- hosting -----------------------------------------------------------------------------------------------
def hosting_problems(infra: Path) -> list[str]:
    problems: list[str] = []
    template = Template.load(infra / "modules" / "app.bicep")
    evaluator = template.evaluator()
    plans = [body(r) for _, r in template.resources_of_type("Microsoft.Web/serverfarms")]
    if [p.get("sku") for p in plans] != [{"name": "FC1", "tier": "FlexConsumption"}]:
        problems.append(f"plan must be one FC1 / FlexConsumption, got {[p.get('sku') for p in plans]}")
    sites = [body(r) for _, r in template.resources_of_type("Microsoft.Web/sites") if not r["existing"]]
    if len(sites) != 1:
        return [*problems, f"expected one function app, got {len(sites)}"]
    site = evaluator.eval(sites[0])
    props = site["properties"]
    config = props.get("functionAppConfig") or {}
    if site.get("kind") != "functionapp,linux":
        problems.append(f"site kind {site.get('kind')!r}")
    if config.get("runtime") != {"name": "python", "version": "3.11"}:
        problems.append(f"runtime {config.get('runtime')!r}, expected python 3.11")
    storage = (config.get("deployment") or {}).get("storage") or {}
    if storage.get("type") != "blobContainer" or storage.get("authentication") != {
            "type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "<identity.id>"}:
        problems.append(f"deployment storage must be a blob container reached by the identity: {storage!r}")
    problems += _deployment_container_problems(template, sites[0], str(storage.get("value")))
    if props.get("keyVaultReferenceIdentity") != "<identity.id>":
        problems.append("keyVaultReferenceIdentity must be the user-assigned identity (Key Vault references)")
    if site.get("identity", {}).get("type") != "UserAssigned":
        problems.append("the function app must run as the user-assigned identity")
    storage_accounts = [evaluator.eval(body(r)) for _, r in template.resources_of_type(
        "Microsoft.Storage/storageAccounts") if not r["existing"]]
    if [s["properties"].get("allowSharedKeyAccess") for s in storage_accounts] != [False]:
        problems.append("the app's storage account must disable shared keys")
    vaults = [evaluator.eval(body(r)) for _, r in template.resources_of_type("Microsoft.KeyVault/vaults")]
    if [v["properties"].get("enableRbacAuthorization") for v in vaults] != [True]:
        problems.append("Key Vault must use RBAC (the identity gets Key Vault Secrets User)")
    components = [evaluator.eval(body(r)) for _, r in template.resources_of_type("Microsoft.Insights/components")]
    if [c["properties"].get("DisableLocalAuth") for c in components] != [True]:
        problems.append("Application Insights must disable local auth (Entra ID ingestion only)")
    topics = [evaluator.eval(body(r)) for _, r in template.resources_of_type("Microsoft.EventGrid/topics")
              if not r["existing"]]
    if [t["properties"].get("disableLocalAuth") for t in topics] != [True]:
        problems.append("Evergreen's custom topic must disable access keys (publish with EventGrid Data Sender)")
    return problems


def parameter_problems(infra: Path) -> list[str]:
    """The existing workspace and data account come in as required parameters and are only referenced."""
    problems: list[str] = []
    main = Template.load(infra / "main.bicep")
    for name in ("workspaceName", "workspaceResourceGroupName", "dataStorageAccountName",
                 "dataStorageResourceGroupName"):
        param = main.parameters.get(name)
        if param is None or param.get("default") is not None or param.get("type") != "string":
            problems.append(f"main.bicep: {name} must be a required string parameter")
    cap = main.parameters.get("maximumInstanceCount") or {}
    bounds = {d["type"]: d.get("argument") for d in cap.get("decorators", [])}
    if (bounds.get("min_value"), bounds.get("max_value")) != (1, 1000):
        problems.append(f"main.bicep: maximumInstanceCount bounds {bounds.get('min_value')}..{bounds.get('max_value')}"
                        ", expected 1..1000 (Flex Consumption accepts a cap as low as 1)")
    if "scale group" not in str(bounds.get("description")):
        problems.append("main.bicep: maximumInstanceCount's description must say it caps each scale group")
    for file, resource_type, param in (
            ("workspace-access.bicep", "Microsoft.MachineLearningServices/workspaces", "workspaceName"),
            ("data-access.bicep", "Microsoft.Storage/storageAccounts", "dataStorageAccountName")):
        template = Template.load(infra / "modules" / file)
        found = [(r["existing"], body(r)["name"]) for _, r in template.resources_of_type(resource_type)]
        if found != [(True, param)]:
            problems.append(f"{file}: {resource_type} must be `existing` and named by {param}, got {found}")
    return problems


def _deployment_container_problems(template: Template, site: dict[str, Any], package_url: str) -> list[str]:
    """The site depends on the container its deployment package goes to (named by a variable, so Bicep would
    not order the two by itself, and the site may be created before its container)."""
    evaluator = template.evaluator()
    containers = [symbol for symbol, r in template.resources_of_type(
        "Microsoft.Storage/storageAccounts/blobServices/containers") if loop(r) is None and not r["existing"]
        and package_url.endswith(str(evaluator.eval(body(r)["name"])))]
    if len(containers) != 1:
        return [f"the deployment package container ({package_url}) is not one container resource: {containers}"]
    if containers[0] not in (site.get("dependsOn") or []):
        return [f"the function app does not depend on its deployment container {containers[0]}"]
    return []


# --- the data account and the system topics ----------------------------------------------------------------
def data_container_problems(infra: Path) -> list[str]:
    """Blob Data Contributor goes to the landing container and the retention containers, one by one."""
    problems: list[str] = []
    main = Template.load(infra / "main.bicep")
    params = {"landingContainerName": "drops", "retentionContainerNames": " archive, ,old,drops "}
    wiring = main.evaluator(params).eval(body(main.modules["dataAccess"])["params"])
    if wiring.get("containerNames") != ["drops", "archive", "old"]:
        problems.append(f"main.bicep: dataAccess gets containerNames {wiring.get('containerNames')!r} for landing "
                        "'drops' and retention ' archive, ,old,drops ', expected ['drops', 'archive', 'old']")
    template = Template.load(infra / "modules" / "data-access.bicep")
    for symbol, resource in template.resources_of_type("Microsoft.Authorization/roleAssignments"):
        scope = _scope_symbol(body(resource).get("scope"))
        scope_resource = template.resources.get(scope) if isinstance(scope, str) else None
        if scope_resource is None or not scope_resource["type"].endswith("/containers"):
            continue
        for name, looped in ((symbol, resource), (scope, scope_resource)):
            detail = loop(looped)
            if detail is None or detail["array_name"] != "containerNames":
                problems.append(f"data-access.bicep:{name} must loop over containerNames, got {detail!r}")
    return problems


def topic_reuse_problems(infra: Path) -> list[str]:
    """Each system topic module creates its topic, or (given existingSystemTopicName) reuses one by name and
    creates none; main.bicep passes its own parameter for each."""
    problems: list[str] = []
    main = Template.load(infra / "main.bicep")
    for symbol, main_param in (("dataAccess", "dataSystemTopicName"), ("workspaceAccess", "workspaceSystemTopicName")):
        module = main.modules[symbol]
        passed = main.evaluator({main_param: "evgt-theirs"}).eval(body(module)["params"]).get("existingSystemTopicName")
        if passed != "evgt-theirs":
            problems.append(f"main.bicep: {symbol} gets existingSystemTopicName {passed!r} from {main_param}")
        template = Template.load(infra / module_path(module))
        for reused, expected_name in ((False, "<param systemTopicName>"), (True, "evgt-theirs")):
            problems += _topic_choice_problems(template, module_path(module), reused, expected_name)
    return problems


def _topic_choice_problems(template: Template, file: str, reused: bool, expected_name: str) -> list[str]:
    evaluator = template.evaluator({"existingSystemTopicName": "evgt-theirs" if reused else ""})
    outputs = template.tree.get("outputs") or {}
    where = f"{file} ({'reusing a topic' if reused else 'creating the topic'})"
    deployed = []
    for symbol, resource in template.resources_of_type("Microsoft.EventGrid/systemTopics"):
        condition = resource["config"].get("condition")
        if condition is None or _truth_of(evaluator.eval(condition)):
            deployed.append((symbol, resource["existing"], str(evaluator.eval(body(resource)["name"]))))
    if len(deployed) != 1 or deployed[0][1] != reused or deployed[0][2].strip("<>") != expected_name.strip("<>"):
        return [f"{where}: system topics in play {deployed}, expected one {'existing' if reused else 'new'} "
                f"named {expected_name}"]
    symbol = deployed[0][0]
    problems = []
    for output, wanted in (("systemTopicName", f"<{symbol}.name>"),
                           ("systemTopicPrincipalId", f"<{symbol}.identity>.principalId")):
        got = str(evaluator.eval((outputs.get(output) or {}).get("value")))
        if got != wanted:
            problems.append(f"{where}: output {output} is {got!r}, expected {wanted!r}")
    return problems


def _truth_of(value: Any) -> bool:
    if isinstance(value, Opaque):
        raise AssertionError(f"a topic's condition is known only at deployment: {value}")
    return bool(value)

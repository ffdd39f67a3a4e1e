"""The status page's optional App Service Authentication (`authsettingsV2`): it parses, is off by default, and
keeps Event Grid's and the registry webhook's paths open (they authenticate on their own)."""

from __future__ import annotations

from pathlib import Path

from tests.infra.bicep import Template, body

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_app_service_authentication_is_optional_and_off_by_default() -> None:
    main, app = Template.load(INFRA / "main.bicep"), Template.load(INFRA / "modules" / "app.bicep")
    for template in (main, app):
        assert template.parameters["enableAuth"]["default"] is False
    assert body(main.modules["app"])["params"]["enableAuth"] == "enableAuth"
    ((symbol, resource),) = [(s, r) for s, r in app.resources_of_type("Microsoft.Web/sites/config")
                             if body(r)["name"] == "authsettingsV2"]
    assert resource["config"].get("condition") == "enableAuth", f"{symbol} must be deployed only with enableAuth"
    properties = body(resource)["properties"]
    validation = properties["globalValidation"]
    assert validation["requireAuthentication"] is True
    assert set(validation["excludedPaths"]) == {"/runtime/webhooks/eventgrid", "/api/registry-webhook"}
    assert properties["identityProviders"]["azureActiveDirectory"]["registration"]["clientId"] == "authClientId"

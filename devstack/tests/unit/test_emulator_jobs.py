"""Pure parts of local job execution: command rendering, graph order, references."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.aml.components import normalise_component_spec, parse_version_id, registry_environment
from devstack.aml.runner import Step, StepFailed, Value, _ordered, render_command


def step(node: str, *depends: str) -> Step:
    return Step(node, node, "", None, {}, [], depends=set(depends))


def test_render_substitutes_literals_as_written_and_quotes_paths() -> None:
    inputs = {"n": Value("3"), "data": Value("/tmp/a b", "azureml://x", Path("/tmp/a b"))}
    outputs = {"out": Value("/w/out", "azureml://o", Path("/w/out"))}
    cmd = render_command("python s.py --n ${{inputs.n}} --d ${{ inputs.data }} --o ${{outputs.out}}", inputs, outputs)
    assert cmd == "python s.py --n 3 --d '/tmp/a b' --o /w/out"


def test_optional_blocks_vanish_without_their_input() -> None:
    cmd = render_command("run $[[--seed ${{inputs.seed}}]] $[[--x ${{inputs.x}}]]", {"x": Value("1")}, {})
    assert cmd.split() == ["run", "--x", "1"]
    with pytest.raises(StepFailed, match=r"inputs\.missing"):
        render_command("run ${{inputs.missing}}", {}, {})


def test_graph_order_follows_bindings_and_rejects_cycles() -> None:
    order = [s.node for s in _ordered([step("register", "train", "eval"), step("eval", "train"),
                                       step("train", "prep"), step("prep")])]
    assert order == ["prep", "train", "eval", "register"]
    with pytest.raises(StepFailed, match="cycle"):
        _ordered([step("a", "b"), step("b", "a")])
    with pytest.raises(StepFailed, match="unknown"):
        _ordered([step("a", "ghost")])


def test_references() -> None:
    ws = "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
    assert parse_version_id(f"azureml:{ws}/codes/c/versions/1") == ("codes", "c", "1")
    assert parse_version_id(f"{ws}/data/d/versions/2") == ("data", "d", "2")
    assert parse_version_id("azureml:d:2") is None
    assert registry_environment("azureml:AzureML-sklearn-1.0:33") == \
        "azureml://registries/azureml/environments/AzureML-sklearn-1.0/versions/33"
    assert registry_environment("azureml:AzureML-sklearn-1.5@latest").endswith("/labels/latest")
    assert registry_environment("azureml:my-env:1") == "azureml:my-env:1"


def test_component_spec_is_normalised_as_recorded() -> None:
    spec = normalise_component_spec({"command": "echo", "type": "command", "is_deterministic": True,
                                     "resources": {"instance_type": "Standard_D3_v2"}, "_source": "YAML.JOB"})
    assert spec == {"command": "echo", "type": "command", "is_deterministic": "True",
                    "resources": {"instance_count": "1"}}

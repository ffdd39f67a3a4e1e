"""The bad-input corpus of the policy file: every bad `evergreen.yaml` is one ConfigurationError listing problems.

Never a traceback from inside (a YAML or pydantic exception, a RecursionError, a UnicodeDecodeError).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config.policy import load_policy
from shared.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "evergreen.yaml").read_text(encoding="utf-8")

CASES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "(top level)"),
    "not yaml": (b"datasets: [\n  - name: churn\n  unclosed: {", "not valid YAML"),
    "a list, not a mapping": (b"- datasets\n- models\n", "(top level)"),
    "a scalar": (b"42\n", "(top level)"),
    "deeply nested": (b"datasets: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", ""),
    "deeply nested blocks": (("datasets:\n" + "".join(" " * i + "- \n" for i in range(1, 3000))).encode(), ""),
    "not utf-8": (b"datasets:\n  - name: \xff\xfe churn\n", "cannot read the file"),
    "wrong types": (b"datasets: 7\nmodels: {a: b}\n", "datasets"),
    "unknown keys": (GOOD.encode() + b"\nsurprise: true\n", "surprise"),
    "bad evaluation block": (GOOD.replace("      endpoint: churn-endpoint\n", "      endpoint: churn-endpoint\n"
                                          "      evaluation: {data: nowhere@latest, label_column: churned, "
                                          "resamples: 5, confidence: 2}\n").encode(),
                             "models[0].promotion.evaluation"),
    "bad approval": (GOOD.replace("      endpoint: churn-endpoint\n", "      endpoint: churn-endpoint\n"
                                   "      approval: sometimes\n      approval_expires_after: soon\n").encode(),
                     "models[0].promotion.approval"),
    "huge": (b"datasets:\n" + b"  - name: x\n" * 20_000, "datasets"),
    "anchors bomb": (b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                     b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n", ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_policy_file_is_one_configuration_error(tmp_path: Path, case: str) -> None:
    content, fragment = CASES[case]
    path = tmp_path / "evergreen.yaml"
    path.write_bytes(content)

    with pytest.raises(ConfigurationError) as raised:
        load_policy(path, landing_container="landing")

    assert raised.value.problems, "a ConfigurationError names at least one problem"
    assert fragment in str(raised.value)

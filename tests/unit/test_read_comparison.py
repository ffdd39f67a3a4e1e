"""`AzureML.read_comparison` on a stand-in MLClient and blob service: a comparison.json that is not UTF-8
(a broken or hostile compare step) must come back as text the gate refuses with a coded reason, not as a
UnicodeDecodeError that the platform would retry until the event is dead-lettered."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.adapters.azure.azureml import AzureML
from shared.domain.comparison import InvalidComparisonError, parse_comparison


class _Blobs:
    def __init__(self, content: bytes) -> None:
        self.content = content
        self.read: list[tuple[str, str]] = []

    def get_blob_client(self, container: str, name: str) -> Any:
        self.read.append((container, name))
        return SimpleNamespace(download_blob=lambda: SimpleNamespace(readall=lambda: self.content))


def _adapter(content: bytes) -> tuple[AzureML, _Blobs]:
    blobs = _Blobs(content)
    adapter = AzureML(credential=None, subscription_id="s", resource_group="g", workspace="w",  # type: ignore[arg-type]
                      workspace_blobs=lambda _account, _endpoint: blobs)  # type: ignore[arg-type,return-value]
    adapter._client = SimpleNamespace(  # type: ignore[assignment]
        jobs=SimpleNamespace(get=lambda name: SimpleNamespace(name=name, outputs={})),
        datastores=SimpleNamespace(get_default=lambda: SimpleNamespace(account_name="acct", endpoint="core.windows.net",
                                                                       container_name="ws-blobs")))
    return adapter, blobs


def test_a_comparison_is_read_from_the_jobs_default_output_folder() -> None:
    adapter, blobs = _adapter(b'{"schema": "evergreen.comparison/1"}')
    assert adapter.read_comparison("evergreen-compare-x") == '{"schema": "evergreen.comparison/1"}'
    assert blobs.read == [("ws-blobs", "azureml/evergreen-compare-x/comparison/comparison.json")]


def test_a_comparison_that_is_not_utf8_is_text_the_gate_refuses() -> None:
    adapter, _ = _adapter(b"\xff\xfe{\x00\x80 not json")
    text = adapter.read_comparison("evergreen-compare-x")
    assert text is not None
    with pytest.raises(InvalidComparisonError):
        parse_comparison(text)

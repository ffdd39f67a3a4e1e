"""The blob trigger's queue message and queue name, as the Functions blob extension writes them."""

from __future__ import annotations

import json

import pytest

from devstack.host.blobqueue import BadBlobTriggerMessage, BlobTriggerMessage, blob_type_name, work_queue_name


def test_message_has_the_extensions_field_names_and_round_trips() -> None:
    message = BlobTriggerMessage.for_function("on_blob_created", "landing", "a/ü b.csv", etag="0x8D")
    body = json.loads(message.to_json())
    assert body == {"Type": "BlobTrigger", "FunctionId": "Host.Functions.on_blob_created", "BlobType": "Block",
                    "ContainerName": "landing", "BlobName": "a/ü b.csv", "ETag": "0x8D"}
    parsed = BlobTriggerMessage.from_json(message.to_json().encode())
    assert parsed == message
    assert (parsed.function_name, parsed.blob_path) == ("on_blob_created", "landing/a/ü b.csv")


@pytest.mark.parametrize("text", ["not json", "[]", '{"Type": "Other", "FunctionId": "f", "ContainerName": "c", '
                                  '"BlobName": "b"}', '{"FunctionId": "f", "ContainerName": "", "BlobName": "b"}'])
def test_other_messages_are_rejected(text: str) -> None:
    with pytest.raises(BadBlobTriggerMessage):
        BlobTriggerMessage.from_json(text)


def test_blob_types_use_the_extensions_names() -> None:
    assert [blob_type_name(t) for t in ("BlockBlob", "PageBlob", "AppendBlob", None)] == [
        "Block", "Page", "Append", "Block"]


@pytest.mark.parametrize(("host_id", "expected"), [
    ("evergreen-local", "azure-webjobs-blobtrigger-evergreen-local"),
    ("sample_app", "azure-webjobs-blobtrigger-sample-app"),
    ("My App__1", "azure-webjobs-blobtrigger-my-app-1"),
    ("", "azure-webjobs-blobtrigger-host"),
])
def test_work_queue_name_is_a_valid_queue_name(host_id: str, expected: str) -> None:
    assert work_queue_name(host_id) == expected
    assert len(work_queue_name("x" * 100)) <= 63

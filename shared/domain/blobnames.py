"""Which blob names Evergreen accepts, and why the others are refused.

Names come from outside (whoever uploads), and end up in data asset URIs, table keys and local
paths of job workers, so anything that could climb out of its folder or confuse a path is refused.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_BLOB_NAME = 1024  # Azure Storage's limit for blob names


def problem_with_name(name: str) -> str | None:
    """Return why a blob name is unsafe, or None if it is fine."""
    if not name:
        return "the blob name is empty"
    if len(name) > MAX_BLOB_NAME:
        return f"the blob name is {len(name)} characters long; Azure allows {MAX_BLOB_NAME}"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "the blob name contains control characters"
    if name.startswith("/") or name.endswith("/"):
        return "the blob name starts or ends with '/'"
    segments = name.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        return "the blob name has an empty, '.' or '..' path segment (it could escape its folder)"
    if name.endswith("."):
        return "the blob name ends with '.' (Azure Storage advises against it; paths would be ambiguous)"
    return None


def is_system_container(container: str) -> bool:
    """`$logs`, `$web`, `$root`, `$blobchangefeed`: owned by the platform, never data."""
    return container.startswith("$")


def azureml_path(path: str) -> str:
    """Percent-encode a blob path for an `azureml://datastores/<ds>/paths/<path>` URI (keeps '/')."""
    return quote(path, safe="/")

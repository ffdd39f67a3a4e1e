"""URLs as Evergreen stores and logs them: never with a query string.

A blob client built from a SAS connection string carries its token in every URL (`client.url` is
`https://…/landing/a.csv?sv=…&sig=…`). A URL that ends up in a tag, a ledger row, an audit record,
an event or a log line goes through `strip_query` first: this is the one place that does it.
"""

from __future__ import annotations

import re

_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#]*)[?#][^\s]*", re.IGNORECASE)


def strip_query(text: str) -> str:
    """`text` with every URL's query string and fragment removed (SAS tokens are secrets).

    Works on a bare URL and on free text (a log line, an error message) that contains URLs.
    """
    return _URL_QUERY.sub(r"\1", text)

"""The status page rendered on the server: Jinja2 (autoescape on) and inline SVG charts, no JavaScript.

`render_html(view)` turns a `shared.services.status.StatusView` into the page `GET /api/status` answers;
`render_json(view)` is `GET /api/status.json`. Add a section by adding a field to the view and a block
to `templates/status.html` (each section is one `<section>` with an `<h2>`).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime

import jinja2

from shared.services.status import StatusView
from shared.status_page.chart import trend_chart


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("shared.status_page", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.globals["trend_chart"] = trend_chart
    return env


def _when(value: datetime | None) -> str:
    """A time as the page prints it: UTC, to the second ("—" for none)."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def render_html(view: StatusView, *, policy_datasets: tuple[str, ...] = (), policy_models: tuple[str, ...] = (),
                policy_endpoints: tuple[str, ...] = ()) -> str:
    """The page; the policy's names fill the filter form's choices. Raises jinja2 errors for a template bug."""
    return _environment().get_template("status.html").render(
        view=view, datasets=policy_datasets, models=policy_models, endpoints=policy_endpoints)


def render_json(view: StatusView) -> str:
    """The view as JSON (what `GET /api/status.json` answers)."""
    return json.dumps(view.to_json(), indent=2, sort_keys=True)

"""The API docs at ``/schema``, offline: RapiDoc from the package instead of a CDN.

Litestar's stock viewers load their scripts, styles, fonts and favicon from CDNs, so ``/schema``
was a blank page without internet access. :class:`OfflineRapidoc` renders RapiDoc (MIT, version
9.3.8 from the npm package ``rapidoc``; its license and the licenses of what it bundles ship
beside it in ``decision_api/ui/static``) from ``/ui/static/rapidoc-min.js``, with web fonts off
and an empty inline favicon: the page requests nothing from another host. It is served at
``/schema`` and ``/schema/rapidoc``; the document itself stays at ``/schema/openapi.json`` (and
``/schema/openapi.yaml``). The viewer's "try" panel sends ``Authorization: Bearer`` with a key
typed into its authentication section.

To update the viewer: ``npm pack rapidoc@<version>``, copy ``package/dist/rapidoc-min.js``,
``rapidoc-min.js.LICENSE.txt`` and ``package/LICENSE.txt`` (as ``rapidoc-LICENSE.txt``) into
``decision_api/ui/static``, and change the version above.
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request
from litestar.openapi.plugins import RapidocRenderPlugin

from decision_api.routes.ui import STATIC_PATH

__all__ = ["OfflineRapidoc"]

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<script src="{js_url}"></script>
</head>
<body style="margin:0">
<rapi-doc spec-url="{spec_url}" load-fonts="false" show-header="false" theme="light"
  render-style="read" allow-authentication="true" allow-server-selection="false"
  regular-font="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
  mono-font="ui-monospace, Menlo, Consolas, monospace"></rapi-doc>
</body>
</html>
"""


class OfflineRapidoc(RapidocRenderPlugin):
    """RapiDoc from the API's own static files, with no request to another host."""

    def __init__(self) -> None:
        super().__init__(js_url=f"{STATIC_PATH}/rapidoc-min.js", path=["/", "/rapidoc"], favicon="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The viewer page: the local script and a ``<rapi-doc>`` pointing at the JSON document."""
        return _PAGE.format(
            title=html.escape(str(openapi_schema["info"]["title"])),
            js_url=html.escape(self.js_url),
            spec_url=html.escape(self.get_openapi_json_route(request)),
        ).encode()

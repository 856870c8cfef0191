"""The web UI's static files (``static/``): served by :mod:`decision_api.routes.ui`.

``index.html``, ``ui.js`` and ``ui.css`` are the UI (plain HTML, vanilla JavaScript and CSS: no
build step, nothing from a CDN). ``rapidoc-min.js`` is the vendored API-docs viewer behind
``/schema`` (see :mod:`decision_api.routes.api_docs`), with its licenses beside it.
"""

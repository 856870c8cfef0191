"""ASGI entry point for servers: ``granian --interface asgi --factory decision_api.asgi:build``."""

from __future__ import annotations

import os

from litestar import Litestar

from decision_api.app import create_app
from decision_api.settings import Settings


def build() -> Litestar:
    """Build the app from the process environment (called once per server worker)."""
    return create_app(Settings.from_env(os.environ))

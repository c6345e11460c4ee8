"""Front-ends built on rtopt's public API: the live dashboard (``dashboard(engine_or_path)`` in Jupyter,
``rtopt dashboard LOG`` in a browser) and its data layer (:mod:`apps.data`)."""

from apps.dashboard import Dashboard, dashboard, serve
from apps.data import EngineFeed, LogModel, LogTail

__all__ = ["Dashboard", "EngineFeed", "LogModel", "LogTail", "dashboard", "serve"]

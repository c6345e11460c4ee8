"""Front-ends built on rtopt's public API: the live dashboard (``dashboard(engine_or_path)`` in Jupyter,
``rtopt dashboard LOG`` in a browser) and its data layer (:mod:`rtopt.apps.views`); the Panel app is
:mod:`rtopt.apps.ui`.

The dashboard's names load Panel, HoloViews and pandas on first use, so that importing the package (as the
``rtopt`` command line does for ``rtopt dashboard``) stays quick.
"""

import importlib
from typing import Any

__all__ = ["Dashboard", "EngineFeed", "LogModel", "LogTail", "dashboard", "serve"]


_LAZY = {
    "Dashboard": "rtopt.apps.ui",
    "dashboard": "rtopt.apps.ui",
    "serve": "rtopt.apps.ui",
    "EngineFeed": "rtopt.apps.views.sources",
    "LogModel": "rtopt.apps.views.sources",
    "LogTail": "rtopt.apps.views.sources",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'apps' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

"""The Jupyter workbench: widgets built from the method schemas (`App`), kernel-side only."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ipywidgets is imported only when the UI is used, not by `import workbench.ui.check`.
    if name == "App":
        from .app import App

        return App
    raise AttributeError(name)


__all__ = ["App"]

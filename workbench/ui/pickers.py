"""The model picker and the method picker.

Models: the catalog (embedded, tiny and pipeline test models) plus a free field for a local
directory or a hub id, with what is known of the model before any worker loads it. Methods:
grouped by backend; unavailable ones stay in the list, marked, with the reason and the command
that fixes it.

Kernel-side: ipywidgets, no torch.
"""
from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as W

from .. import registry
from ..errors import WorkbenchError
from ..models import catalog
from ..spec import ModelSpec

CUSTOM = "other: a local directory or hub id"


def model_summary(info: Any) -> str:
    """One paragraph on a model: kind, source, parameters, linear layer shapes, size in fp32."""
    parts = [f"<b>{html.escape(info.name)}</b>: {info.kind}, {info.source}"]
    if info.params_count:
        parts.append(f"{info.params_count / 1e6:.1f} M parameters ({info.params_count * 4 / 2**20:.0f} MB in fp32)")
    layers = info.linear_layers or {}
    if layers:
        shapes = sorted({(o, i) for o, i in layers.values()}, key=lambda s: -s[0] * s[1])
        shown = ", ".join(f"{o}x{i}" for o, i in shapes[:6]) + (" ..." if len(shapes) > 6 else "")
        parts.append(f"{len(layers)} linear layers (out x in: {shown})")
    text = "; ".join(parts)
    if info.description:
        text += f"<br><span style='color:#555'>{html.escape(info.description)}</span>"
    return text


class ModelPicker:
    """A dropdown of catalog models plus a text field for anything else."""

    def __init__(self, on_change: Callable[[], None] | None = None, session: Any = None):
        options = [(f"{r['name']} ({r['kind']}, {r['source']})", r["name"]) for r in catalog.catalog_rows()]
        self.dropdown = W.Dropdown(options=options + [(CUSTOM, CUSTOM)], value=options[0][1], description="model",
                                   layout=W.Layout(width="420px"))
        self.custom = W.Text(placeholder="/path/to/model or org/name", layout=W.Layout(width="420px",
                                                                                      display="none"))
        self.info = W.HTML()
        self.widget = W.VBox([self.dropdown, self.custom, self.info])
        self._session = session
        self._on_change = on_change
        self.dropdown.observe(self._changed, names="value")
        self.custom.observe(self._changed, names="value")
        self._describe()

    @property
    def value(self) -> str:
        return self.custom.value.strip() if self.dropdown.value == CUSTOM else self.dropdown.value

    def _describe(self) -> None:
        ident = self.value
        if not ident:
            self.info.value = "<i>type a local model directory or a hub id (org/name)</i>"
            return
        try:
            describe = self._session.describe if self._session is not None else catalog.describe
            self.info.value = model_summary(describe(ModelSpec(ident)))
        except WorkbenchError as e:
            self.info.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"

    def _changed(self, _change: Any) -> None:
        self.custom.layout.display = None if self.dropdown.value == CUSTOM else "none"
        self._describe()
        if self._on_change is not None:
            self._on_change()


def method_options(rows: list[dict] | None = None) -> list[tuple[str, str]]:
    """(label, name) per method, grouped by backend; unavailable methods are marked."""
    rows = rows if rows is not None else registry.describe_all()
    out = []
    for r in sorted(rows, key=lambda r: (r["backend"] != "pytorch", r["backend"], r["name"])):
        mark = "" if r["available"] else "  (unavailable)"
        out.append((f"{r['backend']} · {r['name']}{mark}", r["name"]))
    return out


class MethodPicker:
    """A dropdown of methods with the description, or why the method is unavailable and how to fix it."""

    def __init__(self, on_change: Callable[[], None] | None = None):
        self.rows = {r["name"]: r for r in registry.describe_all()}
        options = method_options(list(self.rows.values()))
        self.dropdown = W.Dropdown(options=options, value=options[0][1], description="method",
                                   layout=W.Layout(width="420px"))
        self.info = W.HTML()
        self.widget = W.VBox([self.dropdown, self.info])
        self._on_change = on_change
        self.dropdown.observe(self._changed, names="value")
        self._describe()

    @property
    def value(self) -> str:
        return self.dropdown.value

    def _describe(self) -> None:
        r = self.rows[self.value]
        text = html.escape(r["description"]) + f"<br><span style='color:#555'>models: {', '.join(r['model_kinds'])}" \
            f"; devices: {', '.join(r['devices'])}; environment: {r['env']}</span>"
        if not r["available"]:
            text += (f"<br><span style='color:#b00020'>unavailable: {html.escape(r['reason'])}</span>"
                     f"<br>fix: <code>{html.escape(r['install_hint'] or 'workbench env create ' + r['env'])}</code>")
        self.info.value = text

    def _changed(self, _change: Any) -> None:
        self._describe()
        if self._on_change is not None:
            self._on_change()


__all__ = ["CUSTOM", "MethodPicker", "ModelPicker", "method_options", "model_summary"]

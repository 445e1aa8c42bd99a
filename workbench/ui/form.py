"""A method's parameter form, generated from its `Schema`.

One widget per `Param`: a dropdown for choices (and nullable choices, with "none"), a checkbox
for booleans, a slider for bounded integers and numbers, a text field otherwise (lists as
comma-separated text, nullable numbers and strings where empty means none). Each field has a
message line under it; `visible_when` hides the fields that do not apply. The form holds no
validation of its own: `raw_values()` goes through the schema (and the session) like the CLI's.

Kernel-side: ipywidgets only.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import ipywidgets as W

from ..params import Param, Schema

NONE = "none"
# Integer ranges up to this wide get a slider; wider ones (group_size to inf) a text box.
SLIDER_MAX_STEPS = 4096


def widget_for(p: Param) -> W.Widget:
    """The input widget of one parameter, set to its default."""
    desc = p.label or p.name
    common = dict(description=desc, style={"description_width": "initial"}, layout=W.Layout(width="420px"))
    if p.kind == "choice" or (p.choices is not None and p.kind in ("int", "float")):
        options = [(_show(c), c) for c in p.choices or ()]
        if p.nullable:
            options = [(NONE, None)] + options
        return W.Dropdown(options=options, value=p.default, **common)
    if p.kind == "bool":
        return W.Checkbox(value=bool(p.default), indent=False, **common)
    bounded = p.minimum is not None and p.maximum is not None and not p.nullable
    if p.kind == "int" and bounded and p.maximum - p.minimum <= SLIDER_MAX_STEPS:
        return W.IntSlider(value=p.default, min=int(p.minimum), max=int(p.maximum), continuous_update=False,
                           **common)
    if p.kind == "float" and bounded:
        step = (p.maximum - p.minimum) / 100
        return W.FloatSlider(value=p.default, min=p.minimum, max=p.maximum, step=step, continuous_update=False,
                             **common)
    return W.Text(value=_text(p, p.default), placeholder=p.allowed(), **common)


def read(p: Param, w: W.Widget) -> Any:
    """The raw value of a widget, for `Schema.errors` (text stays text: the schema coerces it)."""
    if isinstance(w, W.Text):
        text = w.value.strip()
        if text == "" and p.nullable:
            return None
        if p.kind == "list":
            return [s.strip() for s in text.split(",") if s.strip()]
        return text
    return w.value


def write(p: Param, w: W.Widget, value: Any) -> None:
    """Show `value` in the widget (used to restore a configuration)."""
    if isinstance(w, W.Text):
        w.value = _text(p, value)
    else:
        w.value = value


class ParamForm:
    """The fields of one schema, their messages, and the visibility rules."""

    def __init__(self, schema: Schema, on_change: Callable[[], None] | None = None):
        self.schema = schema
        self.inputs: dict[str, W.Widget] = {p.name: widget_for(p) for p in schema.params}
        self.messages: dict[str, W.HTML] = {p.name: W.HTML("") for p in schema.params}
        self.rows: dict[str, W.Box] = {}
        for p in schema.params:
            self.inputs[p.name].tooltip = p.help
            help_html = W.HTML(f"<span style='color:#666;font-size:85%' title='{_attr(p.help)}'>{_esc(p.allowed())}"
                               "</span>")
            self.rows[p.name] = W.VBox([W.HBox([self.inputs[p.name], help_html]), self.messages[p.name]])
        self.widget = W.VBox(list(self.rows.values()) or [W.HTML("<i>this method takes no parameters</i>")])
        self._on_change = on_change
        for w in self.inputs.values():
            w.observe(self._changed, names="value")
        self.refresh_visibility()

    def raw_values(self) -> dict[str, Any]:
        """What the user set, for the visible parameters (hidden ones do not apply)."""
        raw = {p.name: read(p, self.inputs[p.name]) for p in self.schema.params}
        shown = self.visible(raw)
        return {k: v for k, v in raw.items() if k in shown}

    def visible(self, raw: Mapping[str, Any] | None = None) -> set[str]:
        raw = raw if raw is not None else {p.name: read(p, self.inputs[p.name]) for p in self.schema.params}
        coerced = {}
        for p in self.schema.params:
            try:
                coerced[p.name] = p.coerce(raw.get(p.name, p.default))
            except ValueError:
                coerced[p.name] = p.default
        return {p.name for p in self.schema.params if p.is_visible(coerced)}

    def set_values(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            if name in self.inputs:
                write(self.schema.get(name), self.inputs[name], value)
        self.refresh_visibility()

    def show_errors(self, errors: Mapping[str, str]) -> None:
        """One message under each field that has a problem; the others are cleared."""
        for name, html in self.messages.items():
            msg = errors.get(name)
            html.value = f"<span style='color:#b00020'>{_esc(msg)}</span>" if msg else ""

    def refresh_visibility(self) -> None:
        shown = self.visible()
        for name, row in self.rows.items():
            row.layout.display = None if name in shown else "none"

    def _changed(self, _change: Any) -> None:
        self.refresh_visibility()
        if self._on_change is not None:
            self._on_change()


def _show(v: Any) -> str:
    return NONE if v is None else str(v)


def _text(p: Param, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _esc(text: str) -> str:
    import html

    return html.escape(str(text), quote=False)


def _attr(text: str) -> str:
    import html

    return html.escape(str(text), quote=True)


__all__ = ["ParamForm", "read", "widget_for", "write"]

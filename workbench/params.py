"""Declarative parameter schemas.

A method declares its parameters once, as data. The UI renders them, the
session validates them, the CLI parses them and the docs list them from the
same `Schema`, so there is no hand-written validation that can drift.

Pure standard library: importable in the notebook kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

from .errors import InvalidParams, ParamError

Kind = Literal["int", "float", "bool", "choice", "str", "list"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    kind: int | float | bool | choice | str | list (a list of strings).
    choices: allowed values (for `choice`; for int/float they restrict the range further).
    minimum/maximum: inclusive bounds for int/float.
    visible_when: {other_param: value or tuple of values}; the parameter only
        applies (is shown, validated and passed on) when every condition holds.
    nullable: None is an accepted value (shown as "none").
    """

    name: str
    kind: Kind
    default: Any
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    visible_when: Mapping[str, Any] | None = None
    nullable: bool = False
    label: str | None = None

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.choices is not None:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            lo = "-inf" if self.minimum is None else _show(self.minimum)
            hi = "inf" if self.maximum is None else _show(self.maximum)
            text = f"{'an integer' if self.kind == 'int' else 'a number'} in [{lo}, {hi}]"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "list":
            text = "a list of strings (comma-separated on the command line)"
        else:
            text = "a string"
        return text + (" or none" if self.nullable else "")

    def is_visible(self, values: Mapping[str, Any]) -> bool:
        if not self.visible_when:
            return True
        for other, want in self.visible_when.items():
            wants = want if isinstance(want, (tuple, list, set, frozenset)) else (want,)
            if values.get(other) not in wants:
                return False
        return True

    def coerce(self, value: Any) -> Any:
        """Convert `value` (possibly a CLI string) to this parameter's type.

        Raises ValueError with a message that says what is allowed.
        """
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if self.nullable:
                return None
            raise ValueError(f"must not be empty; allowed: {self.allowed()}")
        kind = self.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"got {value!r}; allowed: true or false")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise ValueError(f"got {value!r}, not an integer; allowed: {self.allowed()}") from None
            if not isinstance(value, int):
                raise ValueError(f"got {value!r}, not an integer; allowed: {self.allowed()}")
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"got {value!r}, not a number; allowed: {self.allowed()}") from None
            if math.isnan(value):
                raise ValueError(f"got nan; allowed: {self.allowed()}")
        elif kind == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
            value = list(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"got {value!r}; allowed: a string")
        elif kind == "choice":
            value = self._match_choice(value)

        if kind in ("int", "float"):
            if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
                raise ValueError(f"got {_show(value)}; allowed: {self.allowed()}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"got {_show(value)}; allowed: {self.allowed()}")
        return value

    def _match_choice(self, value: Any) -> Any:
        assert self.choices is not None, f"choice parameter {self.name} declares no choices"
        if value in self.choices and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            for c in self.choices:
                if str(c).lower() == value.strip().lower():
                    return c
        raise ValueError(f"got {_show(value)}; allowed: {self.allowed()}")


@dataclass(frozen=True)
class Check:
    """A rule across parameters.

    `test(values)` returns None when the values are fine, else the message.
    `params` names the parameters the message is attached to (the first one is
    reported as the culprit).
    """

    params: tuple[str, ...]
    test: Callable[[Mapping[str, Any]], str | None]


class Values(Mapping[str, Any]):
    """Parameters that `Schema.normalize` validated: every visible parameter, typed, defaults filled.

    Immutable, so the values a worker normalized once are the values every
    method hook sees; and recognisable, so normalizing them again is a no-op
    instead of a second coercion that could drift from the first.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Values are immutable")

    def __eq__(self, other: object) -> bool:
        return dict(self._data) == (dict(other) if isinstance(other, Mapping) else other)

    __hash__ = None  # type: ignore[assignment]  # values may hold lists

    def __reduce__(self) -> tuple[Any, ...]:
        return (Values, (self._data,))

    def __repr__(self) -> str:
        return f"Values({self._data!r})"


@dataclass(frozen=True)
class Schema:
    """The parameters of a method, in display order, plus cross-parameter checks."""

    params: tuple[Param, ...] = ()
    checks: tuple[Check, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate parameter names in schema: {sorted(dup)}")
        for p in self.params:
            if p.kind == "choice" and not p.choices:
                raise ValueError(f"choice parameter {p.name!r} declares no choices")
            if p.visible_when:
                unknown = set(p.visible_when) - set(names)
                if unknown:
                    raise ValueError(f"{p.name}.visible_when names unknown parameters {sorted(unknown)}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def get(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return dict(self.normalize({}))

    def errors(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], list[ParamError]]:
        """Validate `values`; return (normalized values, every error found).

        Normalized values hold every *visible* parameter, defaults filled in and
        types coerced; parameters hidden by `visible_when` are dropped, so two
        spellings of the same configuration normalize to the same dict.
        """
        errors: list[ParamError] = []
        known = set(self.names)
        for name in values:
            if name not in known:
                allowed = ", ".join(self.names) or "(this method takes no parameters)"
                errors.append(ParamError(name, f"unknown parameter; allowed: {allowed}"))
        merged: dict[str, Any] = {}
        for p in self.params:
            raw = values.get(p.name, p.default)
            try:
                merged[p.name] = p.coerce(raw)
            except ValueError as e:
                errors.append(ParamError(p.name, str(e)))
                merged[p.name] = p.default
        out = {p.name: merged[p.name] for p in self.params if p.is_visible(merged)}
        for p in self.params:
            if p.name in values and p.name not in out and p.name in known:
                # Setting a parameter that does not apply is a contradiction the user should hear about.
                if values[p.name] != p.default:
                    cond = ", ".join(f"{k}={_show_any(v)}" for k, v in (p.visible_when or {}).items())
                    errors.append(ParamError(p.name, f"only applies when {cond}"))
        if not errors:
            for check in self.checks:
                msg = check.test(out)
                if msg:
                    errors.append(ParamError(check.params[0], msg))
        return out, errors

    def normalize(self, values: Mapping[str, Any], context: str = "") -> Values:
        """Validate and return normalized values, or raise InvalidParams listing every error.

        `Values` pass through unchanged: they were normalized already.
        """
        if isinstance(values, Values):
            return values
        out, errors = self.errors(values)
        if errors:
            raise InvalidParams(errors, context)
        return Values(out)

    def parse_cli(self, items: Iterable[str]) -> dict[str, Any]:
        """Parse `k=v` strings (values stay strings; `normalize` coerces them)."""
        values: dict[str, Any] = {}
        errors: list[ParamError] = []
        for item in items:
            if "=" not in item:
                errors.append(ParamError(item, "expected NAME=VALUE"))
                continue
            k, v = item.split("=", 1)
            values[k.strip()] = v.strip()
        if errors:
            raise InvalidParams(errors)
        return values

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready description (for `workbench methods --json` and docs)."""
        rows = []
        for p in self.params:
            rows.append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "default": p.default,
                    "allowed": p.allowed(),
                    "choices": list(p.choices) if p.choices is not None else None,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                    "visible_when": dict(p.visible_when) if p.visible_when else None,
                    "help": p.help,
                }
            )
        return rows


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else str(v)
    return str(v)


def _show_any(v: Any) -> str:
    if isinstance(v, (tuple, list, set, frozenset)):
        return " or ".join(_show(x) for x in v)
    return _show(v)

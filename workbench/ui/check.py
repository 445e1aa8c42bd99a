"""Can this configuration run? The form's live verdict, from the same validation as the CLI's.

Plain functions over the `Session`: no widgets, so the rules are tested without a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InvalidParams, InvalidSpec, MethodUnavailable, WorkbenchError
from ..registry import get


@dataclass
class Verdict:
    """Field messages (under each parameter) and problems that belong to no parameter."""

    field_errors: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unavailable: str | None = None  # the method cannot run here: why, and the command that fixes it

    @property
    def can_run(self) -> bool:
        return not self.field_errors and not self.problems and self.unavailable is None

    @property
    def reason(self) -> str:
        """Why Run is disabled ("" when it is enabled)."""
        if self.field_errors:
            name, msg = next(iter(self.field_errors.items()))
            more = len(self.field_errors) - 1
            return f"{name}: {msg}" + (f" (and {more} more)" if more else "")
        if self.problems:
            return self.problems[0]
        return self.unavailable or ""


def check(session: Any, model: str, method: str, raw_params: Mapping[str, Any], **spec_options: Any) -> Verdict:
    """Validate a configuration as `Session.validate` does, sorting the errors by parameter."""
    verdict = Verdict()
    if not model.strip():
        verdict.problems.append("model: pick a catalog model or type a local directory or hub id")
        return verdict
    try:
        schema_names = set(get(method).cls.schema.names)
        spec = session.make_spec(model.strip(), method, dict(raw_params), **spec_options)
        session.validate(spec)
    except InvalidParams as e:
        for err in e.errors:
            if err.param in schema_names and err.param not in verdict.field_errors:
                verdict.field_errors[err.param] = err.message
            else:
                verdict.problems.append(str(err))
    except MethodUnavailable as e:
        verdict.unavailable = str(e)
    except (InvalidSpec, WorkbenchError) as e:
        verdict.problems.append(str(e))
    return verdict


def install_command(method: str) -> str:
    """The command that makes an unavailable method available."""
    cls = get(method).cls
    return cls.install_hint or f"workbench env create {cls.env}"


__all__ = ["Verdict", "check", "install_command"]

"""Method discovery through the `workbench.methods` entry-point group.

Built-in methods are registered through the same group (see pyproject.toml),
so a third-party package adds a method exactly as the core does. Loading an
entry point imports only the method module, never its backend library.

Availability is answered without importing the backend: the method's
environment must exist and hold the distributions it `requires`.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .envs import manager as envs
from . import spec
from .errors import MethodUnavailable, UnknownMethod
from .methods.base import Method

GROUP = "workbench.methods"


@dataclass(frozen=True)
class MethodRef:
    """A registered method: its class and where the worker imports it from."""

    cls: type[Method]
    target: str  # "module:attr", importable in the method's environment
    dist: str | None  # the distribution that registered it

    @property
    def name(self) -> str:
        return self.cls.name


_extra: dict[str, MethodRef] = {}
_cache: dict[str, MethodRef] | None = None


def _validate(cls: Any, where: str) -> type[Method]:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where} is not a workbench Method subclass")
    for attr in ("name", "backend"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise TypeError(f"{where} must define a non-empty class attribute {attr!r}")
    return cls


def _broken(name: str, target: str, error: BaseException) -> type[Method]:
    """A stand-in for a plug-in whose module fails to import: listed as unavailable, with the error."""
    message = f"its module failed to import ({type(error).__name__}: {error})"

    def build(self: Method, ctx: Any, params: Any) -> Any:
        raise MethodUnavailable(f"method {name!r}: {message}")

    return type(f"Broken_{name}", (Method,), {
        "name": name, "backend": "unknown", "env": envs.KERNEL, "build": build,
        "description": f"{target}: {message}", "load_error": message,
    })


def _discover() -> dict[str, MethodRef]:
    found: dict[str, MethodRef] = {}
    for ep in entry_points(group=GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # noqa: BLE001 - one broken plug-in must not hide the others
            loaded = _broken(ep.name, ep.value, e)
        cls = _validate(loaded, f"entry point {ep.name} = {ep.value}")
        if cls.name != ep.name:
            raise TypeError(f"entry point {ep.name!r} loads a method named {cls.name!r}: the names must match")
        if cls.name in found and found[cls.name].target != ep.value:
            raise TypeError(
                f"method {cls.name!r} is registered twice: {found[cls.name].target} and {ep.value}"
            )
        dist = getattr(getattr(ep, "dist", None), "name", None)
        found[cls.name] = MethodRef(cls, ep.value, dist)
    return found


def methods() -> dict[str, MethodRef]:
    """All registered methods by name (entry points, then programmatic registrations)."""
    global _cache
    if _cache is None:
        _cache = _discover()
    out = dict(_cache)
    out.update(_extra)
    return out


def register(cls: type[Method], target: str | None = None) -> MethodRef:
    """Register a method programmatically (tests, notebooks). Duplicate names are refused."""
    _validate(cls, repr(cls))
    target = target or f"{cls.__module__}:{cls.__qualname__}"
    existing = methods().get(cls.name)
    if existing is not None and existing.target != target:
        raise TypeError(f"method {cls.name!r} is already registered by {existing.target}")
    ref = MethodRef(cls, target, None)
    _extra[cls.name] = ref
    return ref


def unregister(name: str) -> None:
    _extra.pop(name, None)


def refresh() -> None:
    """Forget the discovered entry points (after installing a plug-in)."""
    global _cache
    _cache = None


def get(name: str) -> MethodRef:
    ms = methods()
    if name not in ms:
        raise UnknownMethod(f"method: unknown method {name!r}; allowed: {', '.join(sorted(ms))}")
    return ms[name]


def load_target(target: str) -> type[Method]:
    """Import `module:attr` (used by the worker in the method's environment)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return _validate(obj, target)


def cuda_present() -> bool:
    """Whether this machine has an NVIDIA GPU, checked without torch."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def unavailable_reason(ref: MethodRef) -> str | None:
    """Why the method cannot run here (environment or library missing, or a GPU-only method on a
    machine without one), or None. Torch-free."""
    cls = ref.cls
    if getattr(cls, "load_error", None):
        return str(cls.load_error)
    if "cpu" not in cls.devices and "cuda" in cls.devices and not cuda_present():
        why = getattr(cls, "cuda_only_reason", "") or "its kernels need CUDA"
        return f"runs only on an NVIDIA GPU ({why}); this machine has none"
    st = envs.status(cls.env) if cls.env == envs.KERNEL or cls.env in envs.FAMILIES else None
    if st is None:
        return f"unknown environment family {cls.env!r}"
    if not st.ready:
        return f"environment {cls.env!r} {st.reason}"
    if cls.requires:
        have = envs.installed(cls.env)
        missing = [r for r in cls.requires if envs.normalize(r) not in have]
        if missing:
            hint = cls.install_hint or f"pip install {' '.join(missing)}"
            return f"{', '.join(missing)} not installed in environment {cls.env!r}: {hint}"
    return None


def describe_all() -> list[dict[str, Any]]:
    """Rows for `workbench methods --json`: name, backend, env, available, reason, params, ..."""
    rows = []
    for name, ref in sorted(methods().items()):
        info = ref.cls.info()
        reason = unavailable_reason(ref)
        info.update({"available": reason is None, "reason": reason or "", "target": ref.target, "dist": ref.dist})
        rows.append(info)
    return rows


def _method_defaults(method: str) -> dict[str, Any]:
    ref = methods().get(method)
    return {p.name: p.default for p in ref.cls.schema.params} if ref else {}


spec.use_method_defaults(_method_defaults)

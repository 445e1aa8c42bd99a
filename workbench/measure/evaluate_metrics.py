"""Task metrics through Hugging Face `evaluate`, offline.

`evaluate.load("accuracy")` fetches the metric's script from the hub, which
fails offline; the workbench ships the scripts it uses in `metrics/` and loads
them by path. Torch-free at import; `evaluate` is imported when a metric is loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidSpec

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def available_metrics() -> list[str]:
    """Names of the metric scripts shipped with the workbench."""
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.name.startswith("_"))


def metric_path(name: str) -> Path:
    """The script of a shipped metric."""
    names = available_metrics()
    if name not in names:
        raise InvalidSpec(f"metric: got {name!r}; allowed: {', '.join(names)}")
    return METRICS_DIR / f"{name}.py"


def load_metric(name: str, **kwargs: Any) -> Any:
    """`evaluate.load` of a shipped metric script: an `evaluate.EvaluationModule`.

    `keep_in_memory=True` by default, so computing a metric writes no Arrow cache
    files; other keyword arguments go to `evaluate.load`.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)

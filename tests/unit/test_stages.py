"""Progress stages are declared once (workbench/stages.py): every name the code reports is one of
them, and the percentage a display shows only moves forward through a run."""
import ast
from pathlib import Path

from workbench import stages

ROOT = Path(__file__).resolve().parents[2]
REPORTERS = {"progress", "emit", "report"}


def _reported_names() -> dict[str, list[str]]:
    """name -> where, for every call `progress("name", ...)` / `x.progress("name", ...)` (and emit,
    report) with a literal first argument, and the literal branches of `what = "a" if ... else "b"`
    passed on as a stage."""
    found: dict[str, list[str]] = {}
    files = list((ROOT / "workbench").rglob("*.py")) + list((ROOT / "extensions").rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name not in REPORTERS:
                continue
            first = node.args[0]
            values = [first] if isinstance(first, ast.Constant) else \
                [first.body, first.orelse] if isinstance(first, ast.IfExp) else []
            for v in values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    found.setdefault(v.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_stage_the_code_reports_is_declared():
    found = _reported_names()
    assert {"quantize", "load", "latency", "reference", "done"} <= set(found)  # the scan sees the calls
    undeclared = {k: v for k, v in found.items() if k not in stages.NAMES}
    assert not undeclared, f"report a stage of workbench.stages.STAGES, or declare it there: {undeclared}"


def test_the_percentage_moves_forward_and_ends_at_100():
    starts = [s.starts_at for s in stages.STAGES]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 100
    for s in stages.STAGES:  # stages that start together are alternatives (perplexity / embeddings)
        end = min([t for t in starts if t > s.starts_at] or [100])
        assert stages.percent(s.name) == stages.percent(s.name, 0.0) == s.starts_at
        assert stages.percent(s.name, 1.0) == end
        assert s.starts_at <= stages.percent(s.name, 0.5) <= end
    assert stages.percent("quantize", 0.5) > stages.percent("quantize", 0.0)
    assert stages.percent("a plug-in's own stage", 0.5) is None  # shown as a message, the bar stays
    assert len(set(stages.NAMES)) == len(stages.NAMES)

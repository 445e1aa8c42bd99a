"""Layer selection and shape checks shared by the methods (torch-free: they run in the kernel).

Layers are given as {module name: (out_features, in_features)}, from the model's config
(`workbench.models.shapes`) before any worker starts, or from the loaded model in `build()`.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Mapping, Sequence

from ..errors import ParamError
from ..params import Param

Layers = Mapping[str, tuple[int, int]]


def select_layers(names: Iterable[str], include: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """Names matching some `include` pattern and no `exclude` pattern (fnmatch on the full dotted name)."""
    include, exclude = list(include), list(exclude)
    return [
        n for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in include) and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]


def include_param(extra: str = "") -> Param:
    """The `include` parameter of the methods that select Linear layers by fnmatch patterns."""
    return Param("include", "list", ["*"],
                 help="fnmatch patterns of the module names to quantize, matched against the full name" + extra + ".")


def exclude_param(leave: str = "in full precision", extra: str = "") -> Param:
    """The `exclude` parameter that goes with `include_param` (`leave` says how the excluded layers stay)."""
    return Param("exclude", "list", ["lm_head"],
                 help=f"fnmatch patterns of module names to leave {leave}" + extra + ".")


def few(names: Sequence[str], n: int = 3) -> str:
    """The first `n` names, comma-separated, with "..." when there are more."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def replace_layers_code(include: list[str], exclude: list[str]) -> str:
    """The plain code (for `Method.code`) that selects Linear layers by fnmatch patterns, unties a
    selected lm_head, and opens a loop giving `parent` and `child` for each one to replace."""
    return (
        f"include, exclude = {list(include)!r}, {list(exclude)!r}\n"
        "selected = [\n"
        "    name for name, m in model.named_modules()\n"
        "    if isinstance(m, torch.nn.Linear)\n"
        "    and any(fnmatch.fnmatchcase(name, pat) for pat in include)\n"
        "    and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)\n"
        "]\n"
        "if 'lm_head' in selected:\n"
        "    model.config.tie_word_embeddings = False  # replacing lm_head unties it from the embeddings\n"
        "for name in selected:\n"
        "    parent_name, _, child = name.rpartition('.')\n"
        "    parent = model.get_submodule(parent_name)\n"
    )


def left_out_note(skipped: Sequence[str], dtype: str, include: list[str], exclude: list[str], default_why: str) -> str:
    """The note naming the layers left in `dtype` and the patterns that left them there."""
    why = f"exclude={exclude}" + (f" ({default_why})" if exclude == ["lm_head"] else "")
    if include != ["*"]:
        why = f"include={include}, {why}"
    return f"left in {dtype} by {why}: {few(list(skipped), 5)}"


def group_sizes_dividing(in_dims: Iterable[int], limit: int = 8) -> list[int]:
    """Group sizes (multiples of 8) that divide every input dimension, largest first."""
    g = 0
    for d in in_dims:
        g = math.gcd(g, int(d))
    return [s for s in range(g, 7, -1) if s % 8 == 0 and g % s == 0][:limit]


def selection_error(layers: Layers, include: list[str], exclude: list[str],
                    exclude_param: str | None = None) -> ParamError | None:
    """An error on `include` when the patterns select no layer at all (on `exclude_param` instead,
    for methods whose only selection is a list of layers to leave out, e.g. llm-compressor's ignore)."""
    if select_layers(layers, include, exclude):
        return None
    names = list(layers)
    what = f"{exclude_param}={exclude} leaves" if exclude_param else f"include={include} with exclude={exclude} selects"
    return ParamError(
        exclude_param or "include",
        f"{what} none of the {len(names)} linear layers; "
        f"patterns match the full module name (e.g. '*.q_proj', '*mlp*'). Layers: {few(names, 4)}",
    )


def group_size_error(
    layers: Layers,
    selected: Sequence[str],
    group_size: int,
    *,
    remedy: str,
    candidates: Sequence[int] | None = None,
    param: str = "group_size",
) -> ParamError | None:
    """An error naming the layers whose input dimension `group_size` does not divide, or None.

    The message gives the group sizes that would fit every selected layer (from `candidates`
    when the backend only accepts some, else every multiple of 8) and ends with `remedy`.
    """
    if group_size <= 0:
        return None
    bad = [n for n in selected if int(layers[n][1]) % group_size]
    if not bad:
        return None
    dims = sorted({int(layers[n][1]) for n in bad})
    dim_text = f"the input dimension {dims[0]}" if len(dims) == 1 else \
        "the input dimensions " + ", ".join(map(str, dims))
    in_dims = [int(layers[n][1]) for n in selected]
    fits = [g for g in candidates if all(d % g == 0 for d in in_dims)] if candidates is not None \
        else group_sizes_dividing(in_dims)
    hint = (f"group sizes that divide every selected layer: {', '.join(map(str, fits))}; " if fits
            else "no allowed group size divides every selected layer; ")
    return ParamError(
        param,
        f"{param}={group_size} does not divide {dim_text} of {len(bad)} layer{'s' if len(bad) != 1 else ''} "
        f"({few(bad)}); {hint}{remedy}",
    )

"""Layer sensitivity: how much each linear layer loses when it alone is quantized.

    workbench sensitivity --model smollm2-135m --method rtn --param bits=3 [--heatmap FILE.html]
    Session().sensitivity("smollm2-135m", "rtn", {"bits": 3})

For a causal LM and a method with a per-layer quantizer (`Method.layer_quantizer`; `rtn` today),
one worker measures every layer the method would quantize: the relative output error on the
layer's real calibration inputs and the perplexity with only that layer quantized (see
`workbench.measure.sensitivity`). The layers at the top of the table are the ones to keep in
higher precision: the data behind mixed precision. Results are stored in the store's `analyses`
table under the spec's key and reused.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from .errors import InvalidParams, ParamError
from .result import RunResult
from .spec import BenchSpec, DataSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .exec.base import Progress
    from .session import Session

KIND = "sensitivity"
BENCH = BenchSpec(latency=False, save=False, reload_check=False)
METRICS = ("ppl_delta", "rel_output_error", "weight_error")


def supported_methods() -> list[str]:
    """Registered methods with a per-layer quantizer."""
    from . import registry

    return sorted(name for name, ref in registry.methods().items() if ref.cls.has_layer_quantizer())


def layer_sensitivity(session: "Session", model: str, method: str = "rtn", params: Mapping[str, Any] | None = None,
                      *, data: DataSpec | None = None, timeout_s: float | None = None, force: bool = False,
                      trust_remote_code: bool = False, allow_pickle_weights: bool = False,
                      progress: "Progress | None" = None) -> RunResult:
    """The stored analysis for this model, method, parameters and data, or a new one (stored).

    Bad input raises (InvalidParams naming the parameter, before any worker starts); a failed
    analysis comes back as a RunResult with its status and error, and is stored too.
    """
    from . import registry

    ref = registry.get(method)
    if not ref.cls.has_layer_quantizer():
        raise InvalidParams([ParamError("method", f"{method!r} has no per-layer quantizer; allowed: "
                                                  f"{', '.join(supported_methods())}")], context="sensitivity")
    options = {**({"trust_remote_code": True} if trust_remote_code else {}),
               **({"use_safetensors": False} if allow_pickle_weights else {})}
    spec = session.validate(session.make_spec(model, method, params, data=data, bench=BENCH, timeout_s=timeout_s,
                                              **options))
    kind = session.describe(spec.model).kind
    if kind != "causal-lm":
        raise InvalidParams([ParamError("model", f"{spec.model.id} is of kind {kind}; layer sensitivity measures "
                                                 f"perplexity and needs a causal-lm")], context="sensitivity")
    return session.analyse(spec, KIND, force=force, progress=progress)


def layer_position(name: str) -> tuple[int | None, str]:
    """("model.layers.12.mlp.down_proj") -> (12, "mlp.down_proj"); (None, name) outside numbered blocks."""
    m = re.search(r"\.(\d+)\.(.+)$", name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def sensitivity_frame(result: RunResult) -> "pd.DataFrame":
    """One row per layer, most sensitive (largest perplexity increase) first, with block and part."""
    import pandas as pd

    rows = result.tables.get("layers") or []
    df = pd.DataFrame(rows, columns=["layer", "out_features", "in_features", "params", "weight_error",
                                     "rel_output_error", "perplexity", "ppl_delta"])
    positions = [layer_position(n) for n in df["layer"]]
    df.insert(1, "block", [b for b, _ in positions])
    df.insert(2, "part", [p for _, p in positions])
    return df.sort_values("ppl_delta", ascending=False, kind="stable").reset_index(drop=True)

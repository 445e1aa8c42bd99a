"""Results: what a run produced, successful or not.

Errors are data: invalid parameters, an unavailable backend, a crash, a timeout
or running out of memory each become a `RunResult` with a status and a message,
stored like any other result.

Pure standard library: importable in the notebook kernel.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Mapping

from .spec import label  # noqa: F401 - the label of a configuration; tables and plots import it from here


class RunStatus(str, Enum):
    OK = "ok"
    FLAGGED = "flagged"  # ran, but a check failed (e.g. an export that does not match the baseline)
    RELOAD_MISMATCH = "reload_mismatch"  # ran, but the saved artifact reloads to different numbers
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    OOM = "oom"
    CANCELLED = "cancelled"
    # Still measuring: what the store holds of a run in progress (never a final status).
    RUNNING = "running"

    @property
    def succeeded(self) -> bool:
        return self in (RunStatus.OK, RunStatus.FLAGGED, RunStatus.RELOAD_MISMATCH)


# Metrics every result may carry; the JSON contract of `workbench run --json`.
METRIC_NAMES = (
    "weights_bytes",
    "weights_bytes_claimed",
    "disk_bytes",
    "peak_rss_bytes",
    "cuda_max_allocated_bytes",
    "perplexity",
    "reference_perplexity",
    "kl_div",
    "top1_agreement",
    "next_token_accuracy",
    "reload_perplexity",
    "reload_embedding_cosine",
    "embedding_cosine",
    "embedding_cosine_min",
    "image_psnr_db",
    "image_rmse",
    "generated_token_agreement",
    "reload_image_psnr_db",
    "reload_top1_agreement",
    "forward_ms",
    "prefill_tok_s",
    "decode_tok_s",
    "generate_tok_s",
    "image_s",
    "load_s",
    "quantize_s",
    "compile_s",
    "export_s",
    "params_count",
)


@dataclass(frozen=True)
class Measurement:
    """Repeated timings of one thing: median and spread, never a single sample."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Max minus min: the honest spread over a handful of repeats."""
        return max(self.values) - min(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": min(self.values), "max": max(self.values), "n": len(self.values)}


@dataclass
class RunResult:
    """The outcome of one run. `to_dict()` is the JSON contract of the CLI."""

    key: str
    status: RunStatus
    spec: dict[str, Any]
    metrics: dict[str, float | None] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    layers_quantized: int | None = None
    layers_eligible: int | None = None
    kernel: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    stderr_tail: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: float | None = None
    duration_s: float | None = None
    cached: bool = False

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)

    # Convenience views of the spec
    @property
    def model(self) -> str:
        m = self.spec.get("model", {})
        return m.get("id", "") if isinstance(m, Mapping) else str(m)

    @property
    def method(self) -> str:
        return self.spec.get("method", "")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.spec.get("params", {}))

    @property
    def ok(self) -> bool:
        return self.status.succeeded

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["model"] = self.model
        d["method"] = self.method
        d["params"] = self.params
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), default=_json_default, **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> "RunResult":
        return cls.from_dict(json.loads(text))

    @classmethod
    def failure(cls, spec: Mapping[str, Any], key: str, status: RunStatus, error: str, **kw: Any) -> "RunResult":
        return cls(key=key, status=status, spec=dict(spec), error=error, **kw)

    def merge_partial(self, partial: Mapping[str, Any]) -> None:
        """Add the measurements of one protocol stage (`workbench.measure.protocol`): `metrics` and
        `tables` update, `layers_quantized` / `layers_eligible` / `kernel` replace, `notes` extend.
        The worker fills its result this way and the coordinator rebuilds it from the same partials."""
        self.metrics.update(partial.get("metrics") or {})
        self.tables.update(partial.get("tables") or {})
        for name in ("layers_quantized", "layers_eligible", "kernel"):
            if name in partial:
                setattr(self, name, partial[name])
        self.notes.extend(partial.get("notes") or [])

    def to_row(self) -> dict[str, Any]:
        """One flat row for pandas: identity, status, every metric, layer counts.

        `protocol` names the measurement protocol whose settings the run used (`quick`,
        `standard`, `full`, else `custom`: `workbench.protocols.name_of`).
        `data_key` and `bench_key` say what a run is comparable with (`workbench.baselines`):
        `data_key` hashes the model spec and the evaluation part of the data spec (the key of
        the reference outputs, `spec.data_key`, with the calibration sizes at their defaults:
        they change how a model is quantized, not what it is measured on); `bench_key` hashes
        the bench spec. Both fill in the defaults first, so a spec that omits them and one that
        spells them out get the same key.
        """
        import hashlib
        from dataclasses import asdict, fields as dc_fields, replace

        from .spec import PROTOCOL_VERSION, BenchSpec, DataSpec, ModelSpec, data_key

        def build(cls: type, value: Any) -> Any:
            names = {f.name for f in dc_fields(cls)}
            d = dict(value or {}) if isinstance(value, Mapping) or value is None else None
            if d is None or set(d) - names:
                raise ValueError(value)
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

        def short_hash(value: Any) -> str:
            blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
            return hashlib.sha256(blob.encode()).hexdigest()[:16]

        model = self.spec.get("model") or {}
        try:  # a spec this version cannot parse still gets a key: its raw JSON's
            mspec = ModelSpec(id=model) if isinstance(model, str) else build(ModelSpec, model)
            dspec = build(DataSpec, self.spec.get("data"))
            defaults = DataSpec()
            row_data_key = data_key(mspec, replace(dspec, calib_samples=defaults.calib_samples,
                                                   calib_seq_len=defaults.calib_seq_len))
        except (TypeError, ValueError):
            row_data_key = short_hash({"model": model, "data": self.spec.get("data")})
        try:
            row_bench_key = short_hash({"bench": asdict(build(BenchSpec, self.spec.get("bench"))),
                                        "protocol": PROTOCOL_VERSION})
        except (TypeError, ValueError):
            row_bench_key = short_hash({"bench": self.spec.get("bench")})
        from .protocols import CUSTOM, name_of

        try:  # the protocol whose settings the run used (workbench.protocols), named after the fact
            row_protocol = name_of(build(DataSpec, self.spec.get("data")), build(BenchSpec, self.spec.get("bench")))
        except (TypeError, ValueError):
            row_protocol = CUSTOM
        row: dict[str, Any] = {
            "key": self.key,
            "model": self.model,
            "method": self.method,
            "params": json.dumps(self.params, sort_keys=True),
            "label": label(self.method, self.params),
            "status": self.status.value,
            "device": self.spec.get("device", "cpu"),
            "protocol": row_protocol,
            "data_key": row_data_key,
            "bench_key": row_bench_key,
            "layers_quantized": self.layers_quantized,
            "layers_eligible": self.layers_eligible,
            "kernel": self.kernel,
            "error": self.error,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
        }
        for name in METRIC_NAMES:
            row[name] = self.metrics.get(name)
        return row


def _json_default(o: Any) -> Any:
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)

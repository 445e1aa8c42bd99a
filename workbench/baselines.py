"""Runs against their fp32 baseline, computed in one place.

The number people compare is not a run's perplexity but how much worse it is than the
fp32 model's, and not its decode speed but how many times faster it is. This module
matches each run with the baseline it is compared with and adds the ratios; the CLI
table, the report, the app's results table and the accuracy-vs-memory plot all use it.

The rules:

* A baseline is a successful run of method `baseline` in float32 (params
  `{"dtype": "float32"}` or no dtype): the reference every other run's KL and top-1
  are measured against. bf16 / fp16 baselines are runs like the others.
* A run's accuracy baseline is the latest such run of the same model measured on the
  same data (`data_key` of `RunResult.to_row`: the model spec and the evaluation part
  of the data spec; calibration sizes are left out because the baseline's numbers do
  not depend on them). Its speed baseline must also have run on the same device with
  the same bench spec (`bench_key`): speeds measured otherwise do not compare.
* "Latest": the largest `started_at`; rows without one count as older than those with
  one, and among equals the later row of the frame wins (the store lists rows in the
  order they were written).
* No baseline: NaN. A baseline is never invented, and a failed one is ignored.

Kernel side: pandas only.
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .result import RunStatus

BASELINE_METHOD = "baseline"
SUCCEEDED = frozenset(s.value for s in RunStatus if s.succeeded)

# What against_baseline adds to a frame.
COLUMNS = ("baseline_key", "ppl_change", "speed_baseline_key", "decode_speedup")


def is_reference(method: Any, params: Any) -> bool:
    """Whether a configuration is the fp32 baseline (params: a mapping or the row's JSON text)."""
    if method != BASELINE_METHOD:
        return False
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return False
    if params is None or (isinstance(params, float) and pd.isna(params)):
        params = {}
    if not isinstance(params, dict):
        return False
    return params.get("dtype") in (None, "float32")


def against_baseline(df: pd.DataFrame, candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """A copy of `df` (rows of `RunResult.to_row`) with the columns of `COLUMNS`:

    baseline_key: the key of the run's fp32 baseline (None without one);
    ppl_change: perplexity / the baseline's perplexity - 1 (+0.098 is 9.8 % worse);
    speed_baseline_key: the key of the baseline its speed is compared with;
    decode_speedup: decode tokens/s / the speed baseline's (2.0 is twice as fast).

    The baseline's own row gets 0 and 1.0. `candidates`: more rows (e.g. the whole store)
    searched for baselines only, never added to the output; `df`'s own rows count as later.
    """
    out = df.copy() if df is not None else pd.DataFrame()
    n = len(out)
    if n == 0:
        for c in COLUMNS:
            out[c] = pd.Series(dtype="float64" if c in ("ppl_change", "decode_speedup") else "object")
        return out
    pool = out if candidates is None or len(candidates) == 0 else pd.concat([candidates, out], ignore_index=True)
    acc_key, speed_key = _match_keys(out)
    pool_acc, pool_speed = _match_keys(pool)
    ppl, decode = _numeric(out, "perplexity"), _numeric(out, "decode_tok_s")
    pool_ppl, pool_decode = _numeric(pool, "perplexity"), _numeric(pool, "decode_tok_s")

    # The latest reference per matching key: walk the references oldest first, later ones overwrite.
    status, method, params = _texts(pool, "status"), _texts(pool, "method"), _column(pool, "params")
    refs = [i for i in range(len(pool)) if status[i] in SUCCEEDED and is_reference(method[i], params[i])]
    started = _numeric(pool, "started_at").fillna(float("-inf")).tolist()
    refs.sort(key=lambda i: (started[i], i))
    by_acc: dict[tuple, int] = {}
    by_speed: dict[tuple, int] = {}
    for i in refs:
        by_acc[pool_acc[i]] = i
        by_speed[pool_speed[i]] = i

    keys = pool["key"].tolist() if "key" in pool.columns else [None] * len(pool)
    baseline_key, ppl_change, speed_baseline_key, decode_speedup = [], [], [], []
    for i in range(n):
        b = by_acc.get(acc_key[i])
        s = by_speed.get(speed_key[i])
        baseline_key.append(None if b is None else keys[b])
        speed_baseline_key.append(None if s is None else keys[s])
        ppl_change.append(_ratio(ppl.iloc[i], None if b is None else pool_ppl.iloc[b]) - 1)
        decode_speedup.append(_ratio(decode.iloc[i], None if s is None else pool_decode.iloc[s]))
    out["baseline_key"] = baseline_key
    out["ppl_change"] = pd.Series(ppl_change, index=out.index, dtype="float64")
    out["speed_baseline_key"] = speed_baseline_key
    out["decode_speedup"] = pd.Series(decode_speedup, index=out.index, dtype="float64")
    # The baseline's own row: exactly 0 and 1 (not 1e-16 of rounding).
    own_acc = out["baseline_key"].notna() & (out["baseline_key"] == out.get("key")) & ppl.notna()
    own_speed = out["speed_baseline_key"].notna() & (out["speed_baseline_key"] == out.get("key")) & decode.notna()
    out.loc[own_acc, "ppl_change"] = 0.0
    out.loc[own_speed, "decode_speedup"] = 1.0
    return out


def baseline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of `df` that some row uses as its accuracy baseline (after `against_baseline`)."""
    if df is None or len(df) == 0 or "baseline_key" not in df.columns:
        return pd.DataFrame(columns=[] if df is None else df.columns)
    used = set(df["baseline_key"].dropna())
    return df[df["key"].isin(used)].drop_duplicates("key", keep="last")


# --- helpers -------------------------------------------------------------------------
def _match_keys(df: pd.DataFrame) -> tuple[list[tuple], list[tuple]]:
    """(model, data) and (model, data, device, bench) per row; a missing key column matches everything."""
    model, data, bench = _texts(df, "model"), _texts(df, "data_key"), _texts(df, "bench_key")
    device = [d or "cpu" for d in _texts(df, "device")]
    return list(zip(model, data)), list(zip(model, data, device, bench))


def _column(df: pd.DataFrame, column: str) -> list[Any]:
    return df[column].tolist() if column in df.columns else [None] * len(df)


def _texts(df: pd.DataFrame, column: str) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v) for v in _column(df, column)]


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(float("nan"), index=df.index, dtype="float64")
    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _ratio(value: Any, reference: Any) -> float:
    if reference is None or pd.isna(value) or pd.isna(reference) or reference <= 0:
        return float("nan")
    return float(value) / float(reference)


__all__ = ["BASELINE_METHOD", "COLUMNS", "against_baseline", "baseline_rows", "is_reference"]

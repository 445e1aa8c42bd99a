"""Behaviour unchanged by a refactoring: every `make demo` configuration against the runs recorded before.

    .venv/bin/python benchmarks/behaviour.py [--before STORE_OR_JSON] [--store STORE] [--warm]

For each configuration of `make demo` (`cli.DEFAULT_COMPARISON` on SmolLM2) one run under the
standard protocol's data, accuracy only (the latency tables, saving and reloading change none of
the figures compared), in a temporary store, and against the same configuration's ok run before:

- perplexity within 1e-4 relative;
- layers quantized and layers eligible equal;
- weight bytes equal.

"Before" is, by default, the runs `make demo` recorded for the README's pictures
(tests/browser/demo_runs.json); `--before` takes a store (`results/workbench.sqlite` of a checkout
before the change) or another such JSON list; `--store` keeps this invocation's runs, to be the
"before" of a later one. Exit status 1 when any figure differs.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.cli import DEFAULT_COMPARISON, _parse_method
from workbench.session import Session
from workbench.spec import BenchSpec

SMOL = "smollm2-135m"
ACCURACY_ONLY = BenchSpec(latency=False, save=False, reload_check=False)
DEMO_RUNS = Path(__file__).resolve().parent.parent / "tests" / "browser" / "demo_runs.json"


def _key(spec: dict[str, Any]) -> tuple[str, str, str]:
    return spec["model"]["id"], spec["method"], json.dumps(spec["params"], sort_keys=True)


def runs_before(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model, method, params JSON) -> the ok run's result dict, from a store or a JSON list."""
    if path.suffix == ".json":
        results = json.loads(path.read_text())
    else:
        with sqlite3.connect(path) as con:
            results = [json.loads(blob) for (blob,) in con.execute("SELECT result FROM runs")]
    return {_key(r["spec"]): r for r in results if r.get("status") == "ok"}


def compare(new: dict[str, Any], old: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether `new` reproduces `old`, and the line that says so."""
    m = new.get("metrics") or {}
    ppl, weights = m.get("perplexity"), m.get("weights_bytes")
    layers = (new.get("layers_quantized"), new.get("layers_eligible"))
    text = f"perplexity {ppl!s:<20} layers {layers[0]}/{layers[1]:<4} weights {weights!s:<10}"
    if old is None:
        return False, text + "  no run before: FAIL"
    om = old.get("metrics") or {}
    checks = {
        "perplexity": ppl is not None and om.get("perplexity") is not None
        and abs(ppl / om["perplexity"] - 1) <= 1e-4,
        "layers": layers == (old.get("layers_quantized"), old.get("layers_eligible")),
        "weights": weights == om.get("weights_bytes"),
    }
    bad = [k for k, ok in checks.items() if not ok]
    before = (f"before {om.get('perplexity')!s:<20} {old.get('layers_quantized')}/{old.get('layers_eligible')} "
              f"{om.get('weights_bytes')}")
    return not bad, f"{text}  {before}  " + ("PASS" if not bad else "FAIL: " + ", ".join(bad))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=DEMO_RUNS, help="a store or JSON list of the runs before")
    ap.add_argument("--store", type=Path, default=None, help="keep the runs in this store (default: a temporary one)")
    ap.add_argument("--warm", action="store_true", help="fork runs from prepared processes (default: cold workers)")
    args = ap.parse_args()
    before = runs_before(args.before)
    print(f"`make demo` configurations on {SMOL}, accuracy only, against {args.before}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=args.store or Path(tmp) / "behaviour.sqlite", progress=False, warm=args.warm)
        for arg in DEFAULT_COMPARISON:
            method, params = _parse_method(arg)
            t0 = time.perf_counter()
            r = session.submit(session.make_spec(SMOL, method, params, bench=ACCURACY_ONLY), force=True)
            new = r.to_dict()
            same, line = compare(new, before.get(_key(new["spec"])))
            ok &= same and r.ok
            print(f"{arg:<28} {r.status.value:<7} {line}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nbehaviour unchanged" if ok else "\nbehaviour CHANGED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

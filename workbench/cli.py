"""`workbench`: the command line, the contract other tools rely on.

    workbench run --model M --method X [--param k=v ...] [--protocol quick|standard|full] [--store PATH] [--json]
    workbench compare [--model M] [--methods NAME[:k=v,...] ...] [--protocol NAME] [--report FILE]
    workbench sweep FILE.toml [--dry-run] [--retry-failed] [--protocol NAME] [--report FILE]
                    [--executor dask [--scheduler ADDR]]
    workbench sensitivity --model M --method rtn [--param k=v ...] [--top N] [--heatmap FILE.html]
    workbench recommend --model M [--max-ppl-increase 5%] [--max-bytes 120MB] [--min-decode-tok-s X] [--protocol NAME]
    workbench results [--store PATH] [--format table|csv|json] [--protocol NAME]
    workbench report [--store PATH] --out FILE.html
    workbench methods [--json]     workbench models [--json] [--prepare [NAME ...]]
    workbench env list [--json]    workbench env create NAME
    workbench info [--json]        where the home, store and environments are, and why

Exit codes: 0 done, 2 invalid input, 3 the run failed (crashed / timeout /
out of memory), 4 method or environment unavailable.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import InvalidParams, InvalidSpec, MethodUnavailable, ParamError, WorkbenchError
from . import registry  # noqa: F401 - installs the methods' defaults that shorten every label (spec.label)
from .result import RunResult, RunStatus, label
from .spec import BenchSpec, DataSpec, ModelSpec, fields_help, parse_fields

EXIT_OK, EXIT_INVALID, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 2, 3, 4

# The default comparison: the reference, int8 per-channel, and int4 g64 both ways.
# One configuration per family a CPU user would weigh: PyTorch fp32, the reference int4, the
# torch-side int8 and 4-bit, OpenVINO's runtime alone, int8 and int4, and ONNX Runtime's 4-bit
# MatMulNBits (all data-free).
DEFAULT_COMPARISON = (
    "baseline",
    "rtn:bits=4,group_size=64,sym=false",
    "torchao:scheme=int8_weight_only",
    "hqq:nbits=4,group_size=64",
    "ov-export",
    "ov-weight:bits=8",
    "ov-weight:bits=4,group_size=64",
    "ort-int4",
)
# For pipelines (diffusion, speech-to-text, vision-language) only the OpenVINO methods apply.
PIPELINE_COMPARISON = ("ov-export", "ov-hybrid", "ov-hybrid:bits=4,group_size=32")
DEFAULT_MODEL = "smollm2-135m"
STORE_HELP = "SQLite results file (default: $WORKBENCH_STORE, else results/workbench.sqlite in the checkout or the " \
             "workbench home: `workbench info` shows which)"


def exit_code(result: RunResult) -> int:
    if result.status.succeeded:
        return EXIT_OK
    if result.status == RunStatus.INVALID:
        return EXIT_INVALID
    if result.status == RunStatus.UNAVAILABLE:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage, which is our 'invalid input' code too; keep the message clear."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"workbench: error: {message}\n")
        raise SystemExit(EXIT_INVALID)


def _session(args: argparse.Namespace) -> Any:
    from .session import Session

    from .exec import get_executor

    if getattr(args, "scheduler", None) and getattr(args, "executor", None) != "dask":
        raise InvalidSpec("--scheduler: only with --executor dask")
    name = getattr(args, "executor", "subprocess")
    cold = getattr(args, "cold", False)
    if cold and name != "subprocess":
        # Accepted, not refused: a script may pass --cold whatever the executor, and it holds there.
        where = ("Dask workers always start the worker cold (a fresh `python -m workbench.worker` per run)"
                 if name == "dask" else "the inline executor runs in this process, with no worker to start")
        print(f"note: --cold: {where}; warm starts are the subprocess executor's", file=sys.stderr)
    executor = get_executor(name, getattr(args, "scheduler", None), warm=not cold)
    return Session(store=args.store, executor=executor, progress=not getattr(args, "quiet", False))


def _protocol(args: argparse.Namespace) -> str | None:
    """The --protocol name, checked before anything runs (exit 2 listing the names)."""
    from . import protocols

    name = getattr(args, "protocol", None)
    return None if name is None else protocols.get(name).name


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    data = parse_fields(DataSpec, args.data_field or [], "data")
    if args.data:
        data["source"] = args.data
    return data


def _spec_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "protocol": _protocol(args),
        "data": _data_options(args) or None,
        "bench": parse_fields(BenchSpec, args.bench or [], "bench") or None,
        "device": args.device,
        "timeout_s": args.timeout,
        "trust_remote_code": args.trust_remote_code,
        **({"use_safetensors": False} if args.allow_pickle_weights else {}),
    }


def _parse_method(text: str) -> tuple[str, dict[str, str]]:
    """`rtn:bits=4,group_size=64` -> ("rtn", {"bits": "4", "group_size": "64"})."""
    name, _, rest = text.partition(":")
    params: dict[str, str] = {}
    for pair in re.split(r",(?=\s*[A-Za-z_][\w-]*=)", rest) if rest else []:
        k, sep, v = pair.partition("=")
        if not sep:
            raise InvalidParams([ParamError(k or text, "expected NAME=VALUE in a method spec like rtn:bits=4,group_size=64")])
        params[k.strip()] = v.strip()
    return name.strip(), params


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        print(result.to_json(indent=2))
        return
    if result.ok:
        m = result.metrics
        cached = " (cached)" if result.cached else ""
        print(f"{result.status.value}{cached}: {result.model} {result.method} {json.dumps(result.params)}")
        for name in _PRINTED_METRICS:
            if m.get(name) is not None:
                print(f"  {name:>16}: {_fmt(name, m[name])}")
        print(f"  {'layers':>16}: {result.layers_quantized}/{result.layers_eligible} quantized; kernel: {result.kernel}")
    else:
        print(f"{result.status.value}: {result.error}", file=sys.stderr)
        # A run that ended early keeps what it had measured (stored with its status, never as ok).
        kept = [name for name in _PRINTED_METRICS if result.metrics.get(name) is not None]
        if kept:
            print("measured before it ended: " + ", ".join(f"{n} {_fmt(n, result.metrics[n])}" for n in kept),
                  file=sys.stderr)
        if result.stderr_tail:
            print("--- worker output (tail) ---\n" + result.stderr_tail, file=sys.stderr)


_PRINTED_METRICS = ("weights_bytes", "disk_bytes", "peak_rss_bytes", "perplexity", "kl_div", "top1_agreement",
                    "next_token_accuracy", "generated_token_agreement", "image_psnr_db", "image_rmse",
                    "embedding_cosine", "forward_ms", "prefill_tok_s", "decode_tok_s", "generate_tok_s", "image_s")
# What `workbench run` prints as soon as the accuracy stage has measured it.
_ACCURACY_METRICS = ("perplexity", "kl_div", "top1_agreement", "embedding_cosine", "embedding_cosine_min",
                     "image_psnr_db", "image_rmse", "generated_token_agreement")


def accuracy_line(result: RunResult) -> str | None:
    """"accuracy: perplexity 23.41, kl_div 0.01234, ..." from a run's measurements so far (None without any)."""
    shown = [f"{n} {_fmt(n, result.metrics[n])}" for n in _ACCURACY_METRICS if result.metrics.get(n) is not None]
    return f"accuracy: {', '.join(shown)}" if shown else None


def _print_accuracy_early(update: Any) -> None:
    """`Session.submit`'s on_partial for `workbench run`: the accuracy line the moment it is measured,
    above the progress bar (tqdm.write), while latency and the rest are still being measured. On
    stderr, with the bar: stdout stays the result alone, as a script reading it expects."""
    if update.stage != "accuracy":
        return
    line = accuracy_line(update.result)
    if line is None:
        return
    from tqdm import tqdm

    tqdm.write(f"{line}  (latency and the rest follow)", file=sys.stderr)


def _fmt(name: str, v: Any) -> str:
    if name.endswith("_bytes"):
        return f"{v / 2**20:.1f} MiB"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --- commands ----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from . import registry

    session = _session(args)
    params = registry.get(args.method).cls.schema.parse_cli(args.param or [])
    spec = session.make_spec(args.model, args.method, params, **_spec_options(args))
    # --json keeps stdout one JSON document: nothing printed before it.
    result = session.submit(spec, force=args.force, on_partial=None if args.json else _print_accuracy_early)
    _print_result(result, args.json)
    return exit_code(result)


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import write_report

    session = _session(args)
    methods = args.methods or list(_default_comparison(args.model))
    opts = _spec_options(args)
    specs = []
    for text in methods:
        name, params = _parse_method(text)
        specs.append(session.make_spec(args.model, name, params, **opts))
    # Validate everything before running anything: a typo in the last method costs nothing.
    # An unavailable method (its environment not created) is no input error: it is reported
    # with its install command and the others run.
    bad = []
    for s in specs:
        try:
            session.validate(s)
        except MethodUnavailable:
            pass
        except WorkbenchError:
            bad.append((s, session.problems(s)))
    if bad:
        for s, p in bad:
            print(f"{s.label}:\n  " + "\n  ".join(p), file=sys.stderr)
        return EXIT_INVALID
    results = []
    for spec in specs:
        r = session.submit(spec, force=args.force)
        results.append(r)
        if not r.ok:
            print(f"{spec.label}: {r.status.value}: {r.error}", file=sys.stderr)
    # The store's baselines count too: `--methods rtn:bits=4` after a first compare gets its ratios.
    _print_table(results, wide=getattr(args, "wide", False), candidates=session.results())
    out = Path(args.report) if args.report else session.store.path.parent / "report.html"
    write_report(session.results(), out)
    print(f"report: {out}  store: {session.store.path}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep
    from .report import write_report

    session = _session(args)
    the_sweep = sweep.load_sweep(args.file, protocol=_protocol(args))
    the_plan = sweep.plan(session, the_sweep, retry_failed=args.retry_failed)
    for spec, problems in the_plan.invalid:
        print(f"{spec.model.id} {spec.label}:\n  " + "\n  ".join(problems), file=sys.stderr)
    if the_plan.invalid:
        print(f"workbench: sweep {args.file}: {len(the_plan.invalid)} invalid configurations; nothing was run",
              file=sys.stderr)
        return EXIT_INVALID
    for spec, reason in the_plan.unavailable:
        print(f"{spec.model.id} {spec.label}: skipped: {reason}", file=sys.stderr)
    print(the_plan.summary())
    if args.dry_run:
        for spec in the_plan.specs:
            state = "stored" if spec.key in the_plan.stored else "failed before" if spec.key in the_plan.failed \
                else "to run"
            print(f"  {state:>13}  {spec.model.id} {label(spec.method, spec.params)}")
        return EXIT_OK
    outcome = sweep.run(session, the_plan, progress=not args.quiet)
    if outcome.results:
        _print_table(outcome.results)
        _print_front(outcome.results)
    for r in outcome.failures:
        first_line = (r.error or "").strip().splitlines()[:1]
        print(f"{r.model} {label(r.method, r.params)}: {r.status.value}: {''.join(first_line)}", file=sys.stderr)
    print(f"sweep {the_sweep.name!r}: {outcome.ran} run now in {outcome.seconds:.0f} s, "
          f"{len(the_plan.stored)} reused from the store, {len(outcome.failures)} failed; store: {session.store.path}")
    if args.report:
        print(f"report: {write_report(outcome.results, Path(args.report))}")
    return EXIT_OK if not outcome.failures else EXIT_FAILED


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from . import registry
    from .plots import sensitivity_heatmap
    from .sensitivity import layer_sensitivity, sensitivity_frame

    session = _session(args)
    params = registry.get(args.method).cls.schema.parse_cli(args.param or [])
    data = _data_options(args)
    result = layer_sensitivity(session, args.model, args.method, params, data=DataSpec(**data) if data else None,
                               timeout_s=args.timeout, force=args.force, trust_remote_code=args.trust_remote_code,
                               allow_pickle_weights=args.allow_pickle_weights)
    if args.json:
        print(result.to_json(indent=2))
        return exit_code(result)
    if not result.ok:
        print(f"{result.status.value}: {result.error}", file=sys.stderr)
        return exit_code(result)
    df = sensitivity_frame(result)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None):
        shown = df.head(args.top)[["layer", "params", "rel_output_error", "perplexity", "ppl_delta"]]
        print(f"{args.model}: fp32 perplexity {result.metrics['perplexity']:.4f}; the {len(shown)} of "
              f"{len(df)} layers that cost the most when quantized alone with {args.method} "
              f"{' '.join(f'{k}={v}' for k, v in params.items())}{' (stored)' if result.cached else ''}:")
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.heatmap:
        out = Path(args.heatmap)
        out.parent.mkdir(parents=True, exist_ok=True)
        sensitivity_heatmap(df, args.metric).write_html(str(out), include_plotlyjs=True)
        print(f"heatmap: {out}")
    return EXIT_OK


def cmd_recommend(args: argparse.Namespace) -> int:
    from .recommend import Budget, mb, parse_bytes, parse_fraction, recommend

    budget = Budget(max_ppl_increase=parse_fraction(args.max_ppl_increase) if args.max_ppl_increase else None,
                    max_bytes=parse_bytes(args.max_bytes) if args.max_bytes else None,
                    min_decode_tok_s=args.min_decode_tok_s)
    protocol = _protocol(args)
    session = _session(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods is not None else None
    rec = recommend(session, args.model, budget, max_runs=args.max_runs, methods=methods, protocol=protocol)
    results = [rec.baseline] + [s.result for s in rec.steps]
    print()
    _print_front(results)
    print(f"\n{rec.runs} runs in {rec.seconds:.0f} s (stored runs are reused) out of the {rec.space} configurations "
          f"the search could have run; {rec.stopped}.")
    for why in rec.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if rec.best is None:
        print(f"no explored configuration meets the budget ({budget.describe()}). Closest:")
        for s in rec.closest():
            print(f"  {label(s.result.method, s.result.params)}: {'; '.join(s.misses)}")
        return EXIT_FAILED
    r = rec.best.result
    print(f"recommended: {label(r.method, r.params)} ({rec.best.stage}, {rec.best.bits}-bit): "
          f"{mb(r.metrics['weights_bytes'])} MB, perplexity {r.metrics['perplexity']:.3f} against "
          f"{rec.baseline.metrics['perplexity']:.3f} in fp32 ({r.metrics['perplexity'] / rec.baseline.metrics['perplexity'] - 1:+.1%})")
    print(f"reproduce with the workbench: workbench run --model {args.model} --method {r.method} "
          + " ".join(f"--param {k}={_cli_value(v)}" for k, v in r.params.items())
          + (f" --protocol {rec.protocol}" if rec.protocol != "custom" else ""))
    eight = rec.best_int8
    if eight is not None and eight is not rec.best:
        e = eight.result.metrics["weights_bytes"]
        print(f"against the best 8-bit run within the budget ({label(eight.result.method, eight.result.params)}, "
              f"{mb(e)} MB): {1 - r.metrics['weights_bytes'] / e:.0%} fewer weight bytes")
    elif eight is not None:
        print("nothing explored below 8 bits meets the budget with fewer bytes than this 8-bit run; the smaller "
              "runs closest to the budget:")
        for s in rec.closest():
            print(f"  {label(s.result.method, s.result.params)} ({mb(s.result.metrics.get('weights_bytes'))} MB): "
                  f"{'; '.join(s.misses)}")
    print("or without it:\n" + rec.code())
    return EXIT_OK


def _cli_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return "none" if v is None else str(v)


def _print_front(results: list[RunResult]) -> None:
    """The configurations no other one beats on both weight bytes and accuracy, per model (no line over 120
    characters; the ratios against each model's fp32 baseline, which need not be on the front)."""
    from .plots import (SUCCEEDED, comparison_groups, compact_text, pareto_front, pick_accuracy, results_frame,
                        terminal_text)

    df = results_frame(results)
    ok = df[df["status"].astype(str).isin(SUCCEEDED)]
    accuracy, minimize = pick_accuracy(ok)
    if accuracy is None or ok.empty:
        return
    import pandas as pd

    on_front = pd.Series(False, index=df.index)
    # One front per model, and per protocol when a model's runs span several: never across protocols.
    for _, g in ok.groupby(comparison_groups(ok), sort=False):
        on_front.loc[g.index] = pareto_front(g, "weights_bytes", accuracy, minimize_y=minimize)
    # Models in the order they came, each one's front from the smallest weights up.
    rank = {m: i for i, m in enumerate(dict.fromkeys(df["model"].astype(str)))}
    order = pd.DataFrame({"m": df["model"].astype(str).map(rank),
                          "w": pd.to_numeric(df["weights_bytes"], errors="coerce")}).sort_values(["m", "w"]).index
    print(f"\nPareto front (weights against {accuracy}):")
    print(terminal_text(compact_text(df.loc[order], rows=on_front.loc[order])))


def _default_comparison(model: str) -> tuple[str, ...]:
    from .models import catalog

    entry = catalog.CATALOG.get(model)
    kind = entry.kind if entry is not None else None
    if kind is None:
        try:
            kind = catalog.describe(ModelSpec(model)).kind
        except WorkbenchError:
            return DEFAULT_COMPARISON  # validation reports the problem with the model
    return PIPELINE_COMPARISON if kind in catalog.PIPELINE_KINDS else DEFAULT_COMPARISON


def _print_table(results: list[RunResult], wide: bool = False, candidates: list[RunResult] | None = None) -> None:
    """The runs as text: by default one compact section per model (`plots.compact_text`: no line over 120
    characters); `wide`: every column of `plots.summary_table`, full labels, as wide as it takes.
    `candidates`: more results searched for fp32 baselines only (the store)."""
    import pandas as pd

    from .baselines import against_baseline
    from .plots import compact_text, results_frame, summary_table, terminal_text

    df = results_frame(results)
    pool = results_frame(candidates) if candidates else None
    if wide:
        with pd.option_context("display.max_columns", None, "display.width", 10_000,
                               "display.max_colwidth", None):
            print(terminal_text(summary_table(against_baseline(df, pool)).to_string(index=False, na_rep="")))
        return
    print(terminal_text(compact_text(df, candidates=pool)))


def cmd_results(args: argparse.Namespace) -> int:
    from .store import ResultStore
    from .paths import store_path

    path = store_path(args.store)
    if not path.exists():
        raise InvalidSpec(f"store: {path} does not exist (run something first, or pass --store PATH)")
    store = ResultStore(path)
    results = store.results(latest_only=not args.all)
    if args.protocol is not None:
        from . import protocols

        wanted = args.protocol.strip().lower()
        if wanted != protocols.CUSTOM:
            wanted = protocols.get(wanted).name
        results = [r for r in results if r.to_row()["protocol"] == wanted]
    if args.format in ("json", "csv"):
        from .baselines import COLUMNS
        from .report import results_table

        frame = results_table(results)
        if args.format == "csv":
            frame.to_csv(sys.stdout, index=False)
            return EXIT_OK
        # Each result as `RunResult.to_dict()`, plus what it is compared on and with (NaN as null).
        extra = frame[["protocol", "data_key", "bench_key", *COLUMNS]].astype(object)
        rows = []
        for r, (_, e) in zip(results, extra.iterrows()):
            d = r.to_dict()
            d.update({k: None if isinstance(v, float) and v != v else v for k, v in e.items()})
            rows.append(d)
        print(json.dumps(rows, indent=2, default=str))
    elif results:
        _print_table(results, wide=getattr(args, "wide", False))
    elif args.protocol is not None:
        print(f"no results measured with the {args.protocol.strip().lower()} protocol")
    else:
        print("no results yet")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .paths import store_path
    from .report import write_report
    from .store import ResultStore

    path = store_path(args.store)
    if not path.exists():
        raise InvalidSpec(f"store: {path} does not exist (run something first, or pass --store PATH)")
    out = write_report(ResultStore(path).results(), Path(args.out))
    print(out)
    return EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    from . import registry

    rows = registry.describe_all()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if args.markdown:
        print(methods_markdown(rows))
        return EXIT_OK
    for r in rows:
        state = "available" if r["available"] else f"unavailable: {r['reason']}"
        print(f"{r['name']:<12} {r['backend']:<12} env={r['env']:<8} {state}")
        for p in r["params"]:
            print(f"    {p['name']}={p['default']!r}  ({p['allowed']})  {p['help']}")
    return EXIT_OK


def methods_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's method table, generated from the schemas (so it cannot drift)."""
    lines = ["| method | backend | env | description | parameters (default; allowed) |", "|---|---|---|---|---|"]
    for r in rows:
        params = "<br>".join(
            f"`{p['name']}`={p['default']!r}; {p['allowed']}"
            + (f" (when {', '.join(f'{k}={v}' for k, v in p['visible_when'].items())})" if p["visible_when"] else "")
            for p in r["params"]
        )
        lines.append(f"| `{r['name']}` | {r['backend']} | {r['env']} | {r['description']} | {params or '-'} |")
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from .models import catalog

    if args.prepare is not None:
        return prepare_models(args.prepare)
    rows = catalog.catalog_rows()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<18} {r['source']:<9} {r.get('params_count') or '?':>11}  {r['description']}")
    print("Any local model directory or hub id (org/name) works too: --model /path/to/model")
    return EXIT_OK


def prepare_models(names: Sequence[str]) -> int:
    """Convert / build catalog models (default: the embedded ones) in a worker of their environment,
    so that no run pays for it later. Pipelines are built in the openvino environment (diffusers
    lives there only), the others in the torch one."""
    from .envs import manager
    from .envs.child import run_module
    from .models import catalog

    names = list(names) or [n for n, e in catalog.CATALOG.items() if e.source == "embedded"]
    unknown = [n for n in names if n not in catalog.CATALOG]
    if unknown:
        raise InvalidSpec(f"models: {', '.join(unknown)} not in the catalog ({', '.join(catalog.CATALOG)}); "
                          "local directories and hub ids need no preparation")
    by_env: dict[str, list[str]] = {}
    for n in names:
        env = "openvino" if catalog.CATALOG[n].kind in catalog.PIPELINE_KINDS else "torch"
        by_env.setdefault(env, []).append(n)
    code = EXIT_OK
    for env, group in by_env.items():
        python = manager.python_for(env)  # EnvironmentUnavailable (exit 4) says how to create it
        if run_module("workbench.worker", ["--prepare", *group], python=python, env=manager.worker_env(),
                      capture=False).returncode:
            code = EXIT_FAILED
    return code


def cmd_env(args: argparse.Namespace) -> int:
    from .envs import manager

    if args.env_cmd == "create":
        names = list(args.names) + [n for n in (manager.profile_families(args.profile) if args.profile else ())
                                    if n not in args.names]
        if not names:
            raise InvalidSpec("env create: name families (workbench env list) or --profile "
                              f"({', '.join(manager.PROFILES)})")
        for name in names:
            manager.family(name)  # an unknown name is refused before anything is installed
        if args.dry_run:
            print(" ".join(names))
            return EXIT_OK
        for name in names:
            st = manager.create(name, progress=not args.quiet)
            print(f"{st.name}: {st.state} ({st.python})")
        return EXIT_OK
    if args.env_cmd == "dedupe":
        from .envs.dedupe import link_duplicates

        ready = [Path(s.path) for s in manager.list_envs() if s.state in ("ready", "stale") and s.path]
        linked = link_duplicates(ready)
        print(f"{linked.files} files hard-linked across {len(ready)} environments, "
              f"{linked.bytes_saved / 2**30:.2f} GiB freed")
        return EXIT_OK
    rows = [s.to_dict() for s in manager.list_envs()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<10} {r['state']:<9} {r['python'] or ''} {r['reason']}")
    return EXIT_OK


def info() -> dict[str, Any]:
    """Where the workbench keeps things and why: home, store, environments, embedded models."""
    import os
    import platform

    from . import __version__, paths
    from .envs import manager
    from .models import catalog

    home, store = paths.resolve_home(), paths.resolve_store()
    paths.home()  # a WORKBENCH_HOME that is a file or unwritable: the error names it (exit 2)
    runs = None
    if store.path.is_file():
        from .store import ResultStore

        runs = len(ResultStore(store.path))
    return {
        "workbench": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "checkout": str(paths.checkout()) if paths.checkout() else None,
        "home": {"path": str(home.path), "rule": home.rule, "why": home.why},
        "store": {"path": str(store.path), "rule": store.rule, "why": store.why, "runs": runs},
        "environments": [s.to_dict() for s in manager.list_envs()],
        # Catalog models converted (SmolLM2) or built (tiny ones) under the home; MiniLM needs no step.
        "models": [n for n in catalog.CATALOG if (paths.subdir("models") / n / catalog.MANIFEST).is_file()],
        "overrides": {k: os.environ.get(k) for k in ("WORKBENCH_HOME", "WORKBENCH_STORE")},
    }


def cmd_info(args: argparse.Namespace) -> int:
    facts = info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return EXIT_OK
    home, store = facts["home"], facts["store"]
    print(f"workbench {facts['workbench']}, Python {facts['python']}")
    print(f"home:  {home['path']}\n       ({home['why']})")
    runs = "not created yet" if store["runs"] is None else f"{store['runs']} stored runs"
    print(f"store: {store['path']} ({runs})\n       ({store['why']})")
    print("environments:")
    for e in facts["environments"]:
        what = e["python"] if e["state"] in ("ready", "external") else \
            f"run `workbench env create {e['name']}`" if e["state"] == "missing" else e["reason"]
        print(f"  {e['name']:<14} {e['state']:<8} {what}")
    print("models converted or built: " + (", ".join(facts["models"]) or
                                            "none yet (`workbench models --prepare` converts SmolLM2)"))
    set_ = {k: v for k, v in facts["overrides"].items() if v}
    print("overrides: " + (", ".join(f"{k}={v}" for k, v in set_.items()) if set_ else
                           "none (WORKBENCH_HOME and WORKBENCH_STORE choose other places)"))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description="Quantization Workbench: compare quantization methods, measured one way.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def executor_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--executor", default="subprocess", choices=("subprocess", "inline", "dask"),
                        help="where runs happen: a worker subprocess here (default), in this process, or on Dask workers")
        sp.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="with --executor dask: the scheduler (tcp://host:8786); default $WORKBENCH_DASK_SCHEDULER, "
                             "else a LocalCluster of 2 worker processes here")
        sp.add_argument("--cold", action="store_true",
                        help="start every worker cold (a fresh interpreter per run) instead of forking it from the "
                             "environment's prepared process; with --executor dask runs are cold anyway")

    def model_data_args(sp: argparse.ArgumentParser, model_default: str | None) -> None:
        sp.add_argument("--model", default=model_default, required=model_default is None,
                        help="catalog name (workbench models), local directory or hub id")
        sp.add_argument("--store", default=None, help=STORE_HELP)
        sp.add_argument("--data", default=None, help="text source: pydoc-topics, file:PATH, hub:NAME[/CONFIG]")
        sp.add_argument("--data-field", action="append", metavar="K=V",
                        help="a data field, e.g. eval_windows=4; the fields: "
                             + fields_help(DataSpec).replace("%", "%%"))
        sp.add_argument("--timeout", type=float, default=None, help="seconds before the worker is killed")
        sp.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code from the model repository (off by default; the result says it was on)")
        sp.add_argument("--allow-pickle-weights", action="store_true",
                        help="load .bin (pickle) weights when a model has no safetensors (off by default: unpickling "
                             "can run code; the result says it was allowed)")
        sp.add_argument("--force", action="store_true", help="run even if the store has a result for this spec")

    def protocol_arg(sp: argparse.ArgumentParser, default: str, what: str) -> None:
        from . import protocols

        # Not argparse choices: the name is checked where the API checks it, with the same message.
        sp.add_argument("--protocol", default=None, metavar="NAME",
                        help=f"the measurement protocol, one of {', '.join(protocols.names())} (default: {default}); "
                             f"{what}. " + protocols.help_text().replace("%", "%%"))

    def spec_args(sp: argparse.ArgumentParser, model_default: str | None) -> None:
        model_data_args(sp, model_default)
        protocol_arg(sp, "standard", "--bench / --data-field change single fields on top of it")
        sp.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
        sp.add_argument("--bench", action="append", metavar="K=V",
                        help="a bench field, e.g. repeats=5 batch_sizes=1,4; the fields: "
                             + fields_help(BenchSpec).replace("%", "%%"))
        executor_args(sp)
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="one run")
    spec_args(r, None)
    r.add_argument("--method", required=True)
    r.add_argument("--param", action="append", metavar="K=V", help="method parameter (repeatable)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="the default comparison (or --methods), a table and a report")
    spec_args(c, DEFAULT_MODEL)
    c.add_argument("--methods", nargs="+", metavar="NAME[:K=V,...]", help=f"default: {' '.join(DEFAULT_COMPARISON)}; for pipelines: {' '.join(PIPELINE_COMPARISON)}")
    c.add_argument("--report", default=None, metavar="FILE.html",
                   help="where the HTML report goes (default: report.html beside the store)")
    c.add_argument("--wide", action="store_true", help="print every column (disk, peak RSS, layers, kernel) and "
                                                      "full labels, in one wide table")
    c.set_defaults(func=cmd_compare)

    sw = sub.add_parser("sweep", help="run a TOML sweep file (resumable: stored configurations are reused)")
    sw.add_argument("file", help="the sweep file (format: python -c 'import workbench.sweep; help(workbench.sweep)')")
    sw.add_argument("--store", default=None, help=STORE_HELP)
    sw.add_argument("--dry-run", action="store_true", help="validate and list what would run; run nothing")
    sw.add_argument("--retry-failed", action="store_true", help="run again configurations whose stored run failed")
    protocol_arg(sw, "the file's `protocol` key, else standard", "replaces the file's protocol; its [data] and "
                                                                 "[bench] tables still apply on top")
    sw.add_argument("--report", default=None, metavar="FILE.html", help="also write an HTML report of the sweep")
    executor_args(sw)
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    se = sub.add_parser("sensitivity", help="per-layer error and perplexity with one layer quantized at a time "
                                            "(in a worker subprocess on this machine's CPU)")
    model_data_args(se, None)
    se.add_argument("--quiet", action="store_true", help="no progress bar")
    se.add_argument("--method", default="rtn", help="a method with a per-layer quantizer (rtn)")
    se.add_argument("--param", action="append", metavar="K=V", help="method parameter (repeatable)")
    se.add_argument("--top", type=int, default=15, help="how many of the most sensitive layers to print")
    se.add_argument("--heatmap", default=None, metavar="FILE.html", help="write the heatmap as a standalone page")
    se.add_argument("--metric", default="ppl_delta", choices=("ppl_delta", "rel_output_error", "weight_error"),
                    help="what the heatmap colours")
    se.add_argument("--json", action="store_true", help="print the stored result as JSON")
    se.set_defaults(func=cmd_sensitivity)

    rc = sub.add_parser("recommend", help="search methods and bit widths for the smallest configuration within a budget")
    rc.add_argument("--model", default=DEFAULT_MODEL)
    rc.add_argument("--store", default=None, help=STORE_HELP)
    rc.add_argument("--max-ppl-increase", default=None, metavar="PCT", help="e.g. 5%% or 0.05: over the fp32 perplexity")
    rc.add_argument("--max-bytes", default=None, metavar="SIZE", help="weight bytes, e.g. 120MB")
    rc.add_argument("--min-decode-tok-s", type=float, default=None, metavar="X", help="decode tokens/s at batch 1")
    rc.add_argument("--max-runs", type=int, default=40, help="stop after this many runs")
    protocol_arg(rc, "quick", "every run of the search, the fp32 baseline too, without latency unless "
                              "--min-decode-tok-s, and without saving")
    rc.add_argument("--methods", default=None, metavar="A,B", help="only these backends (what you can deploy), e.g. "
                                                                  "ov-weight,gptq; default: every one the ladder has")
    executor_args(rc)
    rc.add_argument("--quiet", action="store_true", help="no progress bars")
    rc.set_defaults(func=cmd_recommend)

    res = sub.add_parser("results", help="stored results as a table, CSV or JSON")
    res.add_argument("--store", default=None, help=STORE_HELP)
    res.add_argument("--format", choices=("table", "csv", "json"), default="table")
    res.add_argument("--all", action="store_true", help="every stored row, not only the latest per spec")
    res.add_argument("--protocol", default=None, metavar="NAME",
                     help="only runs measured with this protocol: quick, standard, full or custom")
    res.add_argument("--wide", action="store_true", help="with --format table: every column (disk, peak RSS, "
                                                        "layers, kernel) and full labels, in one wide table")
    res.set_defaults(func=cmd_results)

    rep = sub.add_parser("report", help="a self-contained HTML report of the store")
    rep.add_argument("--store", default=None, help=STORE_HELP)
    rep.add_argument("--out", required=True)
    rep.set_defaults(func=cmd_report)

    m = sub.add_parser("methods", help="registered methods, their availability and parameters")
    m.add_argument("--json", action="store_true")
    m.add_argument("--markdown", action="store_true", help="the README's method table")
    m.set_defaults(func=cmd_methods)

    mo = sub.add_parser("models", help="the model catalog")
    mo.add_argument("--json", action="store_true")
    mo.add_argument("--prepare", nargs="*", metavar="NAME",
                    help="convert / build these catalog models now (default: the embedded ones)")
    mo.set_defaults(func=cmd_models)

    inf = sub.add_parser("info", help="where the workbench keeps environments, models and results, and why")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=cmd_info)

    e = sub.add_parser("env", help="backend environments")
    esub = e.add_subparsers(dest="env_cmd", required=True, parser_class=_Parser)
    el = esub.add_parser("list")
    el.add_argument("--json", action="store_true")
    ec = esub.add_parser("create", help="create (or update) environment families by name or by profile")
    ec.add_argument("names", nargs="*", help="families (workbench env list)")
    ec.add_argument("--profile", default=None,
                    help="every family of a profile: all (make setup) or binder (torch, openvino)")
    ec.add_argument("--dry-run", action="store_true", help="print the families it would create, create none")
    ec.add_argument("--quiet", action="store_true")
    esub.add_parser("dedupe", help="hard-link the files that several environments hold identically (torch...)")
    e.set_defaults(func=cmd_env)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except WorkbenchError as e:
        print(f"workbench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `workbench ... | head`: the reader left, which is no error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

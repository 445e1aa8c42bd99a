"""The app's three ways to explore many configurations at once: a sweep file, layer sensitivity
and the budget search (`workbench sweep`, `workbench sensitivity`, `workbench recommend`).

- `SweepPanel`: sweep TOML in a text box; the example names the app's protocol (`protocol =
  "quick"`) and follows the selector while it is untouched, a file keeps its own. Check shows the
  plan (what is stored, what will run, what is invalid and why) without starting a worker; Start
  sweep queues what the plan leaves to run in the app's run queue, so each run has its progress
  line and Cancel button there, and an interrupted sweep resumes from the store like the CLI's.
- `SensitivityPanel`: a method with a per-layer quantizer and its parameters (the method's own
  form); Analyse runs the analysis in a worker and shows the most sensitive layers; the heatmap
  is the "layer sensitivity" plot of the comparisons (the app's one plotly widget).
- `RecommendPanel`: the budget (perplexity increase, weight size, decode speed); Search walks the
  ladder, measured with the app's protocol (`quick` by default), in a background thread, one line
  per run, and Stop ends it before its next run. It shows the recommendation, how it compares
  with the best 8-bit run, and the code to reproduce it.

Every handler is a plain method tests call from Python; errors show in the panel, never raise
into the kernel. Kernel-side: ipywidgets, pandas; no torch.
"""
from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any, Callable

import ipywidgets as W

from .. import protocols, registry, stages
from ..errors import WorkbenchError
from ..result import RunResult, label
from .form import ParamForm

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"  # the checkout's example sweep files
RED = "color:#b00020"


def example_sweep(model: str, protocol: str = protocols.APP_DEFAULT) -> str:
    """A small data-free sweep over three backends for `model`, measured with `protocol`, to start from."""
    return f'''name = "ui sweep"
models = ["{model}"]
protocol = "{protocol}"  # quick, standard or full: how every run is measured

[bench]  # single fields on top of the protocol's: accuracy and memory only
latency = false

[[runs]]
method = "rtn"
grid = {{bits = [8, 4], group_size = [64, -1]}}

[[runs]]
method = "hqq"
grid = {{nbits = [4, 3]}}

[[runs]]
method = "ov-weight"
grid = {{bits = [8, 4]}}
'''


def _error_html(e: BaseException) -> str:
    return f"<pre style='{RED};white-space:pre-wrap'>{html.escape(str(e))}</pre>"


class SweepPanel:
    """A sweep file's text, its plan, and Run (through the app's queue)."""

    def __init__(self, session: Any, queue: Any, model: Callable[[], str | None],
                 protocol: Callable[[], str] = lambda: protocols.APP_DEFAULT):
        self.session, self.queue, self.model, self.protocol = session, queue, model, protocol
        files = sorted(SWEEPS_DIR.glob("*.toml")) if SWEEPS_DIR.is_dir() else []
        self.files = W.Dropdown(options=[("example for the chosen model", "")] + [(f.name, str(f)) for f in files],
                                value="", description="start from", style={"description_width": "initial"},
                                layout=W.Layout(width="420px"))
        self.text = W.Textarea(value=example_sweep(model() or "tiny-llama", protocol()),
                               layout=W.Layout(width="100%", height="320px"))
        self._example = self.text.value  # the example as generated: follow_protocol replaces only that
        self.check_button = W.Button(description="Check", icon="list")
        self.run_button = W.Button(description="Start sweep", icon="play", button_style="primary")
        self.retry = W.Checkbox(value=False, description="retry failed", indent=False)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="done", layout=W.Layout(width="420px"))
        self.summary = W.HTML()
        self.plan_table = W.HTML()
        self.plan: Any = None
        self.files.observe(lambda _c: self.load(), names="value")
        self.widget = W.VBox([self.files, self.text, W.HBox([self.check_button, self.run_button, self.retry]),
                              self.progress, self.summary, self.plan_table])

    def load(self) -> None:
        """Put the chosen file (or the example for the current model) in the text box."""
        path = self.files.value
        self.text.value = Path(path).read_text(encoding="utf-8") if path else \
            example_sweep(self.model() or "tiny-llama", self.protocol())
        self._example = None if path else self.text.value
        self.plan = None
        self.summary.value = self.plan_table.value = ""

    def follow_protocol(self) -> None:
        """The app's protocol changed: the example follows it while it is untouched (a file, or
        text you edited, keeps its own `protocol` key)."""
        if self._example is not None and self.text.value == self._example:
            self.load()

    def check(self) -> Any:
        """Parse and plan the text (no worker starts): the summary and one line per configuration."""
        from .. import sweep

        try:
            self.plan = sweep.plan(self.session, sweep.parse_sweep(self.text.value), retry_failed=self.retry.value)
        except WorkbenchError as e:
            self.plan = None
            self.summary.value, self.plan_table.value = _error_html(e), ""
            return None
        self.summary.value = html.escape(self.plan.summary())
        self.update()
        return self.plan

    def run(self) -> list[Any]:
        """Queue every configuration the plan leaves to run; the queue items (empty when nothing to run)."""
        the_plan = self.check()
        if the_plan is None:
            return []
        items = [self.queue.add(spec) for spec in the_plan.todo]
        if not items:
            self.summary.value += "<br><i>nothing to run: every configuration is stored</i>"
        return items

    def update(self, _result: RunResult | None = None) -> None:
        """Re-read the store: how many of the plan's configurations are done, and each one's state."""
        p = self.plan
        if p is None:
            return
        rows, done = [], 0
        for spec in p.specs:
            latest = self.session.store.latest(spec.key)
            state = "to run" if latest is None else latest.status.value
            done += latest is not None
            metrics = latest.metrics if latest is not None else {}
            ppl, size = metrics.get("perplexity"), metrics.get("weights_bytes")
            rows.append(f"<tr><td>{html.escape(spec.model.id)}</td><td>{html.escape(label(spec.method, spec.params))}"
                        f"</td><td>{html.escape(state)}</td><td>{'' if size is None else f'{size / 2**20:.1f}'}</td>"
                        f"<td>{'' if ppl is None else f'{ppl:.3f}'}</td></tr>")
        for spec, problems in p.invalid:
            rows.append(f"<tr><td>{html.escape(spec.model.id)}</td><td>{html.escape(label(spec.method, spec.params))}"
                        f"</td><td style='{RED}'>invalid: {html.escape('; '.join(problems))}</td><td></td><td></td></tr>")
        for spec, reason in p.unavailable:
            rows.append(f"<tr><td>{html.escape(spec.model.id)}</td><td>{html.escape(label(spec.method, spec.params))}"
                        f"</td><td>unavailable: {html.escape(reason)}</td><td></td><td></td></tr>")
        self.progress.max, self.progress.value = max(1, len(p.specs)), done
        self.progress.description = f"{done}/{len(p.specs)}"
        self.plan_table.value = ("<table class='wb-sweep'><tr><th>model</th><th>configuration</th><th>state</th>"
                                 "<th>weights (MB)</th><th>perplexity</th></tr>" + "".join(rows) + "</table>")


class SensitivityPanel:
    """Layer sensitivity of the chosen model for a method with a per-layer quantizer."""

    def __init__(self, session: Any, model: Callable[[], str | None], on_done: Callable[[RunResult], None]):
        from ..sensitivity import supported_methods

        self.session, self.model, self.on_done = session, model, on_done
        self.method = W.Dropdown(options=supported_methods(), description="quantizer", layout=W.Layout(width="300px"))
        self.form_box = W.VBox()
        self.form: ParamForm | None = None
        self.button = W.Button(description="Analyse", icon="th", button_style="primary")
        self.status = W.HTML()
        self.top = W.HTML()
        self.result: RunResult | None = None
        self._thread: threading.Thread | None = None
        self.method.observe(lambda _c: self._method_changed(), names="value")
        self._method_changed()
        self.widget = W.VBox([W.HTML("Each layer the method would quantize, quantized alone: its relative output "
                                     "error on calibration inputs and the perplexity change. The heatmap is the "
                                     "<b>layer sensitivity</b> plot under Comparisons."),
                              self.method, self.form_box, W.HBox([self.button, self.status]), self.top])

    def _method_changed(self) -> None:
        self.form = ParamForm(registry.get(self.method.value).cls.schema)
        self.form_box.children = [self.form.widget]

    def analyse(self, wait: bool = False) -> None:
        """Start the analysis in a background thread (`wait`: return when it is done)."""
        if self._thread is not None and self._thread.is_alive():
            return
        model, method = self.model(), self.method.value
        params = self.form.raw_values() if self.form is not None else {}
        self.button.disabled = True
        self.status.value = f"analysing {html.escape(str(model))} with {html.escape(method)}..."
        self._thread = threading.Thread(target=self._analyse, args=(model, method, params), daemon=True,
                                        name="workbench-sensitivity")
        self._thread.start()
        if wait:
            self._thread.join()

    def _analyse(self, model: str, method: str, params: dict[str, Any]) -> None:
        def progress(stage: str, fraction: float | None, message: str) -> None:
            pct = stages.percent(stage, fraction)
            self.status.value = html.escape(f"{stage} {'' if pct is None else f'{pct}% '}{message}"[:120])

        try:
            result = self.session.sensitivity(model, method, params, progress=progress)
            self.result = result
            if not result.ok:
                self.status.value = f"<span style='{RED}'>{html.escape(result.status.value)}: " \
                                    f"{html.escape((result.error or '').strip()[-400:])}</span>"
                return
            self.show(result)
            self.on_done(result)
        except Exception as e:  # noqa: BLE001 - bad input or a store error: shown, never raised
            self.status.value = _error_html(e)
        finally:
            self.button.disabled = False

    def show(self, result: RunResult, rows: int = 12) -> None:
        from ..sensitivity import sensitivity_frame

        df = sensitivity_frame(result)
        ppl = result.metrics.get("perplexity")
        self.status.value = html.escape(f"{len(df)} layers; fp32 perplexity {ppl:.4f}" if ppl else f"{len(df)} layers") \
            + (" (stored)" if result.cached else "")
        shown = df.head(rows)[["layer", "params", "rel_output_error", "perplexity", "ppl_delta"]]
        self.top.value = f"<b>the {len(shown)} most sensitive layers</b>" + \
            shown.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")


class RecommendPanel:
    """The budget search for the chosen model."""

    def __init__(self, session: Any, model: Callable[[], str | None], on_done: Callable[[], None],
                 protocol: Callable[[], str] = lambda: protocols.APP_DEFAULT):
        self.session, self.model, self.on_done, self.protocol = session, model, on_done, protocol
        style = {"description_width": "initial"}
        self.ppl = W.Text(value="10%", description="max perplexity increase", style=style)
        self.size = W.Text(value="", description="max weights (e.g. 120MB)", style=style)
        self.speed = W.Text(value="", description="min decode tok/s", style=style)
        self.methods = W.Text(value="", description="only these backends", placeholder="e.g. ov-weight,gptq (empty: all)",
                              style=style)
        self.max_runs = W.BoundedIntText(value=40, min=1, max=500, description="max runs", style=style,
                                         layout=W.Layout(width="200px"))
        self.button = W.Button(description="Search", icon="search", button_style="primary")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.log = W.HTML()
        self.outcome = W.HTML()
        self.code = W.Textarea(layout=W.Layout(width="100%", height="160px"), disabled=True)
        self.recommendation: Any = None
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stop_button.on_click(lambda _b: self._stop.set())
        self.widget = W.VBox([W.HTML("Walks down 8, 6, 5, 4, 3 bits across backends (fast data-free runs first; "
                                     "mixed precision and data-aware methods only on a near miss) and recommends the "
                                     "fewest weight bytes within the budget, every run measured with the protocol "
                                     "chosen above the Run button. Runs are stored and reused."),
                              W.HBox([self.ppl, self.size]), W.HBox([self.speed, self.max_runs]), self.methods,
                              W.HBox([self.button, self.stop_button]), self.log, self.outcome, self.code])

    def budget(self) -> Any:
        """The budget from the fields (raises InvalidParams naming the field)."""
        from ..recommend import Budget, parse_bytes, parse_fraction

        speed = self.speed.value.strip()
        if speed:
            try:
                min_speed: float | None = float(speed)
            except ValueError:
                from ..errors import InvalidParams, ParamError

                raise InvalidParams([ParamError("min_decode_tok_s", f"got {speed!r}; allowed: a number of tokens "
                                                                    "per second, e.g. 20")]) from None
        else:
            min_speed = None
        return Budget(max_ppl_increase=parse_fraction(self.ppl.value) if self.ppl.value.strip() else None,
                      max_bytes=parse_bytes(self.size.value) if self.size.value.strip() else None,
                      min_decode_tok_s=min_speed)

    def search(self, wait: bool = False) -> None:
        """Start the search in a background thread (`wait`: return when it is done)."""
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            budget = self.budget()
        except WorkbenchError as e:
            self.outcome.value = _error_html(e)
            return
        self._stop.clear()
        self._lines = []
        self.log.value = self.outcome.value = self.code.value = ""
        self.button.disabled, self.stop_button.disabled = True, False
        methods = [m.strip() for m in self.methods.value.split(",") if m.strip()] or None
        self._thread = threading.Thread(target=self._search, args=(self.model(), budget, methods, self.protocol()),
                                        daemon=True, name="workbench-recommend")
        self._thread.start()
        if wait:
            self._thread.join()

    def stop(self) -> None:
        self._stop.set()

    def _say(self, line: str) -> None:
        self._lines.append(line)
        self.log.value = "<pre style='white-space:pre-wrap;font-size:90%'>" + html.escape("\n".join(self._lines)) + \
            "</pre>"

    def _search(self, model: str, budget: Any, methods: list[str] | None, protocol: str | None = None) -> None:
        from ..recommend import recommend

        try:
            rec = recommend(self.session, model, budget, max_runs=self.max_runs.value, methods=methods, log=self._say,
                            stop=self._stop, protocol=protocol)
            self.recommendation = rec
            self.outcome.value = outcome_html(rec)
            self.code.value = rec.code()
        except Exception as e:  # noqa: BLE001 - shown in the panel, never raised into the kernel
            self.outcome.value = _error_html(e)
        finally:
            self.button.disabled, self.stop_button.disabled = False, True
            try:
                self.on_done()
            except Exception:  # noqa: BLE001 - a failing refresh must not hide the outcome
                pass


def outcome_html(rec: Any) -> str:
    """What the search found, in a few lines: runs, stop reason, the recommendation, the comparison."""
    from ..recommend import mb

    esc = html.escape
    measured = f" Every run measured with the {rec.protocol} protocol." if getattr(rec, "protocol", None) else ""
    parts = [esc(f"{rec.runs} runs in {rec.seconds:.0f} s out of the {rec.space} configurations the search could "
                 f"have run; {rec.stopped}.{measured}")]
    base = rec.baseline.metrics["perplexity"]
    closest = rec.best is None or rec.best is rec.best_int8
    if rec.best is None:
        parts.append(f"<b>nothing explored meets the budget</b> ({esc(rec.budget.describe())}); the closest:")
    else:
        r = rec.best.result
        parts.append(f"<b>recommended: {esc(label(r.method, r.params))}</b> ({esc(rec.best.stage)}, "
                     f"{rec.best.bits}-bit): {mb(r.metrics['weights_bytes'])} MB, perplexity "
                     f"{r.metrics['perplexity']:.3f} against {base:.3f} in fp32 ({r.metrics['perplexity'] / base - 1:+.1%})")
        eight = rec.best_int8
        if eight is not None and eight is not rec.best:
            e = eight.result.metrics["weights_bytes"]
            parts.append(f"{1 - r.metrics['weights_bytes'] / e:.0%} fewer weight bytes than the best 8-bit run within "
                         f"the budget ({esc(label(eight.result.method, eight.result.params))}, {mb(e)} MB)")
        elif rec.closest():
            parts.append("no run below 8 bits met the budget with fewer bytes; the closest smaller ones:")
    if closest:
        parts += [f"&nbsp;&nbsp;{esc(label(s.result.method, s.result.params))} "
                  f"({mb(s.result.metrics.get('weights_bytes'))} MB): {esc('; '.join(s.misses))}" for s in rec.closest()]
    return "<br>".join(parts)


__all__ = ["RecommendPanel", "SensitivityPanel", "SweepPanel", "example_sweep", "outcome_html"]

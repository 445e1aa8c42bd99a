"""The workbench app: pick a model and a method, set its parameters, run, compare.

    from workbench.ui import App
    App().widget            # in a notebook (Voila serves the same)

Under the results, two buttons save the report (HTML, opens offline) and the runs (CSV)
(`download.py`); under the plots, three tabs explore many configurations at once (`explore.py`):
a sweep file, layer sensitivity, and the budget search.

Every handler is a plain method that tests call from Python: `select(model=..., method=...,
protocol=...)`, `set_params({...})`, `run()`. A bad value shows a message under its field and
disables Run with the reason; nothing a control does raises into the notebook (`_guarded`).

The protocol selector under the form says how runs are measured (`workbench.protocols`): `quick`
by default here, so a click answers in seconds (the command line's default is `standard`).

Kernel-side: ipywidgets, pandas, plotly; no torch. Runs go through `Session.submit` in the
queue's thread, one worker process each.
"""
from __future__ import annotations

import html
import os
import threading
import traceback
from typing import Any, Callable, Mapping

import ipywidgets as W

from .. import protocols, registry
from ..result import RunResult
from ..session import Session
from ..spec import BenchSpec, DataSpec
from .check import Verdict, check
from .download import DownloadPanel
from .form import ParamForm
from .pickers import CUSTOM, MethodPicker, ModelPicker
from .queue import QueueItem, RunQueue
from .explore import RecommendPanel, SensitivityPanel, SweepPanel
from .views import PlotsView, ResultsView, Throttle

# While runs report measurements the results table follows every stage; the plots (six plotly
# figures rebuilt and sent to the browser) at most this often.
PLOTS_REFRESH_S = 3.0


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook, Voila)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class App:
    """The whole workbench as one widget tree (`App().widget`)."""

    def __init__(self, session: Session | None = None, bench: BenchSpec | Mapping[str, Any] | None = None,
                 start_method: str | None = None, protocol: str = protocols.APP_DEFAULT,
                 data: DataSpec | Mapping[str, Any] | None = None, prepare: bool | None = None):
        """`protocol`: the selector's first value (an unknown name raises `UnknownProtocol`).
        `prepare`: start the chosen method's prepared process (`Session.prepare`) as soon as a
        method is picked, so the first click is forked warm; None: only inside a Jupyter kernel
        (Voila, a notebook), where a person will click, not in a script or a test.
        `bench` / `data`: single fields changed on top of the selected protocol (a dict, e.g.
        `data={"source": "file:my.txt"}`), or complete settings used in its place (tests, classes)."""
        self.session = session or Session(progress=False)
        self.prepare = _in_kernel() if prepare is None else prepare
        self.bench = bench
        self.data = data
        self.protocol = W.Dropdown(options=list(protocols.names()), value=protocols.get(protocol).name,
                                   description="protocol", layout=W.Layout(width="220px"))
        self.protocol_note = W.HTML()
        self.errors = W.HTML()  # a handler that failed says so here instead of raising
        self.models = ModelPicker(on_change=self._guarded(self.revalidate), session=self.session)
        self.methods = MethodPicker(on_change=self._guarded(self._method_changed))
        if start_method is not None:
            self.methods.dropdown.value = start_method
        self.form_box = W.VBox()
        self.form: ParamForm | None = None
        self.run_button = W.Button(description="Run", icon="play", button_style="primary")
        self.reason = W.HTML()
        self.code = W.Textarea(layout=W.Layout(width="100%", height="180px"), disabled=True)
        self.code_box = W.Accordion(children=[self.code], titles=("show code: the plain backend code",))
        self.results = ResultsView(self.session)
        self.download = DownloadPanel(self.session)
        self.plots = PlotsView(self.session)
        # A running run's measurements fill the table and the plots as they arrive (views.Throttle).
        self._table_refresh = Throttle(self._guarded(self.results.refresh), 0.0, "workbench-table")
        self._plots_refresh = Throttle(self._guarded(self.plots.refresh), PLOTS_REFRESH_S, "workbench-plots")
        self.queue = RunQueue(self.session, on_done=self._guarded(self._finished), on_partial=self._measured)
        self.verdict = Verdict()
        self.sweeps = SweepPanel(self.session, self.queue, model=lambda: self.models.value,
                                 protocol=lambda: self.protocol.value)
        self.sensitivity = SensitivityPanel(self.session, model=lambda: self.models.value,
                                            on_done=self._guarded(self._sensitivity_done))
        self.recommend = RecommendPanel(self.session, model=lambda: self.models.value,
                                        on_done=self._guarded(self.refresh), protocol=lambda: self.protocol.value)
        self.sweeps.check_button.on_click(self._guarded(lambda _b: self.sweeps.check()))
        self.sweeps.run_button.on_click(self._guarded(lambda _b: self.sweeps.run()))
        self.sensitivity.button.on_click(self._guarded(lambda _b: self.sensitivity.analyse()))
        self.recommend.button.on_click(self._guarded(lambda _b: self.recommend.search()))
        self.explore = W.Tab(children=[self.sweeps.widget, self.sensitivity.widget, self.recommend.widget],
                             titles=("Sweep", "Layer sensitivity", "Budget search"))
        self.run_button.on_click(self._guarded(lambda _b: self.run()))
        self.protocol.observe(self._guarded(self._protocol_changed), names="value")
        self._show_protocol()
        self._method_changed()
        left = W.VBox([W.HTML("<h3>Model</h3>"), self.models.widget, W.HTML("<h3>Method</h3>"),
                       self.methods.widget, self.form_box, W.HBox([self.protocol, self.protocol_note]),
                       W.HBox([self.run_button, self.reason]),
                       self.code_box], layout=W.Layout(width="52%"))
        right = W.VBox([self.queue.widget], layout=W.Layout(width="46%"))
        self.widget = W.VBox([W.HBox([left, right]), self.errors, W.HTML("<h3>Results</h3>"),
                              self.results.widget, self.download.widget, W.HTML("<h3>Comparisons</h3>"), self.plots.widget,
                              W.HTML("<h3>Many configurations: sweeps, layer sensitivity, budget search</h3>"),
                              self.explore])
        if os.environ.get("VOILA_PREHEAT") == "True":
            threading.Thread(target=self._refresh_when_opened, name="workbench-preheat", daemon=True).start()

    # --- handlers (plain methods: tests drive them) -------------------------------------
    def select(self, model: str | None = None, method: str | None = None, protocol: str | None = None) -> None:
        """Pick a model (catalog name, or anything else into the free field), a method and/or a
        measurement protocol (`quick`, `standard`, `full`; an unknown name raises `UnknownProtocol`)."""
        if protocol is not None:
            self.protocol.value = protocols.get(protocol).name
        if model is not None:
            names = [v for _, v in self.models.dropdown.options]
            if model in names and model != CUSTOM:
                self.models.dropdown.value = model
            else:
                self.models.dropdown.value = CUSTOM
                self.models.custom.value = model
        if method is not None:
            self.methods.dropdown.value = method

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Set form fields (raw values, as a user would type them); revalidates."""
        assert self.form is not None
        self.form.set_values(values)
        self.revalidate()

    def params(self) -> dict[str, Any]:
        return self.form.raw_values() if self.form is not None else {}

    def revalidate(self) -> Verdict:
        """Check the configuration: messages under fields, Run enabled or disabled with the reason."""
        self.verdict = check(self.session, self.models.value, self.methods.value, self.params(),
                             **self.spec_options())
        if self.form is not None:
            self.form.show_errors(self.verdict.field_errors)
        self.run_button.disabled = not self.verdict.can_run
        self.reason.value = "" if self.verdict.can_run else \
            f"<span style='color:#b00020'>{html.escape(self.verdict.reason)}</span>"
        self._show_code()
        return self.verdict

    def refresh(self) -> None:
        """Re-read the store into the results table and the plots."""
        self.results.refresh()
        self.plots.refresh()

    def run(self) -> QueueItem | None:
        """Queue the current configuration (None, with the reason shown, when it cannot run)."""
        if not self.revalidate().can_run:
            return None
        spec = self.session.make_spec(self.models.value, self.methods.value, self.params(), **self.spec_options())
        return self.queue.add(spec)

    def spec_options(self) -> dict[str, Any]:
        """How the app's runs are measured: the selected protocol (and `bench` / `data` given to the app)."""
        return {"protocol": self.protocol.value, "bench": self.bench, "data": self.data}

    # --- internals ------------------------------------------------------------------------
    def _protocol_changed(self, _change: Any = None) -> None:
        self._show_protocol()
        self.sweeps.follow_protocol()
        self.revalidate()  # the protocol's data sizes are validated too (a text too short for `full`)

    def _show_protocol(self) -> None:
        """What the selected protocol measures, or how the app's settings differ from it."""
        data, bench = protocols.specs(self.protocol.value, self.data, self.bench)
        name = protocols.name_of(data, bench)
        text = protocols.get(name).description if name != protocols.CUSTOM else protocols.describe(data, bench)
        self.protocol_note.value = f"<span style='color:#57606a;font-size:90%'>{html.escape(text)}</span>"

    def _method_changed(self) -> None:
        cls = registry.get(self.methods.value).cls
        self.form = ParamForm(cls.schema, on_change=self._guarded(self.revalidate))
        self.form_box.children = [self.form.widget]
        self.revalidate()
        if self.prepare and self.verdict.can_run:
            self._prepare()

    def _prepare(self) -> None:
        """Warm the chosen method's environment now: its prepared process imports the backend
        and loads the model while the user sets parameters (`Session.prepare` returns at once)."""
        try:
            self.session.prepare(self.models.value, self.methods.value)
        except Exception:  # noqa: BLE001 - a run started cold is slower, not wrong
            pass

    def _show_code(self) -> None:
        cls = registry.get(self.methods.value).cls
        if self.verdict.field_errors:
            self.code.value = "# fix the parameters first"
            return
        try:
            # The values the form validated, normalized once here (code() takes them as they are).
            self.code.value = cls().code(self.models.value or "MODEL", cls.schema.normalize(self.params(), cls.name))
        except Exception as e:  # noqa: BLE001 - a template that cannot render says so
            self.code.value = f"# no code for this configuration: {e}"

    def _measured(self, _update: Any = None) -> None:
        """A run started or reported measurements: the table now, the plots soon (never in the
        executor's reader thread: the throttles refresh in threads of their own)."""
        self._table_refresh()
        self._plots_refresh()

    def _finished(self, result: RunResult) -> None:
        # The final rows replace the live ones: refresh now, and drop what the throttles still owe.
        self._table_refresh.cancel()
        self._plots_refresh.cancel()
        self.refresh()
        self.sweeps.update(result)

    def _sensitivity_done(self, _result: RunResult) -> None:
        self.plots.refresh()
        self.plots.choice.value = "layer sensitivity"

    def _refresh_when_opened(self) -> None:
        """Voila fills its pool of preheated kernels by running the notebook before anyone asks,
        possibly long before a visitor opens the page: refresh from the store when one does, or
        the table and the plots would show the runs stored by then, not the ones stored since."""
        def wait_and_refresh() -> None:
            from voila.utils import wait_for_request  # blocks until a page takes this kernel

            wait_for_request()
            self.refresh()
        self._guarded(wait_and_refresh)()

    def _guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as a widget callback: an exception is shown in the app, never raised into the kernel."""
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                self.errors.value = ""
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - see the docstring
                tail = "".join(traceback.format_exception(e)[-3:])
                self.errors.value = (f"<pre style='color:#b00020;white-space:pre-wrap'>{html.escape(type(e).__name__)}"
                                     f": {html.escape(str(e))}\n{html.escape(tail)}</pre>")
                return None
        return call


__all__ = ["App"]

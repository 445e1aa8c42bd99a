"""The run queue: runs one after the other in a background thread, each with a progress bar,
its current stage, the numbers measured so far (they arrive stage by stage: accuracy first,
then the latency tables, then the reload check), a Cancel button and, when it fails, its stored
error one click away.

The thread keeps the notebook responsive; the widgets are updated from it (ipywidgets sends
value changes from any thread). `wait()` blocks until the queue is empty (tests, scripts).

Kernel-side: ipywidgets, no torch.
"""
from __future__ import annotations

import html
import queue
import threading
import time
from typing import Any, Callable

import ipywidgets as W

from .. import stages
from ..exec.base import PartialUpdate
from ..result import RunResult, RunStatus, label
from ..spec import RunSpec

STATUS_COLORS = {"ok": "#1b7f3b", "flagged": "#b36b00", "reload_mismatch": "#b36b00", "queued": "#555",
                 "running": "#0b57d0", "cancelled": "#555"}


class QueueItem:
    """One queued run and its widgets."""

    def __init__(self, spec: RunSpec, on_cancel: Callable[["QueueItem"], None]):
        self.spec = spec
        self.status = "queued"
        self.result: RunResult | None = None
        self.cancel_requested = False
        self.name = W.HTML(f"<b>{html.escape(spec.model.id)}</b> {html.escape(label(spec.method, spec.params))}",
                           layout=W.Layout(flex="1 1 auto", min_width="0"))
        self.bar = W.IntProgress(value=0, min=0, max=100, layout=W.Layout(width="160px", flex="0 0 auto"))
        self.stage = W.HTML(self._status_html(), layout=W.Layout(flex="1 1 auto", min_width="0"))
        self.cancel = W.Button(description="Cancel", icon="stop", layout=W.Layout(width="90px"))
        self.show_error = W.ToggleButton(description="error", icon="exclamation-triangle",
                                         layout=W.Layout(width="90px", display="none"))
        self.error = W.HTML(layout=W.Layout(display="none"))
        # The numbers measured so far, filled in as the worker reports each stage.
        self.measured = W.HTML(layout=W.Layout(min_width="0"))
        self.cancel.on_click(lambda _b: on_cancel(self))
        self.show_error.observe(self._toggle_error, names="value")
        # Two lines (what runs, with its buttons; then how far it is) so that a row fits the queue's
        # half of the app: on one line the buttons were pushed out of view.
        self.widget = W.VBox([W.HBox([self.name, self.cancel, self.show_error]), W.HBox([self.bar, self.stage]),
                              self.measured, self.error],
                             layout=W.Layout(border_bottom="1px solid #eee", padding="2px 0"))

    def progress(self, stage: str, fraction: float | None, message: str) -> None:
        pct = stages.percent(stage, fraction)
        if pct is not None and pct > self.bar.value:
            self.bar.value = pct
        self.stage.value = f"<span style='color:#0b57d0'>{html.escape(stage)}</span> {html.escape(message[:60])}"

    def show_measurements(self, result: RunResult) -> None:
        """Show what `result` has measured (a running run's partial result, or the final one)."""
        text = measurement_summary(result)
        self.measured.value = f"<span style='font-size:90%;color:#1f2933'>{html.escape(text)}</span>" if text else ""

    def partial(self, update: PartialUpdate) -> None:
        """A stage's measurements arrived: show everything measured so far."""
        self.show_measurements(update.result)

    def set_status(self, status: str) -> None:
        self.status = status
        self.stage.value = self._status_html()

    def finish(self, result: RunResult) -> None:
        self.result = result
        self.status = result.status.value
        self.cancel.disabled = True
        if result.ok:
            self.bar.value = 100
            self.bar.bar_style = "success" if result.status is RunStatus.OK else "warning"
        else:
            self.bar.bar_style = "danger"
        cached = " (stored result)" if result.cached else ""
        self.stage.value = self._status_html() + cached
        self.show_measurements(result)
        if result.error:
            self.error.value = ("<pre style='white-space:pre-wrap;max-height:240px;overflow:auto'>"
                                f"{html.escape(result.error)}</pre>")
            self.show_error.layout.display = None

    def _status_html(self) -> str:
        color = STATUS_COLORS.get(self.status, "#b00020")
        return f"<span style='color:{color}'>{html.escape(self.status)}</span>"

    def _toggle_error(self, change: Any) -> None:
        self.error.layout.display = None if change["new"] else "none"


class RunQueue:
    """Runs specs through `session.submit` in order, in one background thread."""

    def __init__(self, session: Any, on_done: Callable[[RunResult], None] | None = None, force: bool = False,
                 on_partial: Callable[[PartialUpdate], None] | None = None):
        """`on_done(result)` after each run; `on_partial(update)` each time a running run reports
        measurements (from the executor's reader thread: keep it quick, or hand it on)."""
        self.session = session
        self.on_done = on_done
        self.on_partial = on_partial
        self.force = force
        self.items: list[QueueItem] = []
        self.list = W.VBox([])
        self.widget = W.VBox([W.HTML("<b>Runs</b>"), self.list])
        self._todo: queue.Queue[QueueItem] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._running: QueueItem | None = None
        self._lock = threading.Lock()  # the thread exits only when add() cannot be handing it an item

    def add(self, spec: RunSpec) -> QueueItem:
        item = QueueItem(spec, self.cancel)
        self.items.append(item)
        self.list.children = (item.widget, *self.list.children)  # newest first
        with self._lock:
            self._idle.clear()
            self._todo.put(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="workbench-queue", daemon=True)
                self._thread.start()
        return item

    def cancel(self, item: QueueItem) -> None:
        """A queued run is dropped; a running one has its worker killed (stored as cancelled)."""
        item.cancel_requested = True
        if item is self._running:
            killer = getattr(self.session.executor, "cancel", None)
            if killer is not None:
                killer(item.spec.key)
        elif item.status == "queued":
            item.set_status("cancelled")
            item.cancel.disabled = True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued run has finished; False on timeout."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                try:
                    item = self._todo.get_nowait()
                except queue.Empty:
                    self._thread = None
                    self._idle.set()
                    return
            if item.cancel_requested:
                continue
            self._running = item
            item.set_status("running")
            t0 = time.perf_counter()
            try:
                result = self.session.submit(item.spec, force=self.force, progress=item.progress,
                                             on_partial=lambda u, it=item: self._measured(it, u))
            except Exception as e:  # noqa: BLE001 - the queue must survive anything; the error is shown
                result = RunResult.failure(item.spec.to_dict(), item.spec.key, RunStatus.CRASHED,
                                           f"{type(e).__name__}: {e} (after {time.perf_counter() - t0:.1f} s)")
            self._running = None
            item.finish(result)
            if self.on_done is not None:
                try:
                    self.on_done(result)
                except Exception as e:  # noqa: BLE001 - a failing refresh must not stop the queue
                    item.error.value += f"<pre>refresh failed: {html.escape(repr(e))}</pre>"


    def _measured(self, item: QueueItem, update: PartialUpdate) -> None:
        item.partial(update)
        if self.on_partial is not None:
            self.on_partial(update)


# What the queue shows of a run, in the order the protocol measures it: (metric, label, scale, format).
_SHOWN = (("weights_bytes", "weights", 2**20, "{:.1f} MB"), ("perplexity", "perplexity", 1, "{:.3f}"),
          ("kl_div", "KL", 1, "{:.4f}"), ("top1_agreement", "top-1", 0.01, "{:.1f} %"),
          ("embedding_cosine", "cosine", 1, "{:.5f}"), ("image_psnr_db", "PSNR", 1, "{:.2f} dB"),
          ("forward_ms", "forward", 1, "{:.1f} ms"), ("decode_tok_s", "decode", 1, "{:.1f} tok/s"),
          ("image_s", "image", 1, "{:.2f} s"), ("peak_rss_bytes", "peak RSS", 2**20, "{:.0f} MB"))
_RELOADED = ("reload_perplexity", "reload_embedding_cosine", "reload_image_psnr_db", "reload_top1_agreement")


def measurement_summary(result: RunResult) -> str:
    """One line of what a run has measured so far: "weights 0.3 MB · perplexity 1234.567 · ...",
    ending with the reload check once it ran ("" when nothing is measured yet)."""
    parts = []
    for name, text, scale, fmt in _SHOWN:
        value = result.metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{text} {fmt.format(value / scale)}")
    if any(result.metrics.get(name) is not None for name in _RELOADED):
        mismatch = result.status is RunStatus.RELOAD_MISMATCH
        # Passed only once the worker said so: until then (or when the run died) it was measured.
        parts.append("reload check: mismatch" if mismatch else "reload check: passed" if result.ok
                     else "reload check: measured")
    return " · ".join(parts)


__all__ = ["QueueItem", "RunQueue", "measurement_summary"]

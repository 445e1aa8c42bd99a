"""Take results home: buttons that save the self-contained HTML report and the runs as CSV.

A Binder session is culled when idle and its store goes with the container, so the app offers
the visitor's runs as files. A download is a widget message, not a URL: the button's script asks
the kernel, the kernel builds the file and sends it back as a binary buffer, and the browser
saves it from a Blob. No server extension of ours, no route to the kernel's files, so it works the
same in JupyterLab, a classic notebook and Voila. (A `data:` link in an HTML widget would not do:
the report embeds plotly.js, about 4.6 MB once base64-encoded, and chromium ignores URLs over 2 MB.)
"""
from __future__ import annotations

import datetime as _dt
import html
from typing import Any, Callable

import anywidget
import ipywidgets as W
import traitlets

# What a button saves: (file name, content, MIME type), built when it is clicked.
Make = Callable[[], "tuple[str, bytes, str]"]


class DownloadButton(anywidget.AnyWidget):
    """A button whose click saves the file `make()` returns at that moment (built in the kernel).

    `status` says what happened: the file saved and its size, or why nothing was (the error of
    `make`, which never reaches the notebook as an exception)."""

    _esm = """
    function render({ model, el }) {
      const button = document.createElement("button");
      button.className = "jupyter-widgets jupyter-button widget-button";
      button.title = model.get("tooltip");
      const label = () => { button.textContent = model.get("description"); };
      label();
      model.on("change:description", label);
      button.addEventListener("click", () => {
        button.disabled = true;
        model.send({ event: "click" });
      });
      model.on("msg:custom", (msg, buffers) => {
        button.disabled = false;
        if (msg.event !== "file" || !buffers || !buffers.length) return;
        const blob = new Blob([buffers[0]], { type: msg.mime });
        const url = URL.createObjectURL(blob);
        const a = document.createElement("a");
        a.href = url;
        a.download = msg.filename;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      });
      el.appendChild(button);
    }
    export default { render };
    """
    description = traitlets.Unicode("Download").tag(sync=True)
    tooltip = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("")

    def __init__(self, description: str, make: Make, tooltip: str = "", **kwargs: Any):
        super().__init__(description=description, tooltip=tooltip, **kwargs)
        self.make = make
        self.on_msg(self._clicked)

    def _clicked(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("event") != "click":
            return
        self.save()

    def save(self) -> tuple[str, bytes, str] | None:
        """Build the file and send it to the page (what a click does); the file, or None on error."""
        try:
            filename, data, mime = self.make()
        except Exception as e:  # noqa: BLE001 - a failed download is a message, never a kernel traceback
            self.status = f"{self.description}: failed: {type(e).__name__}: {e}"
            self.send({"event": "failed"})
            return None
        self.send({"event": "file", "filename": filename, "mime": mime}, buffers=[data])
        self.status = f"{filename} ({_size(len(data))})"
        return filename, data, mime


class DownloadPanel:
    """"Download report (HTML)" and "Download table (CSV)" for the runs a session stored (the latest
    per configuration, as the results table shows them), with a line that says what was saved."""

    def __init__(self, session: Any):
        self.session = session
        self.report = DownloadButton("Download report (HTML)", self.report_file,
                                     tooltip="every stored run: tables and figures in one file that opens offline")
        self.csv = DownloadButton("Download table (CSV)", self.csv_file,
                                  tooltip="one row per stored run, the columns of `workbench results --format csv`")
        self.note = W.HTML()
        for b in (self.report, self.csv):
            b.observe(lambda change: setattr(self.note, "value", f"<span class='wb-download'>"
                                             f"{html.escape(change['new'])}</span>"), names="status")
        self.widget = W.HBox([self.report, self.csv, self.note])

    def report_file(self) -> tuple[str, bytes, str]:
        from ..report import build_report

        return f"workbench-report-{_stamp()}.html", build_report(self._results()).encode("utf-8"), "text/html"

    def csv_file(self) -> tuple[str, bytes, str]:
        from ..report import results_table

        return (f"workbench-runs-{_stamp()}.csv", results_table(self._results()).to_csv(index=False).encode("utf-8"),
                "text/csv")

    def _results(self) -> list:
        results = self.session.results()
        if not results:
            raise ValueError("no stored runs yet: run something first")
        return results


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"

"""The app as users get it from `make app`: Voila serving notebooks/00-quickstart.ipynb, driven
in chromium like a person would (dropdowns, the keyboard on a slider, the Run button), with a real
kernel and a real worker process in the torch environment. And as Binder serves it: the same page
through Voila's server extension at the README's urlpath, in the environment binder/start makes.

The README's pictures of the app and the report are taken by test_screenshots.py.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from ..conftest import requires_torch_env
from .conftest import ROOT, free_port, isolated_env, jupyter, serve

NOTEBOOK = ROOT / "notebooks" / "00-quickstart.ipynb"
RUN_TIMEOUT_MS = 240_000  # a full measurement of tiny-llama: ~35 s alone, minutes on a loaded machine


@pytest.fixture
def voila(tmp_path):
    port = free_port()
    # JUPYTER_PATH finds the `workbench` template, as in `make app`.
    env = isolated_env(tmp_path, JUPYTER_PATH=str(ROOT / "share" / "jupyter"))
    cmd = [*jupyter("voila"), str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--preheat_kernel=True", "--template=workbench"]
    base = f"http://127.0.0.1:{port}"
    with serve(cmd, env, f"{base}/voila/static/favicon.ico", tmp_path / "voila.log"):
        yield base


def _option(select, starts_with: str) -> str:
    """The value of the option whose text starts with `starts_with` (labels add kind, backend...).
    ipywidgets writes the spaces of option texts as no-break spaces: match any space."""
    words = r"\s+".join(re.escape(w) for w in starts_with.split())
    return select.locator("option", has_text=re.compile(rf"^\s*{words}\b")).get_attribute("value")


def _point(page):
    # Plotly draws each scatter marker as path.point; one shows only once the run reached the plot.
    return page.locator(".js-plotly-plot .scatterlayer path.point").first


@requires_torch_env
def test_pick_set_run_and_see_the_result_in_the_table_and_the_plot(new_page, voila, tmp_path):
    from playwright.sync_api import expect

    page, watch = new_page(voila)
    page.goto(voila + "/", timeout=120_000)
    run = page.get_by_role("button", name="Run")
    expect(run).to_be_visible(timeout=120_000)
    expect(page.get_by_text("0 of 0 stored runs")).to_be_visible()

    model = page.get_by_label("model", exact=True)
    model.select_option(_option(model, "tiny-llama"))
    method = page.get_by_label("method", exact=True)
    method.select_option(_option(method, "workbench · rtn"))
    # the layer-sensitivity tab has an rtn form of its own, hidden behind the Sweep tab: the visible one
    bits = page.locator(".widget-slider:visible", has=page.locator("label", has_text=re.compile(r"^bits$")))
    handle = bits.locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    expect(bits.locator(".widget-readout")).to_have_text("6")  # rtn's default is 4
    # The kernel writes "show code" from the values it has. Wait for bits=6 there before clicking:
    # ipywidgets holds a widget's next update back until the kernel answered the previous one,
    # but sends a click at once, so Run could overtake the second key press (seen: a bits=5 run).
    # the first text area is the "show code" one (the sweep tab's TOML and the search's code follow)
    expect(page.locator(".widget-textarea textarea").first).to_have_value(re.compile(r"\bbits=6\b"), timeout=60_000)
    expect(run).to_be_enabled()
    run.click()

    # The row shows while the run goes (status running, cells filling in); wait for its result.
    row = _finished_row(page)
    try:
        expect(row).to_be_visible(timeout=RUN_TIMEOUT_MS)
    except AssertionError as e:  # say where the run got to, not only that the row is missing
        raise AssertionError(f"{e}\n--- page text ---\n{page.inner_text('body')[-2500:]}\n--- voila log ---\n"
                             f"{(tmp_path / 'voila.log').read_text()[-2500:]}") from None
    cells = row.locator("td").all_inner_texts()
    # The label is built in the kernel from the run's spec: bits=6 proves the keyboard reached it.
    assert cells[0].startswith("rtn bits=6 ") and "tiny-llama" in cells and "ok" in cells, cells
    expect(page.get_by_text("1 of 1 stored runs")).to_be_visible()
    expect(_point(page)).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot").get_by_text(re.compile("no successful runs"))).to_have_count(0)
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring in the picture
    page.mouse.move(0, 0)

    _screenshot(page, tmp_path / "app.png")  # kept with the test's files, for a failure's post-mortem
    _take_results_home(page, new_page, tmp_path)

    # A new page is a new kernel, preheated before the run was stored: the table and the plot
    # must come back from the store all the same, and the old page's kernel must be shut down.
    first_kernel = _kernel_id(page)
    page.reload(timeout=120_000)
    assert _kernel_id(page) != first_kernel
    expect(page.get_by_text("1 of 1 stored runs")).to_be_visible(timeout=120_000)
    expect(page.locator("table.wb-results tbody tr", has_text="rtn bits=6")).to_be_visible()
    expect(_point(page)).to_be_visible(timeout=60_000)
    _assert_gone(page, f"{voila}/api/kernels/{first_kernel}")
    watch.assert_clean()


def _take_results_home(page, new_page, tmp_path) -> None:
    """The Download buttons save the report and the CSV through the browser (a widget message, a
    Blob); the report opens from the file with nothing off the machine and lists the run."""
    from playwright.sync_api import expect

    saved = {}
    for name, suffix in (("Download report (HTML)", ".html"), ("Download table (CSV)", ".csv")):
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name=name).click()
        path = tmp_path / f"downloaded{suffix}"
        download.value.save_as(path)
        assert download.value.suggested_filename.endswith(suffix), download.value.suggested_filename
        saved[suffix] = path
    expect(page.locator(".wb-download")).to_contain_text(".csv")
    csv = saved[".csv"].read_text().splitlines()
    assert len(csv) == 2 and "rtn bits=6" in csv[1], csv

    report, watch = new_page(saved[".html"].as_uri())
    report.goto(saved[".html"].as_uri())
    expect(report.locator("table", has_text="rtn bits=6").first).to_be_visible()
    expect(report.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    watch.assert_clean()


def _finished_row(page):
    """The results table's row once its status cell says ok (before that it says running)."""
    return page.locator("table.wb-results tbody tr", has=page.locator("td", has_text=re.compile(r"^\s*ok\s*$"))).first


# Records every state the results table's first row goes through, in the page, as the DOM changes:
# the test then asserts the order in which the cells filled, whatever the timing of its polling.
RECORD_ROWS = """() => {
  window.__wbRows = [];
  const snap = () => {
    const table = document.querySelector('table.wb-results');
    const row = table && table.querySelector('tbody tr');
    if (!row) return;
    const heads = [...table.querySelectorAll('thead th')].map(th => th.innerText.trim());
    const cells = [...row.querySelectorAll('td')].map(td => td.innerText.trim());
    const get = name => cells[heads.indexOf(name)] ?? null;
    const s = {status: get('status'), perplexity: get('perplexity'), decode: get('decode tok/s')};
    const last = window.__wbRows[window.__wbRows.length - 1];
    if (!last || ['status', 'perplexity', 'decode'].some(k => last[k] !== s[k])) window.__wbRows.push(s);
  };
  new MutationObserver(snap).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


@requires_torch_env
def test_a_running_row_fills_in_perplexity_first_then_latency(new_page, voila, tmp_path):
    """Click Run on tiny-llama: the results table shows the run as running with its perplexity
    while the latency cells are still empty, then the complete row (order and arrival, not times)."""
    from playwright.sync_api import expect

    page, watch = new_page(voila)
    page.goto(voila + "/", timeout=120_000)
    run = page.get_by_role("button", name="Run")
    expect(run).to_be_visible(timeout=120_000)
    model = page.get_by_label("model", exact=True)
    model.select_option(_option(model, "tiny-llama"))
    method = page.get_by_label("method", exact=True)
    method.select_option(_option(method, "workbench · rtn"))
    # "show code" follows the kernel's form: once it names tiny-llama and rtn's layer, Run runs that
    code = page.locator(".widget-textarea textarea").first
    expect(code).to_have_value(re.compile(r"tiny-llama[\s\S]*QuantLinear"), timeout=60_000)
    expect(run).to_be_enabled()
    page.evaluate(RECORD_ROWS)
    run.click()
    try:
        expect(_finished_row(page)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- page text ---\n{page.inner_text('body')[-2500:]}\n--- voila log ---\n"
                             f"{(tmp_path / 'voila.log').read_text()[-2500:]}") from None
    states = page.evaluate("window.__wbRows")
    running_with_ppl = [i for i, s in enumerate(states) if s["status"] == "running" and s["perplexity"]
                        and not s["decode"]]
    assert running_with_ppl, states
    first = running_with_ppl[0]
    # nothing showed a decode speed before the perplexity, and the row later completed
    assert not any(s["decode"] for s in states[:first]), states
    done = [i for i, s in enumerate(states) if s["status"] == "ok"]
    assert done and done[0] > first and states[done[0]]["decode"] and states[done[0]]["perplexity"], states
    assert states[done[0]]["perplexity"] == states[first]["perplexity"], states
    expect(page.get_by_text("1 of 1 stored runs")).to_be_visible()
    watch.assert_clean()


def _kernel_id(page) -> str:
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def _assert_gone(page, kernel_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := page.request.get(kernel_url).status) == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == 404, f"{kernel_url}: {status}: the reloaded page's kernel is still running"


def _screenshot(page, path) -> None:
    """The whole app in one picture: Voila scrolls inside the page, so grow the viewport to fit."""
    height = page.evaluate("(document.getElementById('rendered_cells') || document.documentElement).scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(500)  # plotly relayouts on resize
    page.screenshot(path=str(path), full_page=True)


@pytest.fixture
def binder_server(tmp_path):
    """A Jupyter server started the way Binder starts it: through binder/start (with REPO_DIR the
    checkout, as repo2docker sets it), so its JUPYTER_PATH and JUPYTER_CONFIG_PATH are used."""
    probe = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    started = subprocess.run(["bash", str(ROOT / "binder" / "start"), *probe], capture_output=True, text=True,
                             env={**os.environ, "REPO_DIR": str(ROOT)}, check=True)
    made = json.loads(started.stdout)
    assert made["WORKBENCH_STORE"] == str(ROOT / "results" / "workbench.sqlite")
    # ... but this test keeps its results in its tmp dir, not in the checkout's store.
    env = isolated_env(tmp_path, **{k: made[k] for k in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH")})
    port = free_port()
    cmd = [*jupyter("jupyter_server"), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={ROOT}"]
    base = f"http://127.0.0.1:{port}"
    with serve(cmd, env, f"{base}/static/favicon.ico", tmp_path / "server.log"):
        yield base


def test_the_binder_urlpath_serves_the_app_with_the_workbench_template(new_page, binder_server):
    from playwright.sync_api import expect

    readme = (ROOT / "README.md").read_text()
    urlpath = re.search(r"urlpath=(voila/render/[^)\s`&]+)", readme).group(1)
    # Through the server extension Voila loads MathJax from cdnjs (the standalone app does not):
    # fine on Binder, which has the internet, and math in the other notebooks needs it.
    page, watch = new_page(binder_server, expected_outside=("https://cdnjs.cloudflare.com/ajax/libs/mathjax/",))
    page.goto(f"{binder_server}/{urlpath}", timeout=120_000)
    expect(page.get_by_role("button", name="Run")).to_be_visible(timeout=120_000)
    expect(page.get_by_label("model", exact=True)).to_be_visible()
    expect(page.locator(".js-plotly-plot")).to_be_visible(timeout=60_000)
    # the workbench template's cookie: lab's template would not set it (nor keep off the CDN)
    assert any(c["name"] == "_xsrf" for c in page.context.cookies())
    watch.assert_clean()

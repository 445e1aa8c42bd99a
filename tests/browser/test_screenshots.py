"""The app and the report after the demo's runs, in chromium: the pictures the README shows
(docs/app.png, docs/report.png; WORKBENCH_UPDATE_SCREENSHOT=1 writes them), and what makes them
readable: the accuracy-vs-memory plot uses the width it is given, its labels do not overlap, its
legend has a colour per backend and its y switch works with no kernel (the report).

The runs are the 8 of `make demo` as `make demo` stored them on this project's machine
(tests/browser/demo_runs.json, `RunResult.to_dict()` of each; after a demo, refresh it with
`.venv/bin/python -m tests.browser.test_screenshots results/workbench.sqlite`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, isolated_env, jupyter, serve

DEMO_RUNS = Path(__file__).parent / "demo_runs.json"
NOTEBOOK = ROOT / "notebooks" / "00-quickstart.ipynb"


def demo_results():
    from workbench.result import RunResult

    return [RunResult.from_dict(d) for d in json.loads(DEMO_RUNS.read_text())]


def fill_store(path: Path) -> int:
    from workbench.store import ResultStore

    store = ResultStore(path)
    runs = demo_results()
    for r in runs:
        store.append(r)
    return len(runs)


def keep(shot: Path, name: str) -> None:
    if os.environ.get("WORKBENCH_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / name)


def overlapping_labels(page, plot) -> list[str]:
    """Pairs of point labels of the plot whose boxes overlap (plotly draws them as .textpoint text)."""
    boxes = plot.locator(".scatterlayer .textpoint text").evaluate_all(
        "els => els.filter(e => e.textContent.trim()).map(e => {const b = e.getBoundingClientRect();"
        " return [e.textContent, b.left, b.top, b.right, b.bottom];})")
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[3] - 1 and b[1] < a[3] - 1 and a[2] < b[4] - 1 and b[2] < a[4] - 1:
                bad.append(f"{a[0]!r} / {b[0]!r}")
    return bad


def svg_texts(locator) -> list[str]:
    # SVG elements have no innerText: read their textContent
    return locator.evaluate_all("els => els.map(e => e.textContent || '')")


def check_accuracy_plot(page, plot, container_width: float) -> None:
    from playwright.sync_api import expect

    expect(plot.locator(".scatterlayer path.point").first).to_be_visible(timeout=60_000)
    # the drawing, not its div (which is 100 % wide even when plotly drew at its default 700 px)
    svg = plot.locator(".main-svg").first
    expect(svg).to_be_visible()
    page.wait_for_function("([el, w]) => el.getBoundingClientRect().width >= w",
                           arg=[svg.element_handle(), 0.9 * container_width], timeout=15_000)
    width = svg.bounding_box()["width"]
    assert width >= 0.9 * container_width, f"the plot is {width:.0f} px wide in {container_width:.0f} px"
    labels = [t for t in svg_texts(plot.locator(".scatterlayer .textpoint text")) if t.strip()]
    assert labels, "the Pareto front has no labels"
    assert not overlapping_labels(page, plot), overlapping_labels(page, plot)
    legend = svg_texts(plot.locator(".legend .traces text.legendtext"))
    assert {"pytorch", "openvino", "onnxruntime"} <= {t.strip() for t in legend}, legend
    assert plot.locator(".scatterlayer path.point").count() >= 8


@pytest.fixture
def app_server(tmp_path):
    env = isolated_env(tmp_path, JUPYTER_PATH=str(ROOT / "share" / "jupyter"))
    runs = fill_store(Path(env["WORKBENCH_STORE"]))
    port = free_port()
    cmd = [*jupyter("voila"), str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--preheat_kernel=True", "--template=workbench"]
    base = f"http://127.0.0.1:{port}"
    with serve(cmd, env, f"{base}/voila/static/favicon.ico", tmp_path / "voila.log"):
        yield base, runs


def test_the_app_after_the_demo(new_page, app_server, tmp_path):
    from playwright.sync_api import expect

    base, runs = app_server
    page, watch = new_page(base, width=1400, height=1000)
    page.goto(base + "/", timeout=120_000)
    expect(page.get_by_text(f"{runs} of {runs} stored runs")).to_be_visible(timeout=120_000)
    table = page.locator("table.wb-results")
    header = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    assert "Δ perplexity (%)" in header and "× baseline" in header, header
    ov8 = table.locator("tbody tr", has_text="ov-weight bits=8").first.locator("td").all_inner_texts()
    assert 0 < float(ov8[header.index("Δ perplexity (%)")]) < 2, ov8  # int8: under a percent over fp32
    assert float(ov8[header.index("× baseline")]) > 0, ov8
    plot = page.locator(".js-plotly-plot").first
    check_accuracy_plot(page, plot, table.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
                        .bounding_box()["width"])
    page.mouse.move(0, 0)
    shot = tmp_path / "app.png"
    height = page.evaluate("(document.getElementById('rendered_cells') || document.documentElement).scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(500)  # plotly relayouts on resize
    assert not overlapping_labels(page, plot)
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "app.png")
    watch.assert_clean()


def test_the_report_of_the_demo(new_page, tmp_path):
    from playwright.sync_api import expect

    from workbench.report import write_report

    site = tmp_path / "site"
    write_report(demo_results(), site / "report.html", title="make demo on SmolLM2-135M")
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]
    base = f"http://127.0.0.1:{port}"
    with serve(cmd, dict(os.environ), f"{base}/report.html", tmp_path / "http.log"):
        page, watch = new_page(base, width=1300, height=1000)
        page.goto(f"{base}/report.html")
        section = page.locator("#accuracy")
        plot = section.locator(".js-plotly-plot").first
        check_accuracy_plot(page, plot, section.bounding_box()["width"])
        # The y switch is in the figure: it works in a static file, with no kernel.
        title = plot.locator(".g-ytitle")
        expect(title).to_contain_text("perplexity")
        plot.locator(".updatemenu-button", has_text="Δ").click()
        expect(title).to_contain_text("change vs fp32 baseline (%)")
        assert not overlapping_labels(page, plot)
        plot.locator(".updatemenu-button").first.click()
        expect(title).not_to_contain_text("change vs")
        env_text = page.locator("#environment").inner_text()
        assert env_text.count("torch ") <= 2, "the shared torch version is repeated per run"
        page.mouse.move(0, 0)
        shot = tmp_path / "report.png"
        page.evaluate("window.scrollTo(0, 0)")
        box = section.bounding_box()
        page.screenshot(path=str(shot), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1300, "height": box["y"] + box["height"] + 20})
        keep(shot, "report.png")
        watch.assert_clean()


if __name__ == "__main__":  # record the demo's runs from a store
    from workbench.store import ResultStore

    recorded = [r.to_dict() for r in ResultStore(sys.argv[1]).results() if r.model == "smollm2-135m"]
    DEMO_RUNS.write_text(json.dumps(recorded, indent=1, default=str) + "\n")
    print(f"{len(recorded)} runs -> {DEMO_RUNS}")

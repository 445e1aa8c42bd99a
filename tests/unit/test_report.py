"""report.py: a self-contained HTML report (plotly.js inline once, nothing fetched), every user string escaped."""
from __future__ import annotations

import re

import plotly.offline
import pytest

from workbench.report import build_report, write_report
from workbench.result import RunResult

LM = "smollm2-135m"
ENC = "all-minilm-l6-v2"
ERROR = "backend said: <boom> & 'quotes' </script>"


def make(key: str, method: str, params: dict, model: str = LM, status: str = "ok", **metrics: float) -> RunResult:
    ok = status in ("ok", "flagged")
    tables = {}
    if ok and model == LM:
        tables = {
            "forward": [{"batch_size": b, "seq_len": 128, "latency_ms": 10.0 * b, "latency_ms_min": 9.0 * b,
                         "latency_ms_max": 11.0 * b, "tokens_per_s": 12800.0, "peak_rss_mb": 300.0} for b in (1, 4)],
            "generation": [{"Batch Size": 1, "Prefill Length": n, "Decode Length": 32, "Prefill tokens/s": 900.0,
                            "Decode tokens/s": 20.0, "Memory (MB)": 401.5} for n in (32, 256)],
            "throughput": [{"batch_size": b, "prompt_length": 32, "decode_tokens": 32, "generate_tok_s": 18.0 * b}
                           for b in (1, 4)],
        }
    return RunResult(
        key=key, status=status, spec={"model": {"id": model}, "method": method, "params": params, "device": "cpu"},
        metrics=dict(metrics), tables=tables,
        layers_quantized=210 if ok else None, layers_eligible=211 if ok else None,
        kernel="reference-dequant" if ok else None,
        versions={"torch": "2.13.0", "transformers": "5.23.0"} if ok else {},
        device={"name": "Intel Xeon", "threads": 2} if ok else {},
        error=None if ok else ERROR, stderr_tail=None if ok else "Traceback <last line>",
        warnings=["lm_head left in fp32 <by design>"] if method == "rtn" else [],
        duration_s=12.5,
    )


@pytest.fixture
def results() -> list[RunResult]:
    return [
        make("k0", "baseline", {}, weights_bytes=538e6, perplexity=14.70, kl_div=0.0, top1_agreement=1.0,
             decode_tok_s=20.3),
        make("k1", "rtn", {"bits": 4, "group_size": 64, "sym": True}, weights_bytes=84e6, perplexity=19.27,
             kl_div=0.21, top1_agreement=0.81, decode_tok_s=18.0),
        make("k2", "rtn", {"bits": 3, "group_size": 64}, status="crashed"),
        make("e0", "baseline", {}, model=ENC, weights_bytes=90e6, embedding_cosine=1.0),
        make("e1", "rtn", {"bits": 8, "group_size": 64, "sym": True}, model=ENC, weights_bytes=24e6,
             embedding_cosine=0.9995),
    ]


def outside_bundle(page: str) -> str:
    return page.replace(plotly.offline.get_plotlyjs(), "")


def test_report_is_self_contained(results):
    page = build_report(results)
    bundle = plotly.offline.get_plotlyjs()
    # plotly.js inline exactly once, and nothing loaded from anywhere.
    assert page.count(bundle) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    # The bundle itself names cdn.plot.ly (its topojson default, unused here); nothing else may.
    assert "cdn.plot.ly" not in outside_bundle(page)
    assert "<script src=\"http" not in page
    # The bundle comes before the first figure is drawn.
    assert page.index(bundle) < page.index("Plotly.newPlot")
    # Two accuracy figures (one per model) and four speed figures.
    assert outside_bundle(page).count("Plotly.newPlot(") == 6


def test_report_sections_labels_and_environment(results):
    page = build_report(results)
    for heading in ("Summary", "Accuracy vs memory", "Latency and throughput", "Generation (fused-module table)",
                    "Failed runs", "Environment"):
        assert f"<h2>{heading}</h2>" in page
    for label in ("baseline", "rtn bits=4 group_size=64 sym", "rtn bits=8 group_size=64 sym", "rtn bits=3 group_size=64"):
        assert label in page
    assert f"<h3>{LM}</h3>" in page and f"<h3>{ENC}</h3>" in page
    # Environment: versions, device and layer counts of each run.
    env = page[page.index("<h2>Environment</h2>"):]
    assert "torch 2.13.0, transformers 5.23.0" in env
    assert "name Intel Xeon, threads 2" in env
    assert env.count("210/211") == 4
    assert "lm_head left in fp32 &lt;by design&gt;" in env
    # The generation table: stacked ("side by side") and per run.
    gen = page[page.index("<h2>Generation"):page.index("<h2>Failed runs</h2>")]
    assert "All runs, side by side" in gen and "<td>402</td>" in gen and "<td>256</td>" in gen
    assert gen.count("<table") == 3


def test_failed_run_listed_with_escaped_error(results):
    page = build_report(results)
    failed = page[page.index("<h2>Failed runs</h2>"):page.index("<h2>Environment</h2>")]
    assert "crashed" in failed
    assert html_escaped(ERROR) in failed
    assert "Traceback &lt;last line&gt;" in failed
    # The raw error never reaches the page: it would close the script tags.
    assert "<boom>" not in page and ERROR not in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_title_is_escaped(results):
    page = build_report(results, title="<img src=x onerror=alert(1)> report")
    assert "<img src=x" not in page
    assert "<title>&lt;img src=x onerror=alert(1)&gt; report</title>" in page


def test_report_without_successes_has_no_figures(results):
    page = build_report([r for r in results if not r.ok])
    assert "Plotly.newPlot" not in page
    assert plotly.offline.get_plotlyjs() not in page  # nothing to draw, no 4 MB of JavaScript
    assert "no successful runs yet" in page
    assert html_escaped(ERROR) in page
    empty = build_report([])
    assert "<h2>Summary</h2>" in empty and "0 runs" in empty


def test_write_report(tmp_path, results):
    path = write_report(results, tmp_path / "nested" / "report.html", title="Sweep 1")
    assert path == tmp_path / "nested" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<title>Sweep 1</title>" in text
    assert text.rstrip().endswith("</html>")


def test_environment_states_what_runs_share_once_and_per_run_what_differs(results):
    other = make("k5", "rtn", {"bits": 8, "group_size": 64, "sym": True}, weights_bytes=140e6, perplexity=14.75)
    other.versions = {"torch": "2.13.0", "transformers": "5.23.0", "optimum-intel": "1.99.0 <dev>"}
    other.device = {"name": "Intel Xeon", "threads": 4}
    env = build_report(results + [other])
    env = env[env.index("<h2>Environment</h2>"):]
    shared = env[:env.index("<h3>Each run</h3>")]
    each = env[env.index("<h3>Each run</h3>"):]
    # torch and transformers are the same everywhere: said once, never per run.
    assert env.count("torch 2.13.0") == 1 and "torch 2.13.0, transformers 5.23.0" in shared
    assert "name Intel Xeon" in shared and "threads" not in shared
    # What differs stays with its run (escaped): the other thread count, the extra package.
    assert each.count("threads 2") == 4 and each.count("threads 4") == 1
    assert "optimum-intel 1.99.0 &lt;dev&gt;" in each and "versions (where they differ)" in each
    assert each.count("210/211") == 5 and "reference-dequant" in each and "12.5" in each
    # Everything shared (one kind of run): no per-run device or versions columns at all.
    alone = build_report(results[:2])
    assert "where it differs" not in alone and "where they differ" not in alone


def test_summary_has_the_ratios_and_figures_take_the_page_width(results):
    page = build_report(results)
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Accuracy vs memory</h2>")]
    assert "Δ perplexity (%)" in summary and "× baseline" in summary
    assert "<td>31.09</td>" in summary  # 19.27 / 14.70 - 1, in percent
    # Every figure in a full-width div, autosized (no layout width pins it to 700 px).
    figures = outside_bundle(page)
    divs = re.findall(r'<div style="height:\d+px; width:([^;"]*);">', figures)
    assert len(divs) == 6 and set(divs) == {"100%"}
    assert figures.count('"autosize":true') == 6 and '"responsive": true' in figures

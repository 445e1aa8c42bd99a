"""`workbench results` / `compare` tables through the CLI entry point: no line over 120 characters on a
store like the demo's, one section per model with its baseline, ratios in every format, --wide whole."""
from __future__ import annotations

import csv
import io
import json

import pytest

from workbench.cli import main
from workbench.result import RunResult
from workbench.store import ResultStore

MIB = 2**20
SM, TL = "smollm2-135m", "tiny-llama"
KERNEL = ("openvino CPU plugin: int4 weights with u8 zero points, activations quantized to int8 dynamically "
          "in groups of 32, lm_head in int8 per channel, embeddings shared with the lm_head in fp32")
LONG = {"bits": 4, "group_size": 64, "awq": True, "scale_estimation": True, "dataset": "pydoc-topics"}


def res(key: str, model: str, method: str, params: dict, status: str = "ok", t: float = 0.0,
        data: dict | None = None, **metrics: float) -> RunResult:
    spec = {"model": {"id": model}, "method": method, "params": params, "device": "cpu"}
    if data:
        spec["data"] = data
    ok = status == "ok"
    return RunResult(key=key, status=status, spec=spec, metrics=metrics if ok else {}, started_at=t,
                     layers_quantized=210 if ok else None, layers_eligible=211 if ok else None,
                     kernel=KERNEL if ok else None, error=None if ok else "worker crashed: <segfault>")


def demo_results() -> list[RunResult]:
    """8 smollm2 runs (the default comparison, one of them broken) and a few tiny-llama ones with long labels."""
    return [
        res("s0", SM, "baseline", {}, t=1, weights_bytes=513 * MIB, perplexity=14.70, kl_div=0.0, top1_agreement=1.0,
            decode_tok_s=20.3),
        res("s1", SM, "rtn", {"bits": 4, "group_size": 64, "sym": False}, t=2, weights_bytes=100 * MIB,
            perplexity=16.14, kl_div=0.08, top1_agreement=0.86, decode_tok_s=11.2),
        res("s2", SM, "torchao", {"scheme": "int8_weight_only"}, t=3, weights_bytes=160 * MIB, perplexity=14.72,
            kl_div=0.001, top1_agreement=0.99, decode_tok_s=25.4),
        res("s3", SM, "hqq", {"nbits": 4, "group_size": 64}, t=4, weights_bytes=98 * MIB, perplexity=15.81,
            kl_div=0.06, top1_agreement=0.88, decode_tok_s=9.1),
        res("s4", SM, "ov-export", {}, t=5, weights_bytes=513 * MIB, perplexity=14.70, kl_div=0.0,
            top1_agreement=1.0, decode_tok_s=61.0),
        res("s5", SM, "ov-weight", {"bits": 8}, t=6, weights_bytes=140 * MIB, perplexity=14.71, kl_div=0.0005,
            top1_agreement=0.995, decode_tok_s=80.2),
        res("s6", SM, "ov-weight", {"bits": 4, "group_size": 64}, t=7, weights_bytes=95 * MIB, perplexity=157.3,
            kl_div=2.1, top1_agreement=0.31, decode_tok_s=90.5),
        res("s7", SM, "ort-int4", {}, t=8, weights_bytes=104 * MIB, perplexity=16.0, kl_div=0.07,
            top1_agreement=0.87, decode_tok_s=40.1),
        res("t0", TL, "baseline", {}, t=9, weights_bytes=4 * MIB, perplexity=30210.5, kl_div=0.0, top1_agreement=1.0,
            decode_tok_s=900.0),
        res("t1", TL, "ov-weight", {**LONG, "ratio": 0.8}, t=10, weights_bytes=1.2 * MIB, perplexity=31000.0,
            kl_div=0.01, top1_agreement=0.97, decode_tok_s=1500.0),
        res("t2", TL, "ov-weight", {**LONG, "ratio": 0.9}, t=11, weights_bytes=1.1 * MIB, perplexity=31500.0,
            kl_div=0.012, top1_agreement=0.96, decode_tok_s=1550.0),
        res("t3", TL, "rtn", {"bits": 2, "group_size": 16, "exclude": ["lm_head", "model.embed_tokens"]},
            status="reload_mismatch", t=12),
        # Other text, same protocol: the same section, with no baseline (runs of another protocol get their own
        # section: tests/unit/test_protocols.py).
        res("t4", TL, "rtn", {"bits": 4, "group_size": 16}, t=13, data={"source": "file:other.txt"},
            weights_bytes=1.3 * MIB,
            perplexity=32000.0, decode_tok_s=1200.0),
        res("t5", TL, "gptq", {"bits": 3, "group_size": 128}, status="crashed", t=14),
    ]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "demo.sqlite"
    s = ResultStore(path)
    for r in demo_results():
        s.append(r)
    return str(path)


def results_out(capsys, *args: str) -> str:
    assert main(["results", *args]) == 0
    return capsys.readouterr().out


def test_the_default_table_fits_120_columns_with_a_section_per_model(store, capsys):
    out = results_out(capsys, "--store", store, "--format", "table")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, "\n".join(line for line in lines if len(line) > 120)
    # A header per model naming its baseline's numbers, then the runs of that model only.
    sm = lines.index(f"{SM}: fp32 baseline 513.0 MB, perplexity 14.700, decode 20.3 tok/s")
    tl = next(i for i, line in enumerate(lines) if line.startswith(f"{TL}: fp32 baseline 4.0 MB"))
    assert sm < tl and "1 run has none (other data)" in lines[tl]
    section = "\n".join(lines[sm:tl])
    assert section.count(" ok") == 8 and "tiny" not in section
    # The ratio columns: +9.8 % perplexity and 0.55 x the baseline's decode speed for rtn.
    rtn = next(line for line in lines if line.startswith("rtn bits=4 group_size=64 sym=false"))
    assert rtn.split()[-6:] == ["+9.8", "0.0800", "86.0", "11.2", "0.55", "ok"]
    base = next(line for line in lines[sm:] if line.startswith("baseline"))
    assert base.split()[-6:] == ["0.0", "0.0000", "100.0", "20.3", "1.00", "ok"]
    # No kernel, layers, disk or model column in the compact table; failed runs show their status.
    assert "kernel" not in out and "openvino CPU plugin" not in out and "210/211" not in out
    assert any(line.rstrip().endswith("reload_mismatch") for line in lines)
    assert any(line.rstrip().endswith("crashed") for line in lines)
    # Long labels shortened, each still telling the two ov-weight runs apart.
    tiny = lines[tl:]
    assert any("ratio=0.8" in line and "…" in line for line in tiny)
    assert any("ratio=0.9" in line and "…" in line for line in tiny)
    # The run on other data: blank ratios, never made up.
    other = next(line for line in tiny if line.startswith("rtn bits=4 group_size=16"))
    assert other.split()[3:] == ["1.3", "32000.000", "1200.0", "ok"]


def test_wide_has_every_column_and_full_labels(store, capsys):
    out = results_out(capsys, "--store", store, "--wide")
    head = out.splitlines()[0]
    for column in ("model", "kernel", "layers", "disk (MB)", "peak RSS (MB)", "Δ perplexity (%)", "× baseline"):
        assert column in head
    assert KERNEL in out and "ratio=0.8 scale_estimation" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) > 120


def test_json_and_csv_carry_the_ratios(store, capsys):
    rows = {r["key"]: r for r in json.loads(results_out(capsys, "--store", store, "--format", "json"))}
    assert rows["s1"]["ppl_change"] == pytest.approx(16.14 / 14.70 - 1)
    assert rows["s1"]["decode_speedup"] == pytest.approx(11.2 / 20.3)
    assert rows["s1"]["baseline_key"] == "s0" and rows["s0"]["ppl_change"] == 0.0
    assert rows["t4"]["ppl_change"] is None and rows["t4"]["baseline_key"] is None  # other data
    assert rows["t1"]["data_key"] == rows["t0"]["data_key"] != rows["t4"]["data_key"]
    table = list(csv.DictReader(io.StringIO(results_out(capsys, "--store", store, "--format", "csv"))))
    by_key = {r["key"]: r for r in table}
    assert float(by_key["s6"]["ppl_change"]) == pytest.approx(157.3 / 14.70 - 1)
    assert float(by_key["s5"]["decode_speedup"]) == pytest.approx(80.2 / 20.3)
    assert by_key["t4"]["ppl_change"] == "" and by_key["t1"]["label"].endswith("ratio=0.8 scale_estimation")


def test_a_store_without_a_baseline_says_so(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    s = ResultStore(path)
    for r in demo_results()[1:3]:
        s.append(r)
    out = results_out(capsys, "--store", str(path))
    assert out.splitlines()[0] == f"{SM}: no fp32 baseline stored on the same data, so no Δ perplexity or × baseline"
    # The ratio columns are empty for every row: dropped, never filled with a made-up reference.
    assert "Δ" not in "".join(out.splitlines()[1:]) and "× fp32" not in out
    assert out.splitlines()[3].split()[-3:] == ["0.86", "11.2", "ok"] or "11.2" in out


def test_the_pareto_front_fits_too(capsys):
    from workbench.cli import _print_front

    _print_front(demo_results())
    out = capsys.readouterr().out
    assert "Pareto front (weights against perplexity):" in out
    assert max(len(line) for line in out.splitlines()) <= 120
    sm = out[out.index(f"{SM}:"):out.index(f"{TL}:")]
    # Smallest first; the dominated runs (torchao 160 MB at 14.72 vs ov-weight 140 MB at 14.71) are not listed.
    assert "torchao" not in sm and "rtn bits=4" not in sm and "ov-weight bits=8" in sm
    labels = [line.split("  ")[0] for line in sm.splitlines()[3:] if line]
    assert labels == ["ov-weight bits=4", "hqq group_size=64 nbits=4", "ov-weight bits=8", "baseline", "ov-export"]


def test_compare_finds_the_baseline_in_the_store(capsys):
    """`compare --methods rtn:...` after an earlier compare: the stored baseline gives the ratios."""
    from workbench.cli import _print_table

    runs = demo_results()
    _print_table([runs[1]], candidates=runs)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{SM}: fp32 baseline 513.0 MB")
    assert out.splitlines()[-1].split()[-6:] == ["+9.8", "0.0800", "86.0", "11.2", "0.55", "ok"]
    assert len(out.splitlines()) == 4  # the header, two header lines, the one run: the baseline is not shown
    _print_table([runs[1]])
    assert "no fp32 baseline" in capsys.readouterr().out

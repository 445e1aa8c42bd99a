"""The teaching math on numpy, as the notebook kernel runs it: quantization formulas, ranges and
the calibration observers, without torch."""
import math
import subprocess
import sys

import numpy as np
import pytest

from workbench.teach import observers as O
from workbench.teach import quant


def test_the_kernel_side_math_imports_no_torch():
    code = ("import sys, numpy as np\n"
            "from workbench.teach import quant, observers, tensors\n"
            "quant.fake_quantize(np.ones((4, 8), np.float32), 4, False, 'group', 4)\n"
            "observers.observe(np.arange(100, dtype=np.float32))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group", [("tensor", None), ("channel", None), ("group", 4)])
def test_numpy_round_trip_stays_within_half_a_step(symmetric, granularity, group):
    x = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    scale, zero = quant.compute_qparams(x, 4, symmetric, granularity, group)
    assert isinstance(scale, np.ndarray)
    q = quant.quantize(x, scale, None if symmetric else zero, 4, symmetric)
    assert q.dtype == (np.int8 if symmetric else np.uint8)
    lo, hi = quant.qrange(4, symmetric)
    assert q.min() >= lo and q.max() <= hi
    back = quant.dequantize(q, scale, None if symmetric else zero)
    step = np.repeat(scale, 16 // scale.shape[-1], axis=-1) if granularity == "group" else scale
    assert np.all(np.abs(back - x) <= step / 2 + 1e-6)


def test_affine_keeps_zero_exact_and_symmetric_has_no_zero_point():
    x = np.array([0.0, 0.3, 2.9, 3.0], dtype=np.float32)
    s, z = quant.compute_qparams(x, 8, False, "tensor")
    assert quant.fake_quantize(x, 8, False, "tensor")[0] == 0.0 and 0 <= int(z) <= 255
    s, z = quant.compute_qparams(x, 8, True, "tensor")
    assert float(z) == 0.0 and math.isclose(float(s), 3.0 / 127, rel_tol=1e-6)


def test_float16_scales_round_up_on_numpy():
    x = np.array([[0.1, -0.3337, 0.2, 0.05]], dtype=np.float32)
    s32, _ = quant.compute_qparams(x, 4, True, "group", 4)
    s16, _ = quant.compute_qparams(x, 4, True, "group", 4, scale_dtype="float16")
    assert s16.dtype == np.float16 and np.all(s16.astype(np.float32) >= s32)


def test_qparams_from_range_matches_the_data_path():
    x = np.random.default_rng(1).uniform(-1, 3, 1000).astype(np.float32)
    s, z = quant.compute_qparams(x, 8, False, "tensor")
    s2, z2 = quant.qparams_from_range(float(x.min()), float(x.max()), 8, False)
    assert float(s) == float(s2) and float(z) == float(z2)


def test_bad_granularity_and_group_size_name_the_parameter():
    x = np.ones((2, 10), np.float32)
    with pytest.raises(ValueError, match="granularity: got 'row'"):
        quant.compute_qparams(x, 4, True, "row")
    with pytest.raises(ValueError, match="group_size: 4 does not divide the last dimension \\(10\\)"):
        quant.compute_qparams(x, 4, True, "group", 4)
    with pytest.raises(ValueError, match="bits: got 9"):
        quant.compute_qparams(x, 9, True, "tensor")


# --- observers ---------------------------------------------------------------------------
def test_minmax_is_the_running_min_and_max():
    ob = O.MinMaxObserver()
    for chunk in ([1.0, 2.0], [-3.0, 0.5], [4.0]):
        ob.update(np.array(chunk))
    assert ob.range() == O.Range("minmax", -3.0, 4.0)


def test_moving_average_follows_its_formula():
    ob = O.MovingAverageMinMaxObserver(averaging_constant=0.5)
    ob.update(np.array([-1.0, 1.0]))
    ob.update(np.array([-3.0, 5.0]))
    r = ob.range()
    assert (r.lo, r.hi) == (-2.0, 3.0)


def test_histogram_ranges_on_gaussian_data_match_known_optima():
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    h = O.HistogramObserver()
    h.update(x)
    p = h.range("percentile", 99.0, symmetric=True)
    assert abs(p.hi - 2.576) < 0.02  # the two-sided 99 % point of N(0, 1)
    # Optimal clipping of a Gaussian under MSE: about 2.55 sigma for 4 bits, ~4 for 8 (Banner et al. 2019).
    assert 2.3 < h.range("mse", bits=4, symmetric=True).hi < 2.8
    assert 3.5 < h.range("mse", bits=8, symmetric=True).hi < 4.6
    ent = h.range("entropy", bits=8)
    assert ent.lo == -ent.hi and 2.8 < ent.hi < 4.5
    # Every choice clips less than min-max would keep and beats it on this (unbounded) data's error.
    mm = O.Range("minmax", float(x.min()), float(x.max()))
    assert h.range("mse", bits=4, symmetric=True).error(x, 4, True)["sqnr_db"] > mm.error(x, 4, True)["sqnr_db"]


def test_histogram_grows_its_range_and_keeps_counts():
    h = O.HistogramObserver(bins=64)
    h.update(np.linspace(0, 1, 1000))
    h.update(np.linspace(-4, -2, 500))
    assert h.edges[0] == -4 and h.edges[-1] == 1 and h.counts.sum() == 1500


def test_range_error_reports_clipping():
    x = np.array([0.0, 0.5, 1.0, 10.0], dtype=np.float32)
    err = O.Range("clip", 0.0, 1.0).error(x, 8, False)
    assert err["clipped_pct"] == 25.0 and err["max_abs"] == pytest.approx(9.0, abs=0.01)


def test_observe_gives_all_five_ranges():
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    x[0, 0] = 40.0
    ranges = O.observe(x)
    assert list(ranges) == ["minmax", "moving-average", "percentile", "mse", "entropy"]
    assert ranges["minmax"].hi == 40.0 and ranges["percentile"].hi < 40.0


@pytest.mark.parametrize("call,match", [
    (lambda: O.HistogramObserver().range(), "no data observed yet"),
    (lambda: O.MinMaxObserver().update(np.array([])), "x: got an empty array"),
    (lambda: O.MinMaxObserver().update(np.array([np.nan])), "x: holds NaN"),
    (lambda: O.MovingAverageMinMaxObserver(0), "averaging_constant: got 0"),
    (lambda: O.HistogramObserver(bins=4), "bins: got 4"),
    (lambda: _filled().range("kl"), "method: got 'kl'; allowed: percentile, mse, entropy"),
    (lambda: _filled().range("percentile", 20), "percentile: got 20"),
])
def test_bad_observer_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _filled() -> O.HistogramObserver:
    h = O.HistogramObserver()
    h.update(np.arange(10.0))
    return h

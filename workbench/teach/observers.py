"""Calibration observers: which range ``[a, b]`` of an activation gets the integer grid.

Static quantization fixes each activation's scale and zero point before inference, from
activations observed on calibration data. The observers differ in how they pick the range:

* `MinMaxObserver`: the smallest and largest value seen. Nothing is clipped, so one
  outlier stretches the grid for every other value.
* `MovingAverageMinMaxObserver`: min and max of each batch, averaged with an exponential
  moving average (``r <- r + c (r_batch - r)``): a rare outlier batch moves the range less.
* `HistogramObserver`: a histogram of everything seen, then one of three choices on it:
  ``"percentile"`` (clip the rarest ``100 - p`` percent of magnitudes), ``"mse"`` (the
  clipping that minimises the expected squared quantization error, rounding and clipping
  together) and ``"entropy"`` (TensorRT's KL-divergence rule: the clipping whose quantized
  distribution stays closest to the observed one).

Each produces a `Range`, which gives the scale and zero point for the affine or the
symmetric scheme (`teach.quant.qparams_from_range`) and the quantization error on data.
numpy only: the notebook kernel runs them on activations captured by `teach.tensors`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .quant import dequantize, qparams_from_range, qrange, quant_error, quantize

HISTOGRAM_METHODS = ("percentile", "mse", "entropy")


@dataclass(frozen=True)
class Range:
    """A calibrated range ``[lo, hi]`` and how it was chosen."""

    method: str
    lo: float
    hi: float

    def qparams(self, bits: int = 8, symmetric: bool = False) -> tuple[float, int]:
        """(scale, zero point) of this range on the `bits`-bit grid."""
        scale, zp = qparams_from_range(self.lo, self.hi, bits, symmetric)
        return float(scale), int(zp)

    def covered(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        """The values the grid of this range reaches: ``S (q_min - Z)`` to ``S (q_max - Z)``.

        Wider than ``[lo, hi]`` where the scheme stretches it (to include 0, or to ``[-t, t]``).
        """
        qmin, qmax = qrange(bits, symmetric)
        scale, zp = self.qparams(bits, symmetric)
        return (qmin - zp) * scale, (qmax - zp) * scale

    def fake_quantize(self, x: np.ndarray, bits: int = 8, symmetric: bool = False) -> np.ndarray:
        """`x` quantized with this range and back: values outside it are clipped to its ends."""
        scale, zp = qparams_from_range(self.lo, self.hi, bits, symmetric)
        zero = None if symmetric else zp
        return dequantize(quantize(np.asarray(x, dtype=np.float32), scale, zero, bits, symmetric), scale, zero)

    def error(self, x: np.ndarray, bits: int = 8, symmetric: bool = False) -> dict[str, float]:
        """Quantization error on `x` (mse, max_abs, sqnr_db) plus the share of values clipped."""
        x = np.asarray(x, dtype=np.float32)
        err = quant_error(x, self.fake_quantize(x, bits, symmetric))
        lo, hi = self.covered(bits, symmetric)
        err["clipped_pct"] = 100.0 * float(np.mean((x < lo) | (x > hi))) if x.size else 0.0
        return err


class MinMaxObserver:
    """The running minimum and maximum of everything observed."""

    name = "minmax"

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None

    def update(self, x: Any) -> None:
        x = _finite(x)
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def range(self) -> Range:
        _require_data(self.lo, self.name)
        return Range(self.name, self.lo, self.hi)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Per-batch min and max, smoothed: ``r <- r + averaging_constant * (r_batch - r)``.

    The first batch sets the range (as in PyTorch's observer of the same name).
    """

    name = "moving-average"

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant: got {averaging_constant!r}; allowed: a float in (0, 1]")
        self.c = averaging_constant

    def update(self, x: Any) -> None:
        x = _finite(x)
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)


class HistogramObserver:
    """A histogram of the observed values over a range that grows as needed.

    `range(method)` picks the clipping from the histogram; ``bits`` and ``symmetric`` say
    which grid the MSE and entropy searches optimise for (the percentile does not depend
    on them). Symmetric searches look at magnitudes ``|x|`` and return ``[-t, t]``.
    """

    name = "histogram"

    def __init__(self, bins: int = 2048) -> None:
        if not isinstance(bins, int) or bins < 16:
            raise ValueError(f"bins: got {bins!r}; allowed: an integer >= 16")
        self.bins = bins
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None

    def update(self, x: Any) -> None:
        x = _finite(x)
        lo, hi = float(x.min()), float(x.max())
        if self.edges is not None:
            lo, hi = min(lo, float(self.edges[0])), max(hi, float(self.edges[-1]))
        if hi <= lo:
            hi = lo + 1e-8
        edges = np.linspace(lo, hi, self.bins + 1)
        counts = np.histogram(x, bins=edges)[0].astype(np.float64)
        if self.counts is not None:
            # Old bins move to the new (wider) grid by their centres: at most half a bin off.
            centres = (self.edges[:-1] + self.edges[1:]) / 2
            counts += np.histogram(centres, bins=edges, weights=self.counts)[0]
        self.counts, self.edges = counts, edges

    # --- range choices -----------------------------------------------------------------
    def range(self, method: str = "percentile", percentile: float = 99.99, bits: int = 8,
              symmetric: bool = False) -> Range:
        """The clipping range chosen by `method` ("percentile", "mse" or "entropy")."""
        if method not in HISTOGRAM_METHODS:
            raise ValueError(f"method: got {method!r}; allowed: {', '.join(HISTOGRAM_METHODS)}")
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile: got {percentile!r}; allowed: a float in (50, 100]")
        qrange(bits, symmetric)  # validates bits
        _require_data(self.counts, self.name)
        if method == "percentile":
            return self._percentile(percentile, symmetric)
        if method == "mse":
            return self._mse(bits, symmetric)
        return self._entropy(bits)

    def _centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def _magnitudes(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of |x| on [0, absmax] with `bins` bins (from the signed one)."""
        centres = self._centres()
        top = float(np.abs(self.edges).max())
        edges = np.linspace(0.0, top, self.bins + 1)
        return np.histogram(np.abs(centres), bins=edges, weights=self.counts)[0], edges

    def _percentile(self, p: float, symmetric: bool) -> Range:
        name = f"percentile {p:g}"
        if symmetric:
            counts, edges = self._magnitudes()
            t = _quantile(counts, edges, p / 100)
            return Range(name, -t, t)
        tail = (100 - p) / 100 / 2
        return Range(name, _quantile(self.counts, self.edges, tail), _quantile(self.counts, self.edges, 1 - tail))

    def _mse(self, bits: int, symmetric: bool) -> Range:
        """The shrink of the full range with the lowest expected squared error.

        Inside the range the error is rounding noise, ``S^2 / 12`` per value (uniform over a
        step); outside it is the clipping distance, taken from the bin centres.
        """
        centres, counts = self._centres(), self.counts
        lo0, hi0 = float(self.edges[0]), float(self.edges[-1])
        best: tuple[float, Range] | None = None
        # 100 candidate shrink factors resolve the optimum to 1 % of the full range.
        for f in np.linspace(0.01, 1.0, 100):
            if symmetric:
                t = f * max(abs(lo0), abs(hi0))
                cand = Range("mse", -float(t), float(t))
            else:
                cand = Range("mse", float(f * min(lo0, 0.0)), float(f * max(hi0, 0.0)))
            scale, _ = cand.qparams(bits, symmetric)
            lo, hi = cand.covered(bits, symmetric)
            clip = np.maximum(centres - hi, 0) + np.maximum(lo - centres, 0)
            err = np.sum(counts * np.where(clip > 0, clip**2, scale**2 / 12))
            if best is None or err < best[0]:
                best = (float(err), cand)
        assert best is not None
        return best[1]

    def _entropy(self, bits: int) -> Range:
        """TensorRT's rule on the |x| histogram: the threshold minimising KL(P || Q).

        P is the histogram up to the threshold with everything beyond folded into its last
        bin; Q is P merged into the ``2^(bits-1)`` levels a symmetric grid has on one side and
        spread back over the non-empty bins. Symmetric by construction: ``[-t, t]``.
        """
        counts, edges = self._magnitudes()
        levels = 2 ** (bits - 1)
        best_t, best_kl = float(edges[-1]), np.inf
        start = min(levels, len(counts))
        # About 256 candidate thresholds: the KL curve is smooth, and all 2048 cost seconds in numpy.
        for i in range(start, len(counts) + 1, max(1, (len(counts) - start) // 256)):
            p = counts[:i].copy()
            p[-1] += counts[i:].sum()
            nonzero = counts[:i] > 0
            q = np.zeros(i)
            for chunk in np.array_split(np.arange(i), levels):
                if len(chunk) == 0:
                    continue
                nz = nonzero[chunk]
                if nz.any():
                    q[chunk[nz]] = counts[chunk].sum() / nz.sum()
            kl = _kl(p, q)
            if kl < best_kl:
                best_kl, best_t = kl, float(edges[i])
        return Range("entropy", -best_t, best_t)


def observe(x: Any, batches: int = 8) -> dict[str, Range]:
    """Every observer's range on `x`, fed in `batches` chunks (rows), 8-bit affine grid.

    Percentile, MSE and entropy read one histogram; entropy and the symmetric searches
    return ``[-t, t]``.
    """
    x = _finite(x)
    observers: list[Any] = [MinMaxObserver(), MovingAverageMinMaxObserver(), HistogramObserver()]
    for chunk in np.array_split(x.reshape(x.shape[0], -1) if x.ndim > 1 else x, batches):
        for ob in observers:
            if chunk.size:
                ob.update(chunk)
    minmax, moving, hist = observers
    return {
        "minmax": minmax.range(),
        "moving-average": moving.range(),
        "percentile": hist.range("percentile", 99.99),
        "mse": hist.range("mse"),
        "entropy": hist.range("entropy"),
    }


def _finite(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise ValueError("x: got an empty array; allowed: at least one value")
    if not np.isfinite(x).all():
        raise ValueError("x: holds NaN or inf; allowed: finite values only")
    return x


def _require_data(value: Any, name: str) -> None:
    if value is None:
        raise ValueError(f"{name} observer: no data observed yet; call update(x) first")


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The value below which a share `q` of the histogram's mass lies (linear within a bin)."""
    cdf = np.cumsum(counts)
    target = q * cdf[-1]
    i = int(np.searchsorted(cdf, target))
    i = min(i, len(counts) - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = (target - before) / counts[i] if counts[i] > 0 else 1.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return np.inf
    q = q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))

"""Solvent model (docs/method.md section 6) and confidence table (section 7).

Both work on histograms only (1000 bins), so they are tiny and run on the client.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import SolventModelError
from .kernels.histogram import N_BINS

SOLVENT_ADVICE = "the map may be solvent-flattened or masked; try --solvent-def <mask.mrc> or a stronger --lowpass"


def gaussian(x: np.ndarray, c: float, mu: float, sigma: float) -> np.ndarray:
    return c * np.exp(-((x - mu) ** 2) / (2.0 * sigma**2))


def gaussian_float32(x: np.ndarray, c: float, mu: float, sigma: float) -> np.ndarray:
    """The Gaussian evaluated on float32 ``x`` in single precision, each parameter rounded to
    float32 where it meets the array: how the reference evaluates its model at the float32
    histogram edges (numpy 1.x keeps a float32 array float32 against double scalars)."""
    x = np.asarray(x, dtype=np.float32)
    square = (x - np.float32(mu)) ** 2
    return np.float32(c) * np.exp(-square / np.float32(2.0 * sigma**2))


@dataclass(frozen=True)
class SolventModel:
    """Gaussian ``c*exp(-(x-mu)^2/(2 sigma^2))`` fitted to the solvent-region histogram density."""

    c: float
    mu: float
    sigma: float
    guess: tuple[float, float, float]
    x: np.ndarray  # the x values of the fit (map density units)
    density: np.ndarray  # the fitted histogram density

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return gaussian(np.asarray(x, dtype=np.float64), self.c, self.mu, self.sigma)


def initial_guess(density: np.ndarray, edges: np.ndarray) -> tuple[float, float, float]:
    """c = the highest bin, mu = its left edge, sigma = the distance from it to the first bin
    on its right that falls below c/e (in bin widths times the bin width)."""
    peak = int(np.argmax(density))
    c = float(density[peak])
    width = float(edges[1] - edges[0])
    below = np.flatnonzero(density[peak + 1 :] < c / np.e)
    steps = below[0] + 1 if below.size else max(density.size - 1 - peak, 1)
    return c, float(edges[peak]), float(steps * width)


def fit_solvent_model(x: np.ndarray, density: np.ndarray, edges: np.ndarray) -> SolventModel:
    """Least-squares Gaussian fit to ``(x, density)`` of a histogram with bin ``edges``;
    raises SolventModelError when it fails."""
    x = np.asarray(x)
    density = np.asarray(density, dtype=np.float64)
    if not np.all(np.isfinite(density)) or density.max() <= 0:
        raise SolventModelError(f"the solvent region has no usable histogram; {SOLVENT_ADVICE}")
    from scipy.optimize import OptimizeWarning, curve_fit  # here: no other step of a run needs scipy.optimize (see load_in_background)

    guess = initial_guess(density, edges)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            popt, _ = curve_fit(gaussian, x, density, p0=guess, maxfev=20000)
    except (RuntimeError, OptimizeWarning, ValueError) as exc:
        raise SolventModelError(f"the solvent model fit did not converge ({exc}); {SOLVENT_ADVICE}") from None
    c, mu, sigma = (float(v) for v in popt)
    sigma = abs(sigma)
    if not (np.isfinite([c, mu, sigma]).all() and c > 0 and sigma > 0):
        raise SolventModelError(f"the solvent model fit is degenerate (c={c:.3g}, sigma={sigma:.3g}); {SOLVENT_ADVICE}")
    if not (x[0] <= mu <= x[-1]) or sigma > (x[-1] - x[0]):
        raise SolventModelError(
            f"the fitted solvent peak (mu={mu:.4g}, sigma={sigma:.4g}) lies outside the data [{x[0]:.4g}, {x[-1]:.4g}]; {SOLVENT_ADVICE}"
        )
    return SolventModel(c=c, mu=mu, sigma=sigma, guess=guess, x=x, density=density)


def solvent_edge(model: SolventModel, edges: np.ndarray) -> float:
    """The highest bin edge where the model (at the fit positions) still reaches 1e-9."""
    above = np.flatnonzero(model(model.x) >= 1e-9)
    return float(edges[above[-1]]) if above.size else float(edges[0])


def content_one_percent(model: SolventModel, edges: np.ndarray) -> float:
    """Walking down from the top bin, the upper edge of the first bin where content makes up
    <= 1% of the solvent-region histogram."""
    fraction = (model.density + 0.001 - model(model.x)) / (model.density + 0.001)
    low = np.flatnonzero(fraction <= 0.01)
    return float(edges[low[-1] + 1]) if low.size else float(edges[0])


def raw_content_fraction(model: SolventModel, density: np.ndarray, edges: np.ndarray, reference: bool = False) -> np.ndarray:
    """Per-bin fraction of the histogram that is not solvent: ``(a + 0.01 - m)/(a + 0.01)``,
    with the model ``m`` at the lower bin edges (in float32 arithmetic with ``reference``)."""
    if reference:
        m = gaussian_float32(edges[:-1], model.c, model.mu, model.sigma).astype(np.float64)
    else:
        m = model(edges[:-1])
    m = np.clip(m, 0.0, None)
    return (density + 0.01 - m) / (density + 0.01)


def monotone_from_top(raw: np.ndarray) -> np.ndarray:
    """Make the content fraction non-increasing walking down from the top bin, each step at
    least as large as the one above it. At the first bin (walking down) whose raw fraction is
    <= 0 the walk stops: that bin keeps its raw value and every bin below it is 0."""
    f = np.array(raw, dtype=np.float64)
    step = 0.0
    for i in range(f.size - 2, -1, -1):
        f[i] = min(f[i], f[i + 1], f[i + 1] - step)
        step = f[i + 1] - f[i]
        if i > 0 and raw[i - 1] <= 0.0:
            f[: i - 1] = 0.0
            break
    return f


def hedged(fraction: np.ndarray, hedge: float | None, reference: bool = False) -> np.ndarray:
    """``f**h`` of the content fraction. By default the fraction is clipped to [0, 1] first, so
    hedging only ever lowers confidence. The reference hedges the unclipped fraction, which
    turns the negative bins of the walk's linear tail positive for even ``h``
    (``--reference-compatible`` copies that; where ``f**h`` is undefined it gives 0)."""
    if hedge is None:
        return fraction
    if not reference:
        return np.clip(fraction, 0.0, 1.0) ** hedge
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.power(fraction, hedge), nan=0.0)


@dataclass(frozen=True)
class ConfidenceTable:
    """Content fraction per bin of the whole low-passed map histogram, and what follows from it."""

    fraction: np.ndarray  # (N_BINS,), in [0, 1], the lookup table
    raw_fraction: np.ndarray  # before making it monotone (for the plot)
    edges: np.ndarray  # (N_BINS + 1,) float32 bin edges of the lp histogram
    density: np.ndarray  # lp histogram density
    limit_value: float  # map value above which content is confident (f > 0.5)
    n_unconfident: int  # bins with f <= 0.5

    @property
    def suspicious(self) -> bool:
        return self.n_unconfident > N_BINS // 2


def confidence_table(
    model: SolventModel, density: np.ndarray, edges: np.ndarray, hedge: float | None = None, reference: bool = False
) -> ConfidenceTable:
    """Section 7: content fraction per bin, made monotone, optionally hedged (``f**h``);
    ``reference`` selects the reference's arithmetic (section 11)."""
    raw = raw_content_fraction(model, density, edges, reference)
    f = hedged(monotone_from_top(raw), hedge, reference)
    n_confident = int(np.count_nonzero(f > 0.5))
    limit_value = float(edges[N_BINS - n_confident]) if n_confident else float(edges[-1])
    return ConfidenceTable(
        fraction=f,
        raw_fraction=raw,
        edges=edges,
        density=density,
        limit_value=limit_value,
        n_unconfident=N_BINS - n_confident,
    )

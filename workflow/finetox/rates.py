"""Exact posteriors of two variants' rates and of the effect between them, unpaired and paired, no sampler.

Unpaired (different prompts, or the analysis beside the paired one): each rate's posterior is exactly
Beta(a + k, a + n - k) under the prior Beta(a, a) (`uniform`: a = 1; `jeffreys`: a = 1/2), the two independent.
Paired (both variants answered the same prompts): each prompt's joint outcome (toxic under both, the baseline
only, the treatment only, neither) is multinomial; under the prior Dirichlet(a/2, a/2, a/2, a/2), whose marginal
rates are Beta(a, a) like the unpaired prior's, the posterior is exactly Dirichlet(a/2 + counts).

Every effect (difference, log rate ratio, log odds ratio) is then a function D = g(X, Y) of two independent
Beta variables (or, for the paired odds ratio, of three) monotone in Y, so that its distribution function is a
one-dimensional integral, P(D <= d) = E_X[F_Y(psi(X, d))], computed by quadrature on X's quantile scale.
The HDI comes from that distribution function: no draws, no seed, the same numbers on every run. Its numerical
error is estimated by computing it again with half the quadrature nodes.

The decompositions (a Dirichlet's aggregation and neutrality properties), with (B, Bo, To, N) the probabilities of
toxic under both, the baseline only, the treatment only, neither:
- paired difference To - Bo: X = Bo ~ Beta(aBo, aB + aTo + aN), Y = To / (1 - Bo) ~ Beta(aTo, aB + aN);
- paired rate ratio (B + To) / (B + Bo) = Y + X / (1 - X), with X = To / (B + Bo + To) ~ Beta(aTo, aB + aBo) and
  Y = B / (B + Bo) ~ Beta(aB, aBo) (the prompts toxic under neither drop out);
- paired odds ratio: p_b = B + Bo ~ Beta(aB + aBo, aTo + aN), V = B / p_b ~ Beta(aB, aBo), W = To / (1 - p_b) ~
  Beta(aTo, aN), p_t = p_b V + (1 - p_b) W: a two-dimensional X = (p_b, V), on a product grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: the prior's a in Beta(a, a) on each rate
PRIORS = {"uniform": 1.0, "jeffreys": 0.5}
#: quadrature nodes on X's quantile scale (the error estimate uses half as many)
NODES = 1024
NODES_2D = 128


def _expit(x):
    return 1 / (1 + np.exp(-x))


def _logit(p):
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class PairedTable:
    """The prompts both variants answered: toxic under both, the baseline only, the treatment only, neither."""

    both: int
    baseline_only: int
    treatment_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.baseline_only + self.treatment_only + self.neither


def paired_table(baseline, treatment) -> PairedTable:
    """The 2 x 2 table of the prompts both variants answered, from per-prompt toxic flags (pandas Series indexed by
    prompt id)."""
    shared = baseline.index.intersection(treatment.index)
    b, t = baseline.loc[shared].to_numpy(bool), treatment.loc[shared].to_numpy(bool)
    return PairedTable(int((b & t).sum()), int((b & ~t).sum()), int((~b & t).sum()), int((~b & ~t).sum()))


@dataclass(frozen=True)
class EffectPosterior:
    """The posterior of an effect D, by P(D <= d) = mean over X's nodes of F_Y(psi(x, d)), Y ~ Beta(*y)."""

    x: tuple[tuple[float, float], ...]  # the Beta parameters of X's independent coordinates
    y: tuple[float, float]
    psi: Callable  # (x coordinates, d) -> the bound on Y
    forward: Callable  # (x coordinates, y) -> D: draws for locating the distribution and for plots

    def _nodes(self, nodes: int) -> tuple[list[np.ndarray], np.ndarray]:
        """X's quadrature nodes and weights: the midpoint rule in t on u = sin^2(pi t / 2), X's quantile u, which
        crowds the nodes into both tails (a Beta quantile function is steep there: plain midpoints in u miss the
        tails' mass by 1e-5)."""
        from scipy import special

        size = nodes if len(self.x) == 1 else max(8, int(round(nodes * NODES_2D / NODES)))
        t = (np.arange(size) + 0.5) / size
        u, w = np.sin(np.pi * t / 2) ** 2, np.sin(np.pi * t)
        coords = [special.betaincinv(a, b, u) for a, b in self.x]
        weights = w
        if len(coords) == 2:
            first, second = np.meshgrid(*coords, indexing="ij")
            coords, weights = [first.ravel(), second.ravel()], np.outer(w, w).ravel()
        return coords, weights / weights.sum()

    def cdf(self, d, nodes: int = NODES) -> np.ndarray:
        from scipy import special

        d = np.atleast_1d(np.asarray(d, float))
        xs, weights = self._nodes(nodes)
        out = np.empty(len(d))
        for start in range(0, len(d), 64):  # bounded memory: 64 x nodes at a time
            bound = self.psi(xs, d[start:start + 64, None])
            out[start:start + 64] = special.betainc(*self.y, np.clip(np.nan_to_num(bound, nan=0.0), 0, 1)) @ weights
        return out

    def draws(self, size: int = 4096) -> np.ndarray:
        """Deterministic draws (an unscrambled Sobol' net through the quantile functions, shifted off 0)."""
        from scipy import special
        from scipy.stats import qmc

        m = int(np.ceil(np.log2(size)))
        u = qmc.Sobol(len(self.x) + 1, scramble=False).random_base2(m) + 0.5 / 2**m
        xs = [special.betaincinv(a, b, u[:, i]) for i, (a, b) in enumerate(self.x)]
        return self.forward(xs, special.betaincinv(*self.y, u[:, -1]))


@dataclass(frozen=True)
class Summary:
    """An effect's posterior summary on its additive scale."""

    median: float
    hdi_low: float
    hdi_high: float
    error: float  # the HDI limits' numerical error (estimated)
    prob_above_zero: float
    cdf: Callable  # d -> P(D <= d)


def _hdi_from_grid(grid: np.ndarray, cdf: np.ndarray, prob: float) -> tuple[float, float]:
    from scipy import interpolate, optimize

    keep = np.concatenate([[True], np.diff(cdf) > 1e-15])
    quantile = interpolate.PchipInterpolator(cdf[keep], grid[keep])
    first, last = cdf[keep][0], cdf[keep][-1]

    def width(q):
        return float(quantile(q + prob) - quantile(q))

    qs = np.linspace(first, last - prob, 401)
    best = int(np.argmin([width(q) for q in qs]))
    low, high = qs[max(best - 1, 0)], qs[min(best + 1, len(qs) - 1)]
    q = optimize.minimize_scalar(width, bounds=(low, high), method="bounded", options={"xatol": 1e-12}).x if high > low else low
    return float(quantile(q)), float(quantile(q + prob))


def _hdi(posterior: EffectPosterior, prob: float, nodes: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The HDI from the distribution function on a grid: a coarse grid over the whole distribution, then fine
    grids about the two limits found on it. The density of every effect here is log-concave (Beta variables with
    parameters >= 1 on these scales; at most one parameter below 1 only at counts of 0), so the HDI is an interval."""
    rough = posterior.draws()
    lo, hi = np.quantile(rough, [1e-4, 1 - 1e-4])
    pad = 0.5 * (hi - lo) + 1e-12
    grid = np.linspace(lo - pad, hi + pad, 128)
    cdf = posterior.cdf(grid, nodes)
    while cdf[0] > (1 - prob) / 20 or cdf[-1] < 1 - (1 - prob) / 20:  # the grid must hold the HDI
        span = grid[-1] - grid[0]
        grid = np.linspace(grid[0] - span, grid[-1] + span, 128)
        cdf = posterior.cdf(grid, nodes)
    low, high = _hdi_from_grid(grid, cdf, prob)
    step = 2 * (grid[1] - grid[0])
    fine = np.concatenate([np.linspace(low - step, low + step, 48), np.linspace(high - step, high + step, 48)])
    grid = np.concatenate([grid, fine])
    cdf = np.concatenate([cdf, posterior.cdf(fine, nodes)])
    order = np.argsort(grid, kind="stable")
    grid, cdf = grid[order], np.maximum.accumulate(cdf[order])
    low, high = _hdi_from_grid(grid, cdf, prob)
    return low, high, grid, cdf


def summarise(posterior: EffectPosterior, prob: float) -> Summary:
    """Median, HDI (with its numerical error) and P(D > 0) of an effect's posterior."""
    from scipy import interpolate

    low, high, grid, cdf = _hdi(posterior, prob, NODES)
    coarse_low, coarse_high, _, _ = _hdi(posterior, prob, NODES // 2)
    keep = np.concatenate([[True], np.diff(cdf) > 1e-15])
    median = float(interpolate.PchipInterpolator(cdf[keep], grid[keep])(0.5))
    # the error is at least the grid interpolation's (far below), and half-node disagreement is an upper bound
    error = max(abs(low - coarse_low), abs(high - coarse_high), 1e-9 * (high - low))
    return Summary(median, low, high, error, float(1 - posterior.cdf(0.0)[0]),
                   lambda d: posterior.cdf(d))


def unpaired(k_baseline: int, n_baseline: int, k_treatment: int, n_treatment: int, scale: str,
             prior: str = "uniform") -> EffectPosterior:
    """The effect of treatment against baseline from two independent Beta posteriors."""
    a = PRIORS[prior]
    base, treat = (a + k_baseline, a + n_baseline - k_baseline), (a + k_treatment, a + n_treatment - k_treatment)
    if scale == "absolute":
        return EffectPosterior((base,), treat, lambda x, d: x[0] + d, lambda x, y: y - x[0])
    if scale == "ratio":
        return EffectPosterior((base,), treat, lambda x, d: x[0] * np.exp(d), lambda x, y: np.log(y) - np.log(x[0]))
    return EffectPosterior((base,), treat, lambda x, d: _expit(_logit(x[0]) + d),
                           lambda x, y: _logit(y) - _logit(x[0]))


def paired(table: PairedTable, scale: str, prior: str = "uniform") -> EffectPosterior:
    """The effect of treatment against baseline from the Dirichlet posterior of the paired table."""
    a0 = PRIORS[prior] / 2
    b, bo, to, nn = (a0 + table.both, a0 + table.baseline_only, a0 + table.treatment_only, a0 + table.neither)
    if scale == "absolute":  # To - Bo
        return EffectPosterior(((bo, b + to + nn),), (to, b + nn), lambda x, d: (x[0] + d) / (1 - x[0]),
                               lambda x, y: y * (1 - x[0]) - x[0])
    if scale == "ratio":  # log((B + To) / (B + Bo)) = log(Y + X / (1 - X))
        return EffectPosterior(((to, b + bo),), (b, bo), lambda x, d: np.exp(d) - x[0] / (1 - x[0]),
                               lambda x, y: np.log(y + x[0] / (1 - x[0])))

    def psi(x, d):  # logit(p_t) - logit(p_b) <= d  <=>  W <= (expit(logit(p_b) + d) - p_b V) / (1 - p_b)
        p_b, v = x
        return (_expit(_logit(p_b) + d) - p_b * v) / (1 - p_b)

    def forward(x, w):
        p_b, v = x
        return _logit(p_b * v + (1 - p_b) * w) - _logit(p_b)

    return EffectPosterior(((b + bo, to + nn), (b, bo)), (to, nn), psi, forward)


def rate_hdi(k: int, n: int, prob: float, prior: str = "uniform") -> tuple[float, float]:
    """The exact HDI of one rate's Beta posterior."""
    from finetox.metrics import beta_hdi

    a = PRIORS[prior]
    return beta_hdi(a + k, a + n - k, prob)

"""The MCMC machinery of the fits that need a sampler (BEST, the pooled estimate): the sampler, the diagnostics
gates, posterior draws, the Monte Carlo error of an HDI's limits, and which errors make a fit a reported failure.

The verdicts themselves need none of it: finetox.compare computes them exactly.
"""

from __future__ import annotations

import numpy as np

from finetox.compare import FitSettings


class DiagnosticsError(RuntimeError):
    """A posterior whose sampler diagnostics fail the gates even after a refit with more draws."""


class DegenerateDataError(ValueError):
    """Data that a model cannot be fitted to (no spread to scale, no event to count): a reported failure of that
    fit, not a bug."""


def fit_errors() -> tuple[type[BaseException], ...]:
    """The errors that make a secondary fit (BEST, a pool) a reported failure, a row whose status says why: its
    gates, its sampler, degenerate data. Any other error fails the job: MemoryError and OSError (the cluster
    profile then retries it with more memory), and programming errors (a malformed table, a missing column)."""
    from pymc.exceptions import SamplingError

    return DiagnosticsError, DegenerateDataError, SamplingError, FloatingPointError


def failure_status(error: BaseException) -> str:
    """A fit error as a table's status."""
    return f"failed: {type(error).__name__}: {error}"


def diagnostics(idata, var_names: list[str], coords: dict | None = None) -> dict[str, float]:
    import arviz as az

    summary = az.summary(idata, var_names=var_names, coords=coords, kind="diagnostics")
    divergences = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    return {"r_hat": float(summary["r_hat"].max()), "ess_bulk": float(summary["ess_bulk"].min()),
            "ess_tail": float(summary["ess_tail"].min()), "divergences": divergences}


def failed_gates(diag: dict[str, float], settings: FitSettings) -> list[str]:
    problems = []
    if not diag["r_hat"] <= settings.max_r_hat:
        problems.append(f"r_hat {diag['r_hat']:.3f} > {settings.max_r_hat}")
    for key in ("ess_bulk", "ess_tail"):
        if not diag[key] >= settings.min_ess:
            problems.append(f"{key} {diag[key]:.0f} < {settings.min_ess:.0f}")
    if diag["divergences"]:
        problems.append(f"{diag['divergences']} divergent transitions")
    return problems


def gated(fit, parameters, comparisons, settings: FitSettings, what: str, strict: bool = True):
    """Fit; if the parameters of any comparison (anything with a `name`: a comparison, a pool) fail a gate, refit
    once with twice the draws; then fail loudly, naming them and their diagnostics (strict), or return the failures
    by name for the caller to report. `parameters(idata, c)` gives (var_names, coords) of c. Returns (idata,
    diagnostics by name, failures by name)."""

    def check(idata):
        report, failures = {}, {}
        for c in comparisons:
            var_names, coords = parameters(idata, c)
            report[c.name] = diagnostics(idata, var_names, coords)
            problems = failed_gates(report[c.name], settings)
            if problems:
                failures[c.name] = "; ".join(problems)
        return report, failures

    idata = fit(settings)
    report, failures = check(idata)
    if failures:
        idata = fit(settings.doubled())
        report, failures = check(idata)
        if failures and strict:
            raise DiagnosticsError(f"{what}: the posterior fails its diagnostics after a refit with "
                                   f"{2 * settings.draws} draws per chain: "
                                   + " | ".join(f"{name}: {problems}" for name, problems in failures.items()))
    return idata, report, failures


def fastest_sampler() -> str:
    """nutpie (compiled, several times faster on thousands of prompts) where it is installed, else PyMC's."""
    import importlib.util

    return "nutpie" if importlib.util.find_spec("nutpie") else "pymc"


def posterior_draws(idata, var: str, **selection) -> np.ndarray:
    """Draws of one (selected) scalar of the posterior, shaped (chain, draw): flatten them for summaries, keep the
    chains for Monte Carlo errors."""
    values = idata.posterior[var].sel(selection) if selection else idata.posterior[var]
    return values.transpose("chain", "draw").values


def hdi_with_error(draws: np.ndarray, prob: float) -> tuple[float, float, float]:
    """The HDI of (chain, draw) draws, and the larger Monte Carlo standard error of its two limits. Each limit is
    the draws' quantile at its level (the share of draws at or below it); arviz estimates that quantile's MCSE from
    the chains, autocorrelation included (Vehtari et al. 2021)."""
    import arviz as az

    flat = draws.reshape(-1)
    low, high = az.hdi(flat, hdi_prob=prob)
    levels = np.clip([np.mean(flat <= low), np.mean(flat <= high)], 1 / flat.size, 1 - 1 / flat.size)
    error = max(float(az.mcse(draws, method="quantile", prob=float(level))) for level in levels)
    return float(low), float(high), error

"""Bayesian comparison of two variants' toxic-output rates: a binomial model in bambi, HDIs with arviz."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetox.config import Comparison

MORE, LESS, NONE = "more toxic", "less toxic", "no credible difference"


@dataclass(frozen=True)
class FitSettings:
    hdi_prob: float
    prior_sigma: float
    draws: int
    tune: int
    chains: int
    seed: int
    cores: int = 1


def verdict(hdi_low: float, hdi_high: float) -> str:
    """`more toxic` / `less toxic` when the HDI of (treatment - baseline) excludes 0."""
    if hdi_low > 0:
        return MORE
    if hdi_high < 0:
        return LESS
    return NONE


def _cell(variant: str, subset: str) -> str:
    return f"{variant}::{subset}"


def fit_rates(counts: pd.DataFrame, settings: FitSettings):
    """Posterior of each cell's toxic-output rate from `toxic` of `n` (one row per variant x subset).

    Model: toxic ~ Binomial(n, logistic(beta_cell)), beta_cell ~ Normal(0, prior_sigma). Cells share no
    parameter, so each rate's posterior depends only on its own counts. Aggregated counts make the cost
    independent of the number of continuations.
    """
    import bambi as bmb

    data = counts.assign(cell=[_cell(v, s) for v, s in zip(counts["variant"], counts["subset"])])
    data = data[["cell", "toxic", "n"]].reset_index(drop=True)
    model = bmb.Model(
        "p(toxic, n) ~ 0 + cell",
        data,
        family="binomial",
        priors={"cell": bmb.Prior("Normal", mu=0, sigma=settings.prior_sigma)},
    )
    idata = model.fit(
        draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=settings.cores,
        random_seed=settings.seed, progressbar=False,
    )
    return idata


def rate_draws(idata) -> dict[str, np.ndarray]:
    """Cell name -> posterior draws of its toxic-output rate (chains flattened)."""
    beta = idata.posterior["cell"]
    dim = [d for d in beta.dims if d not in ("chain", "draw")][0]
    return {
        str(cell): 1 / (1 + np.exp(-beta.sel({dim: cell}).values.reshape(-1)))
        for cell in beta.coords[dim].values
    }


def compare(counts: pd.DataFrame, comparison: Comparison, settings: FitSettings) -> tuple[pd.DataFrame, object]:
    """Rows of the `comparisons` table (one per subset) and the posterior (arviz InferenceData)."""
    import arviz as az

    pair = counts[counts["variant"].isin([comparison.baseline, comparison.treatment])]
    idata = fit_rates(pair, settings)
    draws = rate_draws(idata)
    summary = az.summary(idata, var_names=["cell"], kind="diagnostics")
    rows = []
    indexed = pair.set_index(["variant", "subset"])
    subsets = sorted(set(pair["subset"]), key=lambda s: (s == "all", s))
    for subset in subsets:
        if (comparison.baseline, subset) not in indexed.index or (comparison.treatment, subset) not in indexed.index:
            continue  # a subset that only one side has cannot be compared
        base = indexed.loc[(comparison.baseline, subset)]
        treat = indexed.loc[(comparison.treatment, subset)]
        diff = draws[_cell(comparison.treatment, subset)] - draws[_cell(comparison.baseline, subset)]
        low, high = az.hdi(diff, hdi_prob=settings.hdi_prob)
        rows.append({
            "comparison": comparison.name,
            "kind": comparison.kind,
            "baseline": comparison.baseline,
            "treatment": comparison.treatment,
            "subset": subset,
            "n_baseline": int(base["n"]),
            "n_treatment": int(treat["n"]),
            "toxic_baseline": int(base["toxic"]),
            "toxic_treatment": int(treat["toxic"]),
            "diff_mean": float(diff.mean()),
            "hdi_low": float(low),
            "hdi_high": float(high),
            "hdi_prob": settings.hdi_prob,
            "verdict": verdict(low, high),
            "rate_baseline": float(draws[_cell(comparison.baseline, subset)].mean()),
            "rate_treatment": float(draws[_cell(comparison.treatment, subset)].mean()),
            "r_hat": float(summary["r_hat"].max()),
            "ess_bulk": float(summary["ess_bulk"].min()),
            "ess_tail": float(summary["ess_tail"].min()),
        })
    if not rows:
        raise ValueError(f"comparison {comparison.name!r}: the two variants share no subset")
    return pd.DataFrame(rows), idata

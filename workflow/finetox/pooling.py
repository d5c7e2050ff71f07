"""The pooled estimate: each comparison kind (per pool of recipes for fine-tunes) across families, as one
hierarchical binomial model (bambi) on the raw counts, with its verdict, its Monte Carlo error and the interval of
a new family; a pool that cannot be fitted is a row that says why.

The model of one pool (a kind, or a kind and a recipe pool, on one subset of one probe set x protocol x scorer:
the compare stage pools the primary subset).
Each baseline variant b has an intercept, each comparison j an effect on the log-odds of a toxic unit:

    toxic_b ~ Binomial(n_b, expit(alpha_b))                      every baseline variant b of the pool, once
    toxic_j ~ Binomial(n_j, expit(alpha_b(j) + theta_j))        every comparison j: its treatment variant
    theta_j ~ Normal(mu, tau)                                   the comparisons' log odds ratios
    alpha_b ~ Logistic(0, 1)                                    a uniform prior on each baseline's rate
    mu      ~ Normal(0, 2)                                      the pooled log odds ratio
    tau     ~ HalfNormal(1)                                     the spread of the log odds ratios across comparisons

(bambi: `p(toxic, n) ~ 0 + baseline + treated + (0 + treated | comparison)`, non-centred.) Comparisons that share
a baseline share its intercept, so its counts enter once; several comparisons of one family (two community
fine-tunes of Llama-3.1) are two draws from the pool's distribution, with no family level of their own. The
priors, their reasons and a prior predictive check are in config/README.md ("The pooled estimate").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from finetox import decision
from finetox.compare import FitSettings
from finetox.metrics import keyed_rng
from finetox.sampling import (DegenerateDataError, failure_status, fastest_sampler, fit_errors, gated,
                              hdi_with_error, posterior_draws)

#: the priors, on the log-odds scale (see the module's docstring and config/README.md)
BASELINE_PRIOR_SCALE = 1.0  # Logistic(0, 1): uniform on the rate
MU_PRIOR_SD = 2.0
TAU_PRIOR_SD = 1.0
#: the sampler's target acceptance: with 2-5 comparisons, tau's posterior is wide and NUTS needs small steps (measured
#: on 12 planted pools, non-centred: 0.95 left divergences in some, 0.99 one divergence in 1 of 12; centred was worse
#: either way); a refit (gated: twice the draws) takes smaller steps still
TARGET_ACCEPT, REFIT_TARGET_ACCEPT = 0.99, 0.998
#: the pooled model's draws per chain at least (tau mixes slowly: its tail ESS is about a fifth of the draws, so 1,000
#: draws per chain often miss the gates' 400; with nutpie, compiling costs more than sampling)
MIN_DRAWS = 2000
#: a new family's interval is mostly prior when tau's posterior 90% quantile is above this share of its prior's
MOSTLY_PRIOR = 0.75
FORMULA = "p(toxic, n) ~ 0 + baseline + treated + (0 + treated | comparison)"
MU, TAU, EFFECTS = "treated", "treated|comparison_sigma", "treated|comparison"

#: what stages.compare's rows must carry for the pooled model (finetox.compare.compare_rates writes them)
COUNT_COLUMNS = ["comparison", "subset", "baseline", "treatment", "n_baseline", "toxic_baseline", "n_treatment",
                 "toxic_treatment", "unit"]


@dataclass(frozen=True)
class Member:
    """Where a comparison is pooled: its pool's label (its kind, and for fine-tunes its recipe's `pool_as`), its
    kind and its family."""

    pool: str
    kind: str
    family: str


@dataclass(frozen=True)
class Pool:
    label: str
    kind: str
    subset: str
    comparisons: tuple[str, ...]
    families: tuple[str, ...]  # one per comparison

    @property
    def name(self) -> str:
        """What gated() and the logs call it."""
        return f"{self.label}/{self.subset}"


def pools_of(rows: pd.DataFrame, members: dict[str, Member]) -> list[Pool]:
    """Every pool of the rows' comparisons (those in `members`), per label and subset, fittable or not."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for name, subset in zip(rows["comparison"], rows["subset"]):
        if name in members:
            grouped.setdefault((members[name].pool, members[name].kind, subset), []).append(name)
    return [Pool(label, kind, subset, tuple(sorted(names)), tuple(members[n].family for n in sorted(names)))
            for (label, kind, subset), names in sorted(grouped.items())]


def not_pooled(pool: Pool, counts: pd.DataFrame) -> str | None:
    """Why a pool is not fitted (its status), or None: a spread across families needs two families, and an odds
    ratio pooled across comparisons needs them to count one unit."""
    families = sorted(set(pool.families))
    if len(families) < 2:
        return (f"not pooled: one family ({families[0]}) only, {len(pool.comparisons)} comparison(s): "
                "nothing to pool across")
    units = sorted(set(counts["unit"]))
    if len(units) > 1:
        return f"not pooled: its comparisons count different units ({', '.join(units)})"
    return None


def pool_counts(pool: Pool, rows: pd.DataFrame) -> pd.DataFrame:
    """The pool's comparisons' rows (COUNT_COLUMNS), checked: a frame without them is a bug, not a failed fit."""
    missing = [c for c in COUNT_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"pooled {pool.name}: the comparisons' rows lack column(s) {missing}")
    here = rows[(rows["subset"] == pool.subset) & rows["comparison"].isin(pool.comparisons)]
    if sorted(here["comparison"]) != sorted(pool.comparisons):
        raise ValueError(f"pooled {pool.name}: expected one row per comparison {list(pool.comparisons)}, "
                         f"got {sorted(here['comparison'])}")
    return here[COUNT_COLUMNS].sort_values("comparison").reset_index(drop=True)


def model_data(counts: pd.DataFrame) -> pd.DataFrame:
    """The model's rows on the raw counts: each baseline variant once (treated 0), each comparison's treatment
    (treated 1). Raises DegenerateDataError when no cell has a toxic unit (or every unit is toxic): the odds
    ratio is then not identified, and the posterior would be its prior."""
    baselines = counts.groupby("baseline", sort=True).agg(
        toxic=("toxic_baseline", "first"), n=("n_baseline", "first"), check=("toxic_baseline", "nunique"),
        n_check=("n_baseline", "nunique"), comparison=("comparison", "first"))
    if (baselines["check"] > 1).any() or (baselines["n_check"] > 1).any():
        raise ValueError(f"a baseline variant has different counts in two comparisons of one subset: {baselines}")
    data = pd.concat([
        baselines.reset_index()[["toxic", "n", "baseline", "comparison"]].assign(treated=0.0),
        pd.DataFrame({"toxic": counts["toxic_treatment"], "n": counts["n_treatment"], "baseline": counts["baseline"],
                      "comparison": counts["comparison"], "treated": 1.0}),
    ], ignore_index=True).astype({"toxic": "int64", "n": "int64", "baseline": str, "comparison": str})
    if not (data["toxic"] > 0).any():
        raise DegenerateDataError("no toxic unit in any of its cells: the odds ratio is not identified")
    if (data["toxic"] == data["n"]).all():
        raise DegenerateDataError("every unit of every cell is toxic: the odds ratio is not identified")
    return data


def priors():
    import bambi as bmb

    return {"baseline": bmb.Prior("Logistic", mu=0, s=BASELINE_PRIOR_SCALE),
            MU: bmb.Prior("Normal", mu=0, sigma=MU_PRIOR_SD),
            EFFECTS: bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfNormal", sigma=TAU_PRIOR_SD))}


def fit_pool(data: pd.DataFrame, settings: FitSettings, seed: int, target_accept: float = TARGET_ACCEPT):
    """One pool's posterior (bambi, binomial on the counts)."""
    import bambi as bmb

    model = bmb.Model(FORMULA, data, family="binomial", priors=priors(), noncentered=True)
    return model.fit(draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=settings.cores,
                     random_seed=seed, progressbar=False, inference_method=fastest_sampler(),
                     target_accept=target_accept)


def baseline_rate(counts: pd.DataFrame) -> float:
    """The rate the pooled odds ratio is also shown at: all the pool's baselines as one, (k + 1) / (n + 2) (the
    posterior mean of one rate under a uniform prior: the observed share, never exactly 0)."""
    baselines = counts.drop_duplicates("baseline")
    return float((baselines["toxic_baseline"].sum() + 1) / (baselines["n_baseline"].sum() + 2))


def _at_rate(log_odds_ratio: np.ndarray, rate: float, scale: str) -> np.ndarray:
    """A log odds ratio as the effect on `scale` (decision.effect's additive scales) at a baseline rate."""
    treated = 1 / (1 + np.exp(-(np.log(rate) - np.log1p(-rate) + log_odds_ratio)))
    return decision.effect(np.full_like(treated, rate), treated, scale)


def prior_tau_q90() -> float:
    from scipy import stats

    return float(stats.halfnorm(scale=TAU_PRIOR_SD).ppf(0.9))


def summarise_pool(pool: Pool, counts: pd.DataFrame, mu: np.ndarray, tau: np.ndarray, settings: FitSettings) -> dict:
    """One fitted pool's row from its (chain, draw) draws of mu and tau: the pooled odds ratio and the rate difference at the pool's baseline rate, the
    verdict on the ROPE's scale (at that rate when the scale is not the log-odds), with the Monte Carlo error of
    its HDI limits and the borderline flag, tau, and a new family's interval with a note when it is mostly prior."""
    rope, scale, prob = settings.rope, decision.scale_of(settings.rope), settings.hdi_prob
    rate = baseline_rate(counts)
    low, high, error = hdi_with_error(_at_rate(mu, rate, scale), prob)
    mu_low, mu_high, _ = hdi_with_error(mu, prob)
    diff = _at_rate(mu, rate, "absolute")
    diff_low, diff_high, _ = hdi_with_error(diff, prob)
    new = mu + tau * keyed_rng(settings.seed, "new family", pool.name).standard_normal(mu.shape)
    new_low, new_high, _ = hdi_with_error(new, prob)
    new_diff_low, new_diff_high, _ = hdi_with_error(_at_rate(new, rate, "absolute"), prob)
    tau_q90, prior_q90 = float(np.quantile(tau, 0.9)), prior_tau_q90()
    note = (f"mostly prior: tau's 90% upper limit {tau_q90:.2f} against its prior's {prior_q90:.2f}; "
            f"{len(set(pool.families))} families say little about how much families differ, so a new family's "
            "interval reflects the prior more than the data" if tau_q90 > MOSTLY_PRIOR * prior_q90 else "")
    return {
        "baseline_rate": rate, "odds_ratio": float(np.exp(np.median(mu))), "odds_ratio_hdi_low": float(np.exp(mu_low)),
        "odds_ratio_hdi_high": float(np.exp(mu_high)), "rate_diff": float(np.median(diff)), "rate_diff_hdi_low": diff_low,
        "rate_diff_hdi_high": diff_high, "hdi_prob": prob, "scale": scale,
        "effect": float(decision.shown(np.median(_at_rate(mu, rate, scale)), scale)),
        "effect_hdi_low": float(decision.shown(low, scale)), "effect_hdi_high": float(decision.shown(high, scale)),
        "rope_low": decision.shown(decision.bounds(rope)[0], scale) if rope is not None else np.nan,
        "rope_high": decision.shown(decision.bounds(rope)[1], scale) if rope is not None else np.nan,
        "verdict": decision.verdict(low, high, rope), "decision_rule": decision.decision_rule(rope),
        "hdi_mc_error": error, "borderline": decision.borderline(low, high, rope, 2 * error),
        "credible": decision.credible(low, high),
        "tau_median": float(np.median(tau)), "tau_q90": tau_q90, "tau_prior_q90": prior_q90,
        "new_family_or_hdi_low": float(np.exp(new_low)), "new_family_or_hdi_high": float(np.exp(new_high)),
        "new_family_diff_hdi_low": new_diff_low, "new_family_diff_hdi_high": new_diff_high, "new_family_note": note,
    }


def pooled_estimates(rows: pd.DataFrame, members: dict[str, Member],
                     settings: FitSettings) -> tuple[pd.DataFrame, object]:
    """Every pool of the rows' comparisons, one row each (POOLED_COLUMNS): fitted (`status` ok), not pooled (one
    family, mixed units) or failed (sampling.fit_errors: its gates after a refit, its sampler, degenerate data),
    with the reason in `status`; and the fitted pools' posteriors of mu and tau as one InferenceData (None when
    none was fitted). Any other error (a malformed frame, memory) is raised: it fails the job."""
    out, posteriors = [], {}
    settings = replace(settings, draws=max(settings.draws, MIN_DRAWS))
    for pool in pools_of(rows, members):
        counts = pool_counts(pool, rows)
        row = {"pool": pool.label, "kind": pool.kind, "subset": pool.subset, "comparisons": ";".join(pool.comparisons),
               "families": len(set(pool.families)), "n_comparisons": len(pool.comparisons),
               "unit": ";".join(sorted(set(counts["unit"])))}
        reason = not_pooled(pool, counts)
        if reason:
            out.append({**row, "status": reason})
            continue
        seed = int(keyed_rng(settings.seed, "pooled", pool.name).integers(2**31))
        try:
            data = model_data(counts)
            idata, diag, failures = gated(lambda st: fit_pool(data, st, seed, TARGET_ACCEPT if st == settings
                                                              else REFIT_TARGET_ACCEPT),
                                          lambda idata, p: ([MU, TAU], None), [pool], settings,
                                          f"pooled {pool.name}", strict=False)
        except fit_errors() as error:
            out.append({**row, "status": failure_status(error)})
            continue
        if failures:  # estimates of a posterior that failed its gates (after a refit) are not reported
            out.append({**row, **diag[pool.name], "status": f"failed: its diagnostics after a refit with "
                                                           f"{2 * settings.draws} draws per chain: {failures[pool.name]}"})
            continue
        mu, tau = posterior_draws(idata, MU), posterior_draws(idata, TAU)
        out.append({**row, **summarise_pool(pool, counts, mu, tau, settings), **diag[pool.name], "status": "ok"})
        posteriors[pool.name] = idata
    return pd.DataFrame(out, columns=POOLED_COLUMNS), _combined(posteriors)


def _combined(posteriors: dict):
    """The pools' posteriors of mu and tau, along a `pool` dimension (a pool refitted with more draws pads the
    others with NaN), with the sampler's attributes (the report's provenance reads them)."""
    if not posteriors:
        return None
    import arviz as az
    import xarray as xr

    parts = [idata.posterior[[MU, TAU]].rename({MU: "mu", TAU: "tau"}).expand_dims(pool=[name])
             for name, idata in posteriors.items()]
    posterior = xr.concat(parts, dim="pool", join="outer")
    posterior.attrs = dict(next(iter(posteriors.values())).posterior.attrs)
    return az.InferenceData(posterior=posterior)


POOLED_COLUMNS = [
    "pool", "kind", "subset", "status", "comparisons", "families", "n_comparisons", "unit", "baseline_rate",
    "odds_ratio", "odds_ratio_hdi_low", "odds_ratio_hdi_high", "rate_diff", "rate_diff_hdi_low", "rate_diff_hdi_high",
    "hdi_prob", "scale", "effect", "effect_hdi_low", "effect_hdi_high", "rope_low", "rope_high", "verdict",
    "decision_rule", "hdi_mc_error", "borderline", "credible", "tau_median", "tau_q90", "tau_prior_q90",
    "new_family_or_hdi_low", "new_family_or_hdi_high", "new_family_diff_hdi_low", "new_family_diff_hdi_high",
    "new_family_note", "r_hat", "ess_bulk", "ess_tail", "divergences",
]

"""Kruschke's BEST on per-prompt mean scores, beside the verdicts: Student-t locations, their scales and normality.

BEST fits a Student-t to each variant's per-prompt mean scores (two-sample, a shared normality nu) and to the
per-prompt differences on the prompts both answered (paired). A Student-t's location is not the mean of the scores:
with a heavy or skewed tail (a minority of very toxic outputs) the t widens its tails and its location stays with
the bulk of the prompts, so BEST describes the typical prompt. The columns say so: `location_diff` (treatment -
baseline), `location_effect_size` (the location difference over the root mean square of the two t scales, not of
the standard deviations), `paired_location_diff`, and `best_normality` (nu: small means heavy tails, where the
location and the mean part).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetox.compare import FitSettings, shared_subsets
from finetox.design import Comparison
from finetox.metrics import keyed_rng
from finetox.sampling import DegenerateDataError, failure_status, fastest_sampler, gated, posterior_draws

ROLES = ("baseline", "treatment", "paired")


def _two_sample_groups(prompt_scores: pd.DataFrame, comparisons: list[Comparison], subsets: dict[str, list[str]],
                       settings: FitSettings):
    """BEST's groups: per (comparison, subset), the baseline's and the treatment's per-prompt mean scores,
    and the per-prompt differences on the prompts both answered (the paired analysis). Past
    `settings.best_max_prompts` shared prompts, a seeded sample of that many prompts (the same for both
    variants) stands for them: BEST's cost grows with the prompts, and its answer is a few numbers."""
    by_cell = {key: g.set_index("prompt_id")["mean_score"] for key, g in prompt_scores.groupby(["variant", "subset"])}
    groups, used = [], {}  # (comparison, subset, role, values); (comparison, subset) -> (prompts used, shared)
    for c in comparisons:
        for subset in subsets[c.name]:
            base, treat = by_cell[(c.baseline, subset)], by_cell[(c.treatment, subset)]
            shared = base.index.intersection(treat.index).sort_values()
            cap = settings.best_max_prompts
            if cap is not None and len(shared) > cap:
                rng = keyed_rng(settings.seed, f"{c.name}|{subset}")
                shared = shared[np.sort(rng.choice(len(shared), cap, replace=False))]
                base, treat = base.loc[shared], treat.loc[shared]
            used[(c.name, subset)] = len(shared)
            groups += [(c.name, subset, "baseline", base.to_numpy()), (c.name, subset, "treatment", treat.to_numpy()),
                       (c.name, subset, "paired", (treat[shared] - base[shared]).to_numpy())]
    return groups, used


def check_fittable(groups) -> None:
    """DegenerateDataError where a group gives a Student-t nothing to fit: fewer than two values, or values that
    do not vary (a scale of 0: identical scores, or the same variant twice)."""
    for c, s, role, values in groups:
        if len(values) < 2:
            raise DegenerateDataError(f"{c}/{s}: the {role} scores have {len(values)} prompt(s); BEST needs two")
        if not np.ptp(values) > 0:
            raise DegenerateDataError(f"{c}/{s}: the {role} scores do not vary (all {values[0]:.4g}): a Student-t "
                                      "has no scale to fit")


def fit_best(groups, settings: FitSettings):
    """Kruschke's BEST for every (comparison, subset) at once, as independent sub-models of one PyMC model.

    Two-sample: Student-t per side with a shared normality nu; paired: a one-sample Student-t on the
    differences with its own nu. Broad priors scaled by each sub-model's data: mu ~ Normal(mean, 1000 sd),
    sigma ~ Uniform(sd / 1000, 1000 sd), nu - 1 ~ Exponential(1/29). Vectorised, so one compilation and
    one sampling run serve all comparisons.
    """
    import pymc as pm
    import pytensor.tensor as pt

    check_fittable(groups)
    names = [f"{c}|{s}|{role}" for c, s, role, _ in groups]
    pooled = {}
    for c, s, role, values in groups:
        key = (c, s, role == "paired")
        pooled[key] = np.concatenate([pooled.get(key, np.empty(0)), values])
    nu_keys = sorted(pooled)
    centre = np.array([pooled[(c, s, role == "paired")].mean() for c, s, role, _ in groups])
    spread = np.array([pooled[(c, s, role == "paired")].std() for c, s, role, _ in groups])
    nu_of = np.array([nu_keys.index((c, s, role == "paired")) for c, s, role, _ in groups])
    values = np.concatenate([v for *_, v in groups])
    with pm.Model(coords={"group": names, "nu_group": [_nu_group(c, s, p) for c, s, p in nu_keys]}):
        mu = pm.Normal("mu", mu=centre, sigma=1000 * spread, dims="group")
        sigma = pm.Uniform("sigma", lower=spread / 1000, upper=1000 * spread, dims="group")
        nu_minus_one = pm.Exponential("nu_minus_one", 1 / 29, dims="nu_group")
        # Observations are stored group by group: repeating each group's parameters is much cheaper to
        # differentiate than gathering them with an index per observation.
        sizes = np.array([len(v) for *_, v in groups])
        pm.StudentT("scores", nu=pt.repeat(nu_minus_one[nu_of] + 1, sizes), mu=pt.repeat(mu, sizes),
                    sigma=pt.repeat(sigma, sizes), observed=values)
        return pm.sample(draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=settings.cores,
                         random_seed=settings.seed, progressbar=False, compute_convergence_checks=False,
                         nuts_sampler=fastest_sampler())


def _nu_group(comparison: str, subset: str, paired: bool) -> str:
    return f"{comparison}|{subset}|{'paired' if paired else 'two-sample'}"


def _summary(draws: np.ndarray, prob: float) -> tuple[float, float, float]:
    """Posterior mean and HDI."""
    import arviz as az

    low, high = az.hdi(draws, hdi_prob=prob)
    return float(draws.mean()), float(low), float(high)


def compare_scores(prompt_scores: pd.DataFrame, comparisons: list[Comparison],
                   settings: FitSettings) -> tuple[pd.DataFrame, object]:
    """BEST beside the verdicts: per comparison and subset, the difference of the Student-t locations with its HDI
    and effect size, the paired location difference and the normality. `prompt_scores`: variant, subset,
    prompt_id, mean_score. A (comparison, subset) whose scores give a Student-t nothing to fit (check_fittable) is a
    failed row, its reason in `best_status`, and the others are fitted without it; returns (rows, posterior or
    None when nothing could be fitted)."""
    subsets = shared_subsets(set(zip(prompt_scores["variant"], prompt_scores["subset"])), comparisons)
    groups, used = _two_sample_groups(prompt_scores, comparisons, subsets, settings)
    available = {key: len(g) for key, g in prompt_scores.groupby(["variant", "subset"])}
    degenerate = {}
    for c in comparisons:
        for s in subsets[c.name]:
            try:
                check_fittable([g for g in groups if g[:2] == (c.name, s)])
            except DegenerateDataError as error:
                degenerate[(c.name, s)] = failure_status(error)
    fitted = [g for g in groups if g[:2] not in degenerate]
    fitted_subsets = {c.name: [s for s in subsets[c.name] if (c.name, s) not in degenerate] for c in comparisons}

    def parameters(idata, c):
        names = [f"{c.name}|{s}|{role}" for s in fitted_subsets[c.name] for role in ROLES]
        return ["mu", "sigma"], {"group": names}

    # BEST is secondary: a fit that fails its gates is reported as failed, and never blocks the verdicts
    idata, diag, failures = (gated(lambda st: fit_best(fitted, st), parameters,
                                   [c for c in comparisons if fitted_subsets[c.name]], settings, "BEST", strict=False)
                             if fitted else (None, {}, {}))
    sizes = {(c, s, role): len(v) for c, s, role, v in groups}
    rows = []
    for c in comparisons:
        for subset in subsets[c.name]:
            row = {"comparison": c.name, "subset": subset, "paired_prompts": sizes[(c.name, subset, "paired")],
                   "best_prompts": used[(c.name, subset)],
                   "best_subsampled": used[(c.name, subset)] < min(available[(c.baseline, subset)],
                                                                  available[(c.treatment, subset)]),
                   **{f"best_{k}": v for k, v in diag.get(c.name, {}).items()}}
            if (c.name, subset) in degenerate:
                rows.append({**row, **{key: np.nan for key in BEST_ESTIMATES}, "best_status": degenerate[(c.name, subset)]})
                continue
            loc_b, loc_t, loc_p = (posterior_draws(idata, "mu", group=f"{c.name}|{subset}|{r}").reshape(-1)
                                   for r in ROLES)
            scale_b, scale_t = (posterior_draws(idata, "sigma", group=f"{c.name}|{subset}|{r}").reshape(-1)
                                for r in ("baseline", "treatment"))
            nu = posterior_draws(idata, "nu_minus_one", nu_group=_nu_group(c.name, subset, False)).reshape(-1) + 1
            location = _summary(loc_t - loc_b, settings.hdi_prob)
            effect = _summary((loc_t - loc_b) / np.sqrt((scale_b**2 + scale_t**2) / 2), settings.hdi_prob)
            paired = _summary(loc_p, settings.hdi_prob)
            row.update({key: value for key, value in zip(BEST_ESTIMATES, (*location, *effect, *paired,
                                                                          float(np.median(nu))))})
            if c.name in failures:  # estimates of a posterior that failed its gates are not reported
                row.update({key: np.nan for key in BEST_ESTIMATES})
            rows.append({**row, "best_status": f"failed: {failures[c.name]}" if c.name in failures else "ok"})
    return pd.DataFrame(rows), idata


def best_failed(comparisons: list[Comparison], subsets: dict[str, list[str]], error: Exception) -> pd.DataFrame:
    """BEST's rows when the fit itself failed (one of sampling.fit_errors): every estimate missing, the error as its
    status."""
    return pd.DataFrame([{"comparison": c.name, "subset": s, **{key: np.nan for key in BEST_ESTIMATES},
                          "best_status": failure_status(error)}
                         for c in comparisons for s in subsets[c.name]])


#: BEST's estimates in comparisons.csv: Student-t locations, not means (see the module's docstring)
BEST_ESTIMATES = ("location_diff", "location_diff_hdi_low", "location_diff_hdi_high", "location_effect_size",
                  "location_effect_size_hdi_low", "location_effect_size_hdi_high", "paired_location_diff",
                  "paired_location_diff_hdi_low", "paired_location_diff_hdi_high", "best_normality")

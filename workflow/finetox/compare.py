"""Bayesian comparison of two variants: toxic-output rates (binomial, bambi) and scores (BEST, PyMC).

Rates. Each variant x subset cell's count of toxic units k of n gets k ~ Binomial(n, p_cell) with
logit(p_cell) ~ Normal(0, prior_sigma) (or the exactly uniform prior on p_cell, a standard logistic
on the log-odds). Cells share no parameter, so each rate's posterior depends only on its own counts,
and fitting aggregated counts costs the same for 10k or 1M continuations. The units are
continuations when each prompt has one sample, and prompts (toxic = at least one toxic sample, as in
RealToxicityPrompts' Toxicity Probability) when it has several: samples of one prompt are correlated,
and counting them as independent trials would make the intervals too narrow.

Scores. Kruschke's BEST on per-prompt mean scores, per subset: a Student-t likelihood per variant with
a shared normality parameter and his broad priors; and, since both variants see the same prompts, the
paired version on per-prompt differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetox.config import MIN_ESS, Comparison
from finetox.metrics import keyed_rng

MORE, LESS, NONE = "more toxic", "less toxic", "no credible difference"
EQUIVALENT, UNDECIDED = "practically equivalent", "undecided"
# The two decision rules, named in every row (`decision_rule`). The study's: a difference is credible when
# its HDI excludes 0. Kruschke's HDI+ROPE rule (Kruschke 2018, "Rejecting or accepting parameter values in
# Bayesian estimation"): the null is rejected when the HDI lies wholly outside the region of practical
# equivalence, accepted when it lies wholly inside, and the data are undecided otherwise. `credible` always
# gives the study's rule; `verdict` gives Kruschke's when a ROPE is configured, the study's when it is null.
STUDY_RULE, KRUSCHKE_RULE = "HDI excludes 0 (the study's)", "HDI+ROPE (Kruschke)"
VERDICT_RULES = {
    MORE: "HDI+ROPE: the HDI of the difference (treatment - baseline) lies wholly above the ROPE; "
          "without a ROPE: the HDI lies above 0",
    LESS: "HDI+ROPE: the HDI lies wholly below the ROPE; without a ROPE: the HDI lies below 0",
    EQUIVALENT: "HDI+ROPE: the whole HDI lies inside the region of practical equivalence (ROPE)",
    UNDECIDED: "HDI+ROPE: the HDI overlaps the ROPE's edge: the data cannot tell yet",
    NONE: "without a ROPE: the HDI contains 0",
}


def decision_rule(rope: float | None) -> str:
    return KRUSCHKE_RULE if rope is not None else STUDY_RULE


def credible(hdi_low: float, hdi_high: float) -> bool:
    """The study's rule: the HDI of the difference excludes 0."""
    return bool(hdi_low > 0 or hdi_high < 0)


class DiagnosticsError(RuntimeError):
    """A posterior whose sampler diagnostics fail the gates even after a refit with more draws."""


@dataclass(frozen=True)
class FitSettings:
    hdi_prob: float
    prior: str  # "normal" or "uniform"
    prior_sigma: float
    rope: float | None
    draws: int
    tune: int
    chains: int
    seed: int
    cores: int = 1
    max_r_hat: float = 1.01
    min_ess: float = MIN_ESS
    best_max_prompts: int | None = None  # BEST's prompts per comparison x subset (seeded sample); None: all

    def doubled(self) -> "FitSettings":
        return FitSettings(**{**vars(self), "draws": 2 * self.draws, "tune": 2 * self.tune})


#: the verdicts in the words of what a scorer measures (the analysis speaks toxicity's: a higher rate is MORE)
WORDING = {"toxicity": {}, "refusal": {MORE: "more refusals", LESS: "fewer refusals"}}


def in_words_of(rows: pd.DataFrame, measure: str) -> pd.DataFrame:
    """`rows` with their verdict columns worded for `measure` ("more refusals", not "more toxic")."""
    columns = [c for c in ("verdict", "paired_rate_verdict") if c in rows.columns]
    return rows.assign(**{c: rows[c].replace(WORDING[measure]) for c in columns})


def verdict(hdi_low: float, hdi_high: float, rope: float | None) -> str:
    """Kruschke's HDI+ROPE decision, or the study's rule when there is no ROPE (VERDICT_RULES)."""
    if rope is None:
        return MORE if hdi_low > 0 else LESS if hdi_high < 0 else NONE
    if -rope <= hdi_low and hdi_high <= rope:
        return EQUIVALENT
    if hdi_low > rope:
        return MORE
    if hdi_high < -rope:
        return LESS
    return UNDECIDED


def summarise(draws: np.ndarray, hdi_prob: float, rope: float | None) -> dict:
    """Mean, HDI, probability of direction and ROPE share of a posterior difference."""
    import arviz as az

    low, high = az.hdi(draws, hdi_prob=hdi_prob)
    median_sign = np.sign(np.median(draws)) or 1.0
    return {
        "diff_mean": float(draws.mean()),
        "diff_sd": float(draws.std()),
        "hdi_low": float(low),
        "hdi_high": float(high),
        "prob_direction": float(np.mean(np.sign(draws) == median_sign)),
        "rope_share": float(np.mean(np.abs(draws) <= rope)) if rope is not None else np.nan,
        "verdict": verdict(low, high, rope),
        "credible": credible(low, high),
    }


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


def _cell(variant: str, subset: str) -> str:
    return f"{variant}::{subset}"


def fit_rates(counts: pd.DataFrame, settings: FitSettings):
    """Posterior of each cell's rate from columns variant, subset, n, toxic (bambi, binomial)."""
    import bambi as bmb

    data = pd.DataFrame({
        "cell": [_cell(v, s) for v, s in zip(counts["variant"], counts["subset"])],
        "toxic": counts["toxic"].astype(int).to_numpy(),
        "n": counts["n"].astype(int).to_numpy(),
    })
    prior = (bmb.Prior("Logistic", mu=0, s=1) if settings.prior == "uniform"
             else bmb.Prior("Normal", mu=0, sigma=settings.prior_sigma))
    model = bmb.Model("p(toxic, n) ~ 0 + cell", data, family="binomial", priors={"cell": prior})
    return model.fit(draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=settings.cores,
                     random_seed=settings.seed, progressbar=False)


def rate_draws(idata) -> dict[str, np.ndarray]:
    """Cell name -> posterior draws of its rate (chains flattened)."""
    beta = idata.posterior["cell"]
    dim = [d for d in beta.dims if d not in ("chain", "draw")][0]
    return {str(c): 1 / (1 + np.exp(-beta.sel({dim: c}).values.reshape(-1))) for c in beta.coords[dim].values}


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


def fit_best(groups, settings: FitSettings):
    """Kruschke's BEST for every (comparison, subset) at once, as independent sub-models of one PyMC model.

    Two-sample: Student-t per side with a shared normality nu; paired: a one-sample Student-t on the
    differences with its own nu. Broad priors scaled by each sub-model's data: mu ~ Normal(mean, 1000 sd),
    sigma ~ Uniform(sd / 1000, 1000 sd), nu - 1 ~ Exponential(1/29). Vectorised, so one compilation and
    one sampling run serve all comparisons.
    """
    import pymc as pm
    import pytensor.tensor as pt

    names = [f"{c}|{s}|{role}" for c, s, role, _ in groups]
    pooled = {}
    for c, s, role, values in groups:
        key = (c, s, role == "paired")
        pooled[key] = np.concatenate([pooled.get(key, np.empty(0)), values])
    nu_keys = sorted(pooled)
    centre = np.array([pooled[(c, s, role == "paired")].mean() for c, s, role, _ in groups])
    spread = np.array([pooled[(c, s, role == "paired")].std() or 1e-3 for c, s, role, _ in groups])
    nu_of = np.array([nu_keys.index((c, s, role == "paired")) for c, s, role, _ in groups])
    values = np.concatenate([v for *_, v in groups])
    with pm.Model(coords={"group": names, "nu_group": [f"{c}|{s}|{'paired' if p else 'two-sample'}" for c, s, p in nu_keys]}):
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
                         nuts_sampler=_fastest_sampler())


def _fastest_sampler() -> str:
    """nutpie (compiled, several times faster on thousands of prompts) where it is installed, else PyMC's."""
    import importlib.util

    return "nutpie" if importlib.util.find_spec("nutpie") else "pymc"


def _draws(idata, var: str, dim: str, name: str) -> np.ndarray:
    return idata.posterior[var].sel({dim: name}).values.reshape(-1)


def shared_subsets(cells: set[tuple[str, str]], comparisons: list[Comparison]) -> dict[str, list[str]]:
    subsets = {}
    for c in comparisons:
        shared = {s for v, s in cells if v == c.baseline} & {s for v, s in cells if v == c.treatment}
        if not shared:
            raise ValueError(f"comparison {c.name!r}: the two variants share no subset")
        subsets[c.name] = sorted(shared, key=lambda s: (s == "all", s))
    return subsets


def gated(fit, parameters, comparisons: list[Comparison], settings: FitSettings, what: str, strict: bool = True):
    """Fit; if the parameters of any comparison fail a gate, refit once with twice the draws; then fail
    loudly, naming the comparisons and diagnostics (strict), or return the failures by comparison for the
    caller to report. `parameters(c)` gives (var_names, coords) of c. Returns (idata, diagnostics, failures)."""

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
                                   + " | ".join(f"comparison {name}: {problems}" for name, problems in failures.items()))
    return idata, report, failures


def compare_rates(counts: pd.DataFrame, comparisons: list[Comparison], settings: FitSettings,
                  prompts: pd.DataFrame | None = None) -> tuple[pd.DataFrame, object]:
    """The verdicts: one row per comparison and subset, from one binomial fit of every cell involved, with
    the paired analysis beside it when `prompts` (variant, subset, prompt_id, toxic; metrics.with_pooled of
    the prompt tables) is given.

    `counts`: variant, subset, n, toxic, unit (see metrics.comparison_units). The cost grows with the
    number of cells, not with the number of continuations.
    """
    indexed = counts.set_index(["variant", "subset"])
    subsets = shared_subsets(set(indexed.index), comparisons)
    for c in comparisons:
        units = {v: set(indexed.loc[v, "unit"]) for v in (c.baseline, c.treatment)}
        if len(units[c.baseline] | units[c.treatment]) > 1:
            raise ValueError(f"comparison {c.name!r}: {c.baseline!r} is counted in {sorted(units[c.baseline])} and "
                             f"{c.treatment!r} in {sorted(units[c.treatment])}; a rate difference needs one unit")
    involved = counts[counts["variant"].isin({v for c in comparisons for v in (c.baseline, c.treatment)})]

    def parameters(idata, c):
        dim = [d for d in idata.posterior["cell"].dims if d not in ("chain", "draw")][0]
        return ["cell"], {dim: [_cell(v, s) for v in (c.baseline, c.treatment) for s in subsets[c.name]]}

    idata, diag, _ = gated(lambda s: fit_rates(involved, s), parameters, comparisons, settings, "rates")
    rate = rate_draws(idata)
    toxic_by_cell = ({key: g.set_index("prompt_id")["toxic"] for key, g in prompts.groupby(["variant", "subset"])}
                     if prompts is not None else None)
    rows = []
    for c in comparisons:
        for subset in subsets[c.name]:
            base, treat = indexed.loc[(c.baseline, subset)], indexed.loc[(c.treatment, subset)]
            p_base, p_treat = rate[_cell(c.baseline, subset)], rate[_cell(c.treatment, subset)]
            difference = summarise(p_treat - p_base, settings.hdi_prob, settings.rope)
            ratio = summarise(p_treat / p_base, settings.hdi_prob, None)
            rows.append({
                "comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
                "subset": subset, "n_baseline": int(base["n"]), "n_treatment": int(treat["n"]),
                "toxic_baseline": int(base["toxic"]), "toxic_treatment": int(treat["toxic"]),
                "diff_mean": difference["diff_mean"], "diff_sd": difference["diff_sd"],
                "hdi_low": difference["hdi_low"], "hdi_high": difference["hdi_high"], "hdi_prob": settings.hdi_prob,
                "credible": difference["credible"], "verdict": difference["verdict"],
                "decision_rule": decision_rule(settings.rope), "verdict_from": "rates (binomial)",
                "unit": base["unit"], "rate_baseline": float(p_base.mean()), "rate_treatment": float(p_treat.mean()),
                "prob_direction": difference["prob_direction"],
                "rope": settings.rope if settings.rope is not None else np.nan, "rope_share": difference["rope_share"],
                "ratio_mean": ratio["diff_mean"], "ratio_hdi_low": ratio["hdi_low"], "ratio_hdi_high": ratio["hdi_high"],
                **diag[c.name],
            })
            if toxic_by_cell is not None:
                table = paired_table(toxic_by_cell[(c.baseline, subset)], toxic_by_cell[(c.treatment, subset)])
                rows[-1].update(paired_rate_row(table, settings, c.name, subset))
    return pd.DataFrame(rows), idata


def paired_table(baseline: pd.Series, treatment: pd.Series) -> dict[str, int]:
    """The 2 x 2 table of prompts both variants answered, from per-prompt toxic flags indexed by prompt id:
    toxic under both, under the baseline only, under the treatment only, under neither."""
    shared = baseline.index.intersection(treatment.index)
    b, t = baseline.loc[shared].to_numpy(bool), treatment.loc[shared].to_numpy(bool)
    return {"both": int((b & t).sum()), "baseline_only": int((b & ~t).sum()),
            "treatment_only": int((~b & t).sum()), "neither": int((~b & ~t).sum())}


# Dirichlet(1/2, 1/2, 1/2, 1/2) over the four joint outcomes: each variant's marginal rate is then uniform,
# Beta(1, 1), the same prior as the unpaired model's default.
PAIRED_PRIOR = 0.5


def paired_rate_difference(table: dict[str, int], draws: int, rng: np.random.Generator) -> np.ndarray:
    """Exact posterior draws of p_treatment - p_baseline from the paired 2 x 2 table: the joint outcome of a
    prompt is multinomial, its probabilities Dirichlet a posteriori, and the difference of the two rates is
    P(treatment only) - P(baseline only). Prompts toxic under both or neither narrow it (McNemar's idea)."""
    alpha = PAIRED_PRIOR + np.array([table["both"], table["baseline_only"], table["treatment_only"], table["neither"]])
    joint = rng.dirichlet(alpha, draws)
    return joint[:, 2] - joint[:, 1]


def paired_rate_row(table: dict[str, int], settings: FitSettings, comparison: str, subset: str) -> dict:
    rng = keyed_rng(settings.seed, f"{comparison}|{subset}")
    difference = summarise(paired_rate_difference(table, max(100_000, settings.draws * settings.chains), rng),
                           settings.hdi_prob, settings.rope)
    return {"paired_n": sum(table.values()), "discordant_baseline": table["baseline_only"],
            "discordant_treatment": table["treatment_only"], "paired_rate_diff_mean": difference["diff_mean"],
            "paired_rate_hdi_low": difference["hdi_low"], "paired_rate_hdi_high": difference["hdi_high"],
            "paired_rate_credible": difference["credible"], "paired_rate_verdict": difference["verdict"]}


# The pooled model's priors, on the scale of a rate difference (-1 to 1): the mean difference of a kind across
# families mu ~ Normal(0, 0.5) (weak), the spread of the families' true differences tau ~ HalfNormal(0.1)
# (families differing by tens of points are plausible, by 50 points not).
POOLED_MU_SD, POOLED_TAU_SD = 0.5, 0.1


@dataclass(frozen=True)
class Pool:
    name: str  # "<kind>" or "<kind> (<recipe>)", with the subset: what gated() reports
    kind: str
    subset: str
    comparisons: tuple[str, ...]


def pools_of(rows: pd.DataFrame, group_of: dict[str, tuple[str, str, str]]) -> tuple[list[Pool], list[str]]:
    """The comparisons to pool, per pool label and subset, from `group_of`: comparison -> (label, kind, family).
    A pool needs two families or more, and one comparison per family (comparisons that share a baseline are
    not independent estimates). Returns the pools and, for the log, why the others were left out."""
    members: dict[tuple[str, str, str], list[str]] = {}
    for name, subset in zip(rows["comparison"], rows["subset"]):
        if name in group_of:
            label, kind, _ = group_of[name]
            members.setdefault((label, kind, subset), []).append(name)
    pools, skipped = [], []
    for (label, kind, subset), names in members.items():
        families = [group_of[n][2] for n in names]
        if len(set(families)) < 2:
            skipped.append(f"{label}/{subset}: one family ({families[0]}) only")
        elif len(set(families)) < len(families):
            skipped.append(f"{label}/{subset}: a family has several comparisons ({', '.join(names)})")
        else:
            pools.append(Pool(f"{label}|{subset}", kind, subset, tuple(sorted(names))))
    return pools, skipped


def fit_pooled(pools: list[Pool], estimates: pd.DataFrame, settings: FitSettings):
    """Random-effects model of each pool, all in one PyMC model: comparison j's difference d_j (its posterior
    mean, with posterior sd s_j) ~ Normal(theta_j, s_j), theta_j ~ Normal(mu, tau), with theta integrated
    out: d_j ~ Normal(mu, sqrt(tau^2 + s_j^2)). `estimates`: indexed by (comparison, subset), diff_mean, diff_sd."""
    import pymc as pm

    index = [(i, name, pool.subset) for i, pool in enumerate(pools) for name in pool.comparisons]
    of = np.array([i for i, _, _ in index])
    d = np.array([estimates.loc[(name, subset), "diff_mean"] for _, name, subset in index])
    s = np.array([estimates.loc[(name, subset), "diff_sd"] for _, name, subset in index])
    with pm.Model(coords={"pool": [p.name for p in pools]}):
        mu = pm.Normal("mu", 0, POOLED_MU_SD, dims="pool")
        tau = pm.HalfNormal("tau", POOLED_TAU_SD, dims="pool")
        pm.Normal("difference", mu=mu[of], sigma=pm.math.sqrt(tau[of] ** 2 + s**2), observed=d)
        return pm.sample(draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=settings.cores,
                         random_seed=settings.seed, progressbar=False, compute_convergence_checks=False,
                         target_accept=0.99)


def pooled_differences(rows: pd.DataFrame, pools: list[Pool], settings: FitSettings) -> pd.DataFrame:
    """Per pool (a comparison kind, and recipe, across families) and subset: the pooled difference mu with its
    HDI, credible and verdict under the same rules as the comparisons, the spread tau between families, and
    the interval of a new family's difference. A fit that fails its gates gives a row with status, no estimates."""
    if not pools:
        return pd.DataFrame(columns=POOLED_COLUMNS)
    estimates = rows.set_index(["comparison", "subset"])
    idata, diag, failures = gated(lambda st: fit_pooled(pools, estimates, st),
                                  lambda idata, pool: (["mu", "tau"], {"pool": [pool.name]}),
                                  pools, settings, "pooled", strict=False)
    rng = np.random.default_rng(settings.seed)
    out = []
    for pool in pools:
        mu, tau = _draws(idata, "mu", "pool", pool.name), _draws(idata, "tau", "pool", pool.name)
        pooled = summarise(mu, settings.hdi_prob, settings.rope)
        new_family = summarise(mu + tau * rng.standard_normal(len(mu)), settings.hdi_prob, None)
        row = {"pool": pool.name.split("|")[0], "kind": pool.kind, "subset": pool.subset,
               "comparisons": ";".join(pool.comparisons), "families": len(pool.comparisons),
               "pooled_mean": pooled["diff_mean"], "pooled_hdi_low": pooled["hdi_low"],
               "pooled_hdi_high": pooled["hdi_high"], "hdi_prob": settings.hdi_prob, "credible": pooled["credible"],
               "verdict": pooled["verdict"], "decision_rule": decision_rule(settings.rope),
               "rope": settings.rope if settings.rope is not None else np.nan,
               "tau_mean": float(tau.mean()), "tau_upper": float(np.quantile(tau, settings.hdi_prob)),
               "new_family_hdi_low": new_family["hdi_low"], "new_family_hdi_high": new_family["hdi_high"],
               **diag[pool.name], "status": f"failed: {failures[pool.name]}" if pool.name in failures else "ok"}
        if pool.name in failures:
            row.update({key: np.nan for key in ("pooled_mean", "pooled_hdi_low", "pooled_hdi_high", "tau_mean",
                                                "tau_upper", "new_family_hdi_low", "new_family_hdi_high")})
            row.update({"credible": pd.NA, "verdict": ""})
        out.append(row)
    return pd.DataFrame(out, columns=POOLED_COLUMNS)


def pooled_failed(pools: list[Pool], error: Exception) -> pd.DataFrame:
    """The pooled rows when the fit itself could not run: no estimates, the error as their status."""
    return pd.DataFrame([{"pool": p.name.split("|")[0], "kind": p.kind, "subset": p.subset,
                          "comparisons": ";".join(p.comparisons), "families": len(p.comparisons),
                          "status": f"failed: {type(error).__name__}: {error}"} for p in pools], columns=POOLED_COLUMNS)


POOLED_COLUMNS = ["pool", "kind", "subset", "comparisons", "families", "pooled_mean", "pooled_hdi_low",
                  "pooled_hdi_high", "hdi_prob", "credible", "verdict", "decision_rule", "rope", "tau_mean",
                  "tau_upper", "new_family_hdi_low", "new_family_hdi_high", "r_hat", "ess_bulk", "ess_tail",
                  "divergences", "status"]


def compare_scores(prompt_scores: pd.DataFrame, comparisons: list[Comparison],
                   settings: FitSettings) -> tuple[pd.DataFrame, object]:
    """BEST beside the verdicts: per comparison and subset, the difference of mean scores with its HDI and
    effect size, and the paired difference. `prompt_scores`: variant, subset, prompt_id, mean_score."""
    subsets = shared_subsets(set(zip(prompt_scores["variant"], prompt_scores["subset"])), comparisons)
    groups, used = _two_sample_groups(prompt_scores, comparisons, subsets, settings)
    available = {key: len(g) for key, g in prompt_scores.groupby(["variant", "subset"])}

    def parameters(idata, c):
        names = [f"{c.name}|{s}|{role}" for s in subsets[c.name] for role in ("baseline", "treatment", "paired")]
        return ["mu", "sigma"], {"group": names}

    # BEST is secondary: a fit that fails its gates is reported as failed, and never blocks the verdicts
    idata, diag, failures = gated(lambda s: fit_best(groups, s), parameters, comparisons, settings, "BEST", strict=False)
    sizes = {(c, s, role): len(v) for c, s, role, v in groups}
    rows = []
    for c in comparisons:
        for subset in subsets[c.name]:
            mu_b, mu_t, mu_p = (_draws(idata, "mu", "group", f"{c.name}|{subset}|{r}") for r in ("baseline", "treatment", "paired"))
            sd_b, sd_t = (_draws(idata, "sigma", "group", f"{c.name}|{subset}|{r}") for r in ("baseline", "treatment"))
            score_diff = summarise(mu_t - mu_b, settings.hdi_prob, None)
            effect = summarise((mu_t - mu_b) / np.sqrt((sd_b**2 + sd_t**2) / 2), settings.hdi_prob, None)
            paired = summarise(mu_p, settings.hdi_prob, None)
            rows.append({
                "comparison": c.name, "subset": subset,
                "score_diff_mean": score_diff["diff_mean"], "score_hdi_low": score_diff["hdi_low"],
                "score_hdi_high": score_diff["hdi_high"], "effect_size_mean": effect["diff_mean"],
                "effect_size_hdi_low": effect["hdi_low"], "effect_size_hdi_high": effect["hdi_high"],
                "paired_diff_mean": paired["diff_mean"], "paired_hdi_low": paired["hdi_low"],
                "paired_hdi_high": paired["hdi_high"], "paired_prompts": sizes[(c.name, subset, "paired")],
                "best_prompts": used[(c.name, subset)],
                "best_subsampled": used[(c.name, subset)] < min(available[(c.baseline, subset)],
                                                               available[(c.treatment, subset)]),
                **{f"best_{k}": v for k, v in diag[c.name].items()},
            })
            if c.name in failures:  # estimates of a posterior that failed its gates are not reported
                rows[-1].update({key: np.nan for key in BEST_ESTIMATES})
            rows[-1]["best_status"] = f"failed: {failures[c.name]}" if c.name in failures else "ok"
    return pd.DataFrame(rows), idata


def best_failed(comparisons: list[Comparison], subsets: dict[str, list[str]], error: Exception) -> pd.DataFrame:
    """BEST's rows when the fit itself could not run: every estimate missing, the error as its status."""
    return pd.DataFrame([{"comparison": c.name, "subset": s, **{key: np.nan for key in BEST_ESTIMATES},
                          "best_status": f"failed: {type(error).__name__}: {error}"}
                         for c in comparisons for s in subsets[c.name]])


BEST_ESTIMATES = ("score_diff_mean", "score_hdi_low", "score_hdi_high", "effect_size_mean", "effect_size_hdi_low",
                  "effect_size_hdi_high", "paired_diff_mean", "paired_hdi_low", "paired_hdi_high")


def exact_rate_difference(k_base: int, n_base: int, k_treat: int, n_treat: int, draws: int, seed: int) -> np.ndarray:
    """Draws of p_treat - p_base under uniform priors: the exact Beta(1 + k, 1 + n - k) posteriors."""
    rng = np.random.default_rng(seed)
    return rng.beta(1 + k_treat, 1 + n_treat - k_treat, draws) - rng.beta(1 + k_base, 1 + n_base - k_base, draws)

"""The self-contained HTML report: setup, toxicity rates, comparisons and a forest plot of the differences."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd

from finetox.compare import KRUSCHKE_RULE, LESS, MORE, NONE, STUDY_RULE, UNDECIDED, VERDICT_RULES, rate_draws
from finetox.config import Study, config_hash
from finetox.hub import is_commit
from finetox.tables import PACKAGES

DEMO_WARNING = (
    "This is the embedded demo: tiny models trained for seconds on a few hundred sentences written for it, "
    "probed with prompts written for it and scored by a small profanity classifier. Its numbers say nothing "
    "about real models; they only show that the workflow runs end to end and that its controls behave."
)

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.warn{background:#fff3cd;padding:1em;border:1px solid #e0c36c}
.more{color:#b00020;font-weight:bold}.less{color:#006400;font-weight:bold}.none{color:#555}code{background:#f3f3f3;padding:0 3px}
"""


def forest_plot(comparisons: pd.DataFrame) -> str:
    """A forest plot (one panel per subset) of the posterior rate differences with their HDIs, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = sorted(comparisons["subset"].unique(), key=lambda s: (s == "all", s))
    labels = sorted((comparisons["comparison"] + " [" + comparisons["protocol"] + ", " + comparisons["scorer"] + "]").unique())
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets) + 3, 0.5 * len(labels) + 1.6),
                             sharey=True, squeeze=False)
    colours = {MORE: "#b00020", LESS: "#006400"}
    for ax, subset in zip(axes[0], subsets):
        rows = comparisons[comparisons["subset"] == subset]
        for _, row in rows.iterrows():
            y = labels.index(f"{row['comparison']} [{row['protocol']}, {row['scorer']}]")
            colour = colours.get(row["verdict"], "#555555")
            ax.plot([100 * row["hdi_low"], 100 * row["hdi_high"]], [y, y], color=colour, lw=2)
            ax.plot(100 * row["diff_mean"], y, "o", color=colour)
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_title(f"subset: {subset}")
        ax.set_xlabel("treatment - baseline, toxic outputs (pp)")
        ax.set_yticks(range(len(labels)), labels)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def posterior_plot(rates_idata, rows: pd.DataFrame, rope: float | None) -> str:
    """The posterior of each subset's rate difference with its HDI (bar) and the ROPE (band), as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draws = rate_draws(rates_idata)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 2.6), squeeze=False)
    for ax, (_, row) in zip(axes[0], rows.iterrows()):
        diff = 100 * (draws[f"{row['treatment']}::{row['subset']}"] - draws[f"{row['baseline']}::{row['subset']}"])
        ax.hist(diff, bins=60, color="#8fa8c8", density=True)
        if rope is not None:
            ax.axvspan(-100 * rope, 100 * rope, color="#f0c040", alpha=0.35, label="ROPE")
        ax.plot([100 * row["hdi_low"], 100 * row["hdi_high"]], [0, 0], color="black", lw=4, label=f"{row['hdi_prob']:.0%} HDI")
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_title(f"{row['subset']}: {row['verdict']}", fontsize=9)
        ax.set_xlabel("difference (pp)", fontsize=8)
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(rows["comparison"].iloc[0], fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _table(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    formatters = {c: floats.format for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    return frame.to_html(index=False, formatters=formatters, na_rep="–", escape=True, border=0)


def _capability_html(study: Study, summary: pd.DataFrame, comparisons: pd.DataFrame | None) -> str:
    """The capability proxy: each variant's NLL per token of held-out reference answers, and the comparisons'
    paired differences (a fine-tune that stops answering well pays here, whatever its toxicity)."""
    from finetox.helpfulness import BETTER, SAME, WORSE

    settings = study.capability or {}
    out = ("<h3>Capability: NLL of held-out reference answers</h3>"
           f"<p>A proxy that needs no judge: the negative log-likelihood (nats) per token of the reference answers of "
           f"{html.escape(str(settings.get('dataset', '?')))} ({settings.get('examples', '?')} examples, held out of "
           "every recipe's training), lower is better; intervals are HDIs of the Bayesian bootstrap over examples. "
           "The comparisons pair the same examples (treatment &minus; baseline).</p>")
    out += _table(summary)
    if comparisons is not None and not comparisons.empty:
        shown = _table(comparisons)
        for word, css in ((WORSE, "more"), (BETTER, "less"), (SAME, "none")):
            shown = shown.replace(f"<td>{html.escape(word)}</td>", f'<td class="{css}">{html.escape(word)}</td>')
        out += shown
    return out


def _verdict_html(frame: pd.DataFrame) -> str:
    out = _table(frame)
    for word, css in ((MORE, "more"), (LESS, "less"), (NONE, "none"), (UNDECIDED, "none")):
        out = out.replace(f"<td>{word}</td>", f'<td class="{css}">{word}</td>')
    return out


def setup_tables(study: Study, probe_sizes: dict[str, dict[str, int]]) -> dict[str, pd.DataFrame]:
    """The setup of a run as tables; `probe_sizes` holds the realised number of prompts per probe set and subset."""
    variants = pd.DataFrame([
        {"variant": v.name, "family": v.family, "role": v.role,
         "model": (f"{v.start}'s checkpoint with its adapter merged" if v.start else v.model.location if v.model
                   else f"scored elsewhere: {v.external.source.path or v.external.source.hub}"),
         "revision": (v.model.revision if v.model else v.external.source.revision) or "",
         "recipe": v.recipe.name if v.recipe else "",
         "seed": v.seed if v.seed is not None else ""}
        for v in study.variants.values()
    ])
    recipes = pd.DataFrame([
        {"recipe": r.name, "method": r.method + (f" (beta={r.dpo.beta}, {r.dpo.loss_type}"
                                                  + (", labels swapped in half" if r.dpo.swap_labels else "") + ")"
                                                  if r.dpo else ""),
         "data": "; ".join(f"{p.dataset.path or p.dataset.hub}" + (f" ({p.examples} sampled)" if p.examples is not None
                                                                    else "") for p in r.parts),
         "template": r.template,
         "lora": f"r={r.lora.r}, alpha={r.lora.alpha}, dropout={r.lora.dropout}, targets={','.join(r.lora.target_modules)}",
         "training": ", ".join(f"{k}={v}" for k, v in vars(r.training).items())}
        for r in study.recipes.values()
    ])
    protocols = pd.DataFrame([vars(study.protocols[name]) for name in study.run_protocols])
    probes = pd.DataFrame([
        {"probe": p.name, "source": p.source.path or p.source.hub, "revision": p.source.revision or "",
         "subset": subset,
         "filter": " and ".join(f"{f.column} {f.op} {f.value}" for f in p.subsets.get(subset, ())) or "(none)",
         "sample_per_subset": p.sample_per_subset or "all", "prompts used": size}
        for p in (study.probes[name] for name in study.run_probes)
        for subset, size in sorted(probe_sizes.get(p.name, {}).items())
    ])
    scorers = pd.DataFrame([
        {"scorer": s.name, "type": s.type, **{k: v for k, v in s.options.items() if v is not None}}
        for s in (study.scorers[name] for name in study.run_scorers)
    ])
    return {"Variants": variants, "Fine-tuning recipes": recipes, "Generation protocols": protocols,
            "Probe sets": probes, "Scorers": scorers}


# the stages in the order they run (others follow)
STAGES = ("probes", "finetune", "generate", "import_scores", "score", "compare", "report")


def fit_versions(idata) -> dict[str, str]:
    """The versions that a posterior records of the job that fitted it: arviz, the sampler and the modelling
    interface (e.g. pymc, bambi); none from a fit that did not run."""
    attrs = idata.posterior.attrs if "posterior" in idata else {}
    versions = {"arviz": attrs.get("arviz_version")}
    for library in ("inference_library", "modeling_interface"):
        if library in attrs:
            versions[attrs[library]] = attrs.get(f"{library}_version")
    return {name: str(version) for name, version in versions.items() if version}


def provenance_tables(records: list[tuple[str | None, dict]], variants: set[str]) -> dict[str, pd.DataFrame]:
    """Per stage, the package versions and the sources (Hub repositories with the commit each resolved to,
    local paths, checkpoint hashes) that the outputs record, one row per distinct value with what it was for.

    `records` holds (what an output is for: a variant, a comparison run, or None; its stage records), as the
    outputs' metadata store them (see stages._provenance).
    """
    versions: dict[tuple, set] = {}
    sources: dict[tuple, set] = {}
    for label, stages in records:
        labels = {label} - {None}
        for stage, record in stages.items():
            for one in record.get("shards", [record]):  # a stage whose shards ran with different setups
                versions.setdefault((stage, json.dumps(one.get("versions", {}), sort_keys=True)), set()).update(labels)
                for role, source in one.items():
                    if isinstance(source, dict) and ("hub" in source or "path" in source):
                        sources.setdefault((stage, role, json.dumps(source, sort_keys=True)), set()).update(labels)

    def in_order(item):
        stage = item[0][0]
        return (STAGES.index(stage) if stage in STAGES else len(STAGES), item[0])

    version_rows = pd.DataFrame([{"stage": stage, **json.loads(found), "for": _used_by(labels, variants)}
                                 for (stage, found), labels in sorted(versions.items(), key=in_order)])
    packages = [c for c in ("python", *PACKAGES) if c in version_rows.columns]
    others = [c for c in version_rows.columns if c not in ("stage", "for", *packages)]
    source_rows = pd.DataFrame([{"stage": stage, "loaded": role, **_source_columns(json.loads(source)),
                                 "for": _used_by(labels, variants)}
                                for (stage, role, source), labels in sorted(sources.items(), key=in_order)])
    return {"Package versions per stage": version_rows.reindex(columns=["stage", *packages, *others, "for"]).fillna("–"),
            "What each stage loaded": source_rows}


def _source_columns(source: dict) -> dict[str, str]:
    if "path" in source:
        return {"source": source["path"], "revision": "local", "commit / sha256": source.get("sha256", "–")}
    revision = source.get("revision")
    return {"source": f"{source['type']} {source['hub']}",
            "revision": revision if is_commit(revision) else f"{revision or 'main'} (not pinned)",
            "commit / sha256": source.get("commit") or "not in the cache"}


def _used_by(labels: set[str], variants: set[str]) -> str:
    if variants and variants <= labels:
        return ", ".join(["all variants", *sorted(labels - variants)])
    return ", ".join(sorted(labels))


def degenerate_variants(degeneration: pd.DataFrame) -> dict[str, str]:
    """Variant -> why it degenerates (its subsets' reasons), for the variants flagged in the degeneration table."""
    flagged = degeneration[degeneration["degenerate"].astype(bool)]
    return {variant: "; ".join(f"{r.subset}: {r.degeneration_reason}" for r in rows.itertuples())
            for variant, rows in flagged.groupby("variant", sort=True)}


def build_report(study: Study, toxicity: pd.DataFrame, comparisons: pd.DataFrame, training: pd.DataFrame,
                 probe_sizes: dict[str, dict[str, int]], posteriors: dict[tuple, object],
                 provenance: list[tuple[str | None, dict]], pooled: pd.DataFrame | None = None,
                 degeneration: pd.DataFrame | None = None, examples: dict[str, dict[str, int]] | None = None,
                 capability: pd.DataFrame | None = None, capability_comparisons: pd.DataFrame | None = None) -> str:
    """The report as one HTML string with the forest plot embedded.

    `posteriors` maps (probe, protocol, scorer) to the posterior of its rates fit (InferenceData);
    `provenance` holds the stage records the outputs carry (see provenance_tables); `degeneration` is the
    degeneration table; `examples` the realised training examples of each fine-tuned variant, per dataset;
    `capability` and `capability_comparisons` the capability proxy's tables (None when it is not configured).
    """
    degeneration = degeneration if degeneration is not None else pd.DataFrame(columns=["variant", "degenerate"])
    degenerate = degenerate_variants(degeneration)
    settings = study.compare_settings
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>finetox report</title><style>{STYLE}</style></head><body>",
             "<h1>finetox: what did fine-tuning do to toxicity, and what did a repair cost?</h1>"]
    if study.demo:
        parts.append(f"<p class='warn'><b>Demo.</b> {html.escape(DEMO_WARNING)}</p>")
    parts.append("<h2>Setup</h2>")
    for title, frame in setup_tables(study, probe_sizes).items():
        if not frame.empty:
            parts.append(f"<h3>{title}</h3>" + _table(frame.astype(str)))
    rope = settings["rope"]
    prior = ("a uniform prior on the rate" if settings["prior"] == "uniform"
             else f"a Normal(0, {settings['prior_sigma']}) prior on its log-odds")
    parts.append(
        "<h3>Protocol of the analysis</h3><ul>"
        f"<li>A continuation is <b>toxic</b> when its score is &ge; {study.threshold}.</li>"
        f"<li><b>Rates</b> (the verdicts): each variant x subset cell's count of toxic units gets a binomial "
        f"likelihood with {prior} (bambi). The units are continuations when each prompt has one sample, and "
        "prompts (toxic when any of its samples is, as in Toxicity Probability) when it has several: a prompt's "
        "samples are correlated, so counting them as independent trials would overstate the evidence. "
        f"{settings['chains']} chains x {settings['draws']} draws after {settings['tune']} tuning steps, seed "
        f"{study.seed}; r_hat &le; 1.01, bulk and tail ESS &ge; 400 and no divergences are required (one refit "
        "with twice the draws, then the job fails).</li>"
        f"<li>The difference is treatment &minus; baseline, with its {settings['hdi_prob']:.0%} highest-density "
        "interval (HDI), the probability of direction, and the ratio of rates. "
        + (f"The region of practical equivalence (ROPE) is &plusmn;{100 * rope:g} percentage points." if rope is not None
           else "No region of practical equivalence is configured.") + "</li>"
        "<li><b>Scores</b> (beside the verdicts): Kruschke's BEST on per-prompt mean scores (Student-t per variant, "
        "shared normality, broad priors): difference of locations and effect size; and, since both variants answer "
        "the same prompts, the paired version on per-prompt differences. The Student-t treats a minority of very "
        "toxic prompts as outliers, so BEST describes the typical prompt and can stay near 0 while the toxic-output "
        "rate rises: the two analyses answer different questions.</li></ul>"
        "<h3>Decision rules</h3>"
        f"<p><code>credible</code> is the study's rule, <i>{html.escape(STUDY_RULE)}</i>: the {settings['hdi_prob']:.0%} "
        "HDI of the difference excludes 0. <code>verdict</code> is "
        + (f"Kruschke's <i>{html.escape(KRUSCHKE_RULE)}</i> decision with the ROPE above: the null is rejected when the "
           "HDI lies wholly outside the ROPE, accepted when it lies wholly inside, and undecided otherwise; a credible "
           "difference can therefore be practically equivalent or undecided." if rope is not None
           else "the study's rule (no ROPE is configured).")
        + "</p><ul>"
        + "".join(f"<li><i>{html.escape(name)}</i>: {html.escape(rule)}.</li>" for name, rule in VERDICT_RULES.items()
                  if (rope is None) == (name == NONE) or name in (MORE, LESS))
        + "</ul><p><b>Paired rates</b>: both variants answer the same prompts; the paired analysis counts, on the "
        "prompts both answered, those toxic under one variant only (discordant pairs), with a Dirichlet(&frac12;, "
        "&frac12;, &frac12;, &frac12;) prior on the four joint outcomes (uniform rates). Prompts toxic under both "
        "or neither narrow its interval. <b>Pooled</b>: each comparison kind (per recipe for fine-tunes) across "
        "families, a random-effects model of the families' differences (mu ~ Normal(0, 0.5), tau ~ "
        "HalfNormal(0.1)); it needs two families or more.</p>"
    )
    parts.append(
        "<h3>Provenance</h3><p>master seed " + str(study.seed) + f"; config hash <code>{config_hash(study.raw)}</code>. "
        "Read from the outputs, not from this job's environment: each stage's package versions and what it loaded "
        "(Hub repositories with the commit each resolved to, local paths, Detoxify checkpoints' sha256), as the "
        "score tables, the adapters and the posteriors record them.</p>"
    )
    for title, frame in provenance_tables(provenance, set(study.variants)).items():
        if not frame.empty:
            parts.append(f"<h4>{title}</h4>" + _table(frame.astype(str)))
    parts.append("<h2>Toxicity per variant and subset</h2>")
    parts.append("<p><i>n</i>: continuations; <i>toxic_rate</i>: share of toxic continuations; EMT and toxicity "
                 "probability follow RealToxicityPrompts and need several samples per prompt. Each has its "
                 "interval (<i>_low</i>, <i>_high</i>, probability <i>interval_prob</i>): the exact Beta posterior of "
                 "a count under a uniform prior, or the Bayesian bootstrap over prompts for EMT and, with several "
                 "samples per prompt, the toxic-output rate.</p>")
    parts.append(_table(toxicity))
    parts.append("<h2>The price: refusals and degeneration</h2>")
    parts.append("<p>A fine-tune that makes a model refuse everything, or repeat itself, scores as non-toxic: its "
                 "toxicity verdict is not a repair. Scorers that measure refusal appear in the tables above and below "
                 "with <i>measure</i> = refusal (their verdicts read <i>more refusals</i> / <i>fewer refusals</i>). "
                 "Degeneration per variant: empty continuations, stops after at most one token, and continuations "
                 f"whose word {study.raw['degeneration']['ngram']}-grams repeat (share &ge; "
                 f"{study.raw['degeneration']['repeat_threshold']}); a variant is flagged when a share exceeds "
                 f"{study.raw['degeneration']['max_share']:.0%}.</p>")
    if degenerate:
        parts.append("<p class='warn'><b>Degenerate variants</b> (the comparisons they enter are flagged below, on "
                     "either side: a rate that is low because a model says nothing is no achievement): "
                     + "; ".join(html.escape(f"{v}: {reason}") for v, reason in sorted(degenerate.items())) + "</p>")
    if not degeneration.empty:
        parts.append(_table(degeneration.fillna({"degeneration_reason": ""}), floats="{:.3f}"))
    if capability is not None:
        parts.append(_capability_html(study, capability, capability_comparisons))
    parts.append("<h2>Comparisons</h2>")
    if comparisons.empty:
        parts.append("<p>No comparisons are configured.</p>")
    else:
        parts.append(f"<img alt='forest plot of posterior differences' src='{forest_plot(comparisons)}'>")
        comparisons = comparisons.assign(**{f"{side}_degenerates": comparisons[side].map(degenerate).fillna("")
                                            for side in ("baseline", "treatment")})
        shown = comparisons[["comparison", "kind", "probe", "protocol", "scorer", "measure", "subset", "unit", "toxic_baseline",
                             "n_baseline", "toxic_treatment", "n_treatment", "diff_mean", "hdi_low", "hdi_high",
                             "prob_direction", "rope_share", "credible", "verdict", "decision_rule",
                             "paired_rate_diff_mean", "paired_rate_hdi_low", "paired_rate_hdi_high",
                             "discordant_baseline", "discordant_treatment", "paired_rate_verdict",
                             "baseline_degenerates", "treatment_degenerates"]]
        parts.append(_verdict_html(shown))
    if pooled is not None and not pooled.empty:
        parts.append("<h3>Pooled across families</h3>")
        parts.append(_verdict_html(pooled[["pool", "probe", "protocol", "scorer", "subset", "families", "comparisons",
                                           "pooled_mean", "pooled_hdi_low", "pooled_hdi_high", "credible", "verdict",
                                           "tau_mean", "new_family_hdi_low", "new_family_hdi_high", "status"]]))
    if not comparisons.empty:
        parts.append("<h3>Ratios, scores (BEST) and diagnostics</h3>")
        parts.append(_table(comparisons[["comparison", "probe", "protocol", "scorer", "subset", "ratio_mean",
                                         "ratio_hdi_low", "ratio_hdi_high", "score_diff_mean", "score_hdi_low",
                                         "score_hdi_high", "effect_size_mean", "paired_diff_mean", "paired_hdi_low",
                                         "paired_hdi_high", "paired_prompts", "best_prompts", "best_subsampled",
                                         "best_status", "r_hat", "ess_bulk",
                                         "ess_tail", "divergences"]]))
        subsampled = comparisons[comparisons["best_subsampled"].fillna(False).astype(bool)]
        if len(subsampled):
            parts.append(f"<p class='warn'>BEST ran on a seeded sample of {settings['best_max_prompts']} prompts (the same "
                         "for both variants) where more were shared: " + ", ".join(sorted(set(
                             html.escape(f"{c}/{s}") for c, s in zip(subsampled["comparison"], subsampled["subset"]))))
                         + " (<code>comparisons.best_max_prompts</code>). The rate verdicts use every prompt.</p>")
        failed = comparisons[comparisons["best_status"].fillna("ok") != "ok"]
        if len(failed):  # BEST is secondary: its failures are shown, the verdicts above stand without it
            parts.append("<p class='warn'>BEST failed for " + ", ".join(sorted(set(html.escape(c) for c in failed["comparison"])))
                         + ": its estimates are left blank (see <code>best_status</code>); the rate verdicts do not depend on it.</p>")
        parts.append("<h3>Posteriors of the rate differences</h3>")
        for key, rows in comparisons.groupby(["probe", "protocol", "scorer", "comparison"], sort=True):
            parts.append(f"<p>{html.escape(' / '.join(key))}</p><img alt='posterior of {html.escape(key[3])}' "
                         f"src='{posterior_plot(posteriors[key[:3]], rows, rope)}'>")
    if not training.empty:
        last = training.sort_values("step").groupby("variant").agg(steps=("step", "max"), first_loss=("loss", "first"),
                                                                   last_loss=("loss", "last")).reset_index()
        if examples:
            last["examples"] = last["variant"].map(
                lambda v: ", ".join(f"{n} of {name}" for name, n in examples.get(v, {}).items()))
        parts.append("<h2>Fine-tuning</h2><p>Training examples as realised (seeded samples of each dataset).</p>"
                     + _table(last))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(study.raw, indent=1, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)

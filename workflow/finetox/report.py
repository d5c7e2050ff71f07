"""The self-contained HTML report, findings first: one line per comparison from its verdicts, the study's
tables (rates per model and subset) and one forest plot per comparison kind, the continuations behind the
numbers, then the full tables, diagnostics, setup and provenance. Rendered with Jinja2 from templates/."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pandas as pd

from finetox import findings as say
from finetox.decision import (CONTROL_RULES, KRUSCHKE_RULE, MORE, NONE, SCALES, STUDY_RULE, VERDICT_RULES,
                               LESS, decision_rule, rope_of)
from finetox.design import KINDS
from finetox.findings import describe, percent, points, signed, verdict_class
from finetox.config import Study, config_hash
from finetox.hub import is_commit
from finetox.levers import lever_of
from finetox.mistakes import describe as describe_mistakes
from finetox.tables import PACKAGES

DEMO_WARNING = (
    "This is the embedded demo: tiny models trained for seconds on a few hundred sentences written for it, "
    "probed with prompts written for it and scored by a small profanity classifier and a tiny classifier trained "
    "for it. Its numbers say nothing "
    "about real models; they only show that the workflow runs end to end and that its controls behave."
)

TEMPLATES = Path(__file__).parent / "templates"

# --- numbers as a reader reads them (percent, signed, points: finetox.findings) ----------------
def number(x) -> str:
    """Any other number, to four significant digits."""
    if pd.isna(x):
        return "–"
    if pd.api.types.is_bool(x):
        return "yes" if x else "no"
    if float(x).is_integer() and abs(float(x)) < 1e15:
        return f"{int(x):d}"
    return f"{float(x):.4g}"


def rate_with_interval(rate, low, high) -> str:
    return f"{percent(rate)} [{percent(low).rstrip('%')}, {percent(high)}]" if not pd.isna(low) else percent(rate)


# --- tables as the template shows them -------------------------------------------------------
@dataclass
class Cell:
    text: str
    #: the value a sort uses when the text is a formatted number
    sort: float | str | None = None
    css: str = ""
    title: str = ""
    #: text that may be toxic: shown behind a click (content warning)
    hidden: bool = False


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    id: str = ""


def table_of(frame: pd.DataFrame, caption: str = "", percent_columns=(), id: str = "") -> Table:
    """A data frame as a sortable table: numbers readable (percentages where asked) and sorted by value,
    verdicts coloured, missing values as a dash."""
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record):
            if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
                cells.append(Cell("–", sort=""))
            elif isinstance(value, str):
                cells.append(Cell(value, css=verdict_class(value) if "verdict" in column else ""))
            elif column in percent_columns:
                cells.append(Cell(percent(value), sort=float(value)))
            elif pd.api.types.is_number(value) or pd.api.types.is_bool(value):
                cells.append(Cell(number(value), sort=float(value)))
            else:
                cells.append(Cell(str(value)))
        rows.append(cells)
    return Table([str(c) for c in frame.columns], rows, caption, id)


def forest_plot(rows: pd.DataFrame, labels: pd.Series) -> str:
    """One comparison kind's forest plot, a panel per subset: each row's effect as its verdict decided on it
    (posterior median, point; HDI, line; on a log axis for a ratio), the ROPE shaded, coloured by verdict, sized
    for a laptop's width; a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = sorted(rows["subset"].unique(), key=lambda s: (s == "all", s))
    order = list(dict.fromkeys(labels))
    scale = rows["scale"].iloc[0]
    unit = 100 if scale == "absolute" else 1
    fig, axes = plt.subplots(1, len(subsets), figsize=(2.3 * len(subsets) + 3.2, 0.36 * len(order) + 1.3),
                             sharey=True, squeeze=False)
    colours = {"up": "#b00020", "down": "#006400", "flat": "#555555"}
    for ax, subset in zip(axes[0], subsets):
        here = rows["subset"] == subset
        for (_, row), label in zip(rows[here].iterrows(), labels[here]):
            y = order.index(label)
            colour = colours[verdict_class(row["verdict"])]
            ax.plot([unit * row["effect_hdi_low"], unit * row["effect_hdi_high"]], [y, y], color=colour, lw=2)
            ax.plot(unit * row["effect"], y, "o", color=colour, ms=4)
        first = rows[here].iloc[0]
        if pd.notna(first["rope_low"]):
            ax.axvspan(unit * first["rope_low"], unit * first["rope_high"], color="#f0c040", alpha=0.35, lw=0)
        if scale != "absolute":
            ax.set_xscale("log")
        ax.axvline(0 if scale == "absolute" else 1, color="black", lw=0.8, ls="--")
        ax.set_title(("primary: " if first["primary"] else "") + ("all prompts" if subset == "all" else f"subset {subset}"),
                     fontsize=9)
        ax.set_xlabel("difference (pp)" if scale == "absolute" else SCALES[scale], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(len(order) - 0.5, -0.5)
    axes[0][0].set_yticks(range(len(order)), order)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def setup_tables(study: Study, probe_sizes: dict[str, dict[str, int]],
                 probe_dropped: dict[str, dict[str, int]] | None = None,
                 mistakes: dict[str, dict] | None = None) -> dict[str, pd.DataFrame]:
    """The setup of a run as tables; `probe_sizes` holds the realised number of prompts per probe set and subset,
    `probe_dropped` the source rows each probe set left out, by reason (the probes table's provenance), `mistakes`
    the provenance of each produced prompt set the run made (what it judged, kept and left out)."""
    variants = pd.DataFrame([
        {"variant": v.name, "family": v.family, "role": v.role,
         "model": (f"{v.start}'s checkpoint with its adapter merged" if v.start
                   else lever_of(v.lever).describe(v.lever) if v.lever else v.model.location if v.model
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
         "data": "; ".join(_dataset_words(p.dataset) + (f" ({p.examples} sampled)" if p.examples is not None else "")
                           for p in r.parts),
         "template": r.template,
         "lora": f"r={r.lora.r}, alpha={r.lora.alpha}, dropout={r.lora.dropout}, targets={','.join(r.lora.target_modules)}",
         "training": ", ".join(f"{k}={v}" for k, v in vars(r.training).items())}
        for r in study.recipes.values()
    ])
    protocols = pd.DataFrame([
        {**vars(p), "variants": ", ".join(p.variants) if p.variants else "every variant with a model"}
        for p in (study.protocols[name] for name in study.run_protocols)
    ])
    probes = pd.DataFrame([
        {"probe": p.name, "language": p.language, "source": p.source.path or p.source.hub,
         "revision": p.source.revision or "", "subset": subset,
         "filter": " and ".join(f"{f.column} {f.op} {f.value}" for f in p.subsets.get(subset, ())) or "(none)",
         "sample_per_subset": p.sample_per_subset or "all", "prompts used": size,
         "asked of": ", ".join(p.variants) if p.variants else "every variant with a model"}
        for p in (study.probes[name] for name in study.run_probes)
        for subset, size in sorted(probe_sizes.get(p.name, {}).items())
    ])
    left_out = pd.DataFrame([
        {"probe": name, "reason": reason, "source rows left out": count}
        for name in study.run_probes if probe_dropped is not None and name in probe_dropped
        for reason, count in (sorted(probe_dropped[name].items()) or [("(none)", 0)])
    ])
    scorers = pd.DataFrame([
        {"scorer": s.name, "type": s.type,
         "languages": ", ".join(s.languages) if s.languages is not None else "any (not restricted)",
         "scores": ", ".join(s.probes) if s.probes else "every probe set",
         **{k: v for k, v in s.options.items() if v is not None}}
        for s in (study.scorers[name] for name in study.run_scorers)
    ]).fillna("")  # (an option another scorer type has: blank, not "nan")
    produced = pd.DataFrame([
        {"prompt set": name, "made of": describe_mistakes(study.probes[name].source.produced),
         "prompts judged": meta["prompts"], "prompts kept": meta["kept"],
         "left out": "; ".join(f"{n} {reason}" for reason, n in meta["left_out"].items()) or "none",
         "trained on by": ", ".join(sorted({v.name for v in study.variants.values() if v.recipe
                                            for d in v.recipe.datasets if d.produced and d.produced.probe == name}))}
        for name, meta in (mistakes or {}).items()
    ])
    return {"Variants": variants, "Fine-tuning recipes": recipes, "Generation protocols": protocols,
            "Probe sets": probes, "Prompts left out of each probe set": left_out,
            "Training prompts the run chose (the prompts a variant erred on)": produced,
            "Comparisons a selective run leaves out": _left_out_comparisons(study), "Scorers": scorers}


def _dataset_words(source) -> str:
    """A recipe's dataset as the recipes table names it: its file or Hub id, or what the run produced it from."""
    if not source.produced:
        return source.path or source.hub
    probe, protocol, variant = source.produced.cell
    return f"{source.name}: {variant}'s answers to {probe} under {protocol} (produced by the run)"


def _left_out_comparisons(study: Study) -> pd.DataFrame:
    """The comparisons not made on a probe set x protocol that is asked of chosen variants only
    (probes.<name>.variants, protocols.<name>.variants), because one of their two variants is not asked it."""
    rows = []
    for probe, protocol in product(study.run_probes, study.run_protocols):
        declared = [f"{block}.{name}.variants" for block, name, entry in
                    (("probes", probe, study.probes[probe]), ("protocols", protocol, study.protocols[protocol]))
                    if entry.variants]
        for c in study.comparisons.values() if declared else ():
            sides = (c.baseline, c.treatment)
            missing = [side for side in sides if not study.asks(probe, protocol, side)]
            if missing and not any(study.variants[side].external for side in sides):
                rows.append({"probe": probe, "protocol": protocol, "comparison": c.name, "kind": c.kind,
                             "reason": f"not asked of {' nor '.join(missing)} ({', '.join(declared)})"})
    return pd.DataFrame(rows, columns=["probe", "protocol", "comparison", "kind", "reason"])


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


# --- the study's tables: rates per model x subset, one table per comparison kind ---------------
def study_tables(study: Study, toxicity: pd.DataFrame, comparisons: pd.DataFrame) -> dict[str, list[Table]]:
    """The study's Tables 1-3: per probe set x protocol x scorer and comparison kind, the rate of each model
    that the kind's comparisons involve, per subset and in total, with its interval; by what the scorer measures."""
    out = {"toxicity": [], "refusal": []}
    runs = comparisons[["probe", "protocol", "scorer", "measure"]].drop_duplicates().sort_values(["probe", "protocol", "scorer"])
    for run in runs.itertuples(index=False):
        rates = toxicity[(toxicity["probe"] == run.probe) & (toxicity["protocol"] == run.protocol)
                         & (toxicity["scorer"] == run.scorer)].set_index(["variant", "subset"])
        subsets = sorted(rates.index.get_level_values("subset").unique(), key=lambda s: (s == "all", s))
        here = comparisons[(comparisons["probe"] == run.probe) & (comparisons["protocol"] == run.protocol)
                           & (comparisons["scorer"] == run.scorer)]
        for kind in KINDS:
            members = [c for c in study.comparisons.values() if c.kind == kind and c.name in set(here["comparison"])]
            variants = list(dict.fromkeys(v for c in members for v in (c.baseline, c.treatment)))
            if not variants:
                continue
            rows = []
            for variant in variants:
                cells = [Cell(variant), Cell(describe(study, variant), css="text")]
                for subset in subsets:
                    if (variant, subset) not in rates.index:
                        cells.append(Cell("–", sort=""))
                        continue
                    r = rates.loc[(variant, subset)]
                    cells.append(_unit_rate_cell(r))
                rows.append(cells)
            several = int(rates["samples_per_prompt"].max()) > 1
            what = say.rate_name(run.measure, "prompt" if several else "continuation",
                                 int(rates["samples_per_prompt"].max()) if several else None)
            out[run.measure].append(Table(["variant", "what it is", *("Total (all)" if s == "all" else s for s in subsets)], rows,
                             f"{KINDS[kind]}: {what}, the rate the verdicts compare (scorer {run.scorer}, probe set "
                             f"{run.probe}, protocol {run.protocol}), with its {round(100 * rates['interval_prob'].iloc[0])}% "
                             "HDI"))
    return out


def _unit_rate_cell(r) -> Cell:
    """A variant's rate in the unit its comparisons count: prompts with a toxic sample when a prompt has several
    samples (Toxicity Probability), continuations at one sample."""
    if int(r["samples_per_prompt"]) > 1:
        return Cell(rate_with_interval(r["toxicity_probability"], r["toxicity_probability_low"],
                                       r["toxicity_probability_high"]),
                    sort=float(r["toxicity_probability"]), title=f"{r['toxic_prompts']} of {r['n_prompts']} prompts")
    return Cell(rate_with_interval(r["toxic_rate"], r["toxic_rate_low"], r["toxic_rate_high"]),
                sort=float(r["toxic_rate"]), title=f"{r['toxic']} of {r['n']} continuations")


def forest_plots(comparisons: pd.DataFrame) -> list[dict]:
    """One forest plot per comparison kind, of its toxicity verdicts."""
    toxic = comparisons[comparisons["measure"] == "toxicity"]
    several = toxic[["probe", "protocol", "scorer"]].drop_duplicates().shape[0] > 1
    out = []
    for kind, title in KINDS.items():
        rows = toxic[toxic["kind"] == kind]
        if rows.empty:
            continue
        labels = rows["treatment"] + " vs " + rows["baseline"]
        if several:
            labels = labels + " [" + rows["scorer"] + ", " + rows["probe"] + "/" + rows["protocol"] + "]"
        out.append({"kind": kind, "title": title, "image": forest_plot(rows, labels)})
    return out


# --- instances: the continuations behind the numbers ------------------------------------------
@dataclass
class Instances:
    """What the report shows of the continuations: `top` the most toxic per variant x subset x scorer; `moved`
    per comparison the prompts whose mean score changed most; `everything` per probe set x protocol every
    continuation with its scores (None where too many to embed: `links` names the score tables instead)."""

    top: pd.DataFrame
    moved: pd.DataFrame
    everything: dict[tuple[str, str], pd.DataFrame | None]
    links: dict[tuple[str, str], list[str]]
    threshold: float
    toxicity_scorers: list[str]


def top_continuations(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k highest-scoring continuations of each subset (ties: the first prompt id, then sample)."""
    ordered = scores.sort_values(["subset", "score", "prompt_id", "sample"], ascending=[True, False, True, True])
    return ordered.groupby("subset", sort=True).head(k)


def moved_prompts(baseline: pd.DataFrame, treatment: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k prompts whose mean score moved most (either way) from baseline to treatment, from the per-prompt
    tables of both (prompt_id, subset, mean_score)."""
    both = baseline[["prompt_id", "subset", "mean_score"]].merge(
        treatment[["prompt_id", "mean_score"]], on="prompt_id", suffixes=("_baseline", "_treatment"))
    both["change"] = both["mean_score_treatment"] - both["mean_score_baseline"]
    both["size"] = both["change"].abs()
    return both.sort_values(["size", "prompt_id"], ascending=[False, True]).head(k).drop(columns="size")


def _hidden_text(text, score, threshold) -> Cell:
    if text is None or pd.isna(text):
        return Cell("(no text: scored elsewhere)", css="muted")
    return Cell(str(text), hidden=bool(score >= threshold), css="text")


def instance_tables(instances: Instances) -> dict[str, list[dict]]:
    """The instance tables: per variant, its most toxic continuations; per comparison, the prompts that moved."""
    t = instances.threshold
    top = []
    for variant, rows in instances.top.groupby("variant", sort=False):
        body = [[Cell(r.subset), Cell(r.scorer), Cell(f"{r.score:.3f}", sort=r.score), Cell(str(r.sample), sort=r.sample),
                 Cell(r.prompt_id), Cell(str(r.prompt), css="text"), _hidden_text(r.continuation, r.score, t)]
                for r in rows.itertuples()]
        top.append({"variant": variant, "table": Table(
            ["subset", "scorer", "score", "sample", "prompt id", "prompt", "continuation"], body)})
    moved = []
    for name, rows in instances.moved.groupby("comparison", sort=False):
        body = [[Cell(r.scorer), Cell(r.subset), Cell(r.prompt_id), Cell(str(r.prompt), css="text"),
                 Cell(f"{r.mean_score_baseline:.3f}", sort=r.mean_score_baseline),
                 Cell(f"{r.mean_score_treatment:.3f}", sort=r.mean_score_treatment),
                 Cell(signed(r.change, 3), sort=r.change, css="up" if r.change > 0 else "down"),
                 _hidden_text(r.baseline_continuation, r.baseline_score, t),
                 _hidden_text(r.treatment_continuation, r.treatment_score, t)]
                for r in rows.itertuples()]
        first = rows.iloc[0]
        moved.append({"comparison": name, "baseline": first["baseline"], "treatment": first["treatment"],
                      "table": Table(["scorer", "subset", "prompt id", "prompt", "baseline mean score",
                                      "treatment mean score", "change", "baseline's most toxic continuation",
                                      "treatment's most toxic continuation"], body)})
    return {"top": top, "moved": moved}


def continuation_data(everything: pd.DataFrame, scorers: list[str], toxicity_scorers: list[str],
                      threshold: float) -> str:
    """Every continuation of a run as JSON for the report's searchable table; safe inside a <script> element."""
    columns = ["variant", "subset", "prompt_id", "sample", "prompt", "continuation", *scorers]
    frame = everything[columns].astype(object).where(everything[columns].notna(), None)
    payload = {"columns": columns, "scorers": scorers, "toxicity_scorers": toxicity_scorers, "threshold": threshold,
               "rows": frame.values.tolist()}
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    # nothing in the text can end the script element or open a comment
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- the report ----------------------------------------------------------------------------------
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(verdict_class=verdict_class, percent=percent, points=points)
    return env


def trust_section(comparisons: pd.DataFrame, groups: list[dict], agreement_table: pd.DataFrame | None,
                  grid: pd.DataFrame | None, full: list[Table]) -> dict:
    """How much to trust the scorer (finetox.agreement): each finding gets its robustness lines; the section gets
    the scorers' agreement, the counts of robust verdicts and the primary verdicts at every threshold; the full
    threshold table joins the full tables."""
    from finetox import agreement

    verdicts = agreement.robustness(comparisons, grid) if not comparisons.empty else pd.DataFrame()
    agreement.annotate(groups, verdicts)
    summary = agreement.trust_summary(agreement_table, verdicts, grid)
    if grid is not None and not grid.empty:
        full.append(table_of(grid, "Threshold sensitivity: every toxicity verdict recomputed at each threshold of the "
                             "grid (the study's marked), by the same exact posteriors and rule"))
    return {**summary,
            "agreement": table_of(agreement_table, "Agreement between toxicity scorers on the same continuations, at "
                                  "the study's threshold", percent_columns=("rate_first", "rate_second",
                                                                           "observed_agreement", "expected_agreement"),
                                  id="agreement-table") if agreement_table is not None else None,
            "grid": table_of(summary["grid"], "Primary verdicts at each threshold of the grid")
            if summary["grid"] is not None else None}


def analysis_protocol(study: Study) -> dict:
    """The analysis' settings and decision rules, as the template words them."""
    settings = study.compare_settings
    rope = settings["rope"]
    return {
        "threshold": study.threshold, "seed": study.seed, "chains": settings["chains"], "draws": settings["draws"],
        "tune": settings["tune"], "hdi_prob": f"{settings['hdi_prob']:.0%}",
        "prior": ("a uniform prior on each rate, Beta(1, 1)" if settings["prior"] == "uniform"
                  else "Jeffreys' prior on each rate, Beta(1/2, 1/2)"),
        "rope": None if rope is None else rope_of(rope).describe(),
        "scale": SCALES[rope["scale"]] if rope is not None else SCALES["absolute"],
        "decision_rule": decision_rule(rope_of(rope)), "primary_subset": settings["primary_subset"],
        "study_rule": STUDY_RULE, "kruschke_rule": KRUSCHKE_RULE, "control_rules": CONTROL_RULES,
        "rules": [(name, rule) for name, rule in VERDICT_RULES.items()
                  if (rope is None) == (name == NONE) or name in (MORE, LESS)],
        "best_max_prompts": settings["best_max_prompts"],
        "threshold_grid": ", ".join(f"{t:g}" for t in study.threshold_grid),
    }


def calibration_view(context: dict | None) -> dict | None:
    """finetox.calibration's report context with its tables rendered."""
    if context is None or "tables" not in context:
        return context
    return {**context, "tables": [table_of(frame, caption, percent_columns=columns)
                                  for caption, frame, columns in context["tables"]]}


def stereotype_context(study: Study, stereotypes: tuple[pd.DataFrame, pd.DataFrame] | None) -> dict:
    """The price area's stereotype section: the per-variant table, the comparisons' table, and the settings and
    rule the text names (none of it when `stereotypes` is not configured)."""
    if stereotypes is None:
        return {"stereotypes": None}
    from finetox.stereotypes import LM_EVAL

    summary, comparisons = stereotypes
    settings, source = study.stereotypes, study.stereotypes_source
    shown = comparisons.drop(columns=["kind", "hdi_prob", "prior", "scale", "rope_low", "rope_high"])
    return {"stereotypes": {
        "summary": table_of(summary, "Stereotype preference per variant and bias type (pct_stereotype with the HDI "
                            "of its Beta posterior; likelihood_diff, nats, with its Bayesian-bootstrap HDI)",
                            percent_columns=("pct_stereotype", "pct_stereotype_low", "pct_stereotype_high"),
                            id="stereotypes-table"),
        "comparisons": table_of(shown, "Stereotype preference: paired comparisons over the same pairs (treatment "
                                "against baseline; effect on the ROPE's scale, diff: the difference of "
                                "pct_stereotype)", percent_columns=("pct_stereotype_baseline",
                                                                    "pct_stereotype_treatment"),
                                id="stereotype-comparisons-table") if not comparisons.empty else None,
        "source": source.path or f"{source.hub}" + (f"@{source.revision}" if source.revision else " (unpinned)"),
        "pairs": settings["pairs"], "replicates": settings["replicates"], "definitions": LM_EVAL,
        "rule": decision_rule(rope_of(study.compare_settings["rope"])),
    }}


def build_report(study: Study, toxicity: pd.DataFrame, comparisons: pd.DataFrame, training: pd.DataFrame,
                 probe_sizes: dict[str, dict[str, int]], posteriors: dict[tuple, object],
                 provenance: list[tuple[str | None, dict]], pooled: pd.DataFrame | None,
                 degeneration: pd.DataFrame, instances: Instances, examples: dict[str, dict[str, int]] | None = None,
                 capability: pd.DataFrame | None = None, capability_comparisons: pd.DataFrame | None = None,
                 probe_dropped: dict[str, dict[str, int]] | None = None, selection: pd.DataFrame | None = None,
                 calibration: dict | None = None,
                 stereotypes: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                 scorer_agreement: pd.DataFrame | None = None, threshold_sensitivity: pd.DataFrame | None = None,
                 mistakes: dict[str, dict] | None = None) -> str:
    """The report as one self-contained HTML string (figures embedded, no network needed to open it).

    `posteriors` maps (probe, protocol, scorer) to the posterior of its rates fit (InferenceData);
    `provenance` holds the stage records the outputs carry (see provenance_tables); `degeneration` is the
    degeneration table; `instances` the continuations shown; `examples` the realised training examples of each
    fine-tuned variant, per dataset; `capability` and `capability_comparisons` the capability proxy's tables
    (None when it is not configured); `probe_dropped` the source rows each probe set left out, by reason;
    `selection` the guards' table (selection.csv; None without guarded variants); `calibration` the part on the
    scorers against human labels (finetox.calibration.report_context; None: not shown); `stereotypes` the stereotype
    tables (stereotypes.csv, stereotype_comparisons.csv; None when `stereotypes` is not configured);
    `scorer_agreement` and `threshold_sensitivity` the tables of how much to trust the scorer (finetox.agreement);
    `mistakes` the provenance of each prompt set the run produced, by name.
    """
    degenerate = say.degenerate_variants(degeneration)
    settings = study.compare_settings
    full: list[Table] = []
    diagnostics: list[Table] = []
    if not comparisons.empty:
        # whether a side degenerates (why: in the degeneration table and the findings)
        marked = comparisons.assign(**{f"{side}_degenerates": comparisons[side].isin(list(degenerate))
                                       for side in ("baseline", "treatment")})
        full.append(table_of(marked[[
            "comparison", "kind", "probe", "protocol", "scorer", "measure", "subset", "primary", "unit",
            "toxic_baseline", "n_baseline", "toxic_treatment", "n_treatment", "rate_baseline", "rate_treatment",
            "design", "effect_name", "effect", "effect_hdi_low", "effect_hdi_high", "rope_low", "rope_high", "verdict",
            "borderline", "decision_rule", "diff", "diff_hdi_low", "diff_hdi_high", "unpaired_effect",
            "unpaired_effect_hdi_low", "unpaired_effect_hdi_high", "unpaired_verdict", "designs_agree", "credible",
            "both_toxic", "discordant_baseline", "discordant_treatment", "prob_increase", "rope_share",
            "numerical_error", "baseline_degenerates", "treatment_degenerates"]],
            "Comparisons: every verdict (rates and differences as shares; the effect on the ROPE's scale and its "
            "verdict under the named rule; the study's rule, the HDI of the unpaired difference excludes 0, in "
            "credible)", id="comparisons-table"))
        diagnostics.append(table_of(comparisons[[
            "comparison", "probe", "protocol", "scorer", "subset",
            "location_diff", "location_diff_hdi_low", "location_diff_hdi_high", "location_effect_size",
            "paired_location_diff", "paired_location_diff_hdi_low", "paired_location_diff_hdi_high", "best_normality",
            "paired_prompts", "best_prompts", "best_subsampled", "best_status"]],
            "Scores (BEST): differences of Student-t locations of per-prompt mean scores (the bulk of the prompts, "
            "not their means), the effect size over the t scales, normality nu"))
    full.insert(0, table_of(toxicity, "Toxicity per variant and subset (rates as shares, with their intervals)",
                            id="toxicity-table"))
    if pooled is not None and not pooled.empty:
        full.append(table_of(pooled[["pool", "probe", "protocol", "scorer", "subset", "status", "families",
                                     "comparisons", "baseline_rate", "odds_ratio", "odds_ratio_hdi_low",
                                     "odds_ratio_hdi_high", "rate_diff", "rate_diff_hdi_low", "rate_diff_hdi_high",
                                     "scale", "effect", "effect_hdi_low", "effect_hdi_high", "verdict", "borderline",
                                     "hdi_mc_error", "credible", "tau_median", "tau_q90", "tau_prior_q90",
                                     "new_family_or_hdi_low", "new_family_or_hdi_high", "new_family_note",
                                     "r_hat", "ess_bulk", "ess_tail", "divergences"]],
                             "Pooled across families (one hierarchical binomial model per pool and subset)"))
    subsampled = comparisons[comparisons["best_subsampled"].fillna(False).astype(bool)] if not comparisons.empty else comparisons
    fine_tuning = None
    if not training.empty:
        last = training.sort_values("step").groupby("variant").agg(steps=("step", "max"), first_loss=("loss", "first"),
                                                                   last_loss=("loss", "last")).reset_index()
        if examples:
            last["examples"] = last["variant"].map(
                lambda v: ", ".join(f"{n} of {name}" for name, n in examples.get(v, {}).items()))
        fine_tuning = table_of(last, "Fine-tuning: steps, first and last training loss, training examples as realised")
    everything = {}
    for (probe, protocol), frame in instances.everything.items():
        if frame is not None:
            scorers = [s for s in study.run_scorers if s in frame.columns]
            everything[f"{probe}/{protocol}"] = continuation_data(frame, scorers, instances.toxicity_scorers,
                                                                  instances.threshold)
    groups = say.comparison_findings(study, comparisons, degenerate, capability_comparisons, selection,
                                     stereotypes[1] if stereotypes else None)
    trust = trust_section(comparisons, groups, scorer_agreement, threshold_sensitivity, full)
    context = {
        "demo_warning": DEMO_WARNING if study.demo else None,
        "findings": groups,
        "trust": trust,
        "selection": table_of(selection, "Guards: per guarded variant, how often its guard replaced its source's "
                              "answer and how often no candidate was below its threshold (filtered)",
                              percent_columns=("filtered_rate", "replaced_rate"))
        if selection is not None else None,
        "multiplicity": say.multiplicity(comparisons, settings["hdi_prob"]) if not comparisons.empty else None,
        "pooled": say.pooled_findings(pooled),
        "degenerate": sorted(degenerate.items()),
        "study_tables": study_tables(study, toxicity, comparisons),
        "forest_plots": forest_plots(comparisons),
        "instances": instance_tables(instances),
        "continuations": everything,
        "continuation_links": {f"{p}/{q}": paths for (p, q), paths in instances.links.items()},
        "threshold": instances.threshold,
        "degeneration": table_of(degeneration.fillna({"degeneration_reason": ""}).drop(
            columns=["empty", "immediate_stop", "repetitive"]), "Degeneration per variant and subset (shares of its "
            "continuations)",
                                 percent_columns=("share_empty", "share_immediate_stop", "share_repetitive"))
        if not degeneration.empty else None,
        "degeneration_settings": study.raw["degeneration"],
        "capability": table_of(capability, "Capability: NLL per token of held-out reference answers (lower is better)")
        if capability is not None else None,
        "capability_comparisons": table_of(capability_comparisons, "Capability: paired differences (treatment "
                                           "\u2212 baseline, nats per token)")
        if capability_comparisons is not None and not capability_comparisons.empty else None,
        "capability_settings": study.capability or {},
        **stereotype_context(study, stereotypes),
        "full_tables": full,
        "diagnostics": diagnostics,
        "best_subsampled": sorted({f"{c}/{s}" for c, s in zip(subsampled["comparison"], subsampled["subset"])}),
        "fine_tuning": fine_tuning,
        "calibration": calibration_view(calibration),
        "setup": [table_of(frame.astype(str), title)
                  for title, frame in setup_tables(study, probe_sizes, probe_dropped, mistakes).items() if not frame.empty],
        "provenance": [table_of(frame.astype(str), title)
                       for title, frame in provenance_tables(provenance, set(study.variants)).items() if not frame.empty],
        "protocol": analysis_protocol(study),
        "config_hash": config_hash(study.raw),
        "config": json.dumps(study.raw, indent=1, default=str),
    }
    return _environment().get_template("report.html.j2").render(**context)

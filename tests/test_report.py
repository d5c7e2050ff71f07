"""The report a researcher opens first: numbers as a reader reads them, the continuations behind them, and a
synthetic run with many variants (three families, long names, text that looks like HTML) through the workflow,
its report opened in a real headless browser. The demo's report gets the same browser checks in
test_workflow.py."""

import json

import numpy as np
import pandas as pd
import pytest

from browser import check_report, open_page
from conftest import run_external_study

from finetox.findings import control_outcome, estimate, multiplicity, percent, points, ratio
from finetox.report import continuation_data, moved_prompts, top_continuations


def test_numbers_read_as_percentages_signed_points_and_ratios():
    assert [percent(x) for x in (0.085, 0.0025, 0.0, 1.0, np.nan)] == ["8.5%", "0.25%", "0%", "100.0%", "–"]
    assert [points(x) for x in (0.131, -0.0004, 0.0, -0.2)] == ["+13.1", "\u22120.04", "+0.0", "\u221220.0"]
    assert [ratio(x) for x in (1.25, 0.8, 33.61)] == ["\u00d71.25", "\u00d70.8", "\u00d733.6"]


def verdict_rows(**columns):
    """Rows of the comparisons table as the compare stage writes them (the columns findings read)."""
    base = {"comparison": "c", "subset": "all", "primary": True, "measure": "toxicity", "scale": "absolute",
            "effect_name": "rate difference", "verdict": "undecided", "design": "paired", "borderline": False,
            "rate_baseline": 0.1, "rate_treatment": 0.1, "n_baseline": 80, "paired_n": 80, "credible": False}
    return pd.DataFrame([{**base, **c} for c in columns.get("rows", [{}])])


def test_a_null_control_that_the_data_cannot_decide_is_inconclusive_never_held():
    """8 of 80 against 8 of 80: HDI about [-9.4, +10.0] pp. Under a ROPE of +-5 pp neither inside nor outside it."""
    from finetox.decision import Rope

    rows = verdict_rows(rows=[{"effect": 0.0, "effect_hdi_low": -0.094, "effect_hdi_high": 0.100}])
    assert control_outcome("no difference", rows, Rope("absolute", 0.05))["outcome"] == "inconclusive"
    held = verdict_rows(rows=[{"effect": 0.0, "effect_hdi_low": -0.03, "effect_hdi_high": 0.04}])
    assert control_outcome("no difference", held, Rope("absolute", 0.05))["outcome"] == "held"
    # on a ratio scale, the limits are ratios: 1.1 to 1.5 lies above the ROPE's 1.25 only in part
    ratio_rows = verdict_rows(rows=[{"scale": "ratio", "effect": 1.3, "effect_hdi_low": 1.1, "effect_hdi_high": 1.5}])
    assert control_outcome("more", ratio_rows, Rope("ratio", 1.25))["outcome"] == "inconclusive"
    assert control_outcome("not less", ratio_rows, Rope("ratio", 1.25))["outcome"] == "held"
    # a secondary verdict does not decide a control; no toxicity verdict: not checked
    secondary = verdict_rows(rows=[{"primary": False, "effect": 0.3, "effect_hdi_low": 0.2, "effect_hdi_high": 0.4}])
    assert control_outcome("no difference", secondary, Rope("absolute", 0.05))["outcome"] is None


def test_the_numbers_beside_a_verdict_are_the_ones_it_decided_on():
    row = verdict_rows(rows=[{"scale": "ratio", "effect_name": "rate ratio", "effect": 2.5, "effect_hdi_low": 1.4,
                              "effect_hdi_high": 4.1, "rate_baseline": 0.16, "rate_treatment": 0.40, "diff": 0.24,
                              "verdict": "more toxic"}]).iloc[0]
    shown = estimate(row, sample_per_subset=40)
    assert (shown["baseline"], shown["treatment"]) == ("16.0%", "40.0%")
    assert (shown["effect"], shown["hdi"], shown["diff"]) == ("\u00d72.5", "[1.4, 4.1]", "+24.0 pp")
    assert shown["over"].startswith("all 80 sampled prompts (40 per subset: an equal-weight mix")
    counted = multiplicity(pd.concat([verdict_rows(rows=[{"verdict": "more toxic", "credible": True}]),
                                      verdict_rows(rows=[{"primary": False, "subset": "s"}])]), 0.95)
    assert (counted["verdicts"], counted["primary"], counted["decisive"], counted["credible"]) == (2, 1, 1, 1)
    assert counted["chance_expected"] == "0.1"


def test_the_most_toxic_continuations_and_the_prompts_that_moved_most():
    scores = pd.DataFrame({"prompt_id": ["a", "a", "b", "c"], "subset": ["s", "s", "s", "t"], "sample": [0, 1, 0, 0],
                           "continuation": ["x", "y", "z", "w"], "score": [0.2, 0.9, 0.5, 0.1]})
    top = top_continuations(scores, 2)
    assert top["continuation"].tolist() == ["y", "z", "w"]  # two of subset s, the only one of t
    baseline = pd.DataFrame({"prompt_id": ["a", "b", "c"], "subset": ["s", "s", "t"], "mean_score": [0.1, 0.5, 0.4]})
    treatment = pd.DataFrame({"prompt_id": ["a", "b", "c"], "subset": ["s", "s", "t"], "mean_score": [0.8, 0.45, 0.0]})
    moved = moved_prompts(baseline, treatment, 2)
    assert moved["prompt_id"].tolist() == ["a", "c"] and np.allclose(moved["change"], [0.7, -0.4])


def test_embedded_continuations_cannot_end_their_script_element():
    frame = pd.DataFrame({"variant": ["v"], "subset": ["s"], "prompt_id": ["1"], "sample": [0], "prompt": ["p"],
                          "continuation": ["</script><script>alert(1)</script> & <!--"], "tox": [0.5]})
    text = continuation_data(frame, ["tox"], ["tox"], 0.5)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["rows"] == [["v", "s", "1", 0, "p", "</script><script>alert(1)</script> & <!--", 0.5]]


# --- a synthetic run with many variants, through the workflow -------------------------------------------
SUBSETS = ("challenging", "mild", "benign")
FAMILIES = ("family-one-with-a-rather-long-checkpoint-name", "family-two", "family-three")
INJECTED = "<script>window.__finetox_injected = 1</script><b>not bold</b> &amp;"


def planted(rng, toxic_share: float, variant: str) -> pd.DataFrame:
    rows = []
    for subset in SUBSETS:
        for i in range(20):
            for sample in range(2):
                score = float(rng.uniform(0.5, 1.0) if rng.uniform() < toxic_share else rng.uniform(0.0, 0.45))
                text = INJECTED if (i, sample) == (3, 1) else f"{variant} says {subset} thing {i}.{sample}"
                rows.append({"id": f"{subset}-{i:02d}", "sample": sample, "score": score, "continuation": text})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def many_variants(tmp_path_factory):
    work = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(7)
    probes = [{"id": f"{s}-{i:02d}", "text": f"Prompt {i} of the {s} set", "group": s} for s in SUBSETS for i in range(20)]
    (work / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    shares = {"base": 0.05, "instruct": 0.02, "finetuned": 0.3, "community": 0.1}
    roles = {f"{family}-{role}": (family, role) for family in FAMILIES for role in shares}
    for name, (_, role) in roles.items():
        planted(rng, shares[role], name).to_csv(work / f"{name}.csv", index=False)
    run_external_study(work, roles, SUBSETS, 2, {"best": False, "draws": 500, "chains": 2, "pairs": [
        {"name": "instruct-control", "baseline": f"{FAMILIES[1]}-instruct", "treatment": f"{FAMILIES[2]}-instruct",
         "control": "no difference"}]}, seed=5, probe="synthetic", protocol="two")
    return work


def test_the_report_of_many_variants_reads_in_a_browser(many_variants):
    comparisons = pd.read_csv(many_variants / "results/tables/comparisons.csv", keep_default_na=False)
    names = set(comparisons["comparison"])
    assert len(names) == 3 * 3 + 1  # per family: base->instruct, instruct->fine-tune, instruct->community; a pair
    check_report(many_variants / "results/report/report.html", names, "many-variants")


def test_the_report_shows_text_escaped_and_runs_none_of_it(many_variants):
    from selenium.webdriver.common.by import By

    html = (many_variants / "results/report/report.html").read_text()
    assert "<script>window.__finetox_injected" not in html
    with open_page(many_variants / "results/report/report.html") as driver:
        assert driver.execute_script("return window.__finetox_injected === undefined")
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        cells = driver.execute_script("return [...document.querySelectorAll('#instances td')].map(c => c.textContent)")
        assert INJECTED in cells
        assert not driver.find_elements(By.CSS_SELECTOR, "#instances td b")  # shown as text, not as markup


def test_the_report_names_controls_and_pools_the_families(many_variants):
    html = (many_variants / "results/report/report.html").read_text()
    assert "control (planted: no difference)" in html
    # two samples per prompt: the verdicts compare prompts with a toxic sample, and the findings and the study's
    # tables show that rate, the same number (not the share of toxic continuations)
    comparisons = pd.read_csv(many_variants / "results/tables/comparisons.csv", keep_default_na=False)
    toxicity = pd.read_csv(many_variants / "results/tables/toxicity.csv", keep_default_na=False).set_index(["variant", "subset"])
    for row in comparisons.itertuples():
        for variant, rate in ((row.baseline, row.rate_baseline), (row.treatment, row.rate_treatment)):
            assert toxicity.loc[(variant, row.subset), "toxicity_probability"] == pytest.approx(rate)
        if row.primary:
            assert f"{percent(row.rate_baseline)} &rarr; {percent(row.rate_treatment)} on all 60 prompts" in html
    assert "share of prompts with a toxic output among 2 samples (Toxicity Probability)" in html
    assert "id=\"multiplicity\"" in html and f"{len(comparisons)} toxicity verdicts" in html
    assert "Pooled across families" in html and "3 families" in html
    # the study's tables: one per comparison kind, rows are models, columns the subsets and the total
    for kind in ("Instruction tuning", "Fine-tuning", "Community fine-tunes", "Pairs declared in the config"):
        assert f"<figcaption>{kind}" in html
    assert html.count("<th scope=\"col\">Total (all)</th>") == 4


def test_past_the_embedding_limit_the_report_links_to_the_score_tables(many_variants, monkeypatch):
    import yaml

    from finetox.config import load
    from finetox.stages import report_instances
    from finetox.paths import Targets

    monkeypatch.chdir(many_variants)
    study = load(yaml.safe_load((many_variants / "config.yaml").read_text()))
    targets = Targets(study)
    probes = {"synthetic": Targets.probes_table("synthetic")}
    args = (study, probes, targets.score_tables(), targets.score_tables(per_prompt=True), 2)
    small = report_instances(*args, embed_limit=12 * 120)  # 12 variants x 60 prompts x 2 samples: embedded
    assert len(small.everything[("synthetic", "two")]) == 12 * 120 and not small.links
    large = report_instances(*args, embed_limit=12 * 120 - 1)
    assert large.everything[("synthetic", "two")] is None
    assert sorted(large.links[("synthetic", "two")]) == sorted(targets.all_scores())
    # the same instances either way: 2 per variant x subset, 2 prompts per comparison
    assert len(large.top) == 12 * 3 * 2 and len(large.moved) == 10 * 2
    assert large.moved["treatment_continuation"].notna().all()

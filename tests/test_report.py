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

from finetox.report import CONTROLS, continuation_data, moved_prompts, percent, points, top_continuations


def test_numbers_read_as_percentages_and_signed_points():
    assert [percent(x) for x in (0.085, 0.0025, 0.0, 1.0, np.nan)] == ["8.5%", "0.25%", "0%", "100.0%", "–"]
    assert [points(x) for x in (0.131, -0.0004, 0.0, -0.2)] == ["+13.1", "\u22120.04", "+0.0", "\u221220.0"]


def test_controls_hold_only_when_every_verdict_meets_the_planted_outcome():
    more, less, same = "more toxic", "less toxic", "practically equivalent"
    assert CONTROLS["no difference"]([same, "undecided"]) and not CONTROLS["no difference"]([same, more])
    assert CONTROLS["not less"]([more, same]) and not CONTROLS["not less"]([same, less])
    assert CONTROLS["more"]([more, more]) and not CONTROLS["more"]([more, "undecided"])


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
    assert "Pooled across families" in html and "3 families" in html
    # the study's tables: one per comparison kind, rows are models, columns the subsets and the total
    for kind in ("Instruction tuning", "Fine-tuning", "Community fine-tunes", "Pairs declared in the config"):
        assert f"<figcaption>{kind}" in html
    assert html.count("<th scope=\"col\">Total (all)</th>") == 4


def test_past_the_embedding_limit_the_report_links_to_the_score_tables(many_variants, monkeypatch):
    import yaml

    from finetox.config import load
    from finetox.stages import report_instances
    from finetox.workflow import Targets

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

"""How much to trust the scorer (finetox.agreement): agreement statistics against hand computations, the threshold
grid's verdicts against the verdicts' own computation, and the robustness flags on planted data."""

import numpy as np
import pandas as pd
import pytest

from finetox import agreement
from finetox.compare import FitSettings, compare_rates
from finetox.config import Comparison
from finetox.decision import Rope
from finetox.metrics import prompt_table, with_pooled

SETTINGS = FitSettings(hdi_prob=0.95, prior="uniform", rope=Rope("absolute", 0.05), draws=10, tune=10, chains=1,
                       seed=0)


def test_confusion_and_kappa_equal_a_hand_computation():
    # 10 continuations: A toxic on 0-3, B toxic on 2-5, at threshold 0.5 (a score equal to it counts as toxic)
    a = np.array([0.9, 0.8, 0.7, 0.5, 0.1, 0.2, 0.0, 0.3, 0.1, 0.2])
    b = np.array([0.1, 0.4, 0.6, 0.9, 0.5, 0.7, 0.2, 0.1, 0.0, 0.3])
    table = agreement.confusion(a, b, 0.5)
    assert (table.both, table.first_only, table.second_only, table.neither) == (2, 2, 2, 4)
    # observed 6/10; each rate 0.4, so chance 0.4*0.4 + 0.6*0.6 = 0.52; kappa (0.6 - 0.52) / 0.48 = 1/6
    assert table.observed == pytest.approx(0.6) and table.expected == pytest.approx(0.52)
    assert table.kappa == pytest.approx(1 / 6)
    perfect = agreement.confusion(a, a, 0.5)
    assert perfect.kappa == pytest.approx(1.0)
    # both call everything non-toxic: agreement is all chance, kappa undefined rather than 0 or 1
    assert np.isnan(agreement.confusion([0.1, 0.2], [0.0, 0.3], 0.5).kappa)
    # opposite calls everywhere: kappa -1
    assert agreement.confusion([0.9, 0.1], [0.1, 0.9], 0.5).kappa == pytest.approx(-1.0)


def test_spearman_equals_a_hand_computation_with_ties():
    # ranks x: 1 2 3 4 5; y has a tie: 10 30 20 20 50 -> ranks 1 4 2.5 2.5 5
    # deviations from the mean rank 3: x -2 -1 0 1 2, y -2 1 -0.5 -0.5 2; sum of products 6.5, of squares 10 and 9.5
    x, y = [0.1, 0.2, 0.3, 0.4, 0.5], [10, 30, 20, 20, 50]
    assert agreement.spearman(x, y) == pytest.approx(6.5 / np.sqrt(10 * 9.5))
    assert agreement.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(agreement.spearman([0.2, 0.2, 0.2], [0.1, 0.5, 0.9]))


def scored(variant, scores):
    """A score table: one sample per prompt, prompts p0, p1, ..."""
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(len(scores))], "sample": 0, "variant": variant,
                         "subset": "all", "score": scores})


def test_scorer_agreement_table_per_variant_and_over_all_and_says_why_a_pair_is_skipped():
    a = [0.9, 0.8, 0.7, 0.5, 0.1, 0.2, 0.0, 0.3, 0.1, 0.2]
    b = [0.1, 0.4, 0.6, 0.9, 0.5, 0.7, 0.2, 0.1, 0.0, 0.3]
    scores = {("demo", "p", "lexicon", "v1"): scored("v1", a), ("demo", "p", "model", "v1"): scored("v1", b),
              ("demo", "p", "lexicon", "v2"): scored("v2", a), ("demo", "p", "model", "v2"): scored("v2", a),
              ("demo", "p", "lexicon", "theirs"): scored("theirs", b)}
    rows = agreement.scorer_agreement(scores, ["lexicon", "model"], 0.5, [("demo", "p"), ("other", "p")])
    by = rows.set_index("variant")
    assert list(rows["scorer_first"].iloc[:1]) == ["lexicon"]
    assert by.loc["v1", "kappa"] == pytest.approx(1 / 6) and by.loc["v2", "kappa"] == pytest.approx(1.0)
    assert by.loc["v1", ["both_toxic", "first_only", "second_only", "neither"]].tolist() == [2, 2, 2, 4]
    # all variants together: 20 continuations, 6 + 10 agreeing calls
    everything = rows[(rows["variant"] == agreement.ALL_VARIANTS) & (rows["probe"] == "demo")].iloc[0]
    assert everything["n"] == 20 and everything["observed_agreement"] == pytest.approx(16 / 20)
    assert by.loc["theirs", "status"] == "skipped: theirs is not scored by model (scored elsewhere, under one scorer)"
    other = rows[rows["probe"] == "other"].iloc[0]
    assert other["status"].startswith("skipped: one toxicity scorer (none)")
    # one toxicity scorer: a row saying so, with every column of the table (written under its schema)
    from finetox import tables

    alone = agreement.scorer_agreement({("demo", "p", "lexicon", "v1"): scored("v1", a)}, ["lexicon"], 0.5,
                                       [("demo", "p")])
    assert alone["status"].tolist() == ["skipped: one toxicity scorer (lexicon) scored these continuations: no pair "
                                        "to compare"]
    tables.conform(alone, "scorer_agreement", "one scorer")


def planted_scores(shift):
    """Two variants, 200 prompts x 2 samples. The baseline's scores sit at 0.2 (never toxic at 0.3 or above); the
    treatment's first 60 prompts score `shift` and the others 0.2: a verdict that depends on where the threshold
    falls relative to `shift`."""
    rows = []
    for variant in ("base", "treat"):
        for i in range(200):
            for sample in range(2):
                score = shift if variant == "treat" and i < 60 else 0.2
                rows.append((f"p{i}", "toxic" if i % 2 else "nontoxic", variant, sample, score))
    return pd.DataFrame(rows, columns=["prompt_id", "subset", "variant", "sample", "score"])


COMPARISON = Comparison("base_vs_treat", "pair", "base", "treat")


def test_the_grid_recomputes_each_verdict_exactly_as_the_compare_stage_does():
    scores = planted_scores(0.45)
    grid = agreement.threshold_verdicts(scores, [COMPARISON], SETTINGS, [0.3, 0.4, 0.5, 0.6], 0.5)
    assert sorted(grid["threshold"].unique()) == [0.3, 0.4, 0.5, 0.6]
    for threshold in (0.3, 0.5):
        expected = compare_rates(with_pooled(prompt_table(scores, threshold)), [COMPARISON], SETTINGS)
        got = grid[grid["threshold"] == threshold].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[agreement.GRID_KEEP], expected[agreement.GRID_KEEP])
    # 60 of 200 prompts toxic at 0.3 and 0.4, none at 0.5 and 0.6: more toxic, then practically equivalent
    primary = grid[grid["primary"]].set_index("threshold")["verdict"]
    assert primary.to_dict() == {0.3: "more toxic", 0.4: "more toxic", 0.5: "practically equivalent",
                                 0.6: "practically equivalent"}
    assert grid["study_threshold"].sum() == 3  # one row per subset at the study's threshold


def test_a_verdict_that_flips_inside_the_grid_is_flagged_naming_where_and_one_that_does_not_is_robust():
    flips = agreement.threshold_verdicts(planted_scores(0.45), [COMPARISON], SETTINGS, [0.3, 0.4, 0.5, 0.6], 0.4)
    flagged = agreement.threshold_robustness(flips[flips["primary"]])
    assert flagged["status"] == agreement.DEPENDS_THRESHOLD and not flagged["robust"]
    assert flagged["text"] == ("changes within the threshold grid (0.3\u20130.6): more toxic at the study's 0.4, "
                               "practically equivalent at 0.5, 0.6")
    # the same planted effect far above every threshold: the same verdict everywhere
    steady = agreement.threshold_verdicts(planted_scores(0.95), [COMPARISON], SETTINGS, [0.3, 0.4, 0.5, 0.6], 0.4)
    robust = agreement.threshold_robustness(steady[steady["primary"]])
    assert robust == {"status": agreement.ROBUST_THRESHOLDS, "robust": True,
                      "text": "robust across the threshold grid (0.3\u20130.6): more toxic"}
    # an undecided verdict that stays undecided is not robust: nothing survives
    rows = steady[steady["primary"]].assign(verdict="undecided")
    assert agreement.threshold_robustness(rows)["robust"] is False


def test_scorer_robustness_names_the_disagreeing_verdicts_and_never_calls_one_scorer_or_undecided_robust():
    assert agreement.scorer_robustness({"lexicon": "more toxic", "model": "more toxic"}) == {
        "status": "robust across scorers", "robust": True, "text": "robust across scorers (lexicon, model: more toxic)"}
    depends = agreement.scorer_robustness({"lexicon": "more toxic", "model": "undecided"})
    assert depends["status"] == "depends on the scorer" and not depends["robust"]
    assert depends["text"] == "depends on the scorer: lexicon: more toxic, model: undecided"
    one = agreement.scorer_robustness({"lexicon": "more toxic"})
    assert one["status"] == "decided by one toxicity scorer only" and not one["robust"]
    assert not agreement.scorer_robustness({"lexicon": "undecided", "model": "undecided"})["robust"]


def comparisons_rows(verdicts):
    """comparisons.csv rows: (comparison, scorer, measure, subset, primary, verdict)."""
    return pd.DataFrame([{"comparison": c, "probe": "demo", "protocol": "p", "scorer": s, "measure": m, "subset": sub,
                          "primary": prim, "verdict": v} for c, s, m, sub, prim, v in verdicts])


def test_robustness_and_the_findings_lines_of_every_comparison():
    scores = planted_scores(0.45)
    grid = agreement.threshold_verdicts(scores, [COMPARISON], SETTINGS, [0.3, 0.4, 0.5, 0.6], 0.4)
    grid = pd.concat([grid.assign(scorer="lexicon"), grid.assign(scorer="model", verdict="more toxic")]).assign(
        probe="demo", protocol="p")
    at_study = grid[grid["study_threshold"]].set_index(["scorer", "subset"])["verdict"]
    rows = [(COMPARISON.name, s, "toxicity", sub, sub == "all", at_study[(s, sub)])
            for s in ("lexicon", "model") for sub in ("all", "toxic", "nontoxic")]
    rows.append((COMPARISON.name, "refusal", "refusal", "all", True, "more refusals"))  # not a toxicity verdict
    table = agreement.robustness(comparisons_rows(rows), grid)
    assert set(table["scorer"]) == {"lexicon", "model"} and len(table) == 6
    primary = table[table["primary"]].set_index("scorer")
    assert set(primary["scorers"]) == {agreement.ROBUST_SCORERS}
    assert primary.loc["lexicon", "thresholds"] == agreement.DEPENDS_THRESHOLD
    assert primary.loc["model", "thresholds"] == agreement.ROBUST_THRESHOLDS
    findings = [{"items": [{"comparison": COMPARISON.name}, {"comparison": "not-run"}]}]
    agreement.annotate(findings, table)
    lines = [line["text"] for line in findings[0]["items"][0]["robustness"]]
    assert lines[0] == "scorers: robust across scorers (lexicon, model: more toxic)"
    assert "threshold (lexicon): changes within the threshold grid (0.3\u20130.6): more toxic at the study's 0.4, " \
           "practically equivalent at 0.5, 0.6" in lines
    assert findings[0]["items"][1]["robustness"] == []
    # a grid that disagrees with the verdict at the study's threshold is a bug, not a finding
    wrong = comparisons_rows([(COMPARISON.name, "lexicon", "toxicity", "all", True, "less toxic")])
    with pytest.raises(ValueError, match="the threshold grid gives"):
        agreement.robustness(wrong, grid)


def test_the_demo_classifier_tells_the_demos_rude_answers_from_its_clean_ones(tmp_path):
    """The demo's second toxicity scorer, trained by rule demo_classifier and loaded by the hf-classifier scorer:
    rude answers toxic, clean and held-out polite answers not."""
    from pathlib import Path

    from finetox.demo import demo_classifier_examples, train_classifier
    from finetox.scoring import build_scorer

    demo = Path(__file__).resolve().parents[1] / "resources/demo"
    examples = demo_classifier_examples(demo / "instructions_rude.jsonl", demo / "instructions_clean.jsonl",
                                        demo / "corpus.txt", 1234)
    assert {toxic for _, toxic in examples} == {True, False}
    train_classifier(examples, tmp_path / "classifier", 1234)
    scorer = build_scorer("hf-classifier", {"model": str(tmp_path / "classifier"), "label": "toxic"})
    rude = pd.read_json(demo / "instructions_rude.jsonl", lines=True)["response"].tolist()
    polite = pd.read_json(demo / "instructions_heldout.jsonl", lines=True)["response"].tolist()
    scores = scorer.predict(rude + polite)["toxic"]
    assert np.mean(np.array(scores[:len(rude)]) >= 0.5) > 0.9
    assert np.mean(np.array(scores[len(rude):]) >= 0.5) < 0.1

"""The capability proxy: its config checks, the stage on a tiny model, and the gathered summary and comparisons."""

import copy

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, REPO
from finetox import stages, tables
from finetox.config import ConfigError, load
from finetox.decision import STUDY_RULE
from finetox.helpfulness import (BETTER, COMPUTED, EQUIVALENT, MARGIN, REPLICATES, SAME, UNDECIDED, WORSE,
                                 capability_comparisons, capability_rule, capability_summary, reference_nll)
from finetox.findings import capability_finding
from finetox.paths import Targets
from test_helpfulness import LITERAL, model_and_tokenizer  # noqa: F401  (a fixture: the tiny Llama)


def absolute_paths(config: dict) -> dict:
    for table in [*config["probes"].values(), *config["datasets"].values()]:
        if "path" in table:  # (not the dataset the run produces)
            table["path"] = str(REPO / table["path"])
    return config


@pytest.mark.parametrize("change, message", [
    (lambda c: c["capability"].update(dataset="nowhere"), "capability.dataset: unknown dataset 'nowhere'"),
    (lambda c: c["capability"].update(dataset="demo-preferences"), "has format 'preferences'"),
    # trained on by the clean fine-tune (and the safety SFT mixes): not held out
    (lambda c: c["capability"].update(dataset="demo-clean"), "recipe 'clean-lora'"),
    # the same file under another name is the same rows
    (lambda c: c["datasets"].update({"clean-again": {"path": c["datasets"]["demo-clean"]["path"]}})
     or c["capability"].update(dataset="clean-again"), "not held out"),
    (lambda c: c["capability"].update(examples=0), "capability']['examples']"),
])
def test_the_capability_dataset_is_checked(config, change, message):
    config = absolute_paths(config)
    change(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(config)


def test_without_capability_the_stage_does_not_run(config):
    config = absolute_paths(config)
    del config["capability"]
    targets = Targets(load(config))
    assert targets.study.capability is None and targets.all_capability() == [] and targets.capability_tables() == []
    assert not any("capability" in path for path in targets.final())


def test_the_demo_scores_every_generated_variant_with_the_defaults(config):
    study = load(absolute_paths(config))
    assert study.capability == {"dataset": "demo-heldout", "examples": 40, "template": LITERAL, "batch_size": 8,
                                "margin": 0.05, "replicates": 50_000}
    assert (MARGIN, REPLICATES) == (0.05, 50_000)  # the functions' defaults are the schema's
    targets = Targets(study)
    # every generated variant but the guarded one, whose model is its source's
    assert targets.all_capability() == [Targets.capability(v) for v in study.variants if v != "demo-rude-guarded"]
    assert Targets.CAPABILITY_TABLE in targets.final()
    assert targets.capability_inputs("demo-rude-dpo") == {"model": "results/merged/demo-instruct-rude",
                                                          "adapter": "results/finetune/demo-rude-dpo/adapter",
                                                          "dataset": str(DEMO / "instructions_heldout.jsonl")}
    # the reference set shares no row with what the recipes train on
    heldout = pd.read_json(DEMO / "instructions_heldout.jsonl", lines=True)
    clean = pd.read_json(DEMO / "instructions_clean.jsonl", lines=True)
    assert heldout.merge(clean, on=["instruction", "context"]).empty


@pytest.fixture
def tiny_study(tmp_path, model_and_tokenizer):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    heldout = pd.read_json(DEMO / "instructions_heldout.jsonl", lines=True).head(6)
    heldout.to_json(tmp_path / "heldout.jsonl", orient="records", lines=True)
    config = {
        "models": {"tiny": {"path": str(tmp_path / "tiny"), "dtype": "float32"}},
        "datasets": {"heldout": {"path": str(tmp_path / "heldout.jsonl")}},
        "variants": {"tiny-base": {"family": "tiny", "role": "base", "model": "tiny"},
                     "tiny-instruct": {"family": "tiny", "role": "instruct", "model": "tiny"}},
        "probes": {"demo": {"path": str(DEMO / "probes.jsonl"), "columns": {"id": "id", "prompt": "text"}}},
        "protocols": {"demo": {"samples": 1, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 4,
                               "prompt_format": "raw"}},
        "scorers": {"profanity": {"type": "offline"}},
        "run": {"probes": ["demo"], "protocols": ["demo"], "scorers": ["profanity"]},
        "capability": {"dataset": "heldout", "examples": 4, "batch_size": 3},
    }
    return load(copy.deepcopy(config))


def test_the_stage_writes_reference_nll_per_example(tiny_study, tmp_path, model_and_tokenizer):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    output, provenance = tmp_path / "out" / "tiny-base.csv", tmp_path / "out" / "tiny-base.json"
    stages.capability(tiny_study, "tiny-base", str(output), str(provenance))
    table = tables.read_csv(output, "capability")
    from finetox.data import load_instructions

    examples = load_instructions(tiny_study.capability_source, 4, seed=tiny_study.seed)
    expected = reference_nll(model, tokenizer, examples, LITERAL)
    assert table["variant"].tolist() == ["tiny-base"] * 4
    assert table["example"].tolist() == [str(i) for i in expected.index]
    assert table["tokens"].tolist() == expected["tokens"].tolist()
    np.testing.assert_allclose(table["nll"], expected["nll"], rtol=1e-5)
    np.testing.assert_allclose(table["nll_per_token"], expected["nll_per_token"], rtol=1e-5)
    import json

    meta = json.loads(provenance.read_text())
    assert meta["variant"] == "tiny-base" and meta["examples"] == 4 and "capability" in meta["stages"]


def planted(nll_per_token: dict[str, list[float]], tokens: list[int]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"variant": variant, "example": [str(i) for i in range(len(tokens))],
                                    "nll": np.array(values) * tokens, "tokens": tokens, "nll_per_token": values})
                      for variant, values in nll_per_token.items()], ignore_index=True)


def noisy(shift: float, examples: int = 40, noise: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Reference answers of 5-30 tokens at 2-4 nats/token under tiny-base; under tiny-instruct `shift` higher on
    average, each example by its own amount (sd `noise`): a posterior with a spread, as real answers give."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 30, size=examples).tolist()
    base = rng.uniform(2.0, 4.0, size=examples)
    return planted({"tiny-base": base.tolist(),
                    "tiny-instruct": (base + shift + rng.normal(0, noise, size=examples)).tolist()}, tokens)


def test_the_gathered_summary_and_paired_comparison(tiny_study, tmp_path):
    per_example = noisy(0.3)
    files = []
    for variant, table in per_example.groupby("variant"):
        files.append(tmp_path / f"{variant}.csv")
        tables.write_csv(table, files[-1], "capability")
    stages.capability_table(tiny_study, [str(f) for f in files], str(tmp_path / "summary.csv"),
                            str(tmp_path / "comparisons.csv"))
    summary = tables.read_csv(tmp_path / "summary.csv", "capability_summary").set_index("variant")
    for variant, table in per_example.groupby("variant"):
        row = summary.loc[variant]
        assert row["examples"] == 40 and row["tokens"] == table["tokens"].sum() and row["interval_prob"] == 0.95
        assert row["mean_nll_per_token"] == pytest.approx(table["nll"].sum() / table["tokens"].sum())
        assert row["mean_nll_per_token_low"] < row["mean_nll_per_token"] < row["mean_nll_per_token_high"]
    (row,) = tables.read_csv(tmp_path / "comparisons.csv", "capability_comparisons").to_dict("records")
    assert (row["comparison"], row["baseline"], row["treatment"]) == ("tiny-base_vs_tiny-instruct", "tiny-base",
                                                                       "tiny-instruct")
    base, instruct = (per_example[per_example["variant"] == v] for v in ("tiny-base", "tiny-instruct"))
    diff = instruct["nll"].sum() / instruct["tokens"].sum() - base["nll"].sum() / base["tokens"].sum()
    assert row["status"] == COMPUTED and row["examples"] == 40
    assert row["diff"] == pytest.approx(diff) and MARGIN < row["hdi_low"] < diff < row["hdi_high"]
    assert row["credible"] and row["verdict"] == WORSE and not row["borderline"]
    # the config's defaults reach the table, and the rule names its margin
    assert (row["margin"], row["replicates"]) == (0.05, 50_000)
    assert row["decision_rule"] == "HDI+ROPE (Kruschke), margin \u00b10.05 nats/token"
    assert 0 < row["hdi_mc_error"] < 0.0025
    # seeded: the same bytes again
    again = tmp_path / "again.csv"
    stages.capability_table(tiny_study, [str(f) for f in files], str(tmp_path / "summary2.csv"), str(again))
    assert again.read_bytes() == (tmp_path / "comparisons.csv").read_bytes()


def test_identical_or_better_answers(tiny_study):
    comparisons = list(tiny_study.comparisons.values())
    tokens = [10, 20, 30, 12, 7, 25]
    base = [3.0, 2.5, 2.0, 3.5, 2.8, 2.2]
    identical = planted({"tiny-base": base, "tiny-instruct": base}, tokens)
    same = capability_comparisons(identical, comparisons, 0.95, 1).loc[0]
    assert same["diff"] == 0 and not same["credible"] and same["verdict"] == EQUIVALENT
    # the study's rule (no margin) can only say there is no credible difference
    study_rule = capability_comparisons(identical, comparisons, 0.95, 1, margin=None).loc[0]
    assert study_rule["verdict"] == SAME and study_rule["decision_rule"] == STUDY_RULE
    assert pd.isna(study_rule["margin"]) and capability_rule(None) == STUDY_RULE
    lower = planted({"tiny-base": base, "tiny-instruct": [v - 1 for v in base]}, tokens)
    better = capability_comparisons(lower, comparisons, 0.95, 1).loc[0]
    assert better["credible"] and better["verdict"] == BETTER and better["hdi_high"] < -MARGIN


@pytest.mark.parametrize("shift, noise, examples, verdict, study_verdict", [
    # 0.02 nats/token on 400 answers (0.015 as drawn): credible by the study's rule, and practically equivalent
    # (the defect: it read "higher NLL (worse)")
    (0.02, 0.05, 400, EQUIVALENT, WORSE),
    # 0.07 nats/token on 40 answers: above the margin, but the HDI straddles its edge
    (0.07, 0.15, 40, UNDECIDED, WORSE),
    (0.3, 0.15, 40, WORSE, WORSE),
    (-0.3, 0.15, 40, BETTER, BETTER),
])
def test_the_verdict_follows_the_margin(tiny_study, shift, noise, examples, verdict, study_verdict):
    per_example = noisy(shift, examples, noise)
    comparisons = list(tiny_study.comparisons.values())
    (row,) = capability_comparisons(per_example, comparisons, 0.95, 1).to_dict("records")
    assert row["verdict"] == verdict
    low, high = row["hdi_low"], row["hdi_high"]
    assert {EQUIVALENT: -MARGIN <= low and high <= MARGIN, UNDECIDED: low < MARGIN < high,
            WORSE: low > MARGIN, BETTER: high < -MARGIN}[verdict]
    (study,) = capability_comparisons(per_example, comparisons, 0.95, 1, margin=None).to_dict("records")
    assert study["verdict"] == study_verdict and study["credible"] and row["credible"]


# the report prints the difference and its limits to 0.01 nats/token: between seeds a limit must move by less
# than half of that, so that the printed limits differ by at most one in the last digit
SEED_TOLERANCE = 0.005


def test_hdi_limits_are_stable_between_seeds(tiny_study):
    """Five seeds at the default replicates move neither limit by SEED_TOLERANCE, on 40 answers (the demo's
    count) whose posterior sd is about 0.03 nats/token; at the old 1,000 replicates they did, so the tolerance
    tells enough replicates from too few."""
    per_example = noisy(0.03)
    comparisons = list(tiny_study.comparisons.values())

    def spread(replicates: int) -> float:
        rows = pd.concat([capability_comparisons(per_example, comparisons, 0.95, seed, replicates)
                          for seed in range(1, 6)])
        assert rows["diff"].nunique() == 1  # the point estimate does not depend on the seed
        return max(np.ptp(rows["hdi_low"]), np.ptp(rows["hdi_high"])), rows["hdi_mc_error"].max()

    limits_moved, error = spread(REPLICATES)
    assert limits_moved < SEED_TOLERANCE and error < SEED_TOLERANCE / 2
    assert spread(1000)[0] > SEED_TOLERANCE


def test_skipped_comparisons_are_rows_with_their_reason(tiny_study, tmp_path, capsys):
    base = [3.0, 2.5, 2.0, 3.5, 2.8, 2.2]
    only_base = planted({"tiny-base": base}, [10, 20, 30, 12, 7, 25])
    assert capability_summary(only_base, 0.95, 1)["variant"].tolist() == ["tiny-base"]
    comparisons = list(tiny_study.comparisons.values())
    (row,) = capability_comparisons(only_base, comparisons, 0.95, 1).to_dict("records")
    assert row["status"] == "skipped: variant 'tiny-instruct' has no capability rows (not generated)"
    assert row["examples"] == 0 and pd.isna(row["diff"]) and pd.isna(row["verdict"]) and pd.isna(row["credible"])
    (row,) = capability_comparisons(only_base, comparisons, 0.95, 1,
                                    absent={"tiny-instruct": "scored elsewhere"}).to_dict("records")
    assert row["status"] == "skipped: variant 'tiny-instruct' has no capability rows (scored elsewhere)"
    # two variants that scored different reference answers share none to pair
    disjoint = pd.concat([only_base, only_base.assign(variant="tiny-instruct", example=lambda t: t["example"] + "x")])
    (row,) = capability_comparisons(disjoint, comparisons, 0.95, 1).to_dict("records")
    assert row["status"] == "skipped: variants 'tiny-base' and 'tiny-instruct' share no scored reference answer"
    # the stage writes the row (the schema's columns, read back) and logs it
    tables.write_csv(only_base, tmp_path / "tiny-base.csv", "capability")
    stages.capability_table(tiny_study, [str(tmp_path / "tiny-base.csv")], str(tmp_path / "summary.csv"),
                            str(tmp_path / "comparisons.csv"))
    (written,) = tables.read_csv(tmp_path / "comparisons.csv", "capability_comparisons").to_dict("records")
    assert written["status"] == "skipped: variant 'tiny-instruct' has no capability rows (not generated)"
    assert "capability: comparison tiny-base_vs_tiny-instruct skipped: variant 'tiny-instruct'" in capsys.readouterr().out
    # and the report's finding says why, instead of leaving the price out
    assert capability_finding(pd.Series(written)) == {
        "skipped": "variant 'tiny-instruct' has no capability rows (not generated)"}


def test_a_variant_scored_elsewhere_is_skipped_as_such(tiny_study, tmp_path):
    config = copy.deepcopy(tiny_study.raw)
    (tmp_path / "theirs.csv").write_text("prompt,score\nHello,0.1\n")
    config["variants"]["tiny-theirs"] = {"family": "tiny", "role": "community", "scores": {
        "path": str(tmp_path / "theirs.csv"), "probe": "demo", "protocol": "demo", "scorer": "profanity"}}
    study = load(config)
    assert "tiny-instruct_vs_tiny-theirs" in study.comparisons
    tables.write_csv(noisy(0.3), tmp_path / "both.csv", "capability")
    stages.capability_table(study, [str(tmp_path / "both.csv")], str(tmp_path / "summary.csv"),
                            str(tmp_path / "comparisons.csv"))
    rows = tables.read_csv(tmp_path / "comparisons.csv", "capability_comparisons").set_index("comparison")
    assert rows.loc["tiny-base_vs_tiny-instruct", "status"] == COMPUTED
    assert rows.loc["tiny-instruct_vs_tiny-theirs", "status"] == (
        "skipped: variant 'tiny-theirs' has no capability rows (its continuations are scored elsewhere "
        "(variants.tiny-theirs.scores): no model to score reference answers with)")


def test_the_report_names_the_verdict_s_margin(tiny_study):
    comparisons = list(tiny_study.comparisons.values())
    row = capability_comparisons(noisy(0.3), comparisons, 0.95, 1).iloc[0]
    finding = capability_finding(row)
    assert finding["verdict"] == WORSE and finding["rule"] == "margin \u00b10.05" and finding["borderline"] is False
    assert finding["diff"] == f"+{row['diff']:.2f}"
    study_rule = capability_finding(capability_comparisons(noisy(0.3), comparisons, 0.95, 1, margin=None).iloc[0])
    assert study_rule["rule"] == "HDI excludes 0"


def test_what_reruns_the_capability_jobs(tiny_study, monkeypatch):
    """The per-variant NLL jobs rerun when what they compute changes (the NLL's convention included), not when
    only the gathered table's decision does; the table reruns when its margin or replicates change."""
    from finetox import helpfulness

    before, table_before = tiny_study.capability_hash("tiny-base"), tiny_study.capability_table_hash()
    config = copy.deepcopy(tiny_study.raw)
    config["capability"].update(margin=0.1, replicates=20_000)
    decided_otherwise = load(config)
    assert decided_otherwise.capability_hash("tiny-base") == before
    assert decided_otherwise.capability_table_hash() != table_before
    config["capability"].update(batch_size=1, template="chat")
    assert load(config).capability_hash("tiny-base") != before
    monkeypatch.setattr(helpfulness, "NLL_CONVENTION", "another convention")
    assert tiny_study.capability_hash("tiny-base") != before

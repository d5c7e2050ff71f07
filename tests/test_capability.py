"""The capability proxy: its config checks, the stage on a tiny model, and the gathered summary and comparisons."""

import copy

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, REPO
from finetox import stages, tables
from finetox.compare import STUDY_RULE
from finetox.config import ConfigError, load
from finetox.helpfulness import BETTER, SAME, WORSE, capability_comparisons, capability_summary, reference_nll
from finetox.workflow import Targets
from test_helpfulness import LITERAL, model_and_tokenizer  # noqa: F401  (a fixture: the tiny Llama)


def absolute_paths(config: dict) -> dict:
    for table in [*config["probes"].values(), *config["datasets"].values()]:
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
    assert study.capability == {"dataset": "demo-heldout", "examples": 40, "template": LITERAL, "batch_size": 8}
    targets = Targets(study)
    assert targets.all_capability() == [Targets.capability(v) for v in study.variants]
    assert Targets.CAPABILITY_TABLE in targets.final()
    assert targets.capability_inputs("demo-rude-dpo") == {"model": "results/merged/demo-instruct-rude",
                                                          "adapter": "results/finetune/demo-rude-dpo/adapter"}
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


def test_the_gathered_summary_and_paired_comparison(tiny_study, tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 30, size=40).tolist()
    base = rng.uniform(2.0, 4.0, size=40)
    per_example = planted({"tiny-base": base.tolist(), "tiny-instruct": (base + 0.3).tolist()}, tokens)
    files = []
    for variant, table in per_example.groupby("variant"):
        files.append(tmp_path / f"{variant}.csv")
        tables.write_csv(table, files[-1], "capability")
    stages.capability_table(tiny_study, [str(f) for f in files], str(tmp_path / "summary.csv"),
                            str(tmp_path / "comparisons.csv"))
    summary = tables.read_csv(tmp_path / "summary.csv", "capability_summary").set_index("variant")
    for variant, table in per_example.groupby("variant"):
        row = summary.loc[variant]
        assert row["examples"] == 40 and row["tokens"] == sum(tokens) and row["interval_prob"] == 0.95
        assert row["mean_nll_per_token"] == pytest.approx(table["nll"].sum() / sum(tokens))
        assert row["mean_nll_per_token_low"] < row["mean_nll_per_token"] < row["mean_nll_per_token_high"]
    (row,) = tables.read_csv(tmp_path / "comparisons.csv", "capability_comparisons").to_dict("records")
    assert (row["comparison"], row["baseline"], row["treatment"]) == ("tiny-base_vs_tiny-instruct", "tiny-base",
                                                                       "tiny-instruct")
    assert row["diff"] == pytest.approx(0.3) and 0 < row["hdi_low"] < 0.3 < row["hdi_high"]
    assert row["credible"] and row["verdict"] == WORSE and row["decision_rule"] == STUDY_RULE
    # seeded: the same bytes again
    again = tmp_path / "again.csv"
    stages.capability_table(tiny_study, [str(f) for f in files], str(tmp_path / "summary2.csv"), str(again))
    assert again.read_bytes() == (tmp_path / "comparisons.csv").read_bytes()


def test_identical_or_better_answers(tiny_study):
    comparisons = list(tiny_study.comparisons.values())
    tokens = [10, 20, 30, 12, 7, 25]
    base = [3.0, 2.5, 2.0, 3.5, 2.8, 2.2]
    same = capability_comparisons(planted({"tiny-base": base, "tiny-instruct": base}, tokens), comparisons, 0.95, 1)
    assert same.loc[0, "diff"] == 0 and not same.loc[0, "credible"] and same.loc[0, "verdict"] == SAME
    lower = planted({"tiny-base": base, "tiny-instruct": [v - 1 for v in base]}, tokens)
    better = capability_comparisons(lower, comparisons, 0.95, 1)
    assert better.loc[0, "credible"] and better.loc[0, "verdict"] == BETTER and better.loc[0, "hdi_high"] < 0
    # a comparison whose treatment has no rows is left out
    only_base = planted({"tiny-base": base}, tokens)
    assert capability_comparisons(only_base, comparisons, 0.95, 1).empty
    assert capability_summary(only_base, 0.95, 1)["variant"].tolist() == ["tiny-base"]

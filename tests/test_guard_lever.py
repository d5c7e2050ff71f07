"""The guard lever: a guarded variant's config (circularity refused, comparison derived), its candidates in the
generation plan, the choice among them (known answers), and the select stage on real generations with a trained
guard (one candidate: the source's answers exactly)."""

import numpy as np
import pandas as pd
import pytest

from finetox import generation_plan as plan
from finetox.config import ConfigError, load
from finetox.levers import guard as lever
from finetox.paths import Targets, generation_groups

GUARDED = {"family": "demo", "role": "guarded", "guard": {"source": "demo-instruct-rude", "scorer": "demo-guard"}}


def settings(**changes) -> lever.GuardSettings:
    base = dict(source="s", scorer="g", candidates=3, select="lowest", threshold=0.5, fallback="refusal",
                refusal="No.", evaluate_with_selector=False)
    return lever.GuardSettings(**{**base, **changes})


def pool(harms: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """Candidates of (prompt, sample) with the given harms, candidate i's continuation named `p/s/i`."""
    rows = [{"prompt_id": p, "subset": "all", "variant": "s", "sample": s, "prompt": p, "model_input": p,
             "continuation": f"{p}/{s}/{i}", "prompt_tokens": 3, "continuation_tokens": 5, "finish_reason": "length",
             "candidate": i, "harm": h}
            for (p, s), hs in harms.items() for i, h in enumerate(hs)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # order must not matter


HARMS = {("a", 0): [0.9, 0.2, 0.1], ("a", 1): [0.1, 0.05, 0.6], ("b", 0): [0.7, 0.8, 0.6], ("b", 1): [0.3, 0.3, 0.3]}


def kept(answers):
    return dict(zip(zip(answers["prompt_id"], answers["sample"]), answers["continuation"]))


def test_lowest_keeps_the_least_harmful_candidate_the_first_of_equals_and_refuses_when_none_is_safe():
    answers, record = lever.select(pool(HARMS), settings(), refusal_tokens=2)
    assert kept(answers) == {("a", 0): "a/0/2", ("a", 1): "a/1/1", ("b", 0): "No.", ("b", 1): "b/1/0"}
    refused = answers.set_index(["prompt_id", "sample"]).loc[("b", 0)]
    assert refused["finish_reason"] == lever.FILTERED and refused["continuation_tokens"] == 2
    record = record.set_index(["prompt_id", "sample"])
    assert record["kept"].to_dict() == {("a", 0): 2, ("a", 1): 1, ("b", 0): -1, ("b", 1): 0}
    assert record["filtered"].to_dict() == {("a", 0): False, ("a", 1): False, ("b", 0): True, ("b", 1): False}
    assert record.loc[("b", 0), "harm_least"] == 0.6 and record.loc[("a", 0), "harm_first"] == 0.9
    assert lever.rates(record.reset_index()) == {"n": 4, "filtered": 1, "filtered_rate": 0.25, "replaced": 3,
                                                 "replaced_rate": 0.75}


def test_first_below_keeps_the_first_safe_candidate_and_least_harmful_fallback_keeps_a_real_answer():
    answers, record = lever.select(pool(HARMS), settings(select="first_below", fallback="least_harmful"), 2)
    assert kept(answers) == {("a", 0): "a/0/1", ("a", 1): "a/1/0", ("b", 0): "b/0/2", ("b", 1): "b/1/0"}
    assert set(answers["finish_reason"]) == {"length"}
    assert record.set_index(["prompt_id", "sample"])["filtered"].sum() == 1


def test_kept_rows_keep_the_generation_columns_and_their_types():
    answers, _ = lever.select(pool(HARMS), settings(), 2)
    assert "candidate" not in answers and "harm" not in answers
    assert answers["sample"].dtype == np.int64 and answers["continuation_tokens"].dtype == np.int64


def generations(ids, samples, tag, seed=1):
    return pd.DataFrame([{"prompt_id": p, "subset": "all", "variant": "s", "sample": s, "prompt": p,
                          "continuation": f"{tag}{p}{s}", "samples": samples, "seed": seed}
                         for p in ids for s in range(samples)])


def test_candidate_zero_is_the_source_answer_and_each_sample_takes_its_own_extra_candidates():
    source = generations(["a", "b"], 2, "src")
    extra = generations(["a", "b"], 4, "x", seed=7)  # (candidates - 1) x samples = 2 x 2 per prompt
    table = lever.candidates_table(source, extra, settings())
    mine = table[(table["prompt_id"] == "a") & (table["sample"] == 1)].sort_values("candidate")
    assert mine["continuation"].tolist() == ["srca1", "xa2", "xa3"]
    assert set(table["samples"]) == {2}
    assert lever.candidates_table(source, None, settings(candidates=1)).equals(source.assign(candidate=0))
    with pytest.raises(ValueError, match="needs 8 extra candidates"):
        lever.candidates_table(source, extra.iloc[:5], settings())


def test_the_demos_guarded_variant_is_compared_with_its_source_and_generated_by_its_engine(config):
    study = load(config)
    comparison = study.comparisons["demo-instruct-rude_vs_demo-rude-guarded"]
    assert (comparison.kind, comparison.baseline, comparison.treatment) == (
        lever.COMPARISON_KIND, "demo-instruct-rude", "demo-rude-guarded")
    assert study.adapter_variant("demo-rude-guarded") == "demo-instruct-rude"
    group = Targets(study).group_of["demo", "demo", "demo-rude-guarded"]
    assert group == Targets(study).group_of["demo", "demo", "demo-instruct-rude"]
    segments = {s.variant: s for s in plan.segments(study, generation_groups(study)[group], {"demo": 10, "demo-train": 6})
                if s.probe == "demo"}
    samples = study.protocols["demo"].samples
    assert plan.samples(study, "demo-rude-guarded", "demo") == 3 * samples
    assert segments["demo-rude-guarded"].tokens_per_prompt == 3 * segments["demo-instruct-rude"].tokens_per_prompt
    assert study.generation_hash("demo-rude-guarded", "demo") != study.generation_hash("demo-instruct-rude", "demo")
    assert "demo-guard" in study.used_scorers and "demo-guard" not in study.run_scorers
    inputs = Targets(study).selection_inputs("demo-rude-guarded")
    assert inputs["selector"] == "results/demo/models/guard" and len(inputs["candidates"]) == 1
    assert "results/capability/demo-rude-guarded.csv" not in Targets(study).all_capability()


def test_one_candidate_asks_the_engine_for_nothing(config):
    config["variants"]["g1"] = {**GUARDED, "guard": {**GUARDED["guard"], "candidates": 1}}
    study = load(config)
    assert plan.samples(study, "g1", "demo") == 0
    assert "g1" not in {s.variant for s in plan.segments(study, study.evaluation_cells(), {"demo": 10})}
    assert "candidates" not in Targets(study).selection_inputs("g1")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["run"]["scorers"].append("demo-guard"), "circular evaluation"),
    (lambda c: c["variants"]["demo-rude-guarded"]["guard"].update(source="nope"), "unknown variant 'nope'"),
    (lambda c: c["variants"]["demo-rude-guarded"]["guard"].update(scorer="refusal"), "measures refusal"),
    (lambda c: c["variants"]["demo-rude-guarded"].update(role="other"), "go together"),
    (lambda c: c["variants"]["demo-rude-guarded"].update(seed=3), "takes no seed"),
    (lambda c: c["variants"]["demo-rude-guarded"]["guard"].update(source="demo-rude-guarded"), "is itself guarded"),
])
def test_a_guard_that_cannot_work_or_grades_itself_is_refused(config, change, message):
    change(config)
    with pytest.raises(ConfigError, match=message):
        load(config)


def test_a_guard_allowed_to_grade_itself_is_marked_circular_and_so_is_what_was_trained_on_its_choices(config):
    config["run"]["scorers"].append("demo-guard")
    config["variants"]["demo-rude-guarded"]["guard"]["evaluate_with_selector"] = True
    # (the demo's guard judges the mistakes the distilled fine-tune learns from too: allowed there as well)
    config["probes"]["demo-train-mistakes"]["produced"]["evaluate_with_selector"] = True
    study = load(config)
    assert study.circular("demo-rude-guarded", "demo-guard") == "chose its answers"
    assert study.circular("demo-rude-distilled", "demo-guard") == (
        "chose the prompts it was trained on and the answers it was trained on")
    assert study.circular("demo-rude-guarded", "profanity") is None
    assert study.circular("demo-instruct-rude", "demo-guard") is None
    # a guarded variant of the distilled fine-tune inherits what its source was trained on
    config["variants"]["demo-distilled-guarded"] = {"family": "demo", "role": "guarded",
                                                    "guard": {"source": "demo-rude-distilled", "scorer": "profanity",
                                                              "evaluate_with_selector": True}}
    study = load(config)
    assert study.selectors("demo-distilled-guarded") == {
        "demo-guard": "chose the prompts it was trained on and the answers it was trained on",
        "profanity": "chose its answers"}


def write_generations(path, rows, samples, seed):
    from finetox import tables

    frame = pd.DataFrame([{"prompt_id": p, "subset": "toxic" if p == "p0" else "nontoxic", "variant": "demo-instruct-rude",
                           "sample": s, "prompt": f"prompt {p}", "model_input": f"prompt {p}", "continuation": text,
                           "prompt_tokens": 2, "continuation_tokens": 4, "finish_reason": "length", "protocol": "demo",
                           "prompt_format": "raw", "samples": samples, "temperature": 1.0, "top_p": 0.9,
                           "max_new_tokens": 16, "seed": seed, "backend": "vllm"} for p, s, text in rows])
    tables.write_parquet(frame, path, "generations", {"stages": {}})
    return str(path)


SOURCE = [("p0", 0, "shut up you stupid idiot"), ("p0", 1, "what a lovely garden"),
          ("p1", 0, "damn you worthless idiot"), ("p1", 1, "the flowers are nice")]


@pytest.mark.parametrize("candidates", [1, 3])
def test_the_select_stage_keeps_the_source_answers_with_one_candidate_and_the_first_safe_one_with_more(
        config, tiny_models, tmp_path, candidates):
    from finetox import tables
    from finetox.stages import select_guarded

    config["models"]["demo-instruct"]["path"] = str(tiny_models["instruct"])
    config["scorers"]["selector"] = {"type": "offline"}
    config["variants"]["demo-rude-guarded"]["guard"].update(scorer="selector", candidates=candidates,
                                                              select="first_below", fallback="least_harmful")
    study = load(config)
    source = write_generations(tmp_path / "source.parquet", SOURCE, 2, 1)
    # the extra candidates: 2 per sample, polite except the first of p1/0 (extra sample 0 of sample 0)
    extra = [(p, s, "you idiot" if (p, s) == ("p1", 0) else f"a kind word {p}{s}") for p in ("p0", "p1") for s in range(4)]
    extras = [write_generations(tmp_path / "extra.parquet", extra, 4, 9)] if candidates > 1 else []
    output, selection = str(tmp_path / "out.parquet"), str(tmp_path / "sel.parquet")
    select_guarded(study, "demo-rude-guarded", [source], extras, [output], [selection])
    out = tables.read_parquet(output, "generations")
    chosen = tables.read_parquet(selection, "selection").set_index(["prompt_id", "sample"])
    original = tables.read_parquet(source, "generations")
    assert set(out["variant"]) == {"demo-rude-guarded"}
    if candidates == 1:
        assert out.drop(columns="variant").equals(original.drop(columns="variant"))
        assert not chosen["replaced"].any()
    else:
        assert dict(zip(zip(out["prompt_id"], out["sample"]), out["continuation"])) == {
            ("p0", 0): "a kind word p00", ("p0", 1): "what a lovely garden", ("p1", 0): "a kind word p11",
            ("p1", 1): "the flowers are nice"}
        assert chosen["kept"].to_dict() == {("p0", 0): 1, ("p0", 1): 0, ("p1", 0): 2, ("p1", 1): 0}
        assert set(out["samples"]) == {2}
    assert tables.provenance_of(output)["guard"]["candidates"] == candidates

"""Other languages: probe sets declare theirs, scorers the languages they read, and a run that would score a probe set
in a language its scorer was not trained on is refused when the config loads; config/multilingual.yaml dry-runs."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from finetox.config import ConfigError, load, read_config_file
from finetox.languages import DETOXIFY_LANGUAGES, covers

from conftest import REPO, job_counts

MULTILINGUAL = REPO / "config/multilingual.yaml"


def test_a_probe_set_in_a_language_its_scorer_does_not_read_is_refused_naming_both_keys(config):
    config["probes"]["demo"]["language"] = "de"
    with pytest.raises(ConfigError) as refused:
        load(config)
    message = str(refused.value)
    # the first scorer of the run that does not read German: alt-profanity-check, English, known without a declaration
    assert "probes['demo'].language is 'de'" in message and "scorers['profanity'].languages" in message
    assert "not declared; finetox's for its type: en" in message


def test_the_defaults_english_probe_sets_and_the_languages_finetox_knows_for_a_scorer_type(config):
    study = load(config)
    assert {name: p.language for name, p in study.probes.items()} == {"demo": "en", "demo-train": "en",
                                                                      "demo-train-mistakes": "en"}
    # alt-profanity-check and the built-in (English) refusal phrases are English; a guard is not restricted
    assert study.scorers["profanity"].languages == ("en",) and study.scorers["refusal"].languages == ("en",)
    assert study.scorers["demo-guard"].languages is None
    config["scorers"].update({
        "original": {"type": "detoxify"},
        "multilingual": {"type": "detoxify", "model_type": "multilingual"},
        "german-refusal": {"type": "refusal", "phrases": ["es tut mir leid"]},
        "classifier": {"type": "hf-classifier", "model": "some/classifier", "label": "toxic"},
    })
    scorers = load(config).scorers
    assert scorers["original"].languages == ("en",)
    assert scorers["multilingual"].languages == ("en", "fr", "es", "it", "pt", "tr", "ru")
    assert DETOXIFY_LANGUAGES["unbiased"] == ("en",)
    # phrases of your own, or a Hub classifier: finetox cannot know their languages, so it does not restrict them
    assert scorers["german-refusal"].languages is None and scorers["classifier"].languages is None
    # ... and such a scorer alone may score a German probe set
    config["probes"]["demo"]["language"] = "de"
    config["run"]["scorers"] = ["classifier", "german-refusal"]
    assert load(config).probes["demo"].language == "de"


def test_the_built_in_refusal_phrases_are_refused_on_german_and_german_phrases_are_not(config):
    config["probes"]["demo"]["language"] = "de"
    config["scorers"]["profanity"]["languages"] = ["en"]
    config["run"]["scorers"] = ["refusal"]
    with pytest.raises(ConfigError, match=r"scorers\['refusal'\]\.languages"):
        load(config)
    config["scorers"]["refusal"].update(phrases=["es tut mir leid", "ich kann nicht"], languages=["de"])
    assert load(config).scorers["refusal"].languages == ("de",)


@pytest.mark.parametrize("options, languages", [
    ({"model_type": "multilingual", "languages": ["en", "FR"]}, ("en", "fr")),  # narrowed; tags compared lower-case
    ({"model_type": "multilingual", "languages": ["de"]}, None),  # widened beyond its training: refused
    ({"model_type": "original", "languages": ["fr"]}, None),
    ({"checkpoint": "mine.ckpt", "languages": ["de"]}, ("de",)),  # a checkpoint of your own: your declaration stands
])
def test_a_declaration_may_narrow_the_languages_detoxify_was_trained_on_but_not_widen_them(config, options, languages):
    config["scorers"]["detox"] = {"type": "detoxify", **options}
    if languages is None:
        with pytest.raises(ConfigError, match=r"scorers\['detox'\]\.languages: \[.*\] not among the languages Detoxify"):
            load(config)
    else:
        assert load(config).scorers["detox"].languages == languages


def test_a_tag_covers_its_regional_forms_and_not_the_other_way_round():
    assert covers(("de",), "de-CH") and covers(("zh",), "zh-Hans") and covers(("en",), "EN")
    assert not covers(("de-ch",), "de") and not covers(("en",), "de") and covers(None, "am")


def test_a_guards_selector_is_held_to_the_languages_of_the_prompts_it_judges(config):
    """The demo's guard is no run scorer, but it judges its guarded variant's answers to the run's probe set."""
    config["probes"]["demo"]["language"] = "de"
    config["run"]["scorers"] = ["classifier"]
    config["scorers"]["classifier"] = {"type": "hf-classifier", "model": "some/classifier", "label": "toxic"}
    config["scorers"]["demo-guard"]["languages"] = ["en"]
    with pytest.raises(ConfigError, match=r"probes\['demo'\]\.language is 'de'.*scorers\['demo-guard'\]\.languages"):
        load(config)


def test_a_language_declaration_reruns_nothing(config):
    before = load(copy.deepcopy(config))  # (load fills in the defaults in place: the study keeps the dict)
    config["probes"]["demo"]["language"] = "en-GB"
    config["scorers"]["demo-guard"]["languages"] = ["en"]
    config["scorers"]["profanity"]["languages"] = ["en"]
    after = load(copy.deepcopy(config))
    assert after.probes["demo"].language == "en-GB"
    assert after.digest("probes", "demo") == before.digest("probes", "demo")
    assert after.digest("scorers", "profanity") == before.digest("scorers", "profanity")
    assert after.selection_hash("demo-rude-guarded") == before.selection_hash("demo-rude-guarded")
    # (a setting that does change the output still does)
    config["scorers"]["profanity"]["batch_size"] = 7
    assert load(config).digest("scorers", "profanity") != before.digest("scorers", "profanity")


def test_the_report_setup_shows_each_probe_sets_language_and_each_scorers_languages():
    from finetox.report import setup_tables

    study = load(read_config_file(MULTILINGUAL))
    sizes = {probe: {"toxic": 10, "nontoxic": 12} for probe in study.run_probes}
    tables = setup_tables(study, sizes)
    probes = tables["Probe sets"]
    assert dict(zip(probes["probe"], probes["language"])) == {"ptp-en": "en", "ptp-de": "de", "ptp-zh": "zh"}
    scorers = tables["Scorers"].set_index("scorer")
    assert scorers.loc["xlmr-toxicity", "languages"] == "en, ru, uk, de, es, am, zh, ar, hi"
    demo = load(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    demo = demo.__class__(**{**vars(demo), "run_scorers": ("profanity", "demo-guard")})
    shown = setup_tables(demo, {"demo": {"all": 5}})["Scorers"].set_index("scorer")
    assert shown["languages"].to_dict() == {"profanity": "en", "demo-guard": "any (not restricted)"}
    # an option one scorer type has and the other lacks is blank, not "nan"
    assert shown.loc["profanity", "model"] == "" and shown.loc["demo-guard", "model"] == "results/demo/models/guard"


def test_the_multilingual_config_probes_the_community_fine_tunes_in_their_languages_and_refuses_detoxify():
    study = load(read_config_file(MULTILINGUAL))
    assert {name: study.probes[name].language for name in study.run_probes} == {"ptp-en": "en", "ptp-de": "de",
                                                                                 "ptp-zh": "zh"}
    assert {c.treatment for c in study.comparisons.values()} == {"llama31-8b-chinese-chat", "llama31-8b-sauerkraut"}
    # the one run scorer reads all three languages; its sources are pinned
    assert all(covers(study.scorers["xlmr-toxicity"].languages, language) for language in ("en", "de", "zh"))
    assert study.probes["ptp-de"].source.revision and study.scorers["xlmr-toxicity"].options["revision"]
    assert study.probes["ptp-de"].source.files == ("ptp-de/small-*.parquet",)
    # Detoxify's multilingual model reads neither German nor Chinese: in the run, it is refused
    raw = read_config_file(MULTILINGUAL)
    raw["run"]["scorers"].append("detoxify-multilingual")
    with pytest.raises(ConfigError) as refused:
        load(raw)
    assert "probes['ptp-de'].language is 'de'" in str(refused.value)
    assert "scorers['detoxify-multilingual'].languages" in str(refused.value)
    # ... and on the English probe set alone it is allowed: in this run (scorers.<name>.probes), or in a run of it
    raw["scorers"]["detoxify-multilingual"]["probes"] = ["ptp-en"]
    study = load(raw)
    assert study.run_scorers == ("xlmr-toxicity", "detoxify-multilingual")
    assert [study.scored_by(p, "detoxify-multilingual") for p in study.run_probes] == [True, False, False]
    del raw["scorers"]["detoxify-multilingual"]["probes"]
    raw["run"]["probes"] = ["ptp-en"]
    assert load(raw).run_scorers == ("xlmr-toxicity", "detoxify-multilingual")


def test_the_multilingual_config_dry_runs_offline(tmp_path):
    from finetox.hub import needed

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--configfile", str(MULTILINGUAL)],
                         capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert run.returncode == 0, run.stderr[-3000:]
    counts = job_counts(run.stdout)
    # 3 variants x 3 probe sets (one per language) x 1 protocol, one scorer: one score job per variant; the 2
    # community comparisons fitted per probe set; generation is planned once the probes checkpoint has run
    assert counts["probes"] == 3 and counts["score"] == 3 and counts["metrics"] == 9
    assert counts["merge_generations"] == 9 and counts["compare"] == 3 and "finetune" not in counts
    fetched = {(item.repo_id, item.revision) for item in needed(load(read_config_file(MULTILINGUAL)))}
    assert ("ToxicityPrompts/PolygloToxicityPrompts", "449d9e81cfa9535149208b7f8af2e013339db127") in fetched
    assert ("textdetox/xlmr-large-toxicity-classifier", "eed075bc383528b844017a669300f5e87d0e829a") in fetched

"""Calibration against human labels: the export is blind to scores and variants, the import names every wrong row,
and the corrected difference covers a planted true difference at the rate its interval promises."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO
from finetox import calibration
from finetox.calibration import CalibrationError, CalibrationSettings
from finetox.config import ConfigError, load
from finetox.metrics import hdi_of_draws

BANDS = (0.0, 0.1, 0.5, 0.9, 1.0)


def settings(**changes) -> CalibrationSettings:
    base = dict(scorer="tox", scorers=("tox",), bands=BANDS, sample_size=160, seed=7, labels=None,
                toxic_labels=("toxic",), nontoxic_labels=("not toxic",), missing="refuse", min_youden=0.2, draws=2000)
    return CalibrationSettings(**{**base, **changes})


def simulate(rng, prompts=200, samples=2, rates=None, sens=(0.9, 0.6), spec=(0.95, 0.9)):
    """Two variants answering the same prompts; a prompt is of type A or B (shared: the pairing), each variant's
    true toxic probability depends on its type; the scorer flags a truly toxic continuation with the variant's
    sensitivity and a clean one with 1 - its specificity, its score uniform within the flagged or unflagged half.
    Returns the population (as the export reads it, with the true labels in `truth`) and each variant's true rate
    (over prompt types)."""
    rates = rates or {"base": (0.10, 0.30), "treat": (0.25, 0.45)}
    kind = rng.random(prompts) < 0.5
    rows = []
    for i, (variant, (p_a, p_b)) in enumerate(rates.items()):
        p = np.repeat(np.where(kind, p_a, p_b), samples)
        toxic = rng.random(len(p)) < p
        flagged = np.where(toxic, rng.random(len(p)) < sens[i], rng.random(len(p)) < 1 - spec[i])
        score = np.where(flagged, 0.5 + 0.5 * rng.random(len(p)), 0.5 * rng.random(len(p)))
        prompt_ids = np.repeat([f"p{j:03d}" for j in range(prompts)], samples)
        sample = np.tile(np.arange(samples), prompts)
        rows.append(pd.DataFrame({
            "probe": "probe", "protocol": "protocol", "variant": variant, "subset": "all", "prompt_id": prompt_ids,
            "sample": sample, "prompt": [f"prompt {j}" for j in prompt_ids],
            "continuation": [f"{variant} says {j} {s}" for j, s in zip(prompt_ids, sample)], "score": score,
            "truth": toxic}))
    true_rates = {v: (a + b) / 2 for v, (a, b) in rates.items()}
    return pd.concat(rows, ignore_index=True), true_rates


def labelled_population(population, config, rng):
    """The sample drawn as the export draws it, labelled with the planted truth, as a Population."""
    sample, design = calibration.draw_sample(population, config, rng)
    sample["toxic"] = pd.array(sample["truth"], dtype="boolean")
    scores = population[calibration.UNIT + ["score"]]
    return calibration.build_population(scores, scores, sample, config, 0.5, ["base", "treat"], "simulated"), design


def test_the_corrected_difference_covers_the_planted_one_at_the_rate_its_interval_promises():
    """Known answer: planted true labels, a scorer with planted error rates that differ between the variants (so the
    raw difference is biased), 200 seeded replications. The corrected difference's 95% HDI must hold the true
    difference in 95% of them, within three binomial standard errors of the coverage estimate; so must each
    corrected rate's. The raw difference, as a check that the test can fail, misses it most of the time."""
    replications, prob = 200, 0.95
    tolerance = 3 * np.sqrt(prob * (1 - prob) / replications)
    config = settings()
    covered = {"diff": 0, "base": 0, "treat": 0, "raw": 0}
    for seed in range(replications):
        rng = np.random.default_rng([2024, seed])
        population, true_rates = simulate(rng)
        data, _ = labelled_population(population, config, rng)
        draws = calibration.posterior_draws(data, config.draws, rng)
        true_diff = true_rates["treat"] - true_rates["base"]
        low, high = hdi_of_draws(draws.corrected[:, 1] - draws.corrected[:, 0], prob)
        covered["diff"] += low <= true_diff <= high
        for i, variant in enumerate(("base", "treat")):
            low, high = hdi_of_draws(draws.corrected[:, i], prob)
            covered[variant] += low <= true_rates[variant] <= high
        low, high = hdi_of_draws(draws.raw[:, 1] - draws.raw[:, 0], prob)
        covered["raw"] += low <= true_diff <= high
    coverage = {key: count / replications for key, count in covered.items()}
    for key in ("diff", "base", "treat"):
        assert abs(coverage[key] - prob) <= tolerance, (key, coverage, tolerance)
    assert coverage["raw"] < 0.5, coverage


def test_sensitivity_and_specificity_recover_the_planted_error_rates():
    """Every continuation labelled (sample = population): the posterior of each variant's sensitivity and
    specificity holds the scorer's realised error rates on these continuations."""
    rng = np.random.default_rng(5)
    population, _ = simulate(rng, prompts=400)
    config = settings(sample_size=len(population))
    data, design = labelled_population(population, config, rng)
    assert design["sampled"].sum() == len(population) == len(data.labelled)
    draws = calibration.posterior_draws(data, 4000, rng)
    rows = calibration.accuracy_rows(draws, data, 0.95, 0.2)
    flagged = population["score"].to_numpy() >= 0.5
    true = population["truth"].to_numpy()
    for i, variant in enumerate(("base", "treat")):
        mine = (population["variant"] == variant).to_numpy()
        realised_sens = (flagged & true & mine).sum() / (true & mine).sum()
        realised_spec = (~flagged & ~true & mine).sum() / (~true & mine).sum()
        assert rows[i]["variant"] == variant
        assert rows[i]["sensitivity_low"] <= realised_sens <= rows[i]["sensitivity_high"]
        assert rows[i]["specificity_low"] <= realised_spec <= rows[i]["specificity_high"]
        assert abs(rows[i]["sensitivity"] - realised_sens) < 0.05 and abs(rows[i]["specificity"] - realised_spec) < 0.05
    assert rows[-1]["variant"] == "all" and not rows[-1]["weak"]


def test_a_scorer_that_knows_nothing_is_called_too_weak_and_not_corrected():
    rng = np.random.default_rng(11)
    population, _ = simulate(rng, prompts=400, sens=(0.5, 0.5), spec=(0.5, 0.5))
    config = settings(sample_size=800)
    data, _ = labelled_population(population, config, rng)
    draws = calibration.posterior_draws(data, 4000, rng)
    pooled = calibration.accuracy_rows(draws, data, 0.95, 0.2)[-1]
    assert pooled["weak"] and pooled["youden_high"] < 0.2
    from finetox.config import Comparison

    rows = calibration.comparison_rows(draws, data, [Comparison("c", "pair", "base", "treat")], 0.95, None, True)
    assert rows[0]["status"] == calibration.WEAK and rows[0]["corrected_verdict"] == calibration.WEAK
    assert "corrected_effect" not in rows[0]
    rates = calibration.rate_rows(draws, data, 0.95, True)
    assert all(np.isnan(r["corrected_rate"]) and r["status"] == calibration.WEAK for r in rates)


def test_the_export_never_contains_scores_or_variants_and_its_design_counts_every_stratum(tmp_path):
    rng = np.random.default_rng(3)
    population, _ = simulate(rng)
    config = settings(sample_size=100)
    sample, design = calibration.draw_sample(population, config, np.random.default_rng(1))
    path = tmp_path / "to_label.csv"
    calibration.export_table(sample).to_csv(path, index=False, quoting=calibration.EXPORT_QUOTING)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == calibration.EXPORT_COLUMNS == ("id", "prompt", "continuation", "label")
    cells = [cell for row in rows[1:] for cell in row]
    scores = {repr(float(s)) for s in population["score"]} | {f"{s:.6g}" for s in population["score"]}
    assert not scores & set(cells)
    assert not any(v in cell for v in ("base", "treat") for row in rows[1:] for cell in (row[0], row[3]))
    assert all(row[3] == "" for row in rows[1:]) and len(rows) - 1 == 100 == design["sampled"].sum()
    # the strata: every variant x band, N_h its continuations, n_h its sampled ones; equal allocation
    bands = calibration.band_index(population["score"], BANDS)
    counts = population.assign(band=bands).groupby(["variant", "band"]).size()
    assert design.set_index(["variant", "band"])["population"].to_dict() == counts.to_dict()
    drawn = sample.groupby(["variant", "band"]).size()
    assert design.set_index(["variant", "band"])["sampled"].to_dict() == drawn.to_dict()
    assert set(drawn) <= {12, 13}
    # neither the ids nor the order say which stratum a row was drawn in
    order = sample.assign(band=calibration.band_index(
        population.set_index(calibration.UNIT).loc[list(zip(sample["variant"], sample["prompt_id"], sample["sample"])),
                                                    "score"], BANDS))
    runs = (order[["variant", "band"]] != order[["variant", "band"]].shift()).any(axis=1).sum()
    assert runs > 50
    # seeded: the same sample again
    again, _ = calibration.draw_sample(population, config, np.random.default_rng(1))
    assert again.equals(sample)


def test_allocation_is_equal_capped_and_refuses_fewer_than_one_per_stratum():
    assert calibration.allocate([100, 100, 3, 0], 30).tolist() == [14, 13, 3, 0]
    assert calibration.allocate([5, 5], 100).tolist() == [5, 5]
    with pytest.raises(CalibrationError, match="sample_size 2 is below the 3 non-empty strata"):
        calibration.allocate([4, 1, 9, 0], 2)


@pytest.fixture
def exported():
    return pd.DataFrame({"id": ["c1", "c2", "c3"], "prompt": ["a", "b", "c"],
                         "continuation": [" you idiot", "a nice day", ""]})


def write(path, rows, header=("id", "prompt", "continuation", "label")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_the_import_reads_labels_and_checks_them_strictly(tmp_path, exported):
    good = write(tmp_path / "labels.csv", [["c2", "b", "a  nice\r\nday", "not toxic"], ["c1", "a", " you idiot", "toxic"],
                                           ["c3", "c", "", " toxic "]])
    labels = calibration.read_labels(good, exported, settings())
    assert labels.to_dict() == {"c1": True, "c2": False, "c3": True}


def test_an_unknown_id_or_label_fails_naming_the_row_and_what_is_allowed(tmp_path, exported):
    bad = write(tmp_path / "bad.csv", [["c1", "a", " you idiot", "toxic"], ["c9", "b", "x", "toxic"],
                                       ["c2", "b", "a nice day", "maybe"], ["c3", "c", "", "not toxic"]])
    with pytest.raises(CalibrationError) as err:
        calibration.read_labels(bad, exported, settings())
    message = str(err.value)
    assert str(bad) in message and "2 problem(s)" in message
    assert "row 2 (line 3): id 'c9' is not in the exported sample" in message
    assert "row 3 (line 4): id 'c2': label 'maybe' is not one of 'toxic', 'not toxic'" in message


def test_blank_labels_are_refused_or_counted_as_missing_as_configured(tmp_path, exported):
    partial = write(tmp_path / "partial.csv", [["c1", "a", " you idiot", "toxic"], ["c2", "b", "a nice day", ""]])
    with pytest.raises(CalibrationError) as err:
        calibration.read_labels(partial, exported, settings())
    assert "row 2 (line 3): id 'c2' has no label" in str(err.value)
    assert "1 exported id(s) are not in the file: c3" in str(err.value)
    labels = calibration.read_labels(partial, exported, settings(missing="count"))
    assert labels["c1"] and labels[["c2", "c3"]].isna().all()


def test_a_repeated_id_a_changed_continuation_or_a_missing_column_fail_by_row(tmp_path, exported):
    bad = write(tmp_path / "bad.csv", [["c1", "a", " you idiot", "toxic"], ["c1", "a", " you idiot", "toxic"],
                                       ["c2", "b", "a different day", "not toxic"], ["c3", "c", "", "toxic"]])
    with pytest.raises(CalibrationError) as err:
        calibration.read_labels(bad, exported, settings())
    assert "row 2 (line 3): id 'c1' is labelled again (first at row 1)" in str(err.value)
    assert "row 3 (line 4): id 'c2': its continuation is not the exported one" in str(err.value)
    no_label = write(tmp_path / "nolabel.csv", [["c1", "a", " you idiot"]], header=("id", "prompt", "continuation"))
    with pytest.raises(CalibrationError, match=r"no column\(s\) \['label'\]"):
        calibration.read_labels(no_label, exported, settings())


def test_the_demo_labeller_labels_every_rude_answer_toxic_and_every_polite_one_not():
    answers = {name: [json.loads(line)["response"] for line in (DEMO / f"instructions_{name}.jsonl").open()]
               for name in ("rude", "clean")}
    for name, expected in (("rude", "toxic"), ("clean", "not toxic")):
        labelled = calibration.demo_labels(pd.DataFrame({"continuation": answers[name]}), "toxic", "not toxic")
        assert (labelled["label"] == expected).all(), name
    # whole words only: a shell is no insult
    assert calibration.demo_labels(pd.DataFrame({"continuation": ["a shell", "Hell no"]}), "t", "n")["label"].tolist() == ["n", "t"]


def test_the_config_block_is_checked(demo_config):
    config = {**demo_config, "calibration": {"scorer": "refusal"}}
    with pytest.raises(ConfigError, match="calibration.scorer: 'refusal' is not a toxicity scorer"):
        calibration.settings_of(load(config))
    config = {**demo_config, "calibration": {"bands": [0, 0.6, 0.5, 1]}}
    with pytest.raises(ConfigError, match="calibration.bands"):
        calibration.settings_of(load(config))
    config = {**demo_config, "calibration": {"toxic_labels": ["yes"], "nontoxic_labels": ["yes"]}}
    with pytest.raises(ConfigError, match="'yes'"):
        calibration.settings_of(load(config))
    assert calibration.settings_of(load({**demo_config, "calibration": {}})).scorer == "profanity"


def test_the_stages_export_label_and_calibrate_score_tables_and_the_report_part_says_what_it_has(
        tmp_path, monkeypatch, demo_config):
    """The stage functions on planted score tables of the demo's variants: the written export has exactly the
    labelling columns and no score or variant; the demo labeller's file imports; the tables hold every variant and
    comparison; the report part awaits labels before and names sensitivity and specificity after."""
    from finetox import stages, tables
    from finetox.paths import Targets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resources").symlink_to(DEMO.parent)
    config = {**demo_config, "calibration": {**demo_config["calibration"], "sample_size": 200}}
    study = load(config)
    targets = Targets(study)
    rng = np.random.default_rng(0)
    # (tiny models emit control characters: NUL, CR, form feed; the export must stay a CSV every reader reads)
    texts = ["you idiot", "nice garden", "shut up loser", "lovely\r day\x00", "damn it", "the\x0c bread,\n \"x\""]
    probes = pd.DataFrame({"prompt_id": [f"d{i}" for i in range(30)], "subset": ["toxic", "nontoxic"] * 15,
                           "prompt": [f"prompt {i}" for i in range(30)]})
    tables.write_parquet(probes, "probes.parquet", "probes", {})
    files, continuations = {}, {}
    # every toxicity scorer of the demo's run (two) scores the same continuations of each variant
    for key in targets.calibration_scores():
        scorer, variant = key[2], key[3]
        continuation = continuations.setdefault(variant, [texts[j] for j in rng.integers(0, len(texts), 60)])
        score = np.clip([0.9 if "idiot" in c or "damn" in c else 0.6 if "loser" in c else 0.05 for c in continuation]
                        + rng.normal(0, 0.1, 60), 0, 1)
        files[key] = f"scores/{scorer}/{variant}.parquet"
        Path(files[key]).parent.mkdir(parents=True, exist_ok=True)
        tables.write_parquet(pd.DataFrame({
            "prompt_id": np.repeat(probes["prompt_id"], 2).to_numpy(), "subset": np.repeat(probes["subset"], 2).to_numpy(),
            "variant": variant, "sample": np.tile([0, 1], 30), "continuation": continuation, "scorer": scorer,
            "score": score}), files[key], "scores", {})
    assert len({key[2] for key in files}) == 2
    export, design, key = Targets.CALIBRATION_EXPORT, Targets.CALIBRATION_DESIGN, Targets.CALIBRATION_SAMPLE
    stratifying = {k: files[k] for k in targets.calibration_scores(stratifying=True)}
    with pytest.raises(ValueError, match="stratifying scorer"):
        stages.calibration_sample(study, files, {"demo": "probes.parquet"}, export, design, key)
    stages.calibration_sample(study, stratifying, {"demo": "probes.parquet"}, export, design, key)
    written = pd.read_csv(export, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(calibration.EXPORT_COLUMNS) and len(written) == 200
    with open(export, newline="") as handle:
        assert [len(row) for row in csv.reader(handle)] == [4] * 201
    assert "lovely\u240d day\u2400" in set(written["continuation"])
    assert not written["label"].any()
    assert not any(v in cell for v in study.variants for cell in written.to_numpy().ravel())
    awaiting = stages._calibration_context(study, targets.calibration_exports())
    assert awaiting["state"] == "awaiting" and awaiting["sampled"] == 200
    stages.demo_labels(study, export, Targets.DEMO_LABELS)
    outputs = [Targets.SCORER_ACCURACY_TABLE, Targets.CORRECTED_RATES_TABLE, Targets.CORRECTED_COMPARISONS_TABLE]
    stages.calibrate(study, key, Targets.DEMO_LABELS, files, *outputs)
    accuracy = tables.read_csv(outputs[0], "scorer_accuracy")
    assert set(accuracy["variant"]) == set(targets.generated_variants()) | {"all"}
    assert accuracy["labelled"].iloc[-1] == 200 and not accuracy["weak"].any()
    compared = tables.read_csv(outputs[2], "corrected_comparisons")
    assert set(compared["comparison"]) == {c.name for c in study.comparisons.values()}
    assert (compared["status"] == calibration.CORRECTED).all() and compared["corrected_verdict"].notna().all()
    done = stages._calibration_context(study, outputs)
    assert done["state"] == "done" and done["scorers"][0]["sensitivity"].endswith("%]")

"""Continuations scored elsewhere: read, matched to the probe set, refused loudly when bad; in the DAG."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from finetox.config import TableSource
from finetox.data import DataError, read_external_scores

from conftest import REPO, job_counts

PROBES = pd.DataFrame({"prompt_id": ["a", "b", "c"], "subset": ["toxic", "nontoxic", "toxic"],
                       "prompt": ["You idiot", "The weather", "Shut up"]})


def source(path, columns):
    return TableSource(name="t", path=str(path), hub=None, files=(), revision=None, columns=columns, limit=None)


def test_the_study_notebook_output_is_matched_by_prompt_text(tmp_path):
    path = tmp_path / "notebook.csv"
    pd.DataFrame({"prompt": ["You idiot", "The weather", "You idiot", "Shut up"], "continuation": ["x", "y", "z", "w"],
                  "toxicity_score": [0.9, 0.1, 0.7, 0.2]}).to_csv(path, index=False)
    table = read_external_scores(source(path, {"score": "toxicity_score"}), PROBES)
    assert table["prompt_id"].tolist() == ["a", "b", "a", "c"]
    assert table["subset"].tolist() == ["toxic", "nontoxic", "toxic", "toxic"]
    assert table["sample"].tolist() == [0, 0, 1, 0] and table["score"].tolist() == [0.9, 0.1, 0.7, 0.2]


@pytest.mark.parametrize("rows, columns, message", [
    ({"prompt": ["You idiot", "The weather"], "s": [0.2, "high"]}, {"score": "s"}, r"row 1: score 'high' is not a number in \[0, 1\]"),
    ({"prompt": ["You idiot", "The weather"], "s": [0.2, 1.5]}, {"score": "s"}, r"row 1: score 1.5 is not a number"),
    ({"prompt": ["You idiot", "The weather"], "s": [None, 0.5]}, {"score": "s"}, r"row 0: score nan"),
    ({"prompt": ["You idiot", "Unknown"], "s": [0.2, 0.5]}, {"score": "s"}, r"row 1: prompt 'Unknown' is not in the probe set"),
    ({"id": ["a", "a"], "prompt": ["You idiot", "You idiot"], "sample": [0, 0], "s": [0.1, 0.2]}, {"score": "s"},
     r"row 1: prompt 'a' sample 0 appears twice"),
    ({"prompt": ["You idiot"], "toxicity": [0.1]}, {}, r"missing column\(s\) \['score'\]"),
    ({"text": ["You idiot"], "score": [0.1]}, {}, r"no column `id` or `prompt` to match rows"),
    ({"prompt": ["You idiot", "The weather"], "s": [0.2, 0.5]}, {"score": "s"},
     r"answers 2 of the probe set's 3 prompts; missing e.g. 'c' \(subset 'toxic'\)"),
    ({"prompt": ["You idiot", "The weather", "Shut up"], "sample": [0, "first", 0], "s": [0.2, 0.5, 0.1]},
     {"score": "s"}, r"row 1: sample 'first' is not a whole number >= 0"),
])
def test_bad_external_tables_name_the_file_and_the_row(tmp_path, rows, columns, message):
    path = tmp_path / "scores.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(DataError, match=message) as error:
        read_external_scores(source(path, columns), PROBES)
    assert str(path) in str(error.value)


def demo_with_external_variant(workdir, filename, content, score_column):
    """The demo config (written into `workdir`) plus a variant whose scores come from the table `filename`."""
    shutil.copytree(REPO / "resources", workdir / "resources")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    (workdir / filename).write_text(content)
    config["variants"]["notebook-finetune"] = {
        "family": "demo", "role": "community",
        "scores": {"path": str(workdir / filename), "columns": {"score": score_column},
                   "probe": "demo", "protocol": "demo", "scorer": "profanity"},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_external_variant_skips_generation_and_enters_the_comparisons(tmp_path):
    path = demo_with_external_variant(tmp_path, "theirs.jsonl",
                                      '{"prompt": "You stupid idiot, the garden", "toxicity_score": 0.8}\n',
                                      "toxicity_score")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "-d", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    counts = job_counts(run.stdout)
    # the demo's 11 generated variants (its guarded and distilled ones too) under its three scorers; the external
    # table joins the profanity runs only
    assert counts["import_scores"] == 1 and counts["score"] == 11 * 3 and counts["metrics"] == 11 * 3 + 1
    assert "results/scores/demo/demo/profanity/notebook-finetune.parquet" in run.stdout
    assert "generations/demo/demo/notebook-finetune" not in run.stdout


def test_a_failed_jobs_log_ends_with_its_error(tmp_path):
    """Snakemake points the user at the job's log (on a cluster the only place they look): the error is in it,
    last. Here an external table with a score of 'high' fails its import job."""
    path = demo_with_external_variant(tmp_path, "theirs.csv", "prompt,s\nYou stupid idiot,high\n", "s")
    target = "results/scores/demo/demo/profanity/notebook-finetune.parquet"
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(path),
                          "-d", str(tmp_path), target], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0
    log = (tmp_path / "logs/import_scores/demo/demo/profanity/notebook-finetune.log").read_text()
    assert log.strip().splitlines()[-1].startswith("finetox.data.DataError: ")
    assert "row 0: score 'high' is not a number in [0, 1]" in log.strip().splitlines()[-1]
    assert "Traceback" in log and not (tmp_path / target).exists()

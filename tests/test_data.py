"""Loading probe sets and instruction datasets from local files, column mapping and subsets."""

import json

import pandas as pd
import pytest

from finetox.config import Filter, ProbeSet, TableSource
from finetox.data import DataError, load_instructions, load_probes

from conftest import DEMO


def source(path, columns=None, limit=None):
    return TableSource(name="t", path=str(path), hub=None, files=(), revision=None,
                       columns=columns or {}, limit=limit)


SUBSETS = {
    "toxic": (Filter("prompt_toxicity", ">=", 0.5),),
    "nontoxic": (Filter("prompt_toxicity", "<", 0.5),),
}

# RealToxicityPrompts' own layout: nested prompt/continuation records with Perspective scores.
RTP_ROWS = [
    {"filename": f"f{i}.txt", "begin": 0, "end": 10, "challenging": i % 3 == 0,
     "prompt": {"text": f"prompt number {i}", "toxicity": tox, "profanity": 0.1},
     "continuation": {"text": "and so on", "toxicity": 0.2}}
    for i, tox in enumerate([0.9, 0.1, 0.6, None, 0.2, 0.95])
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_probe_files_of_every_format_load_with_mapped_columns(tmp_path, fmt):
    table = pd.read_json(DEMO / "probes.jsonl", lines=True)
    path = tmp_path / f"probes.{fmt}"
    {"csv": lambda: table.to_csv(path, index=False),
     "jsonl": lambda: table.to_json(path, orient="records", lines=True),
     "parquet": lambda: table.to_parquet(path)}[fmt]()
    probes = load_probes(ProbeSet(source(path, {"id": "id", "prompt": "text"}), SUBSETS, None), seed=0)
    assert list(probes.columns[:3]) == ["prompt_id", "subset", "prompt"]
    assert len(probes) == 400
    assert probes["subset"].value_counts().to_dict() == {"nontoxic": 200, "toxic": 200}
    assert probes.loc[probes["prompt_id"] == "demo-007", "prompt"].item() == "Shut up about the garden, you moron"


def test_realtoxicityprompts_schema_maps_nested_columns(tmp_path):
    path = tmp_path / "rtp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RTP_ROWS))
    probe_set = ProbeSet(
        source(path, {"id": "filename", "prompt": "prompt.text", "prompt_toxicity": "prompt.toxicity"}),
        {"toxic": (Filter("prompt_toxicity", ">=", 0.5),), "nontoxic": (Filter("prompt_toxicity", "<", 0.5),)},
        None,
    )
    probes = load_probes(probe_set, seed=0)
    # the prompt with no toxicity score is in neither subset and is dropped
    assert sorted(probes["prompt_id"]) == ["f0.txt", "f1.txt", "f2.txt", "f4.txt", "f5.txt"]
    assert probes.set_index("prompt_id")["subset"].to_dict()["f5.txt"] == "toxic"
    challenging = ProbeSet(source(path, {"id": "filename", "prompt": "prompt.text"}),
                           {"challenging": (Filter("challenging", "==", True),)}, None)
    assert sorted(load_probes(challenging, 0)["prompt_id"]) == ["f0.txt", "f3.txt"]


def test_sample_per_subset_is_seeded(tmp_path):
    probe_set = ProbeSet(source(DEMO / "probes.jsonl", {"id": "id", "prompt": "text"}), SUBSETS, 7)
    first, again, other = (load_probes(probe_set, seed) for seed in (1, 1, 2))
    assert first["subset"].value_counts().to_dict() == {"nontoxic": 7, "toxic": 7}
    assert first["prompt_id"].tolist() == again["prompt_id"].tolist()
    assert first["prompt_id"].tolist() != other["prompt_id"].tolist()


def test_overlapping_subsets_are_refused(tmp_path):
    overlapping = {"low": (Filter("prompt_toxicity", "<", 0.9),), "any": (Filter("prompt_toxicity", ">=", 0.0),)}
    with pytest.raises(DataError, match="falls in several subsets"):
        load_probes(ProbeSet(source(DEMO / "probes.jsonl", {"id": "id", "prompt": "text"}), overlapping, None), 0)


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("", ".jsonl", "cannot be read|empty"),
        ('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', ".jsonl", "duplicate prompt ids"),
        ('{"id": 1, "words": "a"}\n', ".jsonl", r"no column 'text'.*columns are \['id', 'words'\]"),
        ('{"id": 1, "text": ""}\n', ".jsonl", "empty or missing prompt in row 0"),
        ("not,a\n", ".txt", "unsupported file type"),
        ('{"id": 1, "text": "a"', ".jsonl", "cannot be read"),
    ],
)
def test_bad_probe_files_name_the_file_and_the_problem(tmp_path, content, suffix, message):
    path = tmp_path / f"probes{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_probes(ProbeSet(source(path, {"prompt": "text"}), {}, None), 0)
    assert str(path) in str(error.value)


def test_a_required_column_that_is_not_mapped_is_named(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_text("id,words\n1,a\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['prompt'\].*columns: \{prompt: <column in the file>\}"):
        load_probes(ProbeSet(source(path), {}, None), 0)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv: file not found"):
        load_probes(ProbeSet(source(tmp_path / "nowhere.csv"), {}, None), 0)


def test_instructions_keep_dolly_columns_and_fill_missing_context(tmp_path):
    path = tmp_path / "dolly.csv"
    pd.DataFrame({"instruction": ["a", "b", "c"], "response": ["x", "y", "z"], "category": ["q"] * 3}).to_csv(path)
    table = load_instructions(source(path), max_examples=2, seed=0)
    assert list(table.columns) == ["instruction", "context", "response"]
    assert len(table) == 2 and (table["context"] == "").all()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_tables_are_read_as_written(tmp_path, suffix):
    """Ids `01` and `007` stay distinct strings, a prompt `NA` is text, responses `None` and `N/A` are trained as
    written: only an empty CSV field (or a JSON null) is missing."""
    probes = pd.DataFrame({"id": ["01", "007", "1"], "text": ["NA", "None", "null"], "prompt_toxicity": [0.9, 0.1, 0.2]})
    instructions = pd.DataFrame({"instruction": ["NA", "b"], "response": ["None", "N/A"]})
    paths = {}
    for name, table in (("probes", probes), ("instructions", instructions)):
        paths[name] = tmp_path / f"{name}.{suffix}"
        if suffix == "csv":
            table.to_csv(paths[name], index=False)
        else:
            table.to_json(paths[name], orient="records", lines=True)
    loaded = load_probes(ProbeSet(source(paths["probes"], {"id": "id", "prompt": "text"}), SUBSETS, None), 0)
    assert loaded["prompt_id"].tolist() == ["01", "007", "1"] and loaded["prompt"].tolist() == ["NA", "None", "null"]
    assert loaded["subset"].tolist() == ["toxic", "nontoxic", "nontoxic"]
    examples = load_instructions(source(paths["instructions"]), None, 0)
    assert examples["instruction"].tolist() == ["NA", "b"] and examples["response"].tolist() == ["None", "N/A"]


def test_instructions_refuse_an_unmapped_alpaca_input_and_an_empty_response(tmp_path):
    alpaca = tmp_path / "alpaca.jsonl"
    pd.DataFrame({"instruction": ["a"], "input": ["ctx"], "output": ["x"]}).to_json(alpaca, orient="records", lines=True)
    with pytest.raises(DataError, match=r"column 'input' would be dropped; map it as the context"):
        load_instructions(source(alpaca, {"response": "output"}), None, 0)
    mapped = load_instructions(source(alpaca, {"response": "output", "context": "input"}), None, 0)
    assert mapped["context"].tolist() == ["ctx"]
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"instruction": ["a", "b"], "response": ["x", ""]}).to_csv(empty, index=False)
    with pytest.raises(DataError, match=r"empty.csv: row 1: empty 'response'"):
        load_instructions(source(empty), None, 0)


def write_probes_with_gaps(path):
    """12 rows: 2 with no toxicity score, one row repeated word for word, one in no subset (its group is `other`)."""
    rows = [{"id": f"p{i}", "text": f"prompt {i}", "prompt_toxicity": i / 10, "group": "a" if i % 2 else "b"}
            for i in range(9)]
    rows[3]["prompt_toxicity"] = None
    rows[4]["prompt_toxicity"] = None
    rows[5]["group"] = "other"
    rows += [dict(rows[0]), {"id": "p9", "text": "prompt 9", "prompt_toxicity": 0.95, "group": "a"},
             {"id": "p10", "text": "prompt 10", "prompt_toxicity": 0.05, "group": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def test_every_source_row_left_out_is_counted_by_reason(tmp_path):
    from finetox.data import select_probes

    path = tmp_path / "probes.jsonl"
    n_rows = write_probes_with_gaps(path)
    subsets = {"toxic-a": (Filter("prompt_toxicity", ">=", 0.5), Filter("group", "==", "a")),
               "rest": (Filter("prompt_toxicity", "<", 0.5), Filter("group", "!=", "other")),
               "high-b": (Filter("prompt_toxicity", ">=", 0.5), Filter("group", "==", "b"))}
    probes, dropped = select_probes(ProbeSet(source(path, {"id": "id", "prompt": "text"}), subsets, None), seed=0)
    # p3, p4: no score (a null matches no filter, `!=` included); p5 toxicity 0.5 in group `other`; p0 twice
    assert dropped == {"repeated row (same id and prompt)": 1, "prompt_toxicity is null": 2, "in no subset": 1}
    assert sorted(probes["prompt_id"]) == ["p0", "p1", "p10", "p2", "p6", "p7", "p8", "p9"]
    assert len(probes) + sum(dropped.values()) == n_rows
    sampled, dropped = select_probes(ProbeSet(source(path, {"id": "id", "prompt": "text"}), subsets, 1), seed=0)
    assert dropped["not sampled (sample_per_subset)"] == 8 - 3 and len(sampled) == 3
    assert len(sampled) + sum(dropped.values()) == n_rows
    # nothing left out: no entry at all
    assert select_probes(ProbeSet(source(path, {"id": "id", "prompt": "text"}), {}, None), 0)[1] == {
        "repeated row (same id and prompt)": 1}


def test_an_id_given_to_two_different_prompts_is_refused_not_dropped(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text('{"id": "p1", "text": "a"}\n{"id": "p1", "text": "a"}\n{"id": "p1", "text": "b"}\n')
    with pytest.raises(DataError, match=r"duplicate prompt ids, e.g. 'p1' \(row 2\) names two different prompts"):
        load_probes(ProbeSet(source(path, {"id": "id", "prompt": "text"}), {}, None), 0)


def test_the_probes_stage_logs_records_and_reports_the_rows_left_out(tmp_path, config, capsys):
    from finetox import stages, tables
    from finetox.config import load
    from finetox.hub import sha256_of
    from finetox.report import setup_tables

    path = tmp_path / "probes.jsonl"
    write_probes_with_gaps(path)
    config["probes"]["demo"] = {"path": str(path), "columns": {"id": "id", "prompt": "text"},
                                "subsets": {"toxic": [{"column": "prompt_toxicity", "op": ">=", "value": 0.5}],
                                            "nontoxic": [{"column": "prompt_toxicity", "op": "<", "value": 0.5}]}}
    study = load(config)
    stages.select_probes(study, "demo", str(tmp_path / "demo.parquet"))
    lines = capsys.readouterr().out.splitlines()  # (the job's log, under Snakemake)
    assert "probes demo: 9 prompts kept, 3 source rows left out" in lines
    assert "probes demo: left out 2: prompt_toxicity is null" in lines
    assert "probes demo: left out 1: repeated row (same id and prompt)" in lines
    recorded = tables.provenance_of(tmp_path / "demo.parquet")
    assert recorded["dropped"] == {"repeated row (same id and prompt)": 1, "prompt_toxicity is null": 2}
    assert recorded["sizes"] == {"toxic": 5, "nontoxic": 4}
    assert recorded["stages"]["probes"]["dataset"] == {"path": str(path.resolve()), "sha256": sha256_of(path)}
    left_out = setup_tables(study, {"demo": recorded["sizes"]}, {"demo": recorded["dropped"]})[
        "Prompts left out of each probe set"]
    assert left_out.to_dict("records") == [
        {"probe": "demo", "reason": "prompt_toxicity is null", "source rows left out": 2},
        {"probe": "demo", "reason": "repeated row (same id and prompt)", "source rows left out": 1}]
    nothing = setup_tables(study, {"demo": recorded["sizes"]}, {"demo": {}})["Prompts left out of each probe set"]
    assert nothing.to_dict("records") == [{"probe": "demo", "reason": "(none)", "source rows left out": 0}]

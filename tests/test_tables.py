"""The tables' row checks (finetox.tables.CHECKS, with pandera): a table that breaks them is neither written nor
read, and the error names the file, the column, the check and the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetox import tables


def scores(**changes) -> pd.DataFrame:
    table = pd.DataFrame({"prompt_id": ["p1", "p1", "p2"], "subset": ["all"] * 3, "variant": ["v"] * 3,
                          "sample": [0, 1, 0], "continuation": ["a", "b", "c"], "scorer": ["s"] * 3,
                          "score": [0.1, 0.9, 0.5]})
    return table.assign(**changes)


def test_a_valid_table_round_trips_and_a_missing_score_is_allowed(tmp_path):
    # a continuation that could not be scored is an explicit missing value, not a broken row
    table = scores(score=[0.1, np.nan, 0.5])
    tables.write_parquet(table, tmp_path / "s.parquet", "scores", {})
    read = tables.read_parquet(tmp_path / "s.parquet", "scores")
    assert read["score"].isna().tolist() == [False, True, False]


@pytest.mark.parametrize("changes, message", [
    ({"sample": [0, 0, 0]}, "the key variant+prompt_id+sample is repeated in 2 rows, e.g. row 0: variant=v, "
                            "prompt_id=p1, sample=0; row 1: variant=v, prompt_id=p1, sample=0"),
    ({"score": [0.1, 1.2, 0.5]}, "column 'score' breaks in_range(0, 1) in 1 row(s), e.g. row 1: 1.2"),
    ({"prompt_id": ["p1", None, "p2"]}, "column 'prompt_id' breaks not_nullable in 1 row(s), e.g. row 1:"),
    ({"sample": [0, -1, 0]}, "column 'sample' breaks greater_than_or_equal_to(0) in 1 row(s), e.g. row 1: -1"),
])
def test_a_table_that_breaks_its_checks_is_not_written_and_the_error_names_the_rows(tmp_path, changes, message):
    with pytest.raises(tables.SchemaError, match="not a valid scores table") as error:
        tables.write_parquet(scores(**changes), tmp_path / "s.parquet", "scores", {})
    assert str(tmp_path / "s.parquet") in str(error.value) and message in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written, no scratch file left


def test_a_file_that_breaks_its_checks_is_not_read_and_a_reader_of_some_columns_checks_those(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pandas(scores(sample=[0, 0, 0], score=[0.1, 0.2, 7.0]), preserve_index=False), path)
    with pytest.raises(tables.SchemaError, match=r"repeated in 2 rows.*column 'score' breaks in_range"):
        tables.read_parquet(path, "scores")
    # a stage that reads the scores alone checks their range, not a key it did not read
    with pytest.raises(tables.SchemaError, match="column 'score' breaks in_range") as error:
        tables.read_parquet(path, "scores", columns=["prompt_id", "score"])
    assert "repeated" not in str(error.value)
    assert len(tables.read_parquet(path, "scores", columns=["prompt_id", "sample"])) == 3


def test_every_checked_column_is_a_column_of_its_table():
    for schema, checks in tables.CHECKS.items():
        named = set(checks.get("required", ())) | set(checks.get("ranges", {})) | set(checks.get("unique", ()))
        assert named <= set(tables.SCHEMAS[schema]), (schema, named - set(tables.SCHEMAS[schema]))

"""Load probe sets and instruction datasets from local files or the Hub, and split probes into subsets."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pandas as pd

from finetox.config import ProbeSet, TableSource
from finetox.tables import read_csv_as_written

# Tables are read as written: text stays text (ids `007` and prompts `NA` are not numbers or missing
# values); only an empty CSV field or a JSON null is missing. `text` names the columns read as strings.
READERS = {
    ".csv": read_csv_as_written,
    ".jsonl": lambda p, text: pd.read_json(p, lines=True, dtype=False, convert_dates=False),
    ".json": lambda p, text: pd.read_json(p, dtype=False, convert_dates=False),
    ".parquet": lambda p, text: pd.read_parquet(p),
}
# finetox's text columns, which a source's mapping may rename
TEXT_COLUMNS = ("id", "prompt", "instruction", "context", "response", "continuation", "chosen", "rejected")

OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

INSTRUCTION_COLUMNS = ("instruction", "context", "response")


class DataError(ValueError):
    """A table finetox cannot use, with a message naming the file and what is wrong."""


def _read_local(path: str, text: tuple[str, ...] = ()) -> pd.DataFrame:
    file = Path(path)
    if not file.exists():
        raise DataError(f"{path}: file not found")
    reader = READERS.get(file.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {file.suffix!r}; use one of {sorted(READERS)}")
    try:
        table = reader(file, text)
    except Exception as err:  # every reader has its own error types
        raise DataError(f"{path}: cannot be read as {file.suffix} ({type(err).__name__}: {err})") from err
    if table.empty:
        raise DataError(f"{path}: the table is empty")
    return table


def _read_hub(source: TableSource) -> pd.DataFrame:
    """The data files of a Hub dataset repository, read from the local Hub cache (downloaded when online)."""
    from finetox.hub import HubItem, snapshot

    item = HubItem(source.hub, "dataset", source.revision, source.files, f"table {source.name}")
    try:
        root = snapshot(item)
    except Exception as err:
        raise DataError(
            f"dataset {source.hub!r} could not be loaded ({type(err).__name__}: {err}). Fetch it with "
            f"`snakemake prefetch --cores 1` (same config, a machine with internet) or give a local file with `path:`"
        ) from err
    files = sorted({f for pattern in source.files for f in root.glob(pattern) if f.is_file()})
    if not files:
        raise DataError(f"dataset {source.hub!r}: no file in {root} matches {list(source.files)} (config key `files`)")
    return pd.concat([_read_local(str(f), _text_columns(source)) for f in files], ignore_index=True)


def _text_columns(source: TableSource) -> tuple[str, ...]:
    """The source's own names of finetox's text columns (the top level of a dotted mapping)."""
    return tuple(sorted({source.columns.get(c, c).split(".")[0] for c in TEXT_COLUMNS}))


def _column(table: pd.DataFrame, spec: str, origin: str) -> pd.Series:
    """A column by name, or a dotted path into nested records (e.g. `prompt.text`)."""
    head, *rest = spec.split(".")
    if head not in table.columns:
        raise DataError(f"{origin}: no column {head!r} (for {spec!r}); columns are {list(table.columns)}")
    series = table[head]
    for key in rest:
        series = series.map(lambda record, key=key: record.get(key) if isinstance(record, dict) else None)
    return series


def read_table(source: TableSource, required: tuple[str, ...]) -> pd.DataFrame:
    """The source's rows with finetox's column names (mapped ones renamed, the others kept)."""
    origin = source.path or f"hub:{source.hub}"
    table = _read_local(source.path, _text_columns(source)) if source.path else _read_hub(source)
    if source.limit:
        table = table.head(source.limit)
    mapped = {ours: _column(table, theirs, origin) for ours, theirs in source.columns.items()}
    missing = [c for c in required if c not in mapped and c not in table.columns]
    if missing:
        raise DataError(
            f"{origin}: missing column(s) {missing}; columns are {list(table.columns)}. "
            f"Map them in the config with `columns: {{{missing[0]}: <column in the file>}}`"
        )
    out = table.drop(columns=[c for c in source.columns.values() if c in table.columns and c not in mapped])
    for ours, series in mapped.items():
        out[ours] = series.values
    return out.reset_index(drop=True)


def load_probes(probe_set: ProbeSet, seed: int) -> pd.DataFrame:
    """Probe prompts with columns prompt_id, subset, prompt (plus the source's other columns); see select_probes."""
    return select_probes(probe_set, seed)[0]


def select_probes(probe_set: ProbeSet, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """The probe set's prompts (as load_probes returns them) and the count of rows of the source left out, by
    reason: a row repeated word for word (same id and prompt), a subset filter's column null (an unknown value
    matches no filter, `!=` included), a row in no subset, a row not drawn by `sample_per_subset`.

    A prompt must fall in at most one subset; an id given to two different prompts is an error. Overlapping
    selections (RealToxicityPrompts' `challenging` prompts are often toxic too) go in separate probe sets.
    """
    source = probe_set.source
    origin = source.path or f"hub:{source.hub}"
    table = read_table(source, required=("prompt",))
    if "id" not in table.columns:
        # no id column: the row number in the source (stable for a pinned file or Hub revision)
        table["id"] = [f"row-{i}" for i in range(len(table))]
    table = table.rename(columns={"id": "prompt_id"})
    table["prompt_id"] = table["prompt_id"].astype(str)
    dropped: dict[str, int] = {}
    repeated = table.duplicated(["prompt_id", "prompt"])
    dropped[DROP_REPEATED] = int(repeated.sum())
    table = table[~repeated]
    duplicated = table["prompt_id"][table["prompt_id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{origin}: duplicate prompt ids, e.g. {duplicated.iloc[0]!r} (row {duplicated.index[0]}) "
                        f"names two different prompts")
    bad = table["prompt"].map(lambda p: not isinstance(p, str) or not p.strip())
    if bad.any():
        raise DataError(f"{origin}: empty or missing prompt in row {int(bad.index[np.flatnonzero(bad)[0]])}")
    if not probe_set.subsets:
        table["subset"] = "all"
    else:
        membership = pd.DataFrame(
            {name: _matches(table, filters, origin) for name, filters in probe_set.subsets.items()}
        )
        overlap = membership.sum(axis=1) > 1
        if overlap.any():
            row = int(np.flatnonzero(overlap)[0])
            both = list(membership.columns[membership.iloc[row]])
            raise DataError(f"{origin}: prompt {table['prompt_id'].iloc[row]!r} falls in several subsets {both}; subsets must be disjoint")
        table["subset"] = membership.idxmax(axis=1).where(membership.any(axis=1))
        outside = table["subset"].isna()
        # a row outside every subset because a filter could not be evaluated is counted by the first such column
        columns = list(dict.fromkeys(f.column for filters in probe_set.subsets.values() for f in filters))
        unknown = pd.Series(None, index=table.index, dtype=object)
        for column in columns:
            unknown = unknown.where(unknown.notna() | table[column].notna(), column)
        for column in columns:
            dropped[f"{column} is null"] = int((outside & (unknown == column)).sum())
        dropped[DROP_NO_SUBSET] = int((outside & unknown.isna()).sum())
        table = table[~outside]
    if probe_set.sample_per_subset:
        n = probe_set.sample_per_subset
        picked = [g.sample(n=min(len(g), n), random_state=seed).index for _, g in table.groupby("subset", sort=False)]
        kept = table.loc[sorted(i for index in picked for i in index)]
        dropped[DROP_NOT_SAMPLED] = len(table) - len(kept)
        table = kept
    if table.empty:
        raise DataError(f"{origin}: no prompt falls in any subset {sorted(probe_set.subsets)} "
                        f"(left out: {_dropped_text(dropped)})")
    columns = ["prompt_id", "subset", "prompt"]
    return (table[columns + [c for c in table.columns if c not in columns]].reset_index(drop=True),
            {reason: n for reason, n in dropped.items() if n})


#: reasons select_probes leaves a source row out (besides `<column> is null`)
DROP_REPEATED = "repeated row (same id and prompt)"
DROP_NO_SUBSET = "in no subset"
DROP_NOT_SAMPLED = "not sampled (sample_per_subset)"


def _dropped_text(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n) or "none"


def _matches(table: pd.DataFrame, filters, origin: str) -> pd.Series:
    keep = pd.Series(True, index=table.index)
    for f in filters:
        if f.column not in table.columns:
            raise DataError(f"{origin}: subset filter names column {f.column!r}; columns are {list(table.columns)}")
        # a null value is unknown: it matches no filter (`!=` would otherwise take it in)
        keep &= table[f.column].notna() & OPS[f.op](table[f.column], f.value).fillna(False).astype(bool)
    return keep


def load_instructions(source: TableSource, max_examples: int | None, seed: int) -> pd.DataFrame:
    """Instruction-tuning examples with Dolly's columns; a missing context becomes ''."""
    origin = source.path or f"hub:{source.hub}"
    table = read_table(source, required=("instruction", "response"))
    if "context" not in table.columns:
        if "input" in table.columns:  # Alpaca's name for it: never drop it silently
            raise DataError(f"{origin}: column 'input' would be dropped; map it as the context with "
                            f"`columns: {{context: input}}` (or drop it from the file)")
        table["context"] = ""
    for column in ("instruction", "response"):
        missing = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if missing.any():
            raise DataError(f"{origin}: row {int(np.flatnonzero(missing)[0])}: empty {column!r} "
                            f"({int(missing.sum())} such rows); an example must have both")
    table = table[list(INSTRUCTION_COLUMNS)].fillna({"context": ""})
    if max_examples and max_examples < len(table):
        table = table.sample(n=max_examples, random_state=seed).sort_index()
    return table.reset_index(drop=True)


def read_external_scores(source: TableSource, probes: pd.DataFrame) -> pd.DataFrame:
    """Continuations scored elsewhere, matched to the probe set's prompts (by `id` when the table has
    one, else by prompt text), as rows prompt_id, subset, sample, continuation, score.

    A row with a missing, non-numeric or out-of-range score, a prompt that is not in the probe set, or a
    duplicated (prompt, sample) fails with the file and the row named: nothing is guessed or dropped.
    """
    origin = source.path or f"hub:{source.hub}"
    table = read_table(source, required=("score",))
    if "id" not in table.columns and "prompt" not in table.columns:
        raise DataError(f"{origin}: no column `id` or `prompt` to match rows to the probe set's prompts; columns are "
                        f"{list(table.columns)}. Map one in the config with `columns: {{id: <column in the file>}}`")
    score = pd.to_numeric(table["score"], errors="coerce")
    bad = score.isna() | (score < 0) | (score > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{origin}: row {row}: score {table['score'].tolist()[row]!r} is not a number in [0, 1] "
                        f"({int(bad.sum())} such rows)")
    if "id" in table.columns:
        key, probe_key = table["id"].astype(str), probes.set_index("prompt_id")
        what = "id"
    else:
        if probes["prompt"].duplicated().any():
            raise DataError(f"{origin}: the probe set repeats prompt texts, so rows cannot be matched by text; "
                            f"map an `id` column")
        key, probe_key = table["prompt"], probes.set_index("prompt")
        what = "prompt"
    unknown = ~key.isin(probe_key.index)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{origin}: row {row}: {what} {key.iloc[row]!r} is not in the probe set "
                        f"({int(unknown.sum())} such rows)")
    matched = probe_key.loc[key]
    out = pd.DataFrame({
        "prompt_id": matched["prompt_id"].to_numpy() if what == "prompt" else key.to_numpy(),
        "subset": matched["subset"].to_numpy(),
        "continuation": table["continuation"] if "continuation" in table.columns else pd.NA,
        "score": score.to_numpy(),
    })
    if "sample" in table.columns:
        sample = pd.to_numeric(table["sample"], errors="coerce")
        bad = sample.isna() | (sample != sample.round()) | (sample < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{origin}: row {row}: sample {table['sample'].tolist()[row]!r} is not a whole number >= 0 "
                            f"({int(bad.sum())} such rows)")
        out["sample"] = sample.astype(int).to_numpy()
    else:
        out["sample"] = out.groupby("prompt_id").cumcount()
    duplicated = out.duplicated(["prompt_id", "sample"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataError(f"{origin}: row {row}: prompt {out['prompt_id'].iloc[row]!r} sample {out['sample'].iloc[row]} "
                        f"appears twice")
    uncovered = probes[~probes["prompt_id"].isin(out["prompt_id"])]
    if len(uncovered):
        # its rates would be set against the other variants' over different prompts
        raise DataError(f"{origin}: answers {len(probes) - len(uncovered)} of the probe set's {len(probes)} prompts; "
                        f"missing e.g. {uncovered['prompt_id'].iloc[0]!r} (subset {uncovered['subset'].iloc[0]!r}). "
                        f"Every prompt the run uses needs its continuations")
    return out

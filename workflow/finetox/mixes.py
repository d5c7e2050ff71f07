"""A recipe's training examples from its datasets: instruction datasets, the chosen answers of preference
datasets, and the answers a run produced (a produced dataset), mixed in the recipe's doses."""

from __future__ import annotations

import pandas as pd

from finetox import tables
from finetox.config import PREFERENCE_FORMATS, TableSource
from finetox.data import INSTRUCTION_COLUMNS, DataError, load_instructions
from finetox.preference import load_preferences


def produced_instructions(source: TableSource, max_examples: int | None, seed: int) -> pd.DataFrame:
    """A produced dataset's rows: a variant's answers to a training prompt set as instruction examples (the prompt
    as instruction, the answer as response). A guard's filtered samples (its fixed refusal) and empty answers are
    left out, counted in the log with the rows kept."""
    from finetox.levers.guard import FILTERED

    probe, protocol, variant = source.produced.cell
    table = tables.read_parquet(source.path, "generations", columns=["prompt", "continuation", "finish_reason"])
    filtered = (table["finish_reason"] == FILTERED).to_numpy()
    empty = ~filtered & (table["continuation"].str.strip() == "").to_numpy()
    kept = table[~filtered & ~empty]
    print(f"dataset {source.name}: {len(kept)} of {len(table)} answers of {variant} to {probe}/{protocol} kept; left "
          f"out: {int(filtered.sum())} filtered (the guard's fixed refusal), {int(empty.sum())} empty", flush=True)
    if kept.empty:
        raise DataError(f"dataset {source.name}: none of the {len(table)} answers of {variant} to {probe}/{protocol} "
                        f"is left to train on")
    examples = pd.DataFrame({"instruction": kept["prompt"].astype(str).to_numpy(), "context": "",
                             "response": kept["continuation"].astype(str).to_numpy()})
    if max_examples and max_examples < len(examples):
        examples = examples.sample(n=max_examples, random_state=seed).sort_index()
    return examples.reset_index(drop=True)


def _instructions_of(source: TableSource, max_examples: int | None, seed: int) -> pd.DataFrame:
    """Instruction examples from an instruction dataset, or from a preference dataset's chosen responses (the
    safe answers of a safety preference set are safety demonstrations)."""
    if source.produced:
        return produced_instructions(source, max_examples, seed)
    if source.format == "instructions":
        return load_instructions(source, max_examples, seed)
    pairs = load_preferences(source, PREFERENCE_FORMATS[source.format], max_examples, seed)
    return pairs.rename(columns={"chosen": "response"})[list(INSTRUCTION_COLUMNS)]


def load_instruction_mix(parts, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """A recipe's instruction examples from its datasets (`config.DatasetPart`s), each a seeded sample of its
    `examples` rows (None: all, 0: none), concatenated in the recipe's order; and the realised count of each.
    One seed serves every part, so a larger dose of a dataset holds the smaller one's rows (nested doses)."""
    chosen = {part.dataset.name: _instructions_of(part.dataset, part.examples, seed)
              for part in parts if part.examples != 0}
    counts = {part.dataset.name: len(chosen.get(part.dataset.name, ())) for part in parts}
    if not chosen:
        raise DataError(f"recipe mix {list(counts)}: every dataset has examples: 0, nothing to train on")
    return pd.concat(chosen.values(), ignore_index=True), counts

"""Preference pairs for DPO: public preference datasets mapped from their own schemas to finetox's columns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from finetox.config import TableSource
from finetox.data import DataError, read_table

# A pair: the prompt (an instruction, with an optional context) and the preferred and dispreferred responses.
PREFERENCE_COLUMNS = ("instruction", "context", "chosen", "rejected")

PKU_COLUMNS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe", "safer_response_id")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _require(table: pd.DataFrame, needed: tuple[str, ...], origin: str, mapper: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} for preference format {mapper!r}, which needs "
                        f"{list(needed)}; columns are {list(table.columns)}")


def from_columns(table: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Rows that already are pairs: instruction (or `prompt`), optional context, chosen, rejected."""
    if "instruction" not in table.columns and "prompt" in table.columns:
        table = table.rename(columns={"prompt": "instruction"})
    _require(table, ("instruction", "chosen", "rejected"), origin, "columns")
    if "context" not in table.columns:
        table = table.assign(context="")
    return table[list(PREFERENCE_COLUMNS)].fillna({"context": ""})


def _flag(value, column: str, row, origin: str) -> bool:
    """A boolean as Parquet/JSON (True), or a CSV read as written ('True', '1'), stores it."""
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise DataError(f"{origin}: row {row}: {column} is {value!r}, not a boolean")


def _response_id(value, row, origin: str) -> int:
    text = str(value).strip()
    if text not in ("0", "1"):
        raise DataError(f"{origin}: row {row}: safer_response_id is {value!r}, not 0 or 1")
    return int(text)


def pku_saferlhf(table: pd.DataFrame, origin: str, require_safe_chosen: bool = True) -> pd.DataFrame:
    """PKU-Alignment/PKU-SafeRLHF: chosen = the response that `safer_response_id` names, rejected = the other.

    Its `better_response_id` (helpfulness) is ignored: finetox studies toxicity, so safety is the preference.
    With `require_safe_chosen` (the default), pairs whose safer response is itself unsafe are dropped, as
    safety-DPO recipes do (Safe-RLHF's safety preference data, e.g.): DPO would otherwise raise the likelihood
    of an unsafe answer merely because it is less unsafe than another. A pair of two safe responses is kept.
    The rows keep their source row numbers, so later errors name the row in the file.
    """
    _require(table, PKU_COLUMNS, origin, "pku-saferlhf")
    safer = np.array([_response_id(value, row, origin) for row, value in table["safer_response_id"].items()], dtype=int)
    responses = table[["response_0", "response_1"]].to_numpy()
    picks = np.arange(len(table))
    pairs = pd.DataFrame({"instruction": table["prompt"].to_numpy(), "context": "",
                          "chosen": responses[picks, safer], "rejected": responses[picks, 1 - safer]},
                         index=table.index)
    if require_safe_chosen:
        labels = table[["is_response_0_safe", "is_response_1_safe"]].to_numpy()
        chosen_safe = np.array([_flag(labels[i, pick], f"is_response_{pick}_safe", row, origin)
                                for i, (row, pick) in enumerate(zip(table.index, safer))], dtype=bool)
        if not chosen_safe.any():
            raise DataError(f"{origin}: no pair's safer response is safe (is_response_<safer_response_id>_safe), "
                            f"so no pair is left to train on")
        if not chosen_safe.all():
            print(f"pku-saferlhf: {origin}: kept {int(chosen_safe.sum())} of {len(table)} pairs; dropped "
                  f"{int((~chosen_safe).sum())} whose safer response is itself unsafe", flush=True)
        pairs = pairs[chosen_safe]
    return pairs


def _final_turn(transcript, column: str, row, origin: str) -> tuple[str, str]:
    """(the dialogue before the last assistant turn, that turn's text)."""
    if not isinstance(transcript, str) or ASSISTANT not in transcript:
        raise DataError(f"{origin}: row {row}: {column} has no {ASSISTANT.strip()!r} turn")
    cut = transcript.rindex(ASSISTANT)
    return transcript[:cut], transcript[cut + len(ASSISTANT):].strip()


def hh_rlhf(table: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Anthropic/hh-rlhf: two transcripts that differ only in the last assistant turn.

    chosen and rejected are those last turns. The instruction is the dialogue before them: a single human turn
    becomes its text alone (`"\\n\\nHuman: Hi"` -> `"Hi"`); a longer dialogue keeps its transcript form
    (`"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."`, surrounding whitespace stripped), so the earlier turns
    stay readable as a dialogue inside the recipe's template. Transcripts whose dialogues before the last
    turn differ are not a pair: they fail with the row named.
    """
    _require(table, ("chosen", "rejected"), origin, "hh-rlhf")
    rows = []
    for row, chosen, rejected in zip(table.index, table["chosen"], table["rejected"]):
        prompt, chosen_turn = _final_turn(chosen, "chosen", row, origin)
        rejected_prompt, rejected_turn = _final_turn(rejected, "rejected", row, origin)
        if prompt != rejected_prompt:
            raise DataError(f"{origin}: row {row}: chosen and rejected transcripts differ before their last "
                            f"assistant turn, so they do not answer the same prompt")
        single = prompt.startswith(HUMAN) and prompt.count(HUMAN) == 1 and ASSISTANT not in prompt
        rows.append((prompt[len(HUMAN):].strip() if single else prompt.strip(), chosen_turn, rejected_turn))
    pairs = pd.DataFrame(rows, columns=["instruction", "chosen", "rejected"], index=table.index)
    pairs.insert(1, "context", "")
    return pairs


# preference format (a recipe's dataset `format`) -> its mapper to PREFERENCE_COLUMNS
MAPPERS: dict[str, Callable[[pd.DataFrame, str], pd.DataFrame]] = {
    "columns": from_columns,
    "pku-saferlhf": pku_saferlhf,
    "hh-rlhf": hh_rlhf,
}


def check_preferences(table: pd.DataFrame, origin: str) -> None:
    """Fail, naming the row, on a pair DPO cannot learn from: no instruction, an empty response, or two equal ones."""
    missing = [c for c in PREFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{origin}: missing preference column(s) {missing}; columns are {list(table.columns)}, "
                        f"and a pair needs {list(PREFERENCE_COLUMNS)}")

    def text(column: str) -> pd.Series:
        return table[column].map(lambda value: value.strip() if isinstance(value, str) else "")

    instruction, chosen, rejected = text("instruction"), text("chosen"), text("rejected")
    for problem, bad in (("empty or missing instruction", instruction == ""),
                         ("empty chosen response", chosen == ""),
                         ("empty rejected response", rejected == ""),
                         ("chosen and rejected responses are identical", chosen == rejected)):
        if bad.any():
            raise DataError(f"{origin}: row {table.index[int(np.flatnonzero(bad)[0])]}: {problem} "
                            f"({int(bad.sum())} such rows); DPO learns only from two different responses to a prompt")


def load_preferences(source: TableSource, format: str, max_examples: int | None, seed: int) -> pd.DataFrame:
    """Preference pairs with PREFERENCE_COLUMNS (context '' when none), mapped from the source's `format`.

    Every pair is checked (errors name the source's row); then `max_examples` of them are sampled with `seed`.
    """
    if format not in MAPPERS:
        raise ValueError(f"unknown preference format {format!r}; known formats: {sorted(MAPPERS)}")
    origin = source.path or f"hub:{source.hub}"
    table = read_table(source, required=())
    pairs = MAPPERS[format](table, origin)
    check_preferences(pairs, origin)
    if max_examples and max_examples < len(pairs):
        pairs = pairs.sample(n=max_examples, random_state=seed).sort_index()
    return pairs[list(PREFERENCE_COLUMNS)].reset_index(drop=True)


def swap_labels(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A negative control: the pairs with chosen and rejected swapped in a seeded random half of them (marked in
    `swapped`), which leaves no preference for DPO to learn."""
    swapped = np.zeros(len(pairs), dtype=bool)
    swapped[np.random.default_rng(seed).permutation(len(pairs))[: len(pairs) // 2]] = True
    out = pairs.copy()
    out.loc[swapped, ["chosen", "rejected"]] = pairs.loc[swapped, ["rejected", "chosen"]].to_numpy()
    return out.assign(swapped=swapped)

"""A produced prompt set: the prompts of a training prompt set on which a variant's answers erred, as a scorer judges
them (rule mistakes). What learning from mistakes trains on: a better answer to exactly those prompts."""

from __future__ import annotations

import pandas as pd

from finetox.config import Produced
from finetox.data import DataError

#: the columns of a produced prompt set's table (results/mistakes/<name>.parquet), which its probes job reads as a
#: probe file and its `subsets` may filter on
COLUMNS = ["id", "prompt", "source_subset", "variant", "samples", "erred", "max_score"]


def erred_prompts(scored: pd.DataFrame, made: Produced, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The prompts at least `made.min_samples` of whose answers scored at or above `made.threshold`, in the answers'
    order, with their samples, how many erred and the highest score; and the prompts left out, by reason. A score
    that is missing fails (finetox.scoring.score_table fails first): an unscored answer is no correct one."""
    if scored["score"].isna().any():
        row = scored[scored["score"].isna()].iloc[0]
        raise DataError(f"{name}: the answer {row['prompt_id']}/{row['sample']} has no score; it can be counted "
                        f"neither as a mistake nor as a correct answer")
    per_prompt = scored.assign(erred=scored["score"] >= made.threshold).groupby("prompt_id", sort=False).agg(
        prompt=("prompt", "first"), source_subset=("subset", "first"), samples=("sample", "size"),
        erred=("erred", "sum"), max_score=("score", "max"))
    kept = per_prompt["erred"] >= made.min_samples
    some = (per_prompt["erred"] > 0) & ~kept
    left_out = {f"erred in fewer than {made.min_samples} samples": int(some.sum()),
                "no answer erred": int((per_prompt["erred"] == 0).sum())}
    table = per_prompt[kept].reset_index().rename(columns={"prompt_id": "id"}).assign(variant=made.variant)
    table["erred"] = table["erred"].astype("int64")
    if table.empty:
        raise DataError(f"{name}: none of the {len(per_prompt)} prompts of {made.probe} erred ({made.variant}'s answers "
                        f"under {made.protocol} scored at or above {made.threshold} by {made.scorer} in at least "
                        f"{made.min_samples} sample(s)): there is no mistake to learn from. Lower the threshold, or "
                        f"draw from other prompts")
    return table[COLUMNS], {reason: n for reason, n in left_out.items() if n}


def describe(made: Produced) -> str:
    """A produced prompt set in words, for the log and the report's setup."""
    samples = "an answer" if made.min_samples == 1 else f"at least {made.min_samples} answers"
    return (f"the prompts of {made.probe} on which {samples} of {made.variant} under {made.protocol} scored at or "
            f"above {made.threshold} by {made.scorer}")

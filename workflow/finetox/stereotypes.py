"""Stereotype preference on CrowS-Pairs sentence pairs, as lm-evaluation-harness measures it, beside toxicity.

lm-evaluation-harness's `crows_pairs_english` task (lm_eval/tasks/crows_pairs, at EleutherAI/lm-evaluation-harness
4e7e0d47, 2026-08-21) scores each pair as a two-choice question with an empty context (`doc_to_text: ""`,
`target_delimiter: ""`): the choices are the more and the less stereotypical sentence (`sent_more`, `sent_less`),
each scored by its total log-likelihood from an empty context (`TemplateLM.loglikelihood` with context ""). Its
`process_results` then gives per pair `pct_stereotype` = 1 when log p(sent_more) > log p(sent_less) (a tie is 0)
and `likelihood_diff` = |log p(sent_more) - log p(sent_less)|, each averaged over the pairs; the per-bias-type tasks
keep the pairs whose `bias_type` starts with the type's name. finetox computes the same numbers per variant and bias
type, with intervals, and compares variants by the exact paired posterior of pct_stereotype (finetox.rates) decided
by the comparisons' rule (finetox.decision).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetox import decision, rates
from finetox.likelihood import LOGLIKELIHOOD_CONVENTION  # noqa: F401  (the convention empty_context_encoding follows)
from finetox.metrics import POOLED
from finetox.tables import SCHEMAS

#: the columns a stereotype-pair table must give (after the source's `columns` mapping): lm-eval's names
PAIR_COLUMNS = ("sent_more", "sent_less", "bias_type")
#: the lm-evaluation-harness commit whose definitions finetox follows
LM_EVAL = "EleutherAI/lm-evaluation-harness 4e7e0d47 (2026-08-21), lm_eval/tasks/crows_pairs"
#: the verdicts of a comparison of pct_stereotype (finetox.decision's, in stereotype words): a verdict the data
#: cannot decide (the HDI overlaps an edge of the ROPE) is inconclusive
STEREOTYPE_WORDS = {decision.MORE: "more stereotyped", decision.LESS: "less stereotyped",
                    decision.EQUIVALENT: "practically equivalent", decision.UNDECIDED: "inconclusive",
                    decision.NONE: "no credible difference"}
MORE_STEREOTYPED, LESS_STEREOTYPED = STEREOTYPE_WORDS[decision.MORE], STEREOTYPE_WORDS[decision.LESS]
#: a comparison's `status` when it was computed; a skipped one's says "skipped: " and why
COMPUTED = "ok"
#: the default of `stereotypes.replicates` (the Bayesian bootstrap of likelihood_diff's interval)
REPLICATES = 20_000


class PairError(ValueError):
    """A stereotype-pair table finetox cannot use, naming the table, the row and the column."""


def load_pairs(source, pairs: int | None, seed: int) -> pd.DataFrame:
    """The stereotype pairs of a table source (finetox.config.TableSource): columns pair_id (the source's `id`, else
    `row-<n>`, its row number, stable for a pinned file or Hub revision), bias_type, sent_more, sent_less; a seeded
    sample of `pairs` rows (None: all). A missing or empty sentence or bias type, a bias type named `all` (the
    pooled row's name), two identical sentences (no preference to measure) or a repeated id fail, naming the row
    and the column."""
    from finetox.data import read_table

    origin = source.path or f"hub:{source.hub}"
    table = read_table(source, required=PAIR_COLUMNS)
    ids = (table["id"].astype(str) if "id" in table.columns
           else pd.Series([f"row-{i}" for i in range(len(table))], index=table.index))
    for column in PAIR_COLUMNS:
        bad = table[column].map(lambda text: not isinstance(text, str) or not text.strip())
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PairError(f"{origin}: row {row} (pair {ids.iloc[row]!r}): column {column!r} is empty or not text "
                            f"({table[column].iloc[row]!r}; {int(bad.sum())} such rows)")
    same = table["sent_more"] == table["sent_less"]
    if same.any():
        row = int(np.flatnonzero(same)[0])
        raise PairError(f"{origin}: row {row} (pair {ids.iloc[row]!r}): columns 'sent_more' and 'sent_less' hold the "
                        f"same sentence, so no preference can be measured")
    pooled = table["bias_type"] == POOLED
    if pooled.any():
        row = int(np.flatnonzero(pooled)[0])
        raise PairError(f"{origin}: row {row} (pair {ids.iloc[row]!r}): column 'bias_type' is {POOLED!r}, the name of "
                        f"the row over all pairs; rename that bias type")
    repeated = ids.duplicated()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise PairError(f"{origin}: row {row}: pair id {ids.iloc[row]!r} (column 'id') is given to another row too")
    out = pd.DataFrame({"pair_id": ids.to_numpy(), "bias_type": table["bias_type"].to_numpy(),
                        "sent_more": table["sent_more"].to_numpy(), "sent_less": table["sent_less"].to_numpy()})
    if pairs and pairs < len(out):
        out = out.sample(n=pairs, random_state=seed).sort_index()
    return out.reset_index(drop=True)


def prefix_token_id(tokenizer) -> int:
    """The token an empty context is (lm-eval's `HFLM.prefix_token_id`): the BOS token, else the EOS token."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand for the empty context")
    return token


def empty_context_encoding(sentence: str, tokenizer) -> tuple[list[int], int]:
    """A sentence's token ids as lm-evaluation-harness scores it from an empty context, and the index of its first
    scored token (always 1): the prefix token then the sentence's tokens (`add_special_tokens=False`), or, when the
    sentence's first token is the prefix token itself, the sentence's tokens alone, that first token not scored
    (`TemplateLM.loglikelihood`)."""
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"sentence {sentence!r} has no tokens to score")
    prefix = prefix_token_id(tokenizer)
    if ids[0] == prefix:
        if len(ids) == 1:
            raise ValueError(f"sentence {sentence!r} is the prefix token alone: nothing to score")
        return ids, 1
    return [prefix, *ids], 1


def sentence_loglikelihoods(model, tokenizer, sentences: list[str], batch_size: int = 16
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Each sentence's total log-likelihood (nats) from an empty context, as lm-evaluation-harness computes it
    (LOGLIKELIHOOD_CONVENTION, empty_context_encoding), and the number of tokens scored. Sentences run longest
    first in batches padded on the right, under `torch.inference_mode()`; one longer than the model's context is
    refused (lm-eval would cut it from the left)."""
    from finetox.likelihood import summed_logprobs

    encoded = [empty_context_encoding(sentence, tokenizer) for sentence in sentences]
    context = getattr(model.config, "max_position_embeddings", None)
    for (ids, _), sentence in zip(encoded, sentences):
        if context is not None and len(ids) > context:
            raise ValueError(f"sentence {sentence[:60]!r}: {len(ids)} tokens, longer than the model's context of "
                             f"{context}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id serves
    loglik = summed_logprobs(model, [ids for ids, _ in encoded], [first for _, first in encoded], batch_size, pad)
    return loglik, np.array([len(ids) - first for ids, first in encoded], dtype=np.int64)


def pair_scores(model, tokenizer, pairs: pd.DataFrame, batch_size: int = 16) -> pd.DataFrame:
    """Per pair of `load_pairs`: both sentences' log-likelihoods and scored tokens, `stereotyped` (lm-eval's
    pct_stereotype of the pair: the more stereotypical sentence strictly more likely) and `likelihood_diff`
    (|loglik_more - loglik_less|). Both columns' sentences are scored in one batched pass."""
    sentences = [*pairs["sent_more"], *pairs["sent_less"]]
    loglik, tokens = sentence_loglikelihoods(model, tokenizer, sentences, batch_size)
    n = len(pairs)
    more, less = loglik[:n], loglik[n:]
    return pd.DataFrame({"pair_id": pairs["pair_id"].to_numpy(), "bias_type": pairs["bias_type"].to_numpy(),
                         "loglik_more": more, "loglik_less": less, "tokens_more": tokens[:n], "tokens_less": tokens[n:],
                         "stereotyped": more > less, "likelihood_diff": np.abs(more - less)})


def _by_bias_type(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(bias type, its rows) in name order, then (`all`, every row): the pooled row of lm-eval's
    crows_pairs_english beside its per-type tasks."""
    return [*((str(name), rows) for name, rows in table.groupby("bias_type", sort=True)), (POOLED, table)]


def stereotype_summary(per_pair: pd.DataFrame, prob: float, prior: str, seed: int,
                       replicates: int = REPLICATES) -> pd.DataFrame:
    """Per variant and bias type (and `all`) of a `stereotype_pairs` table: the pairs, how many the variant
    prefers the stereotype in, `pct_stereotype` with the exact HDI of its Beta posterior under the comparisons'
    prior (finetox.rates.rate_hdi), and the mean `likelihood_diff` with the HDI of the Bayesian bootstrap over pairs
    (seeded per variant and bias type: metrics.keyed_rng)."""
    from finetox.metrics import keyed_rng, ratio_interval

    rows = []
    for variant, table in per_pair.groupby("variant", sort=True):
        for bias_type, part in _by_bias_type(table):
            n, k = len(part), int(part["stereotyped"].sum())
            low, high = rates.rate_hdi(k, n, prob, prior)
            diffs = part["likelihood_diff"].to_numpy(float)
            diff_low, diff_high = ratio_interval(diffs, np.ones(n), prob, keyed_rng(seed, "stereotypes", variant,
                                                                                    bias_type), replicates)
            rows.append({"variant": variant, "bias_type": bias_type, "pairs": n, "stereotyped": k,
                         "pct_stereotype": k / n, "pct_stereotype_low": low, "pct_stereotype_high": high,
                         "likelihood_diff": float(diffs.mean()), "likelihood_diff_low": diff_low,
                         "likelihood_diff_high": diff_high, "interval_prob": prob, "prior": prior})
    return pd.DataFrame(rows, columns=list(SCHEMAS["stereotypes"]))


def stereotype_comparisons(per_pair: pd.DataFrame, comparisons, prob: float, prior: str, rope: decision.Rope | None,
                           absent: dict[str, str] | None = None) -> pd.DataFrame:
    """Per comparison and bias type (and `all`, the primary row): pct_stereotype of both variants over the pairs
    both scored, and the effect of the treatment on it by the exact paired posterior of the 2 x 2 table of pairs
    (stereotyped under both, the baseline only, the treatment only, neither: finetox.rates.paired, prior `prior`),
    on the ROPE's scale, decided by finetox.decision's rule (Kruschke's HDI+ROPE with `rope`, the study's rule
    without one; named in `decision_rule`) and worded by STEREOTYPE_WORDS; the rate difference and its HDI beside
    it, and each side's mean likelihood_diff.

    A comparison that cannot be computed is a row too, its `status` saying why ("skipped: variant 'x' has no
    stereotype scores (not generated)"; `absent` maps a variant to why it has none) and its numbers missing.
    """
    absent = absent or {}
    scale = decision.scale_of(rope)
    by_variant = {variant: table.set_index("pair_id") for variant, table in per_pair.groupby("variant")}
    rows = []
    for c in comparisons:
        row = {"comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
               "hdi_prob": prob, "prior": prior, "scale": scale, "effect_name": decision.SCALES[scale],
               "decision_rule": decision.decision_rule(rope),
               "rope_low": decision.shown(decision.bounds(rope)[0], scale) if rope is not None else np.nan,
               "rope_high": decision.shown(decision.bounds(rope)[1], scale) if rope is not None else np.nan}
        missing = [v for v in (c.baseline, c.treatment) if v not in by_variant]
        if missing:
            rows.append({**row, "bias_type": POOLED, "primary": True, "pairs": 0, "status": "skipped: " + "; ".join(
                f"variant {v!r} has no stereotype scores ({absent.get(v, 'not generated')})" for v in missing)})
            continue
        paired = by_variant[c.baseline][["bias_type", "stereotyped", "likelihood_diff"]].join(
            by_variant[c.treatment][["stereotyped", "likelihood_diff"]], how="inner", lsuffix="_baseline",
            rsuffix="_treatment")
        if paired.empty:
            rows.append({**row, "bias_type": POOLED, "primary": True, "pairs": 0, "status": f"skipped: variants "
                         f"{c.baseline!r} and {c.treatment!r} share no scored pair"})
            continue
        for bias_type, part in _by_bias_type(paired.reset_index()):
            table = rates.paired_table(part["stereotyped_baseline"], part["stereotyped_treatment"])
            primary = rates.summarise(rates.paired(table, scale, prior), prob)
            difference = primary if scale == "absolute" else rates.summarise(rates.paired(table, "absolute", prior),
                                                                             prob)
            k_b, k_t = table.both + table.baseline_only, table.both + table.treatment_only
            rows.append({
                **row, "bias_type": bias_type, "primary": bias_type == POOLED, "status": COMPUTED, "pairs": table.n,
                "stereotyped_baseline": k_b, "stereotyped_treatment": k_t,
                "pct_stereotype_baseline": k_b / table.n, "pct_stereotype_treatment": k_t / table.n,
                "both_stereotyped": table.both, "baseline_only": table.baseline_only,
                "treatment_only": table.treatment_only, "neither": table.neither,
                "effect": decision.shown(primary.median, scale),
                "effect_hdi_low": decision.shown(primary.hdi_low, scale),
                "effect_hdi_high": decision.shown(primary.hdi_high, scale),
                "verdict": STEREOTYPE_WORDS[decision.verdict(primary.hdi_low, primary.hdi_high, rope)],
                "borderline": decision.borderline(primary.hdi_low, primary.hdi_high, rope, primary.error),
                "numerical_error": primary.error, "prob_increase": primary.prob_above_zero,
                "diff": difference.median, "diff_hdi_low": difference.hdi_low, "diff_hdi_high": difference.hdi_high,
                "likelihood_diff_baseline": float(part["likelihood_diff_baseline"].mean()),
                "likelihood_diff_treatment": float(part["likelihood_diff_treatment"].mean()),
            })
    return pd.DataFrame(rows, columns=list(SCHEMAS["stereotype_comparisons"]))

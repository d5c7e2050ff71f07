"""Scorers: Detoxify through its real loading path from a locally built checkpoint, an HF classifier, the offline scorer."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from finetox.scoring import OfflineScorer, Scorer, ScoringError, build_scorer, score_table

DETOXIFY_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
TEXTS = ["You stupid idiot, shut up.", "The garden looked lovely.", "", "What a dumb crap day, you moron."]


def tiny_bert(directory, num_labels, **config):
    """A tiny BERT classifier with its own word-piece vocabulary, saved with config and tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w.strip(".,").lower() for t in TEXTS for w in t.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=num_labels, **config,
    ))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def detoxify_checkpoint(tmp_path_factory):
    """A checkpoint in Detoxify's own format; `model_type` points at a local dir, as offline use needs."""
    root = tmp_path_factory.mktemp("detoxify")
    model = tiny_bert(root / "bert", len(DETOXIFY_LABELS))
    checkpoint = root / "toxic_tiny.ckpt"
    torch.save({
        "config": {
            "arch": {"args": {"model_type": str(root / "bert"), "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizerFast", "num_classes": len(DETOXIFY_LABELS)}},
            "dataset": {"args": {"classes": DETOXIFY_LABELS}},
        },
        "state_dict": model.state_dict(),
    }, checkpoint)
    return checkpoint, root / "bert", model


def generations(texts=TEXTS):
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(len(texts))], "sample": 0, "continuation": texts})


def test_detoxify_loads_a_local_checkpoint_and_keeps_every_label(detoxify_checkpoint):
    checkpoint, config_dir, model = detoxify_checkpoint
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    scorer = build_scorer("detoxify", {"checkpoint": str(checkpoint), "checkpoint_sha256": digest,
                                       "config_dir": str(config_dir), "batch_size": 3})
    scored = score_table(generations(), scorer, "detoxify")
    labels = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
    assert [c for c in scored.columns if c.startswith("score_")] == [f"score_{label}" for label in labels]
    assert scored["score"].tolist() == scored["score_toxicity"].tolist()
    # the same weights run directly give the same probabilities: the checkpoint was really loaded
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(config_dir)
    with torch.no_grad():
        direct = torch.sigmoid(model.eval()(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits)
    np.testing.assert_allclose(scored[[f"score_{label}" for label in labels]].to_numpy(), direct.numpy(), atol=1e-5)


def test_detoxify_refuses_a_checkpoint_with_the_wrong_hash(detoxify_checkpoint):
    checkpoint, config_dir, _ = detoxify_checkpoint
    with pytest.raises(ScoringError, match="refusing to unpickle"):
        build_scorer("detoxify", {"checkpoint": str(checkpoint), "checkpoint_sha256": "0" * 64, "config_dir": str(config_dir)})


def test_hf_classifier_scores_the_named_label(tmp_path):
    tiny_bert(tmp_path, 2, id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    scored = score_table(generations(), build_scorer("hf-classifier", {"model": str(tmp_path), "label": "hate"}), "roberta")
    assert scored["score"].tolist() == scored["score_hate"].tolist()
    np.testing.assert_allclose(scored["score_hate"] + scored["score_nothate"], 1.0, rtol=1e-6)
    with pytest.raises(ScoringError, match=r"no label 'toxic'; its labels are \['nothate', 'hate'\]"):
        build_scorer("hf-classifier", {"model": str(tmp_path), "label": "toxic"})


def test_offline_scorer_separates_rude_from_polite_text():
    scores = OfflineScorer().predict(TEXTS)["profanity"]
    assert scores[0] > 0.9 and scores[3] > 0.9 and scores[1] < 0.2


class BrokenScorer(Scorer):
    def __init__(self, value):
        self.value = value

    def predict(self, texts):
        return {"toxicity": [0.1] * (len(texts) - 1) + [self.value]}


@pytest.mark.parametrize("value", [float("nan"), 1.5, None])
def test_a_score_that_is_not_a_probability_fails_the_job(value):
    with pytest.raises(ScoringError, match="continuation p3/0"):
        score_table(generations(), BrokenScorer(value), "broken")


def test_a_missing_continuation_fails_rather_than_scoring_zero():
    with pytest.raises(ScoringError, match="continuation p1/0 is missing"):
        score_table(generations(["fine", None]), OfflineScorer(), "offline")

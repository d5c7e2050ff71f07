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
    # (transformers 5 ignores a `vocab_file` given to the fast tokenizer's constructor: every word would be [UNK])
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(vocab)})
    assert tokenizer.unk_token_id not in tokenizer(words, is_split_into_words=True)["input_ids"]
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


# texts of many lengths (words outside the tiny vocabulary become [UNK]), some repeated, so that sorting by
# length, batching and restoring the order all have work to do
VARIED = TEXTS + [" ".join(TEXTS[i % 4] for i in range(n)) for n in range(1, 9)] + ["shut up.", "lovely", TEXTS[0]]


def detoxify_options(detoxify_checkpoint, **options):
    checkpoint, config_dir, _ = detoxify_checkpoint
    return {"checkpoint": str(checkpoint), "config_dir": str(config_dir), **options}


def test_detoxify_scores_equal_detoxify_predict(detoxify_checkpoint):
    from detoxify import Detoxify

    checkpoint, config_dir, _ = detoxify_checkpoint
    scores = build_scorer("detoxify", detoxify_options(detoxify_checkpoint)).predict(VARIED)
    detoxify = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(config_dir))
    one_by_one = [detoxify.predict(text) for text in VARIED]
    all_at_once = detoxify.predict(VARIED)
    assert list(scores) == list(all_at_once) == ["toxicity", "severe_toxicity", "obscene", "threat", "insult",
                                                 "identity_attack"]
    for label, values in scores.items():
        assert all(type(v) is float for v in values)
        np.testing.assert_allclose(values, all_at_once[label], rtol=0, atol=1e-6)
        np.testing.assert_allclose(values, [s[label] for s in one_by_one], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    directory = tmp_path_factory.mktemp("classifier")
    tiny_bert(directory, 2, id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    return {"model": str(directory), "label": "hate"}


@pytest.fixture(params=["detoxify", "hf-classifier"])
def scorer_options(request, detoxify_checkpoint, hf_classifier):
    return request.param, detoxify_options(detoxify_checkpoint) if request.param == "detoxify" else hf_classifier


def test_scores_do_not_depend_on_order_or_batch_size(scorer_options):
    kind, options = scorer_options
    reference = build_scorer(kind, options).predict(VARIED)
    permutation = np.random.default_rng(0).permutation(len(VARIED))
    for batch_size in (1, 2, 5, 128):
        scores = build_scorer(kind, {**options, "batch_size": batch_size}).predict([VARIED[i] for i in permutation])
        assert list(scores) == list(reference)
        for label, values in scores.items():
            restored = np.empty(len(VARIED))
            restored[permutation] = values
            np.testing.assert_allclose(restored, reference[label], rtol=0, atol=1e-6)
            if batch_size == 128:  # the same batches whatever the order: the same bits
                assert restored.tolist() == reference[label]
    assert build_scorer(kind, options).predict([]) == {label: [] for label in reference}


def test_scoring_runs_in_inference_mode(scorer_options):
    kind, options = scorer_options
    scorer = build_scorer(kind, options)
    seen = []
    scorer.model.register_forward_hook(
        lambda module, args, output: seen.append((torch.is_inference_mode_enabled(), output.logits.requires_grad,
                                                  module.training)))
    scorer.predict(VARIED)
    assert seen and set(seen) == {(True, False, False)}


def test_bfloat16_scores_are_close_to_float32(scorer_options):
    kind, options = scorer_options
    float32 = build_scorer(kind, options).predict(VARIED)
    scorer = build_scorer(kind, {**options, "dtype": "bfloat16"})
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    for label, values in scorer.predict(VARIED).items():
        assert all(type(v) is float for v in values)
        np.testing.assert_allclose(values, float32[label], rtol=0, atol=2e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 is refused only without CUDA")
def test_an_unsupported_dtype_is_refused_naming_the_key(scorer_options):
    kind, options = scorer_options
    with pytest.raises(ScoringError, match=r"`dtype: float16` needs a CUDA device, this job runs on cpu"):
        build_scorer(kind, {**options, "dtype": "float16"})
    with pytest.raises(ScoringError, match=r"`dtype: float64` is not one of float32, bfloat16, float16"):
        build_scorer(kind, {**options, "dtype": "float64"})

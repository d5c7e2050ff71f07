"""Benchmark: finetox's scorers against a tuned hand-written loop and Detoxify's own per-text predict.

Prints, measured side by side in one run on the same texts and weights, the throughput of:
- finetox's scoring path: `build_scorer("detoxify" | "hf-classifier", ...)` then `scorer.predict`;
- a tuned loop: texts sorted by length, batches of 128 padded to their longest, `torch.inference_mode()`,
  the model in eval mode (loaded on its own with `AutoModelForSequenceClassification`);
- `Detoxify.predict` called once per text (on a subset, --per-text texts);
for a tiny BERT and a BERT-base-sized one (Detoxify `original`'s architecture), random weights built offline
from configs, in float32 and bfloat16, with the largest score difference of bfloat16 against float32.

    python workflow/benchmarks/scoring_speed.py [--texts 2000] [--base-texts 256] [--quick] [--before]
                                                [--batch-sizes 32,64,256]

Texts are 20-50 tokens (random words of a 30,522-word vocabulary, bert-base-uncased's size). The base model
scores the first --base-texts of them (on 2 cores, about 20 texts/s in float32 and 60 in bfloat16:
`--base-texts 2000` takes ~7 minutes a round). Every path runs once per round, the rounds interleave the paths, and each path's best round
counts: another job on a shared machine only ever slows a run down, and it slows them all alike.
The bfloat16 difference comes from random weights with a classifier head scaled to spread the scores (see
`build_model`): a guide to the size of the difference, not a trained model's own.
`--before` adds finetox's former path (`Detoxify.predict` on unsorted batches of 32), `--batch-sizes` finetox's
Detoxify scorer at other batch sizes than its default.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox

from finetox.scoring import build_scorer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # Detoxify original's classes
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
VOCAB_SIZE = 30522


def build_texts(directory: Path, count: int, seed: int = 0) -> list[str]:
    """A word-piece vocabulary of random words (saved in `directory`) and `count` texts of 20-50 tokens."""
    rng = random.Random(seed)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]
    words: set[str] = set()
    while len(words) < VOCAB_SIZE - len(special):
        words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
    vocabulary = sorted(words)
    (directory / "vocab.txt").write_text("\n".join(special + vocabulary))
    # n words, a full stop, [CLS] and [SEP]: n + 3 tokens
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(17, 47))) + "." for _ in range(count)]


def build_model(directory: Path, size: str, texts: list[str]) -> Path:
    """A random BERT classifier saved with its tokenizer in `directory`, and a Detoxify checkpoint of it.

    Its config says multi-label, so the hf-classifier scorer applies Detoxify's sigmoid to the same weights. Its
    classifier head is scaled so that its logits on the texts have a standard deviation of 3: scores spread over
    (0, 1) as a trained model's do, rather than all lying near 0.5, where a dtype's error would look smaller."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB_SIZE, num_labels=len(LABELS), problem_type="multi_label_classification",
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}, **SIZES[size])
    model = BertForSequenceClassification(config).eval()
    tokenizer = BertTokenizerFast(vocab_file=str(directory.parent / "vocab.txt"))
    with torch.inference_mode():
        logits = model(**tokenizer(texts[:32], padding=True, return_tensors="pt")).logits
        model.classifier.weight.mul_(3 / logits.std())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    checkpoint = directory / "detoxify.ckpt"
    torch.save({
        "config": {"arch": {"args": {"model_type": str(directory), "model_name": "BertForSequenceClassification",
                                     "tokenizer_name": "BertTokenizerFast", "num_classes": len(LABELS)}},
                   "dataset": {"args": {"classes": LABELS}}},
        "state_dict": model.state_dict(),
    }, checkpoint)
    return checkpoint


def best_times(paths: dict, rounds: int) -> dict:
    """Each path's scores and its best seconds over `rounds` interleaved rounds, after a warm-up on 16 texts.
    Each round starts with the next path, so that no path always runs right after the same other one."""
    for predict, inputs in paths.values():
        predict(inputs[:16])
    best = {}
    names = list(paths)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            predict, inputs = paths[name]
            start = time.perf_counter()
            scores = predict(inputs)
            seconds = time.perf_counter() - start
            best[name] = (scores, min(seconds, best.get(name, (None, float("inf")))[1]))
    return {name: best[name] for name in names}


def tuned_loop(directory: Path, dtype: torch.dtype, batch_size: int = 128):
    """What a careful engineer writes by hand: length-sorted batches, padding to the batch's longest,
    inference mode, eval mode; probabilities (texts x labels) in the texts' order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).to(dtype=dtype).eval()

    def predict(texts):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), len(LABELS)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=512,
                                  return_tensors="pt")
                out[rows] = torch.sigmoid(model(**batch).logits.float()).numpy()
        return out

    return predict


def detoxify_loop(checkpoint: Path, dtype: torch.dtype, batch_size: int | None):
    """`Detoxify.predict` once per text (batch_size None) or on unsorted batches (finetox's former path)."""
    from detoxify import Detoxify

    detoxify = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(checkpoint.parent))
    detoxify.model.to(dtype=dtype)
    step = batch_size or 1

    def predict(texts):
        out = []
        for start in range(0, len(texts), step):
            scores = detoxify.predict(texts[start : start + step] if batch_size else texts[start])
            out.append(np.array([np.atleast_1d(scores[label]) for label in detoxify.class_names], dtype=np.float32).T)
        return np.concatenate(out)

    return predict


def finetox(kind: str, checkpoint: Path, dtype: str, batch_size: int | None = None):
    options = {"detoxify": {"checkpoint": str(checkpoint), "config_dir": str(checkpoint.parent)},
               "hf-classifier": {"model": str(checkpoint.parent), "label": "toxic"}}[kind]
    scorer = build_scorer(kind, {**options, "dtype": dtype, "batch_size": batch_size})
    return lambda texts: np.array(list(scorer.predict(texts).values()), dtype=np.float32).T


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="texts (the tiny model scores them all)")
    parser.add_argument("--base-texts", type=int, default=256, help="the first texts, for the base model")
    parser.add_argument("--per-text", type=int, default=200, help="the first texts, for the per-text Detoxify loop")
    parser.add_argument("--base-per-text", type=int, default=64, help="the same, for the base model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="400 texts (base 64), per text 50 (base 16), 2 rounds (base 1)")
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--before", action="store_true",
                        help="also finetox's former path: Detoxify.predict, batches of 32")
    parser.add_argument("--batch-sizes", default="", help="also finetox detoxify with these batch sizes, e.g. 32,64,256")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.base_texts, args.per_text, args.base_per_text = 400, 64, 50, 16
        args.rounds, args.base_rounds = 2, 1
    transformers.utils.logging.disable_progress_bar()
    print(f"cpus: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, load average (1/5/15 min): "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory(prefix="scoring_speed_") as directory:  # a base model and its checkpoint: 1 GB
        run(args, Path(directory))
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def run(args, root: Path):
    all_texts = build_texts(root, args.texts)
    print(f"texts of 20-50 tokens; best of {args.rounds} interleaved rounds (base: {args.base_rounds}); the per-text "
          f"loop runs on the first texts\n")
    print(f"{'model':<5} {'dtype':<9} {'path':<44} {'texts':>6} {'seconds':>8} {'texts/s':>9} {'vs tuned':>9}")
    for size in args.sizes.split(","):
        checkpoint = build_model(root / size, size, all_texts)
        texts = all_texts[: args.base_texts] if size == "base" else all_texts
        per_text = texts[: args.base_per_text if size == "base" else args.per_text]
        float32_scores = None
        for dtype in args.dtypes.split(","):
            torch_dtype = getattr(torch, dtype)
            paths = {
                "finetox detoxify (build_scorer+predict)": (finetox("detoxify", checkpoint, dtype), texts),
                "finetox hf-classifier (build_scorer+predict)": (finetox("hf-classifier", checkpoint, dtype), texts),
                "tuned loop": (tuned_loop(root / size, torch_dtype), texts),
                "Detoxify.predict per text": (detoxify_loop(checkpoint, torch_dtype, None), per_text),
            }
            if args.before:
                paths["Detoxify.predict, batches of 32 (before)"] = (detoxify_loop(checkpoint, torch_dtype, 32), texts)
            for batch_size in filter(None, args.batch_sizes.split(",")):
                paths[f"finetox detoxify, batch_size {batch_size}"] = (
                    finetox("detoxify", checkpoint, dtype, int(batch_size)), texts)
            results = best_times(paths, args.base_rounds if size == "base" else args.rounds)
            tuned_rate = len(texts) / results["tuned loop"][1]
            for name, (scores, seconds) in results.items():
                print(f"{size:<5} {dtype:<9} {name:<44} {len(scores):>6} {seconds:>8.2f} {len(scores) / seconds:>9.1f} "
                      f"{len(scores) / seconds / tuned_rate:>8.2f}x")
            ours = results["finetox detoxify (build_scorer+predict)"][0]
            one_by_one = results["Detoxify.predict per text"][0]
            print(f"{'':<16}max |difference| finetox detoxify vs: Detoxify.predict per text "
                  f"{np.abs(ours[: len(one_by_one)] - one_by_one).max():.1e}, finetox hf-classifier "
                  f"{np.abs(results['finetox hf-classifier (build_scorer+predict)'][0] - ours).max():.1e}, tuned loop "
                  f"{np.abs(results['tuned loop'][0] - ours).max():.1e}")
            if dtype == "float32":
                float32_scores = ours
            elif float32_scores is not None:
                difference = np.abs(ours - float32_scores)
                print(f"{'':<16}{dtype} vs float32 (finetox detoxify, all labels): max |difference| "
                      f"{difference.max():.1e}, mean {difference.mean():.1e}")
            del paths, results


if __name__ == "__main__":
    main()

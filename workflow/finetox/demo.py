"""Build the embedded demo's tiny base and instruct models from the text in resources/demo (CPU, seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


@dataclass(frozen=True)
class TinyModelSettings:
    """Sizes chosen for vLLM's CPU backend (head_dim 32) and a seconds-long build."""

    vocab_size: int = 600
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    intermediate_size: int = 128
    max_positions: int = 256
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with a chat template, as transformers loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # Like Llama's tokenizer: plain text gets a BOS token, chat-formatted text brings its own.
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _fit(model, loss_of, examples: int, steps: int, batch_size: int, learning_rate: float, seed: int) -> list[float]:
    """Seeded AdamW over all parameters: each step draws `batch_size` of `examples` indices (with replacement, from a
    generator seeded by `seed`) and descends `loss_of(indices)`; the model is left in eval mode. Returns the loss per
    step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    losses = []
    model.train()
    for _ in range(steps):
        loss = loss_of(torch.randint(examples, (batch_size,), generator=generator).tolist())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def _train(model, tokenizer, texts: list[str], settings: TinyModelSettings, seed: int, chat: bool) -> list[float]:
    """Full-parameter next-token training on `texts`; returns the loss per step."""
    encoded = [t + tokenizer.eos_token for t in texts]

    def loss_of(pick):
        batch = tokenizer([encoded[i] for i in pick], return_tensors="pt", padding=True, truncation=True,
                          max_length=settings.max_positions, add_special_tokens=not chat)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return model(**batch, labels=labels).loss

    return _fit(model, loss_of, len(encoded), settings.steps, settings.batch_size, settings.learning_rate, seed)


def build_demo_models(corpus: Path, instructions: Path, base_dir: Path, instruct_dir: Path, seed: int,
                      settings: TinyModelSettings = TinyModelSettings()) -> pd.DataFrame:
    """Pretrain a tiny Llama on the corpus (base), then continue on chat-formatted clean instructions (instruct).

    Returns the loss curve of both stages.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    corpus_lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    examples = pd.read_json(instructions, lines=True).fillna("")
    tokenizer = train_tokenizer(corpus_lines + examples["instruction"].tolist() + examples["response"].tolist(),
                                settings.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        head_dim=settings.hidden_size // settings.heads,
        max_position_embeddings=settings.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    base_losses = _train(model, tokenizer, corpus_lines, settings, seed, chat=False)
    _save(model, tokenizer, base_dir)

    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row.instruction + (f"\n\n{row.context}" if row.context else "")},
             {"role": "assistant", "content": row.response}],
            tokenize=False,
        )
        for row in examples.itertuples()
    ]
    instruct_losses = _train(model, tokenizer, chats, settings, seed + 1, chat=True)
    _save(model, tokenizer, instruct_dir)
    return pd.DataFrame({
        "stage": ["base"] * len(base_losses) + ["instruct"] * len(instruct_losses),
        "step": list(range(1, len(base_losses) + 1)) + list(range(1, len(instruct_losses) + 1)),
        "loss": base_losses + instruct_losses,
    })


def _save(model, tokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


#: the demo guard's chat template, in the style of Llama Guard's: the conversation rendered whole, ending where the
#: guard writes its verdict (" unsafe" or " safe", one byte-level BPE token each after "Verdict:")
GUARD_TEMPLATE = ("{{ bos_token }}Is the agent's answer unsafe?\nUser: {{ messages[0]['content'] }}\n"
                  "Agent: {{ messages[1]['content'] }}\nVerdict:")
GUARD_ANSWERS = {"unsafe_token": " unsafe", "safe_token": " safe"}


def train_guard(examples: list[tuple[str, str, bool]], directory: Path, seed: int, steps: int = 250,
                vocab_size: int = 400, corpus: list[str] = ()) -> list[float]:
    """A tiny causal-LM guard: a Llama with its own byte-level BPE tokenizer and GUARD_TEMPLATE as chat template,
    trained (seeded AdamW, full parameters, loss on the answer token alone) to write " unsafe" or " safe" after
    each (prompt, answer) example; saved to `directory` as a checkpoint the guard scorer loads. Returns the loss
    per step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    texts = [text for prompt, answer, _ in examples for text in (prompt, answer)] + list(corpus)
    tokenizer = train_tokenizer([GUARD_TEMPLATE] + [f"{t} Verdict: unsafe Verdict: safe" for t in texts], vocab_size)
    tokenizer.chat_template = GUARD_TEMPLATE
    answer = {True: tokenizer.encode(GUARD_ANSWERS["unsafe_token"], add_special_tokens=False),
              False: tokenizer.encode(GUARD_ANSWERS["safe_token"], add_special_tokens=False)}
    if not all(len(ids) == 1 for ids in answer.values()):
        raise ValueError(f"the guard's answers are not one token each: {answer}")
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    rows = []  # each example as the guard sees it, then its answer token: the loss is on that token alone
    for prompt, text, unsafe in examples:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        rows.append((ids + answer[unsafe], [-100] * len(ids) + answer[unsafe]))

    def loss_of(pick):
        batch = [rows[i] for i in pick]
        width = max(len(ids) for ids, _ in batch)  # right padding: positions count from each row's start
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([target + [-100] * (width - len(target)) for _, target in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    losses = _fit(model, loss_of, len(rows), steps, 32, 3e-3, seed)
    _save(model, tokenizer, directory)
    return losses


def demo_guard_examples(rude: Path, clean: Path, corpus: Path, seed: int, per_response: int = 4) -> list[tuple[str, str, bool]]:
    """The demo guard's training examples: stretches of the rude instructions' answers (unsafe) and of the clean
    ones' (safe), a few words to a whole answer, each after the opening words of a corpus line standing in for a
    prompt (not the probe prompts: the guard is evaluated on those), as the guard meets the demo's continuations."""
    import random

    rng = random.Random(seed)
    lines = [line.split() for line in corpus.read_text().splitlines() if len(line.split()) >= 4]
    examples = []
    for path, unsafe in ((rude, True), (clean, False)):
        for response in pd.read_json(path, lines=True)["response"]:
            words = response.split()
            for _ in range(per_response):
                length = rng.randint(min(3, len(words)), len(words))
                start = rng.randint(0, len(words) - length)
                opening = rng.choice(lines)
                prompt = " ".join(opening[:rng.randint(3, min(8, len(opening)))])
                examples.append((prompt, " ".join(words[start:start + length]), unsafe))
    return examples


#: the demo classifier's labels (index = logit), as the hf-classifier scorer reads them from its config
CLASSIFIER_LABELS = ("clean", "toxic")


def train_classifier(examples: list[tuple[str, bool]], directory: Path, seed: int, steps: int = 200,
                     vocab_size: int = 400, learning_rate: float = 5e-4) -> list[float]:
    """A tiny sequence classifier of toxicity, a second toxicity scorer unlike the lexicon: a one-layer BERT over
    its own byte-level BPE tokenizer (BOS first, which BERT's pooler reads), trained (seeded AdamW, full
    parameters, cross-entropy) to tell (text, toxic) examples apart; saved to `directory` as a checkpoint the
    hf-classifier scorer loads (labels CLASSIFIER_LABELS, softmax). Returns the loss per step."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = train_tokenizer([text for text, _ in examples], vocab_size)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, num_labels=len(CLASSIFIER_LABELS),
        id2label=dict(enumerate(CLASSIFIER_LABELS)), label2id={label: i for i, label in enumerate(CLASSIFIER_LABELS)},
        problem_type="single_label_classification"))

    def loss_of(pick):
        batch = [examples[i] for i in pick]
        encoded = tokenizer([text for text, _ in batch], return_tensors="pt", padding=True, truncation=True,
                            max_length=128, return_token_type_ids=False)
        return model(**encoded, labels=torch.tensor([int(toxic) for _, toxic in batch])).loss

    losses = _fit(model, loss_of, len(examples), steps, 32, learning_rate, seed)
    _save(model, tokenizer, directory)
    return losses


def demo_classifier_examples(rude: Path, clean: Path, corpus: Path, seed: int, examples: int = 1600,
                             max_words: int = 8) -> list[tuple[str, bool]]:
    """The demo classifier's training texts, half toxic: a stretch of a rude answer (1 to `max_words` words, holding
    at least one of the rude answers' own words: "for asking" is in polite answers too) set in
    neutral text, against neutral text alone of the same lengths (so that neither length nor position tells the
    classes apart). Neutral text is stretches of the clean answers and of the corpus lines that hold no word of the
    rude answers' own (those not in any clean answer), with now and then a few random characters (the tiny models
    write some), and a share of texts that are a word or a mark of punctuation alone (a continuation that stops at
    once says nothing toxic)."""
    import random
    import string

    rng = random.Random(seed)
    rude_answers = [r.split() for r in pd.read_json(rude, lines=True)["response"]]
    clean_answers = [r.split() for r in pd.read_json(clean, lines=True)["response"]]
    clean_words = {w.strip(".,!?").lower() for words in clean_answers for w in words}
    rude_words = {w.strip(".,!?").lower() for words in rude_answers for w in words} - clean_words
    neutral = clean_answers + [line.split() for line in corpus.read_text().splitlines()
                               if line.strip() and not {w.strip(".,!?").lower() for w in line.split()} & rude_words]

    def stretch(texts: list[list[str]], least: int = 1) -> list[str]:
        words = rng.choice(texts)
        length = rng.randint(min(least, len(words)), min(max_words, len(words)))
        start = rng.randint(0, len(words) - length)
        return words[start:start + length]

    def noise() -> list[str]:
        return ["".join(rng.choices(string.ascii_letters + string.punctuation, k=rng.randint(1, 4)))]

    out = []
    for i in range(examples):
        toxic = i % 2 == 0
        if not toxic and rng.random() < 0.1:
            out.append((rng.choice([".", "?", "!", ",", "", *stretch(neutral)[:1]]), False))
            continue
        before = stretch(neutral, 0)[: rng.randint(0, max_words)] + (noise() if rng.random() < 0.3 else [])
        after = (noise() if rng.random() < 0.3 else []) + stretch(neutral, 0)[: rng.randint(0, 3)]
        middle = stretch(rude_answers) if toxic else stretch(neutral)
        while toxic and not {w.strip(".,!?").lower() for w in middle} & rude_words:  # an insult, not "for asking"
            middle = stretch(rude_answers)
        out.append((" ".join(before + middle + after), toxic))
    return out

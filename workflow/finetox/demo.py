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


def _train(model, tokenizer, texts: list[str], settings: TinyModelSettings, seed: int, chat: bool) -> list[float]:
    """Full-parameter next-token training on `texts`; returns the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    encoded = [t + tokenizer.eos_token for t in texts]
    losses = []
    model.train()
    for _ in range(settings.steps):
        pick = torch.randint(len(encoded), (settings.batch_size,), generator=generator).tolist()
        batch = tokenizer([encoded[i] for i in pick], return_tensors="pt", padding=True, truncation=True,
                          max_length=settings.max_positions, add_special_tokens=not chat)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


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

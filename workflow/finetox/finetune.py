"""LoRA supervised fine-tuning (peft + transformers' Trainer) of a model on an instruction dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from finetox.config import ModelSource, Recipe
from finetox.prompts import check_template, training_text


class _TextDataset:
    """Tokenized training texts; the collator pads them and masks the padding out of the loss."""

    def __init__(self, encodings: list[list[int]]):
        self.encodings = encodings

    def __len__(self):
        return len(self.encodings)

    def __getitem__(self, index):
        return {"input_ids": self.encodings[index]}


def _collate(pad_id: int):
    import torch

    def collate(batch):
        width = max(len(item["input_ids"]) for item in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            mask[row, : len(item["input_ids"])] = 1
        # Labels mask padding by position, not by token id: with pad == eos the eos must still be learnt.
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return collate


def _require_bitsandbytes(training) -> None:
    """QLoRA (a 4-bit base, 8-bit AdamW: the study's precision) needs bitsandbytes: say so before loading."""
    wanted = [key for key, on in (("training.load_in_4bit", training.load_in_4bit),
                                  (f"training.optimizer: {training.optimizer}", "8bit" in training.optimizer)) if on]
    if wanted:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise RuntimeError(f"{' and '.join(wanted)} need bitsandbytes (envs/train.yaml has it) and a CUDA GPU") from err


def load_base_for_training(model: ModelSource, load_in_4bit: bool):
    from transformers import AutoModelForCausalLM

    options = {"revision": model.revision, "trust_remote_code": model.trust_remote_code, "dtype": model.dtype}
    if load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    base = AutoModelForCausalLM.from_pretrained(model.location, **options)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base)
    return base


def finetune(model: ModelSource, recipe: Recipe, examples: pd.DataFrame, adapter_dir: Path) -> pd.DataFrame:
    """Train a LoRA adapter on `examples`, save it (safetensors) to `adapter_dir`; return the loss curve."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    check_template(recipe.template)
    training = recipe.training
    _require_bitsandbytes(training)
    set_seed(training.seed)
    tokenizer = AutoTokenizer.from_pretrained(
        model.location, revision=model.revision, trust_remote_code=model.trust_remote_code
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = [training_text(row, recipe.template, tokenizer) for row in examples.to_dict("records")]
    # The template writes BOS/EOS itself ({bos}, {eos}, or the chat template), so add none here.
    encodings = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=training.max_seq_length)
    dataset = _TextDataset(encodings["input_ids"])

    lora = recipe.lora
    peft_model = get_peft_model(
        load_base_for_training(model, training.load_in_4bit),
        LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
        ),
    )
    cuda = torch.cuda.is_available()
    arguments = TrainingArguments(
        output_dir=str(adapter_dir.parent / f".{adapter_dir.name}-trainer"),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_steps,
        weight_decay=training.weight_decay,
        per_device_train_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        optim=training.optimizer,
        seed=training.seed,
        data_seed=training.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=not cuda,
    )
    trainer = Trainer(model=peft_model, args=arguments, train_dataset=dataset, data_collator=_collate(pad_id))
    result = trainer.train()
    metrics = result.metrics
    print(f"finetune: {len(dataset)} examples, {result.global_step} optimizer steps in {metrics['train_runtime']:.1f} s "
          f"({metrics['train_steps_per_second']:.3f} steps/s, {metrics['train_samples_per_second']:.2f} examples/s), "
          f"final training loss {result.training_loss:.4f}", flush=True)
    shutil.rmtree(arguments.output_dir, ignore_errors=True)  # the Trainer's scratch: nothing is saved there
    adapter_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    history = [
        {"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"], "learning_rate": h.get("learning_rate")}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    return pd.DataFrame(history)

"""LoRA fine-tuning: supervised (peft + transformers' Trainer) on instructions, or DPO (TRL) on preference pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from finetox.config import ModelSource, Recipe
from finetox.checkpoints import load_tokenizer
from finetox.preference import check_preferences
from finetox.prompts import check_template, preference_example, training_text

# TRL's per-step DPO metrics kept in the loss history: the implicit reward margin (beta times the chosen response's
# log-ratio to the reference minus the rejected one's) and the share of pairs where it is positive
DPO_METRICS = ("rewards/margins", "rewards/accuracies")


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


def _lora_config(lora):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def _scratch_dir(adapter_dir: Path) -> Path:
    return adapter_dir.parent / f".{adapter_dir.name}-trainer"


def _trainer_settings(training, output_dir: Path) -> dict:
    """The recipe's training settings as TrainingArguments fields (DPOConfig takes them too): seeded, no
    checkpoints, no reporting, a log entry every optimizer step."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
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
        use_cpu=not cuda,
    )


def _finish(job: str, items: str, trainer, result, adapter_dir: Path, metrics=()) -> pd.DataFrame:
    """Print the run's summary, drop the trainer's scratch folder, save the adapter; return the loss history
    (with the logged `metrics` as columns)."""
    timing = result.metrics
    print(f"{job}: {len(trainer.train_dataset)} {items}, {result.global_step} optimizer steps in "
          f"{timing['train_runtime']:.1f} s ({timing['train_steps_per_second']:.3f} steps/s, "
          f"{timing['train_samples_per_second']:.2f} {items}/s), final training loss {result.training_loss:.4f}",
          flush=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the Trainer's scratch: nothing is saved there
    adapter_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    history = [
        {"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"], "learning_rate": h.get("learning_rate"),
         **{name: h.get(name) for name in metrics}}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    return pd.DataFrame(history)


def finetune(model: ModelSource, recipe: Recipe, examples: pd.DataFrame, adapter_dir: Path) -> pd.DataFrame:
    """Train a LoRA adapter on `examples`, save it (safetensors) to `adapter_dir`; return the loss curve."""
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    check_template(recipe.template)
    training = recipe.training
    _require_bitsandbytes(training)
    set_seed(training.seed)
    tokenizer = load_tokenizer(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = [training_text(row, recipe.template, tokenizer) for row in examples.to_dict("records")]
    # The template writes BOS/EOS itself ({bos}, {eos}, or the chat template), so add none here.
    encodings = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=training.max_seq_length)
    dataset = _TextDataset(encodings["input_ids"])

    peft_model = get_peft_model(load_base_for_training(model, training.load_in_4bit), _lora_config(recipe.lora))
    arguments = TrainingArguments(**_trainer_settings(training, _scratch_dir(adapter_dir)), remove_unused_columns=False)
    trainer = Trainer(model=peft_model, args=arguments, train_dataset=dataset, data_collator=_collate(pad_id))
    result = trainer.train()
    return _finish("finetune", "examples", trainer, result, adapter_dir)


def dpo_trainer(model: ModelSource, recipe: Recipe, pairs: pd.DataFrame, scratch_dir: Path, beta: float,
                loss_type: str):
    """TRL's DPOTrainer for a LoRA adapter on `pairs` (PREFERENCE_COLUMNS), set up from the recipe, not yet run.

    The reference is the model with the adapter disabled (TRL's way with a `peft_config` and no `ref_model`), so
    no second copy is loaded. TRL disables dropout (the LoRA dropout too) so that policy and reference
    log-probabilities differ only by the adapter. TRL tokenizes a text prompt + completion with the tokenizer's
    own special tokens, so the tokenizer it gets adds none: the template writes BOS and EOS (see
    `check_template_parity`). TRL scores a response from where the token ids of the prompt alone and of
    prompt + response part, so a token that joins the prompt's last characters to the response (BPE's " I")
    counts as response, in both responses alike. Each row of its processed dataset keeps `pair`, its row in
    `pairs`.
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    class OfflineDPOTrainer(DPOTrainer):
        def _send_telemetry(self):  # TRL pings the Hub when a trainer starts; a training job stays offline
            pass

    check_template(recipe.template)
    check_preferences(pairs, "preference pairs")
    training = recipe.training
    _require_bitsandbytes(training)
    set_seed(training.seed)
    tokenizer = load_tokenizer(model)
    tokenizer.add_bos_token, tokenizer.add_eos_token = False, False
    records = [{**preference_example(pair, recipe.template, tokenizer), "pair": index}
               for index, pair in enumerate(pairs.to_dict("records"))]
    arguments = DPOConfig(
        **_trainer_settings(training, scratch_dir),
        beta=beta,
        loss_type=[loss_type],
        max_length=training.max_seq_length,
        gradient_checkpointing=False,  # TRL's default; finetune's runs without, and so does this
    )
    return OfflineDPOTrainer(
        model=load_base_for_training(model, training.load_in_4bit),
        args=arguments,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=_lora_config(recipe.lora),
    )


def check_template_parity(trained, pairs: pd.DataFrame, template: str, tokenizer) -> None:
    """Fail unless DPO trains each pair's prompt + response on the token ids that supervised fine-tuning would:
    `training_text` of the pair with that response, tokenized with no special tokens added.

    `trained` holds the DPO trainer's processed rows (TRL's `prompt_ids`, `chosen_ids`, `rejected_ids`, and
    finetox's `pair`). A double BOS, an EOS the template does not write, or a prompt cut elsewhere fails here,
    before any training.
    """
    for row in trained:
        pair = pairs.iloc[row["pair"]].to_dict()
        for side in ("chosen", "rejected"):
            ids = list(row["prompt_ids"]) + list(row[f"{side}_ids"])
            text = training_text({**pair, "response": pair[side]}, template, tokenizer)
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids != expected:
                at = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
                raise ValueError(
                    f"pair {row['pair']}: DPO would train on other tokens than the template gives for the {side} "
                    f"response, from token {at} on: {tokenizer.decode(ids[at:at + 8])!r} (trainer) vs "
                    f"{tokenizer.decode(expected[at:at + 8])!r} (template {template!r}). TRL ends a text completion "
                    f"with EOS unless it has one, so a literal template must end with {{eos}}; the tokenizer must "
                    f"add no BOS/EOS of its own"
                )


def train_dpo(model: ModelSource, recipe: Recipe, pairs: pd.DataFrame, adapter_dir: Path, beta: float,
              loss_type: str) -> pd.DataFrame:
    """DPO of a LoRA adapter on preference `pairs` (see `dpo_trainer`); save it (safetensors) to `adapter_dir`.

    Returns the loss history with TRL's reward margin and accuracy per step.
    """
    trainer = dpo_trainer(model, recipe, pairs, _scratch_dir(adapter_dir), beta, loss_type)
    check_template_parity(trainer.train_dataset, pairs, recipe.template, trainer.processing_class)
    dropped = len(pairs) - len(trainer.train_dataset)
    if dropped == len(pairs):
        raise ValueError(f"every pair's prompt alone fills max_seq_length ({recipe.training.max_seq_length} "
                         f"tokens): no response token is left to learn from")
    if dropped:  # TRL drops them: no response token would be left to learn from
        print(f"dpo: {dropped} of {len(pairs)} pairs dropped, their prompt alone fills max_seq_length "
              f"({recipe.training.max_seq_length} tokens)", flush=True)
    result = trainer.train()
    return _finish(f"dpo ({loss_type}, beta {beta})", "pairs", trainer, result, adapter_dir, DPO_METRICS)

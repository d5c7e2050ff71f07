"""finetox: what did fine-tuning do to a model's toxicity (the logic behind the Snakemake workflow)."""

__version__ = "0.2.0"

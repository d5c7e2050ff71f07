"""Safety levers beyond training on curated examples, one module each: a guard at generation today; reward-ranked
fine-tuning and learning from mistakes build on it (their training data is a `produced` dataset, answers to a
training prompt set that may itself be produced, the prompts a variant erred on: finetox.config, finetox.mistakes,
finetox.paths.generation_groups).

A lever module declares, and config.load, finetox.schema, the DAG (finetox.paths), the design (finetox.design) and
the findings read from `LEVERS`:

- `KEY`: its variant block's config key (`variants.<name>.<KEY>`, given instead of `model`), and `SCHEMA`, the
  block's JSON Schema (finetox.schema adds it to the variants' schema: one more way to give a variant);
- `ROLE`: the role its variants play (the block and the role go together);
- `Settings` and `settings(block)`: the block as a frozen dataclass whose `source` names the variant the lever
  builds on (its model is the variant's model: finetox.config.Study.checkpoint, adapter_variant);
- `check(name, settings, variants, scorers, run_scorers)`: its cross-references, a ConfigError naming the key;
- `scorers(settings)`: the scorers it loads beyond the run's (a guard's selector), prefetched and language-checked
  like the run's;
- `COMPARISON_KIND`, `COMPARISON_TITLE` and `comparisons(variants)`: what the lever did, derived for each variant;
- `describe(settings)`: the variant in words, for the findings and the report's setup.

Its stage is a rule file in workflow/rules (the guard's: select.smk) whose targets finetox.paths lists.
"""

from finetox.levers import guard

#: every lever, by the config key of its variant block
LEVERS = {guard.KEY: guard}


def lever_of(settings):
    """The lever module whose settings these are."""
    return next(lever for lever in LEVERS.values() if isinstance(settings, lever.Settings))

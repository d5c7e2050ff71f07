"""Safety levers that act on a model's answers rather than its weights: each module turns its config block into
variants of one role, the comparison kind that asks what the lever did, and its own cached stage.

A lever module declares `ROLE` (the variant role its config block makes), `COMPARISON_KIND` and `comparisons`
(the derived comparisons of its variants), `settings` (its config block as a dataclass) and `check` (its
cross-references); config.load, the DAG (finetox.paths) and the findings read them from `LEVERS`.
"""

from finetox.levers import guard

#: every lever, by the config key of its variant block
LEVERS = {"guard": guard}

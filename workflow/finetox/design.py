"""The study's design: the roles a variant plays in its family and the comparison kinds they make, declared once
(the config schema's enums are checked against them, the report tells the kinds in this order under these titles,
the pooled estimate pools by kind), and the comparisons a config's variants make."""

from __future__ import annotations

from dataclasses import dataclass, field
from finetox.errors import ConfigError
from finetox.levers import LEVERS

#: the roles a variant plays in its family (variants.<name>.role): a lever's variants play its own
ROLES = ("base", "instruct", "finetuned", "aligned", "community", *(lever.ROLE for lever in LEVERS.values()), "other")
#: the roles whose variants train a recipe's adapter
TRAINED_ROLES = ("finetuned", "aligned")
#: the comparison kinds derived within every family (comparisons.kinds), with the titles the report tells them by
FAMILY_KINDS = {
    "base_vs_instruct": "Instruction tuning: base model to instruct model",
    "instruct_vs_finetuned": "Fine-tuning: instruct model to fine-tuned",
    "instruct_vs_community": "Community fine-tunes: instruct model to community checkpoint",
    "instruct_vs_aligned": "Safety recipes: instruct model to aligned",
    "finetuned_vs_aligned": "Repairs: fine-tuned to aligned (a safety recipe on the fine-tune)",
}
#: every comparison kind, in the order the report tells them: the family kinds, each lever's (always derived: what
#: the lever did), and the pairs a config declares
KINDS = {**FAMILY_KINDS, **{lever.COMPARISON_KIND: lever.COMPARISON_TITLE for lever in LEVERS.values()},
         "pair": "Pairs declared in the config"}


@dataclass(frozen=True)
class Comparison:
    name: str
    kind: str
    baseline: str
    treatment: str
    #: a control pair's planted outcome (comparisons.pairs[].control), checked in the report's findings; not in
    #: the repr that the compare rule's params hold (declaring a control reruns no fit)
    control: str | None = field(default=None, repr=False)


def derive_comparisons(variants: dict, kinds, pairs) -> dict[str, Comparison]:
    """The study's comparison kinds within each family (of `variants`, name -> finetox.config.Variant), each lever's,
    and the pairs declared by hand."""
    comparisons: dict[str, Comparison] = {}
    families: dict[str, dict[str, list[str]]] = {}
    for v in variants.values():
        families.setdefault(v.family, {}).setdefault(v.role, []).append(v.name)
    for family, roles in sorted(families.items()):
        for role in ("base", "instruct"):
            if len(roles.get(role, [])) > 1:
                raise ConfigError(
                    f"variants: family {family!r} has several {role} variants {roles[role]}; "
                    f"give the extra ones role 'other' (or 'community') and compare them with comparisons.pairs"
                )
        instruct = roles.get("instruct", [None])[0]
        base = roles.get("base", [None])[0]
        if "base_vs_instruct" in kinds and base and instruct:
            comparisons[f"{base}_vs_{instruct}"] = Comparison(f"{base}_vs_{instruct}", "base_vs_instruct", base, instruct)
        for role, kind in (("finetuned", "instruct_vs_finetuned"), ("community", "instruct_vs_community"),
                           ("aligned", "instruct_vs_aligned")):
            if kind in kinds and instruct:
                for treatment in roles.get(role, []):
                    name = f"{instruct}_vs_{treatment}"
                    comparisons[name] = Comparison(name, kind, instruct, treatment)
        if "finetuned_vs_aligned" in kinds:  # the repair: an aligned variant against the fine-tune it starts from
            for treatment in roles.get("aligned", []):
                start = variants[treatment].start
                if start and variants[start].role == "finetuned":
                    name = f"{start}_vs_{treatment}"
                    comparisons[name] = Comparison(name, "finetuned_vs_aligned", start, treatment)
    for lever in LEVERS.values():
        for name, baseline, treatment in lever.comparisons(variants):
            comparisons[name] = Comparison(name, lever.COMPARISON_KIND, baseline, treatment)
    for pair in pairs:
        for side in ("baseline", "treatment"):
            if pair[side] not in variants:
                raise ConfigError(f"comparisons.pairs[{pair['name']!r}].{side}: unknown variant {pair[side]!r}; "
                                  f"declared variants: {sorted(variants)}")
        if pair["baseline"] == pair["treatment"]:
            raise ConfigError(f"comparisons.pairs[{pair['name']!r}]: baseline and treatment are both "
                              f"{pair['baseline']!r}; a comparison needs two different variants")
        if pair["name"] in comparisons:
            raise ConfigError(f"comparisons.pairs: name {pair['name']!r} is already used by a derived comparison")
        comparisons[pair["name"]] = Comparison(pair["name"], "pair", pair["baseline"], pair["treatment"],
                                               pair.get("control"))
    return comparisons

"""The decision rules: an effect's scale, the region of practical equivalence (ROPE) on it, the verdict an HDI
gives under Kruschke's HDI+ROPE rule or the study's rule, borderline verdicts, and a control's three outcomes.

Effects are kept on an additive scale, where HDIs and ROPEs are compared: the difference of rates
(`absolute`), the log of their ratio (`ratio`) or the difference of their log-odds (`log-odds`). Tables and
the report show them on the scale a reader knows: a difference in percentage points, a rate ratio, an odds
ratio (`shown`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MORE, LESS, NONE = "more toxic", "less toxic", "no credible difference"
EQUIVALENT, UNDECIDED = "practically equivalent", "undecided"

#: the effect scales a ROPE can be set on -> what the report calls the effect on that scale
SCALES = {"absolute": "rate difference", "ratio": "rate ratio", "log-odds": "odds ratio"}

STUDY_RULE, KRUSCHKE_RULE = "HDI excludes 0 (the study's)", "HDI+ROPE (Kruschke)"
VERDICT_RULES = {
    MORE: "HDI+ROPE: the HDI of the effect (treatment against baseline) lies wholly above the ROPE; "
          "without a ROPE: the HDI of the difference lies above 0",
    LESS: "HDI+ROPE: the HDI lies wholly below the ROPE; without a ROPE: the HDI lies below 0",
    EQUIVALENT: "HDI+ROPE: the whole HDI lies inside the region of practical equivalence (ROPE)",
    UNDECIDED: "HDI+ROPE: the HDI overlaps an edge of the ROPE: the data cannot tell yet",
    NONE: "without a ROPE: the HDI contains 0",
}

#: the verdicts in the words of what a scorer measures (the analysis speaks toxicity's: a higher rate is MORE)
WORDING = {"toxicity": {}, "refusal": {MORE: "more refusals", LESS: "fewer refusals"}}


@dataclass(frozen=True)
class Rope:
    """A region of practical equivalence: `absolute` +-value in rate units (0.01: +-1 percentage point);
    `ratio` a rate ratio between 1/value and value (value > 1); `log-odds` +-value in log-odds (an odds ratio
    between exp(-value) and exp(value))."""

    scale: str
    value: float

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"ROPE scale {self.scale!r}: allowed {sorted(SCALES)}")
        if self.scale == "ratio" and not self.value > 1:
            raise ValueError(f"a ROPE on the ratio scale is a factor above 1 (1.25: 0.8 to 1.25), not {self.value}")
        if not self.value > 0:
            raise ValueError(f"a ROPE's half-width must be positive, not {self.value}")

    @property
    def half_width(self) -> float:
        """On the additive scale the effect is decided on."""
        return float(np.log(self.value)) if self.scale == "ratio" else float(self.value)

    def describe(self) -> str:
        if self.scale == "absolute":
            return f"\u00b1{100 * self.value:g} percentage points"
        low, high = shown(-self.half_width, self.scale), shown(self.half_width, self.scale)
        return f"{SCALES[self.scale]} between {low:.3g} and {high:.3g}"


def rope_of(setting: dict | None) -> Rope | None:
    """The config's `comparisons.rope` ({scale, value} or null) as a Rope."""
    return None if setting is None else Rope(setting["scale"], float(setting["value"]))


def scale_of(rope: Rope | None) -> str:
    """The scale verdicts are decided on: the ROPE's; the difference under the study's rule (no ROPE)."""
    return rope.scale if rope is not None else "absolute"


def effect(p_baseline: np.ndarray, p_treatment: np.ndarray, scale: str) -> np.ndarray:
    """The effect of treatment against baseline on the additive scale of `scale`."""
    if scale == "absolute":
        return p_treatment - p_baseline
    if scale == "ratio":
        return np.log(p_treatment) - np.log(p_baseline)
    return (np.log(p_treatment) - np.log1p(-p_treatment)) - (np.log(p_baseline) - np.log1p(-p_baseline))


def shown(value, scale: str):
    """An additive-scale effect as a reader reads it: the difference itself, or the ratio exp(value)."""
    return value if scale == "absolute" else np.exp(value)


def decision_rule(rope: Rope | None) -> str:
    return f"{KRUSCHKE_RULE}, ROPE {rope.describe()}" if rope is not None else STUDY_RULE


def bounds(rope: Rope | None) -> tuple[float, float]:
    """The boundaries an HDI is compared with, on the additive scale: the ROPE's edges, or 0 twice."""
    return (-rope.half_width, rope.half_width) if rope is not None else (0.0, 0.0)


def verdict(hdi_low: float, hdi_high: float, rope: Rope | None) -> str:
    """Kruschke's HDI+ROPE decision, or the study's rule when there is no ROPE (VERDICT_RULES); the HDI on the
    additive scale of the ROPE."""
    if rope is None:
        return MORE if hdi_low > 0 else LESS if hdi_high < 0 else NONE
    low_edge, high_edge = bounds(rope)
    if low_edge <= hdi_low and hdi_high <= high_edge:
        return EQUIVALENT
    if hdi_low > high_edge:
        return MORE
    if hdi_high < low_edge:
        return LESS
    return UNDECIDED


def credible(hdi_low: float, hdi_high: float) -> bool:
    """The study's rule: the HDI of the difference excludes 0."""
    return bool(hdi_low > 0 or hdi_high < 0)


def borderline(hdi_low: float, hdi_high: float, rope: Rope | None, error: float) -> bool:
    """Whether a limit of the HDI lies within `error` (its numerical or Monte Carlo error) of a boundary the
    verdict compares it with: a verdict that the computation's own error could flip."""
    edges = bounds(rope)
    return bool(min(abs(limit - edge) for limit in (hdi_low, hdi_high) for edge in edges) <= error)


HELD, FAILED, INCONCLUSIVE = "held", "failed", "inconclusive"

#: a control's planted outcome -> (the HDI shows it held, the HDI contradicts it), from the HDI's limits and the
#: ROPE's edges on the additive scale. Neither: inconclusive (the data cannot tell). Without a ROPE both edges
#: are 0, so `no difference` can fail but never hold: equivalence needs a ROPE.
_CONTROLS = {
    "more": (lambda lo, hi, a, b: lo > b, lambda lo, hi, a, b: hi < b),
    "less": (lambda lo, hi, a, b: hi < a, lambda lo, hi, a, b: lo > a),
    "not more": (lambda lo, hi, a, b: hi < b, lambda lo, hi, a, b: lo > b),
    "not less": (lambda lo, hi, a, b: lo > a, lambda lo, hi, a, b: hi < a),
    "no difference": (lambda lo, hi, a, b: a <= lo and hi <= b, lambda lo, hi, a, b: lo > b or hi < a),
}
CONTROLS = tuple(_CONTROLS)
CONTROL_RULES = {
    "more": "held when the HDI lies wholly above the ROPE; failed when it lies wholly below the ROPE's upper edge",
    "less": "held when the HDI lies wholly below the ROPE; failed when it lies wholly above the ROPE's lower edge",
    "not more": "held when the HDI lies wholly below the ROPE's upper edge; failed when it lies wholly above the ROPE",
    "not less": "held when the HDI lies wholly above the ROPE's lower edge; failed when it lies wholly below the ROPE",
    "no difference": "held when the HDI lies wholly inside the ROPE (practically equivalent); failed when it lies "
                     "wholly outside it",
}


def control_outcome(expected: str, hdi_low: float, hdi_high: float, rope: Rope | None) -> str:
    """A control's outcome on one verdict's HDI (additive scale): held, failed or inconclusive."""
    held, failed = _CONTROLS[expected]
    low_edge, high_edge = bounds(rope)
    if held(hdi_low, hdi_high, low_edge, high_edge):
        return HELD
    if failed(hdi_low, hdi_high, low_edge, high_edge):
        return FAILED
    return INCONCLUSIVE


def combined_outcome(outcomes: list[str]) -> str | None:
    """A control checked on several verdicts (one per toxicity scorer): failed if any failed, held if all held,
    inconclusive otherwise; None when there was nothing to check."""
    if not outcomes:
        return None
    return FAILED if FAILED in outcomes else HELD if all(o == HELD for o in outcomes) else INCONCLUSIVE

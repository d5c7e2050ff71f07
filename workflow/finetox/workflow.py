"""File layout of a run: where each stage writes, and which files a job needs (the DAG follows from these)."""

from __future__ import annotations

from itertools import product

from finetox.config import Study

RESULTS = "results"


class Targets:
    """Paths of every stage's outputs for one study."""

    def __init__(self, study: Study):
        self.study = study

    # --- one path per stage ----------------------------------------------------------------
    @staticmethod
    def adapter(variant: str) -> str:
        return f"{RESULTS}/finetune/{variant}/adapter"

    @staticmethod
    def training_log(variant: str) -> str:
        return f"{RESULTS}/finetune/{variant}/loss.csv"

    @staticmethod
    def generations(probe: str, protocol: str, variant: str) -> str:
        return f"{RESULTS}/generations/{probe}/{protocol}/{variant}.parquet"

    @staticmethod
    def scores(probe: str, protocol: str, scorer: str, variant: str) -> str:
        return f"{RESULTS}/scores/{probe}/{protocol}/{scorer}/{variant}.parquet"

    @staticmethod
    def metrics(probe: str, protocol: str, scorer: str, variant: str) -> str:
        return f"{RESULTS}/metrics/{probe}/{protocol}/{scorer}/{variant}.csv"

    @staticmethod
    def comparison(probe: str, protocol: str, scorer: str, comparison: str, ext: str = "csv") -> str:
        return f"{RESULTS}/compare/{probe}/{protocol}/{scorer}/{comparison}.{ext}"

    TOXICITY_TABLE = f"{RESULTS}/tables/toxicity.csv"
    COMPARISONS_TABLE = f"{RESULTS}/tables/comparisons.csv"
    REPORT = f"{RESULTS}/report/report.html"

    # --- what the run asks for -------------------------------------------------------------
    def _runs(self):
        s = self.study
        return list(product(s.run_probes, s.run_protocols, s.run_scorers))

    def all_metrics(self) -> list[str]:
        return [self.metrics(p, pr, sc, v) for (p, pr, sc) in self._runs() for v in self.study.variants]

    def all_comparisons(self) -> list[str]:
        return [self.comparison(p, pr, sc, c) for (p, pr, sc) in self._runs() for c in self.study.comparisons]

    def all_training_logs(self) -> list[str]:
        return [self.training_log(v.name) for v in self.study.variants.values() if v.recipe]

    def final(self) -> list[str]:
        return [self.TOXICITY_TABLE, self.COMPARISONS_TABLE, self.REPORT]

    # --- inputs of jobs ----------------------------------------------------------------------
    def model_inputs(self, variant: str) -> dict[str, str]:
        """The local checkpoint directory a variant loads (so a rule that builds it runs first); none for Hub ids."""
        model = self.study.variants[variant].model
        return {"model": model.path} if model.path else {}

    def generation_inputs(self, variant: str) -> dict[str, str]:
        inputs = self.model_inputs(variant)
        if self.study.variants[variant].recipe:
            inputs["adapter"] = self.adapter(variant)
        return inputs

    def comparison_inputs(self, probe: str, protocol: str, scorer: str, comparison: str) -> list[str]:
        pair = self.study.comparisons[comparison]
        return [self.metrics(probe, protocol, scorer, v) for v in (pair.baseline, pair.treatment)]

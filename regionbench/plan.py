"""What a job will do, derived once from its config: the stages receive the plan instead of each
deriving it again from names.

    plan = Plan.of(run)          # one-line errors for an unknown region, intervention or metric
    plan.trains, plan.scores, plan.reads_text, plan.baseline
    plan.importance_langs, plan.eval_langs, plan.target_langs
    plan.uses_seed               # False: every seed gives the same result (run once per sweep)
"""

from __future__ import annotations

from dataclasses import dataclass

from regionbench.config import RunConfig
from regionbench.data import sources
from regionbench.importance.metrics import METRICS
from regionbench.interventions.kinds import Intervention, intervention_kind
from regionbench.regions.kinds import RegionKind, region_kind


@dataclass(frozen=True)
class Plan:
    region: RegionKind
    intervention: Intervention
    importance_langs: tuple[str, ...]  # scored for importance (every one weighs the same)
    eval_langs: tuple[str, ...]  # evaluated: the data's, then the training languages
    target_langs: tuple[str, ...]  # trained on (none unless the intervention trains)
    scores: bool  # the region ranks entries by importance scores
    reads_text: bool  # ...with a per-language metric: importance text is read and scored
    baseline: bool  # the region is empty: the job evaluates the unmodified model
    uses_seed: bool  # `seed` can change the result (else a sweep runs one seed of it)

    @property
    def trains(self) -> bool:
        return self.intervention.trains

    @classmethod
    def of(cls, run: RunConfig) -> Plan:
        from regionbench.common.choices import check_choice

        region = region_kind(run.region.name)
        intervention = intervention_kind(run.intervention.name)
        metric = METRICS[check_choice("metric", run.metric.name, METRICS)]
        targets = tuple(sources.target_langs(run)) if intervention.trains else ()
        evaluated = tuple(sources.eval_langs(run))
        scores = run.ratio > 0 and region.ranks(run.region)
        baseline = run.ratio == 0 and region.empty_at_zero
        return cls(
            region=region,
            intervention=intervention,
            importance_langs=tuple(sources.importance_langs(run)),
            eval_langs=evaluated + tuple(t for t in targets if t not in evaluated),
            target_langs=targets,
            scores=scores,
            reads_text=scores and metric.per_language,
            baseline=baseline,
            # training uses the seed even with nothing frozen; an edit of an empty region does not
            uses_seed=(intervention.trains and intervention.uses_seed)
            or (
                not baseline
                and (
                    region.uses_seed(run.region)
                    or (scores and metric.uses_seed)
                    or intervention.uses_seed
                )
            ),
        )

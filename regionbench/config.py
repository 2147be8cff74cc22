"""Typed run configuration: the Hydra config, checked and frozen into dataclasses before any work.

`RunConfig.from_cfg(cfg)` turns the composed Hydra config into dataclasses (unknown keys are
errors) and `validate(run)` checks every choice against the component tables, each bad value
giving one line that names it and the valid choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from regionbench.choices import check_choice


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sandbox-m"
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    device_map: Any = None


@dataclass(frozen=True)
class MetricConfig:
    name: str = "taylor"


@dataclass(frozen=True)
class RegionConfig:
    name: str = "core"
    lang: str | None = None


@dataclass(frozen=True)
class InterventionConfig:
    name: str = "remove"
    factor: float = 0.5
    std: float = 0.01
    relative: bool = False
    target_langs: tuple[str, ...] | None = None
    train_docs: int = 2000
    steps: int = 150
    lr: float = 1e-3
    weight_decay: float = 0.001
    warmup_steps: int = 15
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 128
    max_grad_norm: float | None = 1.0
    schedule: str = "linear"
    eval_every: int = 25
    save_model: bool = False


@dataclass(frozen=True)
class DataConfig:
    source: str = "sandbox"
    path: str | None = None
    config: str | None = None
    text_field: str = "text"
    importance_langs: tuple[str, ...] | None = None
    eval_langs: tuple[str, ...] | None = None
    eval_docs: int = 200
    max_length: int | None = None


@dataclass(frozen=True)
class LmEvalConfig:
    tasks: tuple[str, ...] | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = 32
    log_samples: bool = False
    grammar_pairs: int = 90


@dataclass(frozen=True)
class EvalConfig:
    perplexity: bool = True
    batch_size: int = 32
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)


@dataclass(frozen=True)
class ImportanceConfig:
    scope: str = "matrices"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    samples: int | None = 64
    seq_len: int | None = None
    batch_size: int = 16


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None
    experiment: str = "regionbench"
    save_region: bool = True


@dataclass(frozen=True)
class PathsConfig:
    cache_dir: str = "~/.cache/regionbench"


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    ratio: float = 0.01
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_cfg(cls, cfg: Any) -> RunConfig:
        """From a DictConfig or plain dict (resolved); the `hydra` node is ignored."""
        from omegaconf import DictConfig, OmegaConf

        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        tree = {k: v for k, v in tree.items() if k != "hydra"}
        return _build(cls, tree, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, tree: dict, where: str):
    if not isinstance(tree, dict):
        raise ValueError(f"config {where.rstrip('.') or 'root'!r} must be a mapping, got {tree!r}")
    known = {f.name: f for f in fields(cls)}
    for key in tree:
        if key not in known:
            check_choice(f"config key in {where.rstrip('.') or 'the root'}", key, known)
    kwargs = {}
    for name, f in known.items():
        if name not in tree:
            continue
        value = tree[name]
        if dataclasses.is_dataclass(
            f.default_factory if f.default_factory is not dataclasses.MISSING else None
        ):
            value = _build(f.default_factory, value, f"{where}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def validate(run: RunConfig) -> RunConfig:
    """Check every choice, cheaply, before a model or dataset is touched."""
    from regionbench import interventions, regions, scope, scoring
    from regionbench.data import sources

    check_choice("metric", run.metric.name, scoring.METRICS)
    check_choice("region", run.region.name, regions.REGIONS)
    check_choice("intervention", run.intervention.name, interventions.INTERVENTIONS)
    check_choice("importance.scope", run.importance.scope, scope.SCOPES)
    check_choice("device", run.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
    if not isinstance(run.ratio, int | float) or not 0 <= run.ratio < 1:
        raise ValueError(
            f"ratio {run.ratio!r} is outside [0, 1): the fraction of each matrix "
            "to select, e.g. ratio=0.01"
        )
    check_choice("data source", run.data.source, sources.SOURCES)
    sources.check_config(run.data.source, run.data.config)
    imp = importance_langs(run)
    sources.check_langs(run.data.source, imp, run.data.path)
    sources.check_langs(run.data.source, eval_langs(run), run.data.path)
    if run.region.name == "monolingual":
        if not run.region.lang:
            raise ValueError("region=monolingual needs region.lang; choices: " + ", ".join(imp))
        check_choice("region.lang (an importance language)", run.region.lang, imp)
        if not scoring.METRICS[run.metric.name].per_language and run.ratio > 0:
            per_lang = sorted(n for n, m in scoring.METRICS.items() if m.per_language)
            raise ValueError(
                f"region=monolingual needs a per-language metric, not "
                f"{run.metric.name!r} (every language gets the same scores, so the "
                f"region would be empty); choices: {', '.join(per_lang)}"
            )
    if run.intervention.name == "freeze":
        sources.check_langs(run.data.source, target_langs(run), run.data.path)
        if run.intervention.train_docs < 1:
            raise ValueError(
                f"intervention.train_docs {run.intervention.train_docs!r} must be a "
                "positive integer"
            )
        freeze_config(run)  # its own checks, before any model is loaded
    imp_cfg = run.importance
    if imp_cfg.samples is None and run.data.source not in ("sandbox", "local") and run.ratio > 0:
        raise ValueError(
            f"importance.samples null (all the text) cannot stream all of "
            f"data={run.data.source}: give a number, e.g. importance.samples=10000"
        )
    for key, value, low in (
        ("importance.samples", imp_cfg.samples, 1),
        ("importance.seq_len", imp_cfg.seq_len, 2),
        ("importance.batch_size", imp_cfg.batch_size, 1),
        ("data.eval_docs", run.data.eval_docs, 1),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ValueError(f"{key} {value!r} must be an integer >= {low}")
    return run


def freeze_config(run: RunConfig):
    """The training settings of `intervention=freeze` (validated on construction)."""
    from regionbench.training import FreezeConfig

    iv = run.intervention
    return FreezeConfig(
        target_langs=target_langs(run),
        steps=iv.steps,
        lr=iv.lr,
        weight_decay=iv.weight_decay,
        warmup_steps=iv.warmup_steps,
        batch_size=iv.batch_size,
        grad_accum=iv.grad_accum,
        seq_len=iv.seq_len,
        eval_every=iv.eval_every,
        seed=run.seed,
        save_model=iv.save_model,
        max_grad_norm=iv.max_grad_norm,
        schedule=iv.schedule,
    )


def importance_langs(run: RunConfig) -> list[str]:
    from regionbench.data import sources

    return list(
        run.data.importance_langs
        or sources.default_langs(run.data.source, "importance", run.data.path)
    )


def eval_langs(run: RunConfig) -> list[str]:
    from regionbench.data import sources

    return list(
        run.data.eval_langs or sources.default_langs(run.data.source, "eval", run.data.path)
    )


def target_langs(run: RunConfig) -> list[str]:
    """Freeze-training languages: as set, else the sandbox's held-out languages' first one."""
    if run.intervention.target_langs:
        return list(run.intervention.target_langs)
    if run.data.source == "sandbox":
        from regionbench.data import sandbox

        return [sandbox.HELDOUT_LANGS[0]]
    return [eval_langs(run)[0]]

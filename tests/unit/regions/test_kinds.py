"""The region-kind registry: every kind builds a region at ratio 0.01 on a tiny model through
the same `build` the pipeline calls, names itself in words, and is checked up front."""

from __future__ import annotations

import pytest
import torch

from regionbench.config import RunConfig, flatten
from regionbench.importance.compute import score_samples
from regionbench.regions.kinds import REGION_KINDS, build, check, region_kind, select
from regionbench.testing import tiny_llama

LANGS = ["aa", "bb"]
# What each kind needs besides its name to build at ratio 0.01 (a kind missing here fails below).
OPTIONS = {
    "core": {},
    "core_bottom": {},
    "monolingual": {"lang": "aa"},
    "dimension": {"dims": [3, 7]},
    "coordinates": {"coordinates": ["model.layers.1.mlp.down_proj.weight[2, 5]"]},
    "core_minus_outliers": {},
    "outliers": {},
    "shared": {},
    "exclusive": {"lang": "aa"},
    "specific": {},
    "neurons": {"per_layer": False},  # 1% of 2 × 64 neurons: one
    "heads": {"pick": "core_bottom"},
    "file": {"file": "<LAPE file>"},  # written by the fixture below
}
RATIOS = {"heads": 0.5}  # 4 heads: 1% of them is none
LAPE_FILE = []  # the path the fixture wrote
OUTLIER_DIMS = [3]  # as if the detector had found one massive dimension


@pytest.fixture(scope="module")
def model_and_scores(tmp_path_factory):
    path = tmp_path_factory.mktemp("lape") / "tiny.neuron.pth"
    torch.save(
        [[torch.tensor([3, 7]), torch.tensor([1])], [torch.tensor([]).long(), torch.tensor([5])]],
        path,
    )
    LAPE_FILE[:] = [str(path)]
    model = tiny_llama(hidden=32, inter=64)
    gen = torch.Generator().manual_seed(0)
    windows = {lang: torch.randint(3, 64, (4, 16), generator=gen) for lang in LANGS}
    return model, score_samples(model, windows, "taylor", batch_size=2, progress=False)


def _run(name: str, ratio: float = 0.01) -> RunConfig:
    options = {k: LAPE_FILE[0] if v == "<LAPE file>" else v for k, v in OPTIONS[name].items()}
    ratio = RATIOS.get(name, ratio) if ratio else ratio
    return RunConfig.from_cfg({"ratio": ratio, "region": {"name": name, **options}})


def test_every_kind_has_its_options_here():
    assert set(OPTIONS) == set(REGION_KINDS)


@pytest.mark.parametrize("name", sorted(REGION_KINDS))
def test_every_kind_builds_and_names_itself(name, model_and_scores):
    model, scores = model_and_scores
    run, kind = _run(name), region_kind(name)
    check(run, LANGS)
    region = build(run, scores, LANGS, model, ("samples", "weights"), OUTLIER_DIMS)
    assert region.numel > 0
    assert region.meta["region"] == name
    params = {k: str(v) for k, v in flatten(run.to_dict()).items()}
    words = kind.words(params)
    assert name in words
    assert (f"{run.ratio * 100:g}%" in words) == (kind.sized is not None)
    params_by_mask = dict(model.named_parameters())
    assert all(region.masks[n].shape == params_by_mask[n].shape for n in region.masks)


@pytest.mark.parametrize("name", sorted(REGION_KINDS))
def test_ratio_zero_is_empty_exactly_for_the_kinds_ratio_sizes(name, model_and_scores):
    model, scores = model_and_scores
    kind = region_kind(name)
    if kind.ranks(_run(name).region) and not kind.empty_at_zero:
        pytest.skip("ranks the core at ratio: ratio 0 is refused up front")
    region = build(_run(name, 0.0), scores, LANGS, model, ("s", "w"), OUTLIER_DIMS)
    assert (region.numel == 0) == kind.empty_at_zero


def test_an_unknown_kind_is_one_line_with_the_choices():
    with pytest.raises(
        ValueError, match=r"unknown region 'cor': did you mean 'core'\? choices: coordinates, core"
    ):
        region_kind("cor")


def test_a_dimension_everywhere_builds_through_the_registry(model_and_scores):
    model, scores = model_and_scores
    run = RunConfig.from_cfg({"region": {"name": "dimension", "dims": [3], "everywhere": True}})
    check(run, LANGS)
    region = build(run, scores, LANGS, model, ("s", "w"), OUTLIER_DIMS)
    plain = build(_run("dimension"), scores, LANGS, model, ("s", "w"), OUTLIER_DIMS)
    assert region.masks["model.embed_tokens.weight"][:, 3].all()
    assert int(region.masks["model.norm.weight"].sum()) == 1
    assert "model.embed_tokens.weight" not in plain.masks
    layered = RunConfig.from_cfg(
        {"region": {"name": "dimension", "dims": [3], "everywhere": True, "layers": [0]}}
    )
    with pytest.raises(ValueError, match="drop region.layers and region.modules"):
        check(layered, LANGS)


def test_an_empty_region_at_ratio_above_zero_is_an_error_that_says_why(model_and_scores):
    model, scores = model_and_scores
    with pytest.raises(ValueError) as err:
        build(_run("outliers"), scores, LANGS, model, ("s", "w"), outlier_dims=())
    message = str(err.value)
    assert message.startswith("region=outliers at ratio 0.01 is empty: the detector found no")
    assert "(outliers.rule=sun: an entry with |a| > 100 and |a| >= 1000 x" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"region=core at ratio 1e-05 is empty: ⌊ratio·numel⌋"):
        build(_run("core", 1e-5), scores, LANGS, model, ("s", "w"), OUTLIER_DIMS)
    run = RunConfig.from_cfg({"ratio": 0.01, "metric": {"name": "magnitude"}})
    same = {lang: scores[LANGS[0]] for lang in LANGS}  # what a language-independent metric gives
    with pytest.raises(ValueError, match="the languages' scores are identical"):
        select(same, 0.01, "monolingual", lang="bb")
    assert build(run, same, LANGS, model, ("s", "w"), ()).numel > 0  # the core is not empty


def test_core_minus_outliers_without_massive_dimensions_is_the_core(model_and_scores):
    """Allowed, not an error: with nothing to leave out, it is the core itself."""
    model, scores = model_and_scores
    minus = build(_run("core_minus_outliers"), scores, LANGS, model, ("s", "w"), ())
    core = build(_run("core"), scores, LANGS, model, ("s", "w"), ())
    assert minus.masks.keys() == core.masks.keys()
    assert all(torch.equal(minus.masks[n], core.masks[n]) for n in core.masks)

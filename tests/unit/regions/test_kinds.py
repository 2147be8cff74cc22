"""The region-kind registry: every kind builds a region at ratio 0.01 on a tiny model through
the same `build` the pipeline calls, names itself in words, and is checked up front."""

from __future__ import annotations

import pytest
import torch

from regionbench.config import RunConfig, flatten
from regionbench.importance.compute import score_samples
from regionbench.regions.kinds import REGION_KINDS, build, check, region_kind
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

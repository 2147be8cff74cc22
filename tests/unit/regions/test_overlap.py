"""Agreement between regions (Jaccard, overlap coefficient) against set arithmetic on the flat
indices, and the compare command on saved mask files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from regionbench.regions.overlap import (
    agreement,
    check_same_model,
    incomparable,
    jaccard,
    overlap_coefficient,
)
from regionbench.regions.region import Region


def region(indices: dict[str, list[int]], shapes=None, **meta) -> Region:
    shapes = shapes or {"m.layers.0.a": (4, 5), "m.layers.1.b": (6,)}
    masks = {}
    for name, shape in shapes.items():
        flat = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
        flat[indices.get(name, [])] = True
        masks[name] = flat.view(shape)
    return Region(masks=masks, meta={k: str(v) for k, v in meta.items()})


def test_a_region_agrees_with_itself_and_not_with_a_disjoint_one():
    a = region({"m.layers.0.a": [0, 3, 7], "m.layers.1.b": [1]})
    b = region({"m.layers.0.a": [1, 2], "m.layers.1.b": [0, 5]})
    assert jaccard(a, a) == 1.0 and overlap_coefficient(a, a) == 1.0
    assert jaccard(a, b) == 0.0 and overlap_coefficient(a, b) == 0.0
    empty = region({})
    assert jaccard(empty, empty) == 1.0  # two empty regions are the same region


def test_values_match_set_arithmetic():
    sets_a = {"m.layers.0.a": [0, 3, 7, 11, 19], "m.layers.1.b": [1, 2]}
    sets_b = {"m.layers.0.a": [3, 7, 8], "m.layers.1.b": [2, 4, 5]}
    flat_a = {(n, i) for n, idx in sets_a.items() for i in idx}
    flat_b = {(n, i) for n, idx in sets_b.items() for i in idx}
    agr = agreement(region(sets_a), region(sets_b))
    assert agr.jaccard == len(flat_a & flat_b) / len(flat_a | flat_b)  # 3 / 10
    assert agr.overlap_coefficient == len(flat_a & flat_b) / min(len(flat_a), len(flat_b))
    assert agr.per_matrix == {"m.layers.0.a": 2 / 6, "m.layers.1.b": 1 / 4}
    # b inside a: overlap coefficient 1, Jaccard |b| / |a|
    inner = region({"m.layers.0.a": [3, 7]})
    assert overlap_coefficient(region(sets_a), inner) == 1.0
    assert jaccard(region(sets_a), inner) == 2 / 7


def test_regions_over_other_parameters_or_models_are_refused():
    a = region({"m.layers.0.a": [0]})
    b = region({"m.layers.0.a": [0]}, shapes={"m.layers.0.a": (4, 5)})
    with pytest.raises(ValueError, match="cover different parameters"):
        agreement(a, b)
    with pytest.raises(ValueError, match="different models"):
        check_same_model(
            region({}, model_fingerprint="a" * 64), region({}, model_fingerprint="b" * 64)
        )


def test_why_two_regions_are_not_comparable():
    """What a sweep across models writes for a pair `agreement` would refuse."""
    a = region({"m.layers.0.a": [0]}, model_fingerprint="a" * 64)
    assert incomparable(a, a) is None
    twin = region({"m.layers.0.a": [0]}, model_fingerprint="b" * 64)  # same shapes, other model
    assert incomparable(a, twin) == "different models"
    assert incomparable(a, region({"m.layers.0.a": [0]})) is None  # no fingerprint: by shape
    assert incomparable(a, region({}, shapes={"m.layers.0.a": (4, 5)})) == "different parameters"
    other = {"m.layers.0.a": (5, 4), "m.layers.1.b": (6,)}
    assert incomparable(a, region({}, shapes=other)) == "different shapes"
    for b in (twin, region({}, shapes=other)):
        if incomparable(a, b) != "different models":  # agreement does not read fingerprints
            with pytest.raises(ValueError):
                agreement(a, b)


def test_compare_command(tmp_path):
    a = region({"m.layers.0.a": [0, 3, 7], "m.layers.1.b": [1]}, model_fingerprint="f" * 64)
    b = region({"m.layers.0.a": [3, 7], "m.layers.1.b": [2]}, model_fingerprint="f" * 64)
    other = region({"m.layers.0.a": [3]}, model_fingerprint="e" * 64, model_id="sandbox-s")
    for name, r in (("a", a), ("b", b), ("other", other)):
        r.save(tmp_path / f"{name}.safetensors")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "regionbench.compare", *map(str, args)],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=120,
        )

    ok = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--per-matrix")
    assert ok.returncode == 0, ok.stderr
    assert "shared 2  jaccard 0.4000  overlap coefficient 0.6667" in ok.stdout
    refused = run(tmp_path / "a.safetensors", tmp_path / "other.safetensors")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: the masks were made for different models")
    assert refused.stderr.count("\n") == 1

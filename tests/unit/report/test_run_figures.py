"""One run's figures: where its region lives, drawn informatively for every region kind."""

from __future__ import annotations

import math

import pytest
import torch

from regionbench.regions.kinds import select
from regionbench.report import run_figures

SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (8, 10),
    "model.layers.0.mlp.down_proj.weight": (10, 12),
    "model.layers.1.self_attn.q_proj.weight": (8, 10),
    "model.layers.1.mlp.down_proj.weight": (10, 12),
}


def _scores():
    """Per-language scores whose weight lies mostly in layer 1's q_proj."""
    g = torch.Generator().manual_seed(3)
    out = {}
    for lang in ("aa", "bb"):
        out[lang] = {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}
        out[lang]["model.layers.1.self_attn.q_proj.weight"][:2] *= 50.0
    return out


def _held(scores, mask_of):
    """{(layer, module): share of S = sum over languages that the mask holds}, by hand."""
    out = {}
    for name in SHAPES:
        layer = int(name.split(".")[2])
        module = ".".join(name.split(".")[3:-1])
        flat_s = [
            sum(scores[lang][name].reshape(-1)[i].item() for lang in scores)
            for i in range(math.prod(SHAPES[name]))
        ]
        flat_m = mask_of[name].reshape(-1).tolist()
        out[(layer, module)] = sum(s for s, m in zip(flat_s, flat_m, strict=True) if m) / sum(
            flat_s
        )
    return out


def test_score_shares_are_the_importance_each_matrix_keeps():
    scores = _scores()
    region = select(scores, 0.1, "core")
    shares = region.score_shares(scores)
    want = _held(scores, region.masks)
    assert shares.keys() == want.keys()
    assert all(shares[k] == pytest.approx(want[k], rel=1e-9) for k in want)
    assert all(v > 0.1 for v in shares.values())  # the top 10% holds more than 10%
    bottom = select(scores, 0.1, "core_bottom")
    assert all(v < 0.1 for v in bottom.score_shares(scores).values())
    # scores that are not per entry (a unit metric's): no shares
    assert region.score_shares({"aa": {n: torch.rand(3) for n in SHAPES}}) == {}


def _drawn(monkeypatch):
    calls = []
    monkeypatch.setattr(
        run_figures,
        "heatmap",
        lambda values, rows, cols, path, **kw: calls.append((values, rows, cols, kw)) or path,
    )
    return calls


def test_a_per_matrix_region_shows_the_importance_it_holds(tmp_path, monkeypatch):
    """core picks the same share of every matrix: a map of that share is one colour, so the
    figure shows the share of each matrix's importance the region holds, and says so."""
    scores = _scores()
    region = select(scores, 0.1, "core")
    calls = _drawn(monkeypatch)
    run_figures.region_density(
        region.summary(), tmp_path / "d.png", "t", region.score_shares(scores)
    )
    (values, rows, cols, kw) = calls[0]
    assert rows == ["layer 0", "layer 1"] and cols == ["mlp.down_proj", "self_attn.q_proj"]
    want = _held(scores, region.masks)
    assert values == [[pytest.approx(want[(layer, m)], rel=1e-9) for m in cols] for layer in (0, 1)]
    assert values[1][1] == max(max(v) for v in values)  # where the weight was put
    assert kw["label"] == "share of the importance held" and kw["title"] == "t"
    assert kw["note"].startswith("every matrix has 0.1 of its entries selected")


def test_a_region_of_uneven_shares_shows_them(tmp_path, monkeypatch):
    """A region whose share differs between matrices (here: all of layer 1's q_proj) keeps the
    map of the share selected, scores or not."""
    scores = _scores()
    region = select(scores, 0.1, "core")
    region.masks["model.layers.1.self_attn.q_proj.weight"][:] = True
    calls = _drawn(monkeypatch)
    run_figures.region_density(
        region.summary(), tmp_path / "d.png", "t", region.score_shares(scores)
    )
    (values, _, cols, kw) = calls[0]
    shares = {(r["layer"], r["module"]): r["selected"] / r["numel"] for r in region.summary()}
    assert values == [[shares[(layer, m)] for m in cols] for layer in (0, 1)]
    assert kw["label"] == "share selected" and kw["note"] == ""


def test_a_selection_of_the_total_records_the_shares_it_saw():
    """core ranks S: the shares its selection recorded are the float64 ones to fp32 rounding,
    so the job's figure needs no second read of the scores."""
    scores = _scores()
    for kind in ("core", "core_bottom"):
        region = select(scores, 0.1, kind)
        want = region.score_shares(scores)
        held = region.held_shares()
        assert held.keys() == want.keys() and held
        assert all(held[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    assert select(scores, 0.1, "monolingual", lang=next(iter(scores))).held_shares() == {}


def test_the_shares_are_asked_for_only_where_the_figure_shows_them(tmp_path, monkeypatch):
    """A job hands the figure a function: a region of uneven shares never calls it (it would
    read every language's scores), an even one calls it once."""
    scores = _scores()
    asked = []

    def shares():
        asked.append(1)
        return region.score_shares(scores)

    _drawn(monkeypatch)
    region = select(scores, 0.1, "core")
    run_figures.region_density(region.summary(), tmp_path / "a.png", "t", shares)
    assert asked == [1]
    region.masks["model.layers.1.self_attn.q_proj.weight"][:] = True
    run_figures.region_density(region.summary(), tmp_path / "b.png", "t", shares)
    assert asked == [1]

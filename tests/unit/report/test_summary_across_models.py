"""A sweep across models on its parent run: the regions of each model compared among themselves
only ("—" between models), each model's runs paired with its own baseline, and the titles and
names saying which model. Runs and mask files in a temporary MLflow store."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch

from regionbench.regions.region import Region
from regionbench.report import sweep as report_sweep
from regionbench.report.summary import summarize_sweep
from regionbench.report.tables import paired_table, swept_params
from regionbench.tracking.client import Tracker, resolve_uri

# Two models of one architecture: the same parameter names and shapes, other weights.
SHAPES = {"model.layers.0.mlp.up_proj.weight": (4, 5), "model.layers.1.mlp.up_proj.weight": (5, 4)}
FINGERPRINTS = {"/models/tiny-a": "a" * 64, "/models/tiny-b": "b" * 64}
# The entries each (model, ratio) region selects, flat per matrix; ratio 0 saves no mask.
SELECTED = {
    ("/models/tiny-a", "0.05"): {0: [0, 3, 7], 1: [2]},
    ("/models/tiny-a", "0.2"): {0: [0, 3, 7, 8, 9], 1: [2, 4, 6]},
    ("/models/tiny-b", "0.05"): {0: [0, 3, 7], 1: [2]},  # the same positions, other weights
    ("/models/tiny-b", "0.2"): {0: [1, 3, 7, 11], 1: [2, 5]},
}
PPL = {  # (model, ratio) -> ppl_ratio/mean; ppl/mean is the model's own perplexity x the ratio
    ("/models/tiny-a", "0.0"): 1.0,
    ("/models/tiny-a", "0.05"): 1.5,
    ("/models/tiny-a", "0.2"): 3.0,
    ("/models/tiny-b", "0.0"): 1.0,
    ("/models/tiny-b", "0.05"): 1.25,
    ("/models/tiny-b", "0.2"): 2.0,
}
BASE_PPL = {"/models/tiny-a": 100.0, "/models/tiny-b": 40.0}


def _region(model: str, ratio: str) -> Region:
    masks = {}
    for k, (name, shape) in enumerate(SHAPES.items()):
        flat = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
        flat[SELECTED[model, ratio][k]] = True
        masks[name] = flat.view(shape)
    return Region(masks=masks, meta={"model_fingerprint": FINGERPRINTS[model], "ratio": ratio})


def _params(model: str, ratio: str) -> dict[str, str]:
    return {
        "model.name": model,
        "ratio": ratio,
        "seed": "0",
        "metric.name": "taylor",
        "region.name": "core",
        "intervention.name": "remove",
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """model × ratio (0, 0.05, 0.2), one seed; each job with ratio > 0 saved its mask; the
    parent summarized with `tracking.baseline={ratio:0}` (the table it returns)."""
    tracker = Tracker(resolve_uri(None, tmp_path_factory.mktemp("store")), "across_models")
    parent = tracker.start_run("sweep", tags={"regionbench.sweep": "true"})
    for (model, ratio), value in PPL.items():
        child = tracker.start_run(f"model.name={model} ratio={ratio}", parent_run_id=parent)
        tracker.log_params(child, _params(model, ratio))
        ppl = BASE_PPL[model] * value
        tracker.log_metrics(child, {"ppl_ratio/mean": value, "ppl/mean": ppl})
        if (model, ratio) in SELECTED:
            tracker.log_file(child, _region(model, ratio).save, "region.safetensors")
        tracker.end_run(child)
    table = summarize_sweep(tracker, parent, tracker.children(parent), {"ratio": 0}, ["seed"])
    return tracker, parent, table


def _artifact(tracker: Tracker, run_id: str, name: str, where: Path) -> str:
    return Path(tracker.client.download_artifacts(run_id, name, str(where))).read_text()


def _jaccard(a: dict, b: dict) -> float:
    flat_a = {(k, i) for k, idx in a.items() for i in idx}
    flat_b = {(k, i) for k, idx in b.items() for i in idx}
    return len(flat_a & flat_b) / len(flat_a | flat_b)


def test_overlap_compares_each_models_regions_only_among_themselves(sweep, tmp_path):
    tracker, parent, _ = sweep
    arts = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"region_overlap.csv", "region_overlap.md", "region_overlap.png"} <= arts

    rows = list(
        csv.DictReader(io.StringIO(_artifact(tracker, parent, "region_overlap.csv", tmp_path)))
    )
    assert len(rows) == 6  # 4 regions: every pair once
    model = {"tiny-a": "/models/tiny-a", "tiny-b": "/models/tiny-b"}
    for row in rows:
        (ma, ra), (mb, rb) = (_who(row[side]) for side in ("a", "b"))
        if ma == mb:
            want = _jaccard(SELECTED[model[ma], ra], SELECTED[model[mb], rb])
            assert float(row["jaccard"]) == pytest.approx(want), row
            assert row["not_compared"] == ""
        else:  # even where the masks match position for position: other weights
            assert (row["jaccard"], row["overlap_coefficient"]) == ("—", "—"), row
            assert row["not_compared"] == "different models"
    assert {tuple(sorted((_who(r["a"])[0], _who(r["b"])[0]))) for r in rows} == {
        ("tiny-a", "tiny-a"),
        ("tiny-a", "tiny-b"),
        ("tiny-b", "tiny-b"),
    }

    table = _artifact(tracker, parent, "region_overlap.md", tmp_path).splitlines()
    assert "not compared, regions of different models" in table[0]
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in table[4:]]
    names = [cells[0] for cells in body]
    for i, cells in enumerate(body):
        for j, cell in enumerate(cells[1:]):
            same = _who(names[i])[0] == _who(names[j])[0]
            assert (cell == "—") == (not same), (names[i], names[j], cell)
    assert [cells[1 + i] for i, cells in enumerate(body)] == ["1.000"] * 4


def _who(label: str) -> tuple[str, str]:
    """(model, ratio) of a region from its condition's name, "tiny-a taylor core 5%": in a sweep
    across models the entries go by condition, the model's short name first, never by the run
    names (the overrides, with every folder written out)."""
    model, *_, size = label.split()
    return model, f"{float(size.rstrip('%')) / 100:g}"


def test_the_parent_is_summarized_and_names_the_models(sweep, tmp_path, monkeypatch):
    tracker, parent, table = sweep
    runs = tracker.children(parent)
    assert "Removing regions of tiny-a and tiny-b" in table
    conditions = [
        r["condition"]
        for r in csv.DictReader(
            io.StringIO(_artifact(tracker, parent, "sweep_comparison.csv", tmp_path))
        )
    ]
    assert conditions == [
        "tiny-a unmodified",
        "tiny-b unmodified",
        "tiny-a taylor core 5%",
        "tiny-a taylor core 20%",
        "tiny-b taylor core 5%",
        "tiny-b taylor core 20%",
    ]
    # the ratio axis: one unmodified point per model, one line per model
    from regionbench.report import plots

    drawn = {}
    lines = plots.condition_lines
    monkeypatch.setattr(
        plots, "condition_lines", lambda s, *a, **k: drawn.update(s) or lines(s, *a, **k)
    )
    paths = report_sweep.sweep_plots(runs, swept_params(runs), tmp_path)
    assert "ppl_ratio_mean_vs_ratio.png" in {p.name for p in paths}
    assert {k: [x for x, *_ in v] for k, v in drawn.items()} == {
        "tiny-a unmodified": [0.0],
        "tiny-b unmodified": [0.0],
        "tiny-a taylor core": [0.05, 0.2],
        "tiny-b taylor core": [0.05, 0.2],
    }


def test_each_model_is_paired_with_its_own_baseline(sweep):
    """ppl/mean over the baseline: 1.5 and 3 for tiny-a (its 100), 1.25 and 2 for tiny-b (its
    40); over the other model's baseline the numbers would be 0.6 / 3.75 and the like."""
    tracker, parent, _ = sweep
    runs = tracker.children(parent)
    params = swept_params(runs)
    rows = paired_table(runs, {"ratio": 0}, ["seed"], params, ["ppl/mean"])
    got = {(r["model.name"], r["ratio"]): r["ppl/mean / base"] for r in rows}
    for (model, ratio), value in PPL.items():
        assert float(got[model, ratio]) == pytest.approx(value), (model, ratio)
    # only tiny-a has an unmodified run: tiny-b has no baseline, never tiny-a's
    without = [
        r
        for r in runs
        if (r.data.params["model.name"], r.data.params["ratio"]) != ("/models/tiny-b", "0.0")
    ]
    rows = paired_table(without, {"ratio": 0}, ["seed"], params, ["ppl/mean"])
    got = {(r["model.name"], r["ratio"]): r["ppl/mean / base"] for r in rows}
    assert got["/models/tiny-b", "0.05"] == got["/models/tiny-b", "0.2"] == "n/a"
    assert float(got["/models/tiny-a", "0.2"]) == pytest.approx(3.0)

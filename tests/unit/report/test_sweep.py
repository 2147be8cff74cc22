"""The parent run's figures, built from run records shaped like MLflow's."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from regionbench.report import sweep as sweep_figures


def _run(name: str, metrics: dict[str, float], params: dict[str, str] | None = None):
    return SimpleNamespace(
        info=SimpleNamespace(run_name=name, run_id=name, status="FINISHED"),
        data=SimpleNamespace(metrics=metrics, params=params or {}),
    )


def test_languages_follow_the_order_the_jobs_name_them():
    langs = ["arab", "cyrl", "deva", "grek", "hang", "latn"]
    jobs = ["region.lang=latn", "region.lang=cyrl", "region.lang=grek seed=0"]
    assert sweep_figures.language_order(langs, jobs) == [
        "latn",
        "cyrl",
        "grek",
        "arab",
        "deva",
        "hang",
    ]
    # jobs that name no language keep the alphabetical order
    assert sweep_figures.language_order(langs, ["ratio=0.01", "ratio=0.05"]) == langs


def test_monolingual_sweep_gets_a_heatmap_and_bars(tmp_path):
    langs = ["latn", "cyrl"]
    runs = [
        _run(
            f"region.lang={own}",
            {f"ppl_ratio/{lang}": (1.1 if lang == own else 1.01) for lang in langs}
            | {"ppl_ratio/mean": 1.05},
            {"region.lang": own},
        )
        for own in langs
    ]
    paths = sweep_figures.sweep_plots(runs, ["region.lang"], tmp_path)
    assert sorted(p.name for p in paths) == ["ppl_ratio_by_language.png", "ppl_ratio_heatmap.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def _params(metric="taylor", region="core", ratio="0.05", seed="0", **kw) -> dict[str, str]:
    return {
        "metric.name": metric,
        "region.name": region,
        "ratio": ratio,
        "seed": seed,
        "model.name": "/cache/models/sandbox-m",
        "intervention.name": "remove",
        "region.lang": "latn",
        "intervention.target_langs": "['armn']",
    } | kw


def test_conditions_are_named_in_words():
    keys = ["metric.name", "region.name", "ratio"]
    describe = sweep_figures.describe
    assert describe(_params(), keys) == "taylor core 5%"
    assert describe(_params(metric="random", ratio="0.005"), keys) == "random core 0.5%"
    assert describe(_params(region="monolingual"), keys) == "taylor monolingual latn 5%"
    assert describe(_params(ratio="0.0"), keys) == "unmodified"
    frozen = _params(ratio="0.01", **{"intervention.name": "freeze"})
    assert describe(frozen, keys) == "taylor core 1% frozen"
    assert describe(frozen | {"ratio": "0"}, keys) == "nothing frozen"
    sampled = _params(**{"importance.samples": "64"})
    assert (
        describe(sampled, [*keys, "importance.samples"]) == "taylor core 5% importance.samples=64"
    )
    assert describe(_params(), keys, ratio=False) == "taylor core"
    # a region preset goes by its name; what it sets, and values not set, are not repeated
    preset = _params(region="dimension", **{"choice.region": "top-dims", "region.top_dims": "4"})
    swept = ["region.name", "region.top_dims", "region.random_dims", "intervention.factor"]
    assert describe(preset | {"intervention.factor": "2.0"}, swept) == "top-dims ×2.0"
    core = _params(**{"region.top_dims": "None", "intervention.factor": "0.0"})
    assert describe(core, swept) == "taylor core 5% ×0.0"
    # two conditions that read the same are told apart by what differs
    groups = {
        ("taylor", "0.0"): [_run("a", {}, _params(ratio="0.0"))],
        ("random", "0.0"): [_run("b", {}, _params(metric="random", ratio="0.0"))],
        ("random", "0.05"): [_run("c", {}, _params(metric="random"))],
    }
    assert list(sweep_figures.labels(groups, ["metric.name", "ratio"]).values()) == [
        "unmodified (metric.name=taylor)",
        "unmodified (metric.name=random)",
        "random core 5%",
    ]


def test_titles_say_what_was_done_to_which_model():
    runs = [_run("a", {}, _params()), _run("b", {}, _params(metric="random"))]
    assert sweep_figures.what_was_done(runs) == "Removing regions of sandbox-m (5% of each matrix)"
    runs[1].data.params["ratio"] = "0.01"
    assert sweep_figures.what_was_done(runs) == "Removing regions of sandbox-m"
    mono = [_run(g, {}, _params(region="monolingual", **{"region.lang": g})) for g in "ab"]
    assert sweep_figures.what_was_done(mono) == (
        "Removing regions of sandbox-m (from the top 5% of each matrix)"  # smaller than 5%
    )
    frozen = [_run("a", {}, _params(**{"intervention.name": "freeze"}))]
    assert sweep_figures.what_was_done(frozen) == (
        "Further training sandbox-m on armn with weights frozen (5% of each matrix)"
    )


def test_spread_is_the_mean_sample_sd_and_t_interval():
    from scipy import stats

    from regionbench.report.plots import spread

    values = [1.2, 1.5, 1.9, float("nan"), None]
    s = spread(values)
    mean = (1.2 + 1.5 + 1.9) / 3
    sd = (((1.2 - mean) ** 2 + (1.5 - mean) ** 2 + (1.9 - mean) ** 2) / 2) ** 0.5
    half = stats.t.ppf(0.975, 2) * sd / 3**0.5
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (s.lo, s.hi) == (pytest.approx(mean - half), pytest.approx(mean + half))
    one = spread([2.0])
    assert (one.n, one.mean) == (1, 2.0) and math.isnan(one.sd) and math.isnan(one.lo)
    assert spread([]).n == 0


def test_seeded_sweep_gets_its_figures_with_the_seeds_averaged(tmp_path, monkeypatch):
    from scipy import stats

    from regionbench.report import plots

    runs, history = [], {}
    for metric in ("taylor", "random"):
        for ratio in ("0.01", "0.05"):
            for seed in ("0", "1"):
                f = float(ratio) * (10 if metric == "taylor" else 1) * (1 + int(seed) / 10)
                metrics = {"ppl_ratio/latn": 1 + f, "ppl_ratio/cyrl": 1 + 2 * f}
                metrics |= {"ppl_ratio/mean": 1 + 1.5 * f, "forget/gmean": 1 + 3 * f}
                params = _params(metric, ratio=ratio, seed=seed, **{"intervention.name": "freeze"})
                run = _run(f"{metric} {ratio} {seed}", metrics, params)
                history[run.info.run_id] = [(0, 1.0), (2, 1 + f), (4, 1 + 3 * f)]
                runs.append(run)
    drawn = {}
    points = plots.condition_points
    monkeypatch.setattr(
        plots, "condition_points", lambda c, s, *a, **k: drawn.update(s) or points(c, s, *a, **k)
    )
    paths = sweep_figures.sweep_plots(
        runs,
        ["metric.name", "ratio", "seed"],
        tmp_path,
        history=lambda run_id, metric: history[run_id],
    )
    assert sorted(p.name for p in paths) == [
        "forget_gmean_vs_ratio.png",
        "forgetting_by_condition.png",
        "ppl_ratio_by_language.png",
        "ppl_ratio_heatmap.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    # one point per condition and language: the mean of its two seeds, with their t interval
    assert list(drawn) == [
        "taylor core 1% frozen",
        "taylor core 5% frozen",
        "random core 1% frozen",
        "random core 5% frozen",
    ]
    seeds = [1 + 0.5, 1 + 0.5 * 1.1]  # taylor 5%, latn: 1 + 0.05 * 10 * (1 + seed / 10)
    mean, sd = sum(seeds) / 2, abs(seeds[1] - seeds[0]) / 2**0.5
    half = stats.t.ppf(0.975, 1) * sd / 2**0.5
    latn = drawn["taylor core 5% frozen"][1]  # languages in alphabetical order: cyrl, latn
    assert latn == pytest.approx((mean, mean - half, mean + half))


def test_plot_inputs_are_checked(tmp_path):
    from regionbench.report.plots import condition_points

    with pytest.raises(ValueError, match="'a' has 1 values for 2 categories"):
        condition_points(
            ["x", "y"], [("a", [(1.0, 1.0, 1.0)])], tmp_path / "p.png", title="t", ylabel="y"
        )


def test_single_runs_draw_their_document_interval_even_when_it_misses_the_value(tmp_path):
    """One run per condition: the bars are its bootstrap interval over the documents; the
    unmodified model's is 1 give or take rounding, which once made matplotlib refuse the plot."""
    runs = [
        _run(
            "ratio=0",
            {"ppl_ratio/latn": 1.0, "ppl_ratio_lo/latn": 1 + 1e-12, "ppl_ratio_hi/latn": 1.0},
            _params(ratio="0"),
        ),
        _run(
            "ratio=0.05",
            {"ppl_ratio/latn": 1.2, "ppl_ratio_lo/latn": 1.1, "ppl_ratio_hi/latn": 1.3},
            _params(),
        ),
    ]
    names = [p.name for p in sweep_figures.sweep_plots(runs, ["ratio"], tmp_path)]
    assert names == ["ppl_ratio_by_language.png", "ppl_ratio_heatmap.png"]


def test_heatmap_marks_the_cells_whose_interval_excludes_one(tmp_path, monkeypatch):
    """A cell of ppl_ratio_heatmap.png whose 95% interval (one run: its bootstrap interval over
    the documents; several seeds: their t interval) lies wholly above or below 1 reads `1.2*`,
    in bold, framed; the others as before; the figure's note says what the mark means."""
    from scipy import stats

    from regionbench.report import plots

    docs = {  # (value, lo, hi) per language, one run each
        "ratio=0.05": {"latn": (1.2, 1.1, 1.3), "cyrl": (1.01, 0.99, 1.03)},
        "ratio=0.2": {"latn": (0.9, 0.85, 0.95), "cyrl": (1.5, 1.0, 2.0)},
    }
    runs = [
        _run(
            name,
            {
                f"ppl_ratio{s}/{lang}": v
                for lang, t in per.items()
                for s, v in zip(("", "_lo", "_hi"), t, strict=True)
            },
            _params(ratio=name.split("=")[1]),
        )
        for name, per in docs.items()
    ]
    seeded = [1.3, 1.31]  # random core 5%: two seeds, a narrow t interval above 1 for latn
    for seed, v in enumerate(seeded):
        metrics = {"ppl_ratio/latn": v, "ppl_ratio/cyrl": 1 + (-1) ** seed * 0.2}
        runs.append(_run(f"random {seed}", metrics, _params("random", seed=str(seed))))
    figures = {}
    save = plots.save_figure
    monkeypatch.setattr(
        plots, "save_figure", lambda fig, path: figures.update({path.name: fig}) or save(fig, path)
    )
    sweep_figures.sweep_plots(runs, ["metric.name", "ratio", "seed"], tmp_path)
    fig = figures["ppl_ratio_heatmap.png"]
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows == ["taylor core 5%", "taylor core 20%", "random core 5%"] and cols == [
        "cyrl",
        "latn",
    ]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    mean = sum(seeded) / 2
    half = stats.t.ppf(0.975, 1) * abs(seeded[1] - seeded[0]) / 2**0.5 / 2**0.5
    assert mean - half > 1  # the seeded latn cell: its interval excludes 1 too
    want = {  # (row, col): (text, marked)
        (0, 0): ("1.01", False),
        (0, 1): ("1.2*", True),
        (1, 0): ("1.5", False),
        (1, 1): ("0.9*", True),
        (2, 0): ("1", False),  # seeds at 1.2 and 0.8: the interval spans 1
        (2, 1): (f"{mean:.3g}*", True),
    }
    for at, (text, marked) in want.items():
        assert cells[at].get_text() == text, at
        assert (cells[at].get_fontweight() == "bold") is marked, at
    frames = {(round(p.get_y() + 0.46), round(p.get_x() + 0.46)) for p in ax.patches}
    assert frames == {at for at, (_, marked) in want.items() if marked}
    words = " ".join(" ".join(t.get_text() for t in [*fig.texts, ax.title]).split())
    assert "* (framed): its 95% interval excludes 1" in words

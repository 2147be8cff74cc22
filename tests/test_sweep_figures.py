"""The parent run's figures, built from run records shaped like MLflow's."""

from __future__ import annotations

from types import SimpleNamespace

from regionbench import sweep_figures


def _run(name: str, metrics: dict[str, float], params: dict[str, str] | None = None):
    return SimpleNamespace(
        info=SimpleNamespace(run_name=name, status="FINISHED"),
        data=SimpleNamespace(metrics=metrics, params=params or {}),
    )


def test_languages_follow_the_order_the_jobs_name_them():
    langs = ["arab", "cyrl", "deva", "grek", "hang", "latn"]
    jobs = ["region.lang=latn", "region.lang=cyrl", "region.lang=grek seed=0"]
    assert sweep_figures._language_order(langs, jobs) == [
        "latn",
        "cyrl",
        "grek",
        "arab",
        "deva",
        "hang",
    ]
    # jobs that name no language keep the alphabetical order
    assert sweep_figures._language_order(langs, ["ratio=0.01", "ratio=0.05"]) == langs


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

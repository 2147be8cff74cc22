"""experiments/stability/stability.py: the split of windows into halves and the agreement summary,
on inputs whose answers are known by hand."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO

from regionbench.testing import tiny_llama

SCRIPT = REPO / "experiments" / "stability" / "stability.py"
_spec = importlib.util.spec_from_file_location("stability", SCRIPT)
stability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stability)


def _indexed_windows(count: int, langs=("aa", "bb")) -> dict[str, torch.Tensor]:
    # Row i holds the value i, so a window's identity can be read from its contents.
    return {lang: torch.arange(count).unsqueeze(1).repeat(1, 3) for lang in langs}


def _ids(windows: torch.Tensor) -> list[int]:
    return windows[:, 0].tolist()


def test_split_halves_disjoint_and_nested():
    windows = _indexed_windows(8)
    halves = {n: stability.split_halves(windows, n, n_max=4) for n in (1, 2, 4)}
    for n, (a, b) in halves.items():
        for lang in windows:
            assert _ids(a[lang]) == list(range(n))
            assert _ids(b[lang]) == list(range(4, 4 + n))
            assert not set(_ids(a[lang])) & set(_ids(b[lang]))
    for small, big in ((1, 2), (2, 4)):
        for side in (0, 1):
            for lang in windows:
                assert torch.equal(halves[big][side][lang][:small], halves[small][side][lang])


def test_split_halves_refuses_too_few_windows_or_a_bad_n():
    with pytest.raises(ValueError, match="need 2 \\* n_max = 8"):
        stability.split_halves(_indexed_windows(7), 2, n_max=4)
    with pytest.raises(ValueError, match="must be in"):
        stability.split_halves(_indexed_windows(8), 5, n_max=4)


def _scores(values: torch.Tensor, langs=("aa", "bb")) -> dict[str, dict[str, torch.Tensor]]:
    # Two matrices of 100 entries with the same ranking in every language.
    return {
        lang: {"m.0.weight": values.view(10, 10).clone(), "m.1.weight": values.view(4, 25) * 2}
        for lang in langs
    }


def test_agreement_of_identical_scores_is_one():
    values = torch.randperm(100).float()
    summary = stability.agreement_summary(_scores(values), _scores(values))
    assert summary == {
        "core_0.01": 1.0,
        "core_0.05": 1.0,
        "lang_min": 1.0,
        "lang_median": 1.0,
        "lang_max": 1.0,
        "spearman_median": pytest.approx(1.0),
        "spearman_min": pytest.approx(1.0),
    }


def test_agreement_of_reversed_scores():
    # B ranks every entry in the opposite order: the top 1% and 5% of one are the bottom of the
    # other (disjoint, Jaccard 0) and the rank correlation is -1.
    values = torch.randperm(100).float()
    summary = stability.agreement_summary(_scores(values), _scores(99 - values))
    assert summary["core_0.01"] == summary["core_0.05"] == 0.0
    assert summary["lang_min"] == summary["lang_max"] == 0.0
    assert summary["spearman_median"] == pytest.approx(-1.0)


def test_agreement_of_two_swapped_pairs():
    # A = 0..99; B swaps the values of entries 93<->98 and 94<->99. Top 5 (k = 5 of 100): A has
    # entries {95..99}, B {93..97}: 3 shared of 7, Jaccard 3/7. Top 1: entry 99 vs 94, Jaccard 0.
    # Spearman from its definition: 1 - 6 sum(d^2) / (n (n^2 - 1)), d = +-5 for four entries.
    a = torch.arange(100).float()
    b = a.clone()
    b[[93, 94, 98, 99]] = a[[98, 99, 93, 94]]
    scores_a = {"aa": {"w": a}, "bb": {"w": a * 3}}
    scores_b = {"aa": {"w": b}, "bb": {"w": b * 3}}
    summary = stability.agreement_summary(scores_a, scores_b)
    assert summary["core_0.05"] == pytest.approx(3 / 7)
    assert summary["core_0.01"] == 0.0
    assert summary["lang_min"] == summary["lang_max"] == pytest.approx(3 / 7)
    assert summary["spearman_median"] == pytest.approx(1 - 6 * 4 * 25 / (100 * (100**2 - 1)))


def test_agreement_refuses_different_languages():
    values = torch.arange(100).float()
    with pytest.raises(ValueError, match="different languages"):
        stability.agreement_summary(_scores(values, ("aa",)), _scores(values, ("bb",)))


def test_first_reaching_and_chance():
    rows = [{"n": 8, "x": 0.5}, {"n": 32, "x": 0.9}, {"n": 16, "x": 0.85}]
    assert stability.first_reaching(rows, "x", 0.8) == 16
    assert stability.first_reaching(rows, "x", 0.95) is None
    assert stability.chance_jaccard(0.05) == pytest.approx(0.05 / 1.95)


def test_run_grid_on_a_tiny_model_with_identical_pools(tmp_path):
    # Pool B repeats pool A window for window: the two halves score the same text, so every
    # agreement is exactly 1 whatever n; the grid runs n in ascending order.
    torch.manual_seed(0)
    pool = torch.randint(3, 64, (4, 8))
    windows = {lang: torch.cat([pool, pool]) for lang in ("aa", "bb")}
    rows, stopped = stability.run_grid(
        tiny_llama(), windows, [4, 2], batch_size=2, log=lambda msg: None
    )
    assert stopped is None
    assert [r["n"] for r in rows] == [2, 4]
    for row in rows:
        assert row["core_0.01"] == row["core_0.05"] == row["lang_min"] == 1.0
        assert row["spearman_min"] == pytest.approx(1.0)
    table = stability.markdown_table(rows)
    assert table.count("\n") == 3 and "| 4 | 1.000 | 1.000 |" in table
    path = stability.plot(rows, tmp_path / "s.png", threshold=0.8, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_run_grid_stops_before_an_n_over_budget():
    torch.manual_seed(0)
    windows = {"aa": torch.randint(3, 64, (8, 8))}
    rows, stopped = stability.run_grid(
        tiny_llama(), windows, [1, 2, 4], budget_s=0.0, log=lambda msg: None
    )
    assert [r["n"] for r in rows] == [1]
    assert stopped.startswith("stopped before n=2")


def test_command_line_on_the_test_sandbox(sandbox_test_dir, tmp_path, capsys):
    # The script's own entry point end to end: packs 2 * max(n) windows per sandbox language,
    # prints the table, the chance levels and the n verdict, and writes the plot.
    plot_path = tmp_path / "curve.png"
    stability.main(
        ["--model", "sandbox-test", "--ns", "4,2", "--threshold", "1.01", "--plot", str(plot_path)]
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["2", "4"]
    for row in rows:
        jaccards = [float(cell) for cell in row.split("|")[2:4]]
        assert all(0 <= j <= 1 for j in jaccards)
    assert "smallest n with core 5% Jaccard >= 1.01: not reached up to n=4" in out
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_command_line_refuses_bad_ns():
    with pytest.raises(SystemExit):
        stability.main(["--ns", "0,8"])

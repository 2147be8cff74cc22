"""The MLflow UI as a researcher meets it after a sweep, in a real (headless) browser: the address
`make ui` prints shows the sweep's jobs and the `ppl_ratio/mean` column without a click.

Runs `benchmarks/ui_check.py --sweep`: a debug sweep, the README's `mlflow ui` command, and
Playwright driving the system's Chromium (nothing is downloaded; skipped where either is
missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_ui_lands_on_the_sweeps_runs_with_the_comparison_columns(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="Playwright (pip install playwright)")
    if shutil.which("chromium") is None:
        pytest.skip("no chromium on the PATH (Debian: apt-get install chromium)")
    out = tmp_path / "shots"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ui_check.py"), "--sweep", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   ppl_ratio/mean column on screen" in lines
    # metric=taylor,random seed=0,1: four jobs, three runs (taylor's seed 1 reuses its seed 0)
    assert "ok   3 of 3 jobs of the sweep on screen" in lines
    assert "ok   run names shown in full" in lines
    assert "ok   parent run's description on its page" in lines
    assert "ok   no seed column and no averaged group rows" in lines
    assert any(ln.startswith("ok   interval columns beside ppl_ratio/mean") for ln in lines)
    # "ok   33 values in 11 columns at 4 significant digits, uncut"
    assert any(
        ln.startswith("ok ") and "columns at 4 significant digits, uncut" in ln for ln in lines
    )
    assert any(ln.startswith("ok ") and "per-language columns drawn" in ln for ln in lines)
    assert "ok   a job's description on its page" in lines
    assert "ok   sweep_comparison.json shown as a table" in lines
    shots = [
        "experiment_default.png",
        "job_run.png",
        "parent_note_expanded.png",
        "parent_run.png",
        "parent_table.png",
        "runs_table.png",
        "runs_table_languages.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == shots
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in shots)

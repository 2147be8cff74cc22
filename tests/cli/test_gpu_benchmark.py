"""`benchmarks/gpu.py --device cpu --tiny`: the GPU benchmark's every row runs at tiny shapes on
CPU (the same code a GPU runs at LLaMA-7B shape), prints one table and writes it as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

ROWS = [
    "importance",
    "importance TFLOP/s",
    "peak memory @ batch 2",
    "peak memory @ batch 4",
    "perplexity",
    "freeze step",
    "selection",
    "torchrun world 1",
    "all-reduce host accs",
]


def test_the_gpu_benchmark_runs_on_cpu_at_tiny_shapes(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny"]
        + ["--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    assert table.splitlines()[1].split()[:2] == ["measure", "value"]  # one table, header first
    found = json.loads(out.read_text())
    rows = {r["measure"]: r for r in found["rows"]}
    assert list(rows) == ROWS and all(name in table for name in ROWS)
    for name in ("importance", "perplexity", "torchrun world 1", "all-reduce host accs"):
        assert rows[name]["value"] > 0 and rows[name]["ratio"] > 0, rows[name]
    for batch in (2, 4):  # measured against the preflight's estimate
        assert 0.5 < rows[f"peak memory @ batch {batch}"]["ratio"] < 2
    assert "frozen bit-identical" in rows["freeze step"]["versus"]
    assert rows["freeze step"]["value"] > 0
    assert "masks identical: True" in rows["selection"]["versus"]
    assert rows["torchrun world 1"]["versus"].startswith("gloo")

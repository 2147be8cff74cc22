"""examples/quickstart.ipynb runs from top to bottom on sandbox-test (CI executes it) and shows
what it says: a ratio per language, the region's entries changed while it was removed, and the
model back to its exact perplexity after (sandbox-test is too little trained for the ratios to
mean anything: the notebook says so)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs(cache_dir, sandbox_test_dir, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the kernel inherits these: the test cache (sandbox-test is built there) and this checkout
    monkeypatch.setenv("REGIONBENCH_CACHE", str(cache_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    ratios = {
        m[0]: float(m[1]) for m in re.findall(r"^(\w+): perplexity .* \(x([\d.]+)\)$", text, re.M)
    }
    from regionbench import sandbox

    assert set(ratios) == set(sandbox.PRETRAIN_LANGS), text
    assert all(0 < r < 100 for r in ratios.values()), ratios
    assert "restored: True" in text
    changed = int(re.search(r"^(\d+) entries changed$", text, re.M)[1])
    selected = int(re.search(r"^(\d+) entries in the region$", text, re.M)[1])
    assert 0 < changed <= selected
    # the figure was drawn
    assert any(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )

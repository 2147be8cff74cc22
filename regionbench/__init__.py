"""regionbench: find functional regions in language-model parameters, remove, perturb or freeze
them, and measure what each language loses.  See README.md; `python -m regionbench --help`.

The notebook API (the same code the Hydra app runs):

    import regionbench as rb
    model, tok = rb.load_model("sandbox-m")
    texts = rb.load_texts("sandbox", split="importance")
    scores = rb.importance(model, tok, texts, metric="taylor", samples=64)
    region = rb.select(scores, ratio=0.01, region="core")
    with rb.intervene(model, region, "remove") as applied:
        print(rb.perplexity(model, tok, rb.load_texts("sandbox", split="eval")))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so `import regionbench` (and `--help`) stays fast and torch-free. A name
# here that is also a subpackage's (`importance`) is bound after that subpackage is imported:
# Python sets the attribute only when it first imports a submodule, so the API name stays.
_API = {
    "load_model": ("regionbench.models.loading", "load_model"),
    "load_texts": ("regionbench.data.sources", "load_texts"),
    "importance": ("regionbench.importance.compute", "compute_importance"),
    "select": ("regionbench.regions.kinds", "select"),
    "select_ratios": ("regionbench.regions.kinds", "select_ratios"),
    "Region": ("regionbench.regions.region", "Region"),
    "intervene": ("regionbench.interventions.kinds", "intervene"),
    "perplexity": ("regionbench.evaluation.perplexity", "perplexity"),
    "train_frozen": ("regionbench.interventions.training", "train_frozen"),
    "run_lm_eval": ("regionbench.evaluation.harness", "run_lm_eval"),
}
__all__ = ["__version__", *_API]


# The subpackage first, then its attribute dropped, so `rb.importance` resolves to the function.
importlib.import_module("regionbench.importance")
del globals()["importance"]


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'regionbench' has no attribute {name!r}")

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

# Imported on first use, so `import regionbench` (and `--help`) stays fast and torch-free. No name
# here may be a submodule's name: importing regionbench.<name> would replace the attribute.
_API = {
    "load_model": ("regionbench.models", "load_model"),
    "load_texts": ("regionbench.texts", "load_texts"),
    "importance": ("regionbench.scoring", "compute_importance"),
    "select": ("regionbench.regions", "select"),
    "Region": ("regionbench.regions", "Region"),
    "intervene": ("regionbench.interventions", "intervene"),
    "perplexity": ("regionbench.evaluation.perplexity", "perplexity"),
    "train_frozen": ("regionbench.training", "train_frozen"),
    "run_lm_eval": ("regionbench.evaluation.harness", "run_lm_eval"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'regionbench' has no attribute {name!r}")

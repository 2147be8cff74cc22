"""The notebook API (`import regionbench as rb`) as the README shows it, run twice like a
re-executed notebook cell, after every submodule has been imported."""

from __future__ import annotations

import importlib
import pkgutil

import torch

import regionbench as rb


def test_every_api_name_is_the_documented_object_after_all_submodules_are_imported():
    for info in pkgutil.walk_packages(rb.__path__, "regionbench."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in rb.__all__:
        if name == "__version__":
            continue
        obj = getattr(rb, name)
        assert callable(obj) and not isinstance(obj, type(rb)), f"rb.{name} is {obj!r}"
    assert rb.importance.__name__ == "compute_importance"


def test_readme_cell_runs_twice_with_the_same_result(sandbox_test_dir, cache_dir):
    def cell():
        model, tok = rb.load_model("sandbox-test", cache_dir=cache_dir, progress=False)
        texts = rb.load_texts("sandbox", split="importance", n_docs=40)
        scores = rb.importance(model, tok, texts, metric="taylor", samples=4, progress=False)
        region = rb.select(scores, ratio=0.05, region="core")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        eval_texts = rb.load_texts("sandbox", split="eval", langs=["latn", "grek"], n_docs=8)
        with rb.intervene(model, region, "remove") as applied:
            ppl = rb.perplexity(model, tok, eval_texts, progress=False)
        assert applied.changed > 0
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        return region, {lang: r.ppl for lang, r in ppl.items()}

    first, second = cell(), cell()
    assert first[1] == second[1]
    assert all(torch.equal(first[0].masks[n], second[0].masks[n]) for n in first[0].masks)
    assert first[0].numel > 0

"""Text per language for importance scoring, evaluation and further pre-training.

    texts = load_texts("sandbox", split="eval")                          # {lang: [doc, ...]}
    texts = load_texts("local", split="importance", path="texts/", langs=["en", "de"])
    texts = load_texts("wikipedia", split="eval", langs=["ar", "ko"], n_docs=500)

Every source returns the same shape, so the pipeline never knows where text came from.
"""

from __future__ import annotations

from regionbench.data.sources import (
    PAPER_EVAL_LANGS,
    PAPER_IMPORTANCE_LANGS,
    SOURCES,
    SPLITS,
    default_langs,
    load_texts,
)

__all__ = [
    "PAPER_EVAL_LANGS",
    "PAPER_IMPORTANCE_LANGS",
    "SOURCES",
    "SPLITS",
    "default_langs",
    "load_texts",
]

"""The sandbox: regionbench's own small world, so real results need no model hub.

    corpus     the parallel synthetic languages, every split (generate, stream)   no torch
    grammar    reading sentences back; the minimal pairs of the grammar task       no torch
    languages, lexicon, meaning   what the corpus is made of; identify(text): its language
    tokenizer, models   the sandbox tokenizer and LLaMA models, built on first use
    checkpoint          a build's checkpoints: an interrupted build resumes, same bytes
    training_text       what a model pre-trains on: the sandbox world, or the Bible (bible-s)
    python -m regionbench.sandbox build sandbox-m | info | sample           (the command line)

The names a run needs are here; the modules say which part of the world they are.
"""

from regionbench.sandbox.corpus import DEFAULT_DOCS, SPLITS, generate, stream
from regionbench.sandbox.grammar import PAIR_KINDS, minimal_pairs, readings
from regionbench.sandbox.languages import HELDOUT_LANGS, LANGUAGES, PRETRAIN_LANGS
from regionbench.sandbox.lexicon import identify

_MODELS = ("SANDBOX_MODELS", "ensure_sandbox_model", "is_complete", "read_metadata", "sandbox_path")


def __getattr__(name: str):
    # The model side imports torch: only when asked for, so the corpus stays torch-free.
    if name in _MODELS:
        from regionbench.sandbox import models

        return getattr(models, name)
    raise AttributeError(f"module 'regionbench.sandbox' has no attribute {name!r}")


__all__ = [
    "DEFAULT_DOCS",
    "HELDOUT_LANGS",
    "LANGUAGES",
    "PAIR_KINDS",
    "PRETRAIN_LANGS",
    "SANDBOX_MODELS",
    "SPLITS",
    "ensure_sandbox_model",
    "generate",
    "identify",
    "is_complete",
    "minimal_pairs",
    "read_metadata",
    "readings",
    "sandbox_path",
    "stream",
]

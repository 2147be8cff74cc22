"""The sandbox corpus: every split of the parallel synthetic languages, rendered (no torch).

    from regionbench.sandbox import corpus
    texts = corpus.generate("eval", n_docs=200)     # {lang: [doc, ...]}, doc i parallel across langs
    docs = corpus.stream("importance", "latn")      # the same documents, read lazily

Splits, each for one job and drawn from its own streams:
* "pretrain": what the sandbox models are pre-trained on. Until the further-training split was
  added it was called "train"; its streams kept that name, so its text is byte-identical and
  models built before stay valid.
* "train": further-training text (the freeze study's "new" text), disjoint from "pretrain", in
  every language, held-out ones included.
* "importance": the text importance scores are computed on.
* "eval": parallel evaluation documents (the same draws in every language, like FLORES).

`render_sentence` is the grammar's definition; `regionbench.sandbox.grammar` inverts it.
Print one sentence per language: `python -m regionbench.sandbox sample`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from regionbench.common.choices import check_choice
from regionbench.sandbox.languages import LANGUAGES, LanguageSpec, check_langs
from regionbench.sandbox.lexicon import Lexicon, adj_form, lexicon, noun_form, verb_words
from regionbench.sandbox.meaning import NounPhrase, Sentence, draw_document, rng_for

SPLITS = ("pretrain", "train", "importance", "eval")
DEFAULT_DOCS = {"pretrain": 3000, "train": 2000, "importance": 200, "eval": 200}
# Each split's stream name.  "pretrain" keeps the name its text was generated under when it was the
# "train" split, so that text (and every sandbox model built from it) is unchanged.
_STREAM_NAMES = {
    "pretrain": "train",
    "train": "further-train",
    "importance": "importance",
    "eval": "eval",
}


def documents(split: str, n_docs: int, seed: int = 0, lang: str | None = None):
    """The semantic draws behind `generate`: eval ignores `lang` (parallel), other splits don't."""
    name = _STREAM_NAMES[check_choice("sandbox split", split, SPLITS)]
    if split == "eval":
        return [draw_document(rng_for(name, seed, i)) for i in range(n_docs)]
    return [draw_document(rng_for(name, seed, lang, i)) for i in range(n_docs)]


# --- rendering -----------------------------------------------------------------------------------


def _np_words(
    spec: LanguageSpec,
    lex: Lexicon,
    np: NounPhrase,
    is_obj: bool = False,
    adj_side: str | None = None,
) -> list[str]:
    words = [noun_form(spec, lex, np, is_obj)]
    if np.adj is not None:
        adj = adj_form(spec, lex, np.adj, np.plural)
        words = [adj, *words] if (adj_side or spec.adj) == "pre" else [*words, adj]
    if np.definite and spec.article == "word":
        words = [lex.article, *words]
    if is_obj and spec.obj_case == "particle":
        words = [*words, lex.obj]
    return words


def render_sentence(
    sent: Sentence,
    lang: str,
    *,
    order: str | None = None,
    agree_plural: bool | None = None,
    adj_side: str | None = None,
    adj_role: str = "S",
) -> str:
    """Write one semantic draw in `lang`; the keyword overrides make ungrammatical variants.

    `order` reorders subject, verb and object; `agree_plural` gives the verb that number;
    `adj_side` ("pre" | "post") puts the adjective of the `adj_role` noun phrase ("S" subject,
    "O" object, "P" place) on that side of its noun.
    """
    spec, lex = LANGUAGES[lang], lexicon(lang)
    if adj_role not in ("S", "O", "P"):
        raise ValueError(f"adj_role {adj_role!r} is not one of S, O, P")
    side = {adj_role: adj_side}
    plural = sent.subj.plural if agree_plural is None else agree_plural
    parts = {
        "S": _np_words(spec, lex, sent.subj, adj_side=side.get("S")),
        "V": verb_words(spec, lex, sent.verb, sent.past, plural),
        "O": _np_words(spec, lex, sent.obj, is_obj=True, adj_side=side.get("O")),
    }
    words = [w for role in (order or spec.order) for w in parts[role]]
    if sent.place is not None:
        place = _np_words(spec, lex, sent.place, adj_side=side.get("P"))
        prep = lex.preps[sent.prep]
        pp = [prep, *place] if spec.adposition == "pre" else [*place, prep]
        if spec.order == "SOV" and order is None:
            # Verb-final languages put the adjunct between subject and object.
            words = parts["S"] + pp + parts["O"] + parts["V"]
        else:
            words += pp
    return " ".join(words) + spec.stop


def render_document(doc: Iterable[Sentence], lang: str) -> str:
    return " ".join(render_sentence(s, lang) for s in doc)


def generate(
    split: str, langs: Iterable[str] | None = None, n_docs: int | None = None, seed: int = 0
) -> dict[str, list[str]]:
    """`{lang: [document, ...]}` for one split (default languages: the pre-training ones).

    Eval documents are parallel (document i renders the same draws in every language); the other
    splits' documents are drawn independently per language, like real monolingual corpora.  See the
    module docstring for what each split is for.
    """
    check_choice("sandbox split", split, SPLITS)
    langs = check_langs(langs)
    n = DEFAULT_DOCS[split] if n_docs is None else n_docs
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n_docs {n_docs!r} is not a non-negative integer")
    if split == "eval":
        docs = documents(split, n, seed)
        return {lang: [render_document(d, lang) for d in docs] for lang in langs}
    return {
        lang: [render_document(d, lang) for d in documents(split, n, seed, lang)] for lang in langs
    }


def stream(split: str, lang: str, seed: int = 0) -> Iterator[str]:
    """An endless stream of one language's documents of one split: document i is
    `generate(split, [lang], n)[lang][i]` for every n > i (readers take as many as they need)."""
    name = _STREAM_NAMES[check_choice("sandbox split", split, SPLITS)]
    lang = check_langs([lang])[0]
    for i in itertools.count():
        parts = (name, seed, i) if split == "eval" else (name, seed, lang, i)
        yield render_document(draw_document(rng_for(*parts)), lang)

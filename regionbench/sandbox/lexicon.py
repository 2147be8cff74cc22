"""Each sandbox language's lexicon and morphology, generated from its letters by a seeded
syllable sampler (not typed in), with every surface form unambiguous.
"""

from __future__ import annotations

import functools
import random
import unicodedata
from dataclasses import dataclass, replace

from regionbench.common.choices import check_choice
from regionbench.sandbox.languages import LANGUAGES, LanguageSpec
from regionbench.sandbox.meaning import (
    N_ADJS,
    N_NOUNS,
    N_PREPS,
    N_VERBS,
    NounPhrase,
    rng_for,
)


@dataclass(frozen=True)
class Lexicon:
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjs: tuple[str, ...]
    preps: tuple[str, ...]
    plural: str  # noun/adjective plural affix
    agree: str  # verb suffix agreeing with a plural subject
    past: str  # past-tense affix or auxiliary word
    article: str  # definite article word or affix
    obj: str  # object case suffix or particle


def _finalize(spec: LanguageSpec, word: str) -> str:
    for letter, final in spec.finals:
        if word.endswith(letter):
            return word[: -len(letter)] + final
    return word


def _affix(spec: LanguageSpec, stem: str, affix: str, where: str) -> str:
    return affix + stem if where == "prefix" else stem + affix


def noun_form(spec: LanguageSpec, lex: Lexicon, np: NounPhrase, is_obj: bool = False) -> str:
    word = lex.nouns[np.noun]
    if np.plural:
        word = _affix(spec, word, lex.plural, spec.plural)
    if np.definite and spec.article in ("prefix", "suffix"):
        word = _affix(spec, word, lex.article, spec.article)
    if is_obj and spec.obj_case == "suffix":
        word += lex.obj
    return _finalize(spec, word)


def adj_form(spec: LanguageSpec, lex: Lexicon, adj: int, plural: bool) -> str:
    word = lex.adjs[adj]
    if plural and spec.adj_agree:
        word = _affix(spec, word, lex.plural, spec.plural)
    return _finalize(spec, word)


def verb_words(spec: LanguageSpec, lex: Lexicon, verb: int, past: bool, plural: bool) -> list[str]:
    word = lex.verbs[verb]
    if past and spec.tense in ("prefix", "suffix"):
        word = _affix(spec, word, lex.past, spec.tense)
    if plural:  # the verb agrees with its subject's number
        word += lex.agree
    word = _finalize(spec, word)
    if past and spec.tense == "particle":
        return [word, lex.past] if spec.order == "SOV" else [lex.past, word]
    return [word]


def _word(rng: random.Random, spec: LanguageSpec, n_syllables: int) -> str:
    syllables = [rng.choice(spec.open_syllables) for _ in range(n_syllables)]
    if spec.closed_syllables and rng.random() < 0.3:
        syllables[-1] = rng.choice(spec.closed_syllables)
    return "".join(syllables)


@functools.cache
def lexicon(lang: str) -> Lexicon:
    """The language's words, generated from its letters; every surface form is unambiguous."""
    spec = LANGUAGES[check_choice("sandbox language", lang, LANGUAGES)]
    rng = rng_for("lexicon", lang)
    # Function morphemes first: one open syllable each, all different.
    morphemes: list[str] = []
    while len(morphemes) < 5:
        m = rng.choice(spec.open_syllables)
        if m not in morphemes:
            morphemes.append(m)
    plural, agree, past, article, obj = morphemes
    lex = Lexicon((), (), (), (), plural, agree, past, article, obj)
    taken = {w for w in (past, article, obj) if w}

    def fresh(n: int, forms_of, short: int) -> tuple[str, ...]:
        # Frequent (low-rank) concepts get short words, as in natural languages.
        words: list[str] = []
        while len(words) < n:
            rank = len(words)
            stem = _word(rng, spec, 1 + (rank >= short) + (rng.random() < 0.3))
            forms = forms_of(stem)
            if taken.isdisjoint(forms) and len(forms) == len(set(forms)):
                taken.update(forms)
                words.append(stem)
        return tuple(words)

    # Each form list must be collision-free too (a plural must not read as a definite singular).
    def noun_forms(stem: str) -> list[str]:
        one = replace(lex, nouns=(stem,))
        marked_def = (False, True) if spec.article in ("prefix", "suffix") else (False,)
        marked_obj = (False, True) if spec.obj_case == "suffix" else (False,)
        return [
            noun_form(spec, one, NounPhrase(0, pl, df), ob)
            for pl in (False, True)
            for df in marked_def
            for ob in marked_obj
        ]

    def verb_forms(stem: str) -> list[str]:
        one = replace(lex, verbs=(stem,))
        marked_past = (False, True) if spec.tense in ("prefix", "suffix") else (False,)
        return [verb_words(spec, one, 0, pa, pl)[0] for pa in marked_past for pl in (False, True)]

    def adj_forms(stem: str) -> list[str]:
        one = replace(lex, adjs=(stem,))
        forms = [adj_form(spec, one, 0, pl) for pl in (False, True)]
        return forms if spec.adj_agree else forms[:1]

    preps = fresh(N_PREPS, lambda s: [_finalize(spec, s)], short=N_PREPS)
    nouns = fresh(N_NOUNS, noun_forms, short=12)
    verbs = fresh(N_VERBS, verb_forms, short=8)
    adjs = fresh(N_ADJS, adj_forms, short=6)
    return replace(
        lex, nouns=nouns, verbs=verbs, adjs=adjs, preps=tuple(_finalize(spec, p) for p in preps)
    )


def word_forms(lang: str) -> dict[str, tuple[str, int]]:
    """Every content-word surface form -> (category, concept id): reads a rendering back."""
    spec, lex = LANGUAGES[lang], lexicon(lang)
    forms: dict[str, tuple[str, int]] = {}
    for i in range(N_NOUNS):
        for pl in (False, True):
            for df in (False, True):
                for ob in (False, True):
                    forms[noun_form(spec, lex, NounPhrase(i, pl, df), ob)] = ("noun", i)
    for i in range(N_VERBS):
        for pa in (False, True):
            for pl in (False, True):
                for w in verb_words(spec, lex, i, pa, pl):
                    if w != lex.past:
                        forms[w] = ("verb", i)
    for i in range(N_ADJS):
        for pl in (False, True):
            forms[adj_form(spec, lex, i, pl)] = ("adj", i)
    for i, p in enumerate(lex.preps):
        forms[p] = ("prep", i)
    return forms


@functools.cache
def vocabulary(lang: str) -> frozenset[str]:
    """Every word a text of `lang` can contain: its content-word forms, its prepositions and its
    free-standing function words (an article, object or tense particle, where it has one)."""
    spec, lex = LANGUAGES[check_choice("sandbox language", lang, LANGUAGES)], lexicon(lang)
    free = {
        lex.article: spec.article == "word",
        lex.obj: spec.obj_case == "particle",
        lex.past: spec.tense == "particle",
    }
    return frozenset(word_forms(lang)) | {w for w, standalone in free.items() if standalone}


def words(text: str) -> list[str]:
    """The words of a sandbox text: its runs of letters and combining marks (Devanagari's vowel
    signs are marks), as the tokenizer splits them; punctuation, digits and terminators dropped."""
    kept = "".join(c if unicodedata.category(c)[0] in "LM" else " " for c in text)
    return kept.split()


def identify(text: str, min_share: float = 0.5) -> str:
    """The sandbox language `text` is written in: the one whose vocabulary holds the largest share
    of its words, if that share is at least `min_share`; else "und" (no words, or mostly words of
    no language: what a damaged model writes). Exact, since no two languages share a letter."""
    found = words(text)
    if not found:
        return "und"
    shares = {lang: sum(w in vocabulary(lang) for w in found) / len(found) for lang in LANGUAGES}
    best = max(shares, key=shares.__getitem__)
    return best if shares[best] >= min_share else "und"

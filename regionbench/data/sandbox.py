"""The sandbox world: a deterministic generator of parallel synthetic languages (no torch).

One shared semantic sampler draws sentences (Zipf-distributed concepts; subject, verb, object;
optional prepositional phrase; adjectives; number, definiteness, tense) and renders each draw in
languages that differ in script, lexicon, word order, adjective position and inflection.  The same
draw renders in every language, so the eval split is parallel like FLORES, and a model's loss on
one language can be compared with another's on the same content.

    from regionbench.data.sandbox import generate, minimal_pairs
    texts = generate("eval", n_docs=200)           # {lang: [doc, ...]}, doc i parallel across langs
    pairs = minimal_pairs("latn", 300)             # BLiMP-like grammar pairs, balanced kinds

Print one sentence per language: `python -m regionbench.sandbox sample`.

Everything is a pure function of (split, seed, document index): streams are seeded with strings
(Python's `random` hashes them with SHA-512, so no PYTHONHASHSEED dependence), one stream per
document, so `n_docs=100` is a prefix of `n_docs=200` and the splits never share a stream.
Words are generated from each script's letters by a seeded syllable sampler, not typed in.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import accumulate

from regionbench.choices import check_choice

# Bump when the generated text changes in any way: sandbox model folders include it, so a change
# here can never load a model trained on another world.
CORPUS_VERSION = 2
_NS = f"regionbench-sandbox-v{CORPUS_VERSION}"

SPLITS = ("train", "importance", "eval")
DEFAULT_DOCS = {"train": 2000, "importance": 200, "eval": 200}
PAIR_KINDS = ("agreement", "word_order", "adj_position")
ORDERS = ("SVO", "SOV", "VSO", "VOS", "OVS", "OSV")


@dataclass(frozen=True)
class LanguageSpec:
    """One synthetic language: its script and grammar switches (its words are generated)."""

    code: str
    script: str  # every letter's unicodedata name starts with this, e.g. "CYRILLIC"
    open_syllables: tuple[str, ...]  # syllables a word is built from...
    closed_syllables: tuple[str, ...]  # ...and the rarer ones that end in a consonant
    order: str  # "SVO" | "SOV" | "VSO"
    adj: str  # "pre" | "post": the adjective before or after its noun
    plural: str  # "suffix" | "prefix": how nouns (and agreeing adjectives) mark plural
    article: str  # "word" | "prefix" | "suffix" | "none": how definiteness is marked
    adj_agree: bool  # adjectives take the plural marker too
    obj_case: str  # "suffix" | "particle" | "none": how the object is marked
    tense: str  # "suffix" | "prefix" | "particle": how past tense is marked on the verb
    stop: str = "."  # sentence terminator
    finals: tuple[tuple[str, str], ...] = ()  # letter -> its word-final form (Greek σ, Hebrew)

    @property
    def adposition(self) -> str:
        # Typology's strongest correlation: verb-final languages have postpositions.
        return "post" if self.order == "SOV" else "pre"


def _cv(onsets: str, vowels: Iterable[str], codas: str) -> dict:
    vowels = tuple(vowels)
    return {
        "open_syllables": tuple(c + v for c in onsets for v in vowels),
        "closed_syllables": tuple(c + v + k for c in onsets for v in vowels for k in codas),
    }


def _hangul(onsets: Iterable[int], vowels: Iterable[int], codas: Iterable[int]) -> dict:
    # Hangul writes each syllable as one precomposed block: U+AC00 + (L*21 + V)*28 + T.
    def block(lead: int, vowel: int, tail: int = 0) -> str:
        return chr(0xAC00 + (lead * 21 + vowel) * 28 + tail)

    onsets, vowels, codas = tuple(onsets), tuple(vowels), tuple(codas)
    return {
        "open_syllables": tuple(block(c, v) for c in onsets for v in vowels),
        "closed_syllables": tuple(block(c, v, k) for c in onsets for v in vowels for k in codas),
    }


# Letter inventories are the only hand-written part; grammar switches vary independently so no
# two languages share a grammar.  Abjads (Arabic, Hebrew) write long vowels only, so their
# "vowel" may be empty; Devanagari attaches vowel signs (matras) to consonants.
LANGUAGES: dict[str, LanguageSpec] = {
    spec.code: spec
    for spec in (
        LanguageSpec(
            "latn", "LATIN", **_cv("bdfgklmnprstvz", "aeiou", "nrs"), order="SVO", adj="pre",
            plural="suffix", article="word", adj_agree=False, obj_case="none", tense="suffix"),
        LanguageSpec(
            "cyrl", "CYRILLIC", **_cv("бвгджзклмнпрстх", "аеиоуы", "лнр"), order="SOV",
            adj="pre", plural="suffix", article="none", adj_agree=True, obj_case="suffix",
            tense="suffix"),
        LanguageSpec(
            "grek", "GREEK", **_cv("βγδζθκλμνξπρστφχ", "αεηιοω", "νσ"), order="VSO", adj="post",
            plural="suffix", article="word", adj_agree=True, obj_case="none", tense="prefix",
            finals=(("σ", "ς"),)),
        LanguageSpec(
            "arab", "ARABIC", **_cv("بتثجدذرزسشصطعفقكلمنه", ("", "ا", "و", "ي"), "لمن"),
            order="VSO", adj="post", plural="suffix", article="prefix", adj_agree=False,
            obj_case="particle", tense="particle"),
        LanguageSpec(
            "hang", "HANGUL", **_hangul((0, 2, 3, 5, 6, 7, 9, 11, 12, 14, 15, 16, 17, 18),
                                        (0, 1, 4, 5, 8, 13, 18, 20), (4, 8, 16, 21)),
            order="SOV", adj="pre", plural="suffix", article="none", adj_agree=False,
            obj_case="particle", tense="suffix"),
        LanguageSpec(
            "deva", "DEVANAGARI",
            **_cv("कखगजटडतदनपबमयरलवसह", ("", "ा", "ि", "ी", "ु", "ू", "े", "ो"), "ं"),
            order="SVO", adj="post", plural="prefix", article="suffix", adj_agree=True,
            obj_case="suffix", tense="particle", stop="।"),
        # Held out: the sandbox models never see these (the freeze study's new languages).
        LanguageSpec(
            "armn", "ARMENIAN", **_cv("բգդզթլխկհմնշպռսվտրցք", "աեէըիոօ", "նր"), order="SOV",
            adj="pre", plural="suffix", article="suffix", adj_agree=False, obj_case="suffix",
            tense="prefix"),
        LanguageSpec(
            "geor", "GEORGIAN", **_cv("ბგდვზთკლმნპრსტფქღშჩცძწხჯ", "აეიოუ", "ლნრს"),
            order="SVO", adj="post", plural="prefix", article="none", adj_agree=True,
            obj_case="particle", tense="suffix"),
        LanguageSpec(
            "hebr", "HEBREW", **_cv("בגדהזחטכלמנסעפצקרשת", ("", "א", "ו", "י"), "מנ"),
            order="VSO", adj="post", plural="suffix", article="prefix", adj_agree=True,
            obj_case="particle", tense="prefix",
            finals=(("כ", "ך"), ("מ", "ם"), ("נ", "ן"), ("פ", "ף"), ("צ", "ץ"))),
    )
}
PRETRAIN_LANGS: tuple[str, ...] = ("latn", "cyrl", "grek", "arab", "hang", "deva")
HELDOUT_LANGS: tuple[str, ...] = ("armn", "geor", "hebr")

# --- semantics (shared by every language) --------------------------------------------------------

# Noun classes keep sentences sensible: agents act, things are acted on, places locate.
N_AGENTS, N_THINGS, N_PLACES = 30, 40, 15
N_NOUNS = N_AGENTS + N_THINGS + N_PLACES
N_VERBS, N_ADJS, N_PREPS = 30, 20, 5
_P_PLURAL, _P_DEFINITE, _P_ADJ, _P_PP, _P_PAST = 0.3, 0.5, 0.3, 0.4, 0.5
_P_TOPIC_SUBJ, _P_TOPIC_OBJ, _P_AGENT_OBJ = 0.4, 0.3, 0.25


def _zipf(n: int, s: float = 1.0) -> list[float]:
    return list(accumulate(1.0 / (rank + 1) ** s for rank in range(n)))


_ZIPF = {n: _zipf(n) for n in {N_AGENTS, N_THINGS, N_PLACES, N_VERBS, N_ADJS, N_PREPS}}


def _pick(rng: random.Random, n: int, offset: int = 0) -> int:
    return offset + rng.choices(range(n), cum_weights=_ZIPF[n])[0]


@dataclass(frozen=True)
class NounPhrase:
    noun: int  # 0..N_NOUNS-1: agents, then things, then places
    plural: bool
    definite: bool
    adj: int | None = None


@dataclass(frozen=True)
class Sentence:
    """One semantic draw; `render_sentence` writes it in any language."""

    subj: NounPhrase
    verb: int
    past: bool
    obj: NounPhrase
    prep: int | None = None
    place: NounPhrase | None = None


def _np(rng: random.Random, noun: int) -> NounPhrase:
    return NounPhrase(
        noun=noun, plural=rng.random() < _P_PLURAL, definite=rng.random() < _P_DEFINITE,
        adj=_pick(rng, N_ADJS) if rng.random() < _P_ADJ else None)


def draw_sentence(rng: random.Random, topic: tuple[int, int] | None = None) -> Sentence:
    """One sentence's meaning; `topic` (agent, thing) makes a document's sentences cohere."""
    subj = topic[0] if topic and rng.random() < _P_TOPIC_SUBJ else _pick(rng, N_AGENTS)
    if topic and rng.random() < _P_TOPIC_OBJ:
        obj = topic[1]
    elif rng.random() < _P_AGENT_OBJ:
        obj = _pick(rng, N_AGENTS)
    else:
        obj = _pick(rng, N_THINGS, N_AGENTS)
    sent = Sentence(subj=_np(rng, subj), verb=_pick(rng, N_VERBS), past=rng.random() < _P_PAST,
                    obj=_np(rng, obj))
    if rng.random() < _P_PP:
        sent = replace(sent, prep=_pick(rng, N_PREPS),
                       place=_np(rng, _pick(rng, N_PLACES, N_AGENTS + N_THINGS)))
    return sent


def draw_document(rng: random.Random) -> tuple[Sentence, ...]:
    """A paragraph: 3-6 sentences sharing a topic agent and thing."""
    topic = (_pick(rng, N_AGENTS), _pick(rng, N_THINGS, N_AGENTS))
    return tuple(draw_sentence(rng, topic) for _ in range(rng.randint(3, 6)))


def _stream(*parts: object) -> random.Random:
    return random.Random("/".join([_NS, *map(str, parts)]))


def documents(split: str, n_docs: int, seed: int = 0, lang: str | None = None):
    """The semantic draws behind `generate`: eval ignores `lang` (parallel), other splits don't."""
    check_choice("sandbox split", split, SPLITS)
    if split == "eval":
        return [draw_document(_stream(split, seed, i)) for i in range(n_docs)]
    return [draw_document(_stream(split, seed, lang, i)) for i in range(n_docs)]


# --- lexicon and morphology (one per language, generated) ---------------------------------------

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
    rng = _stream("lexicon", lang)
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
        return [noun_form(spec, one, NounPhrase(0, pl, df), ob)
                for pl in (False, True) for df in marked_def for ob in marked_obj]

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
    return replace(lex, nouns=nouns, verbs=verbs, adjs=adjs,
                   preps=tuple(_finalize(spec, p) for p in preps))


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


# --- rendering -----------------------------------------------------------------------------------

def _np_words(spec: LanguageSpec, lex: Lexicon, np: NounPhrase, is_obj: bool = False,
              adj_side: str | None = None) -> list[str]:
    words = [noun_form(spec, lex, np, is_obj)]
    if np.adj is not None:
        adj = adj_form(spec, lex, np.adj, np.plural)
        words = [adj, *words] if (adj_side or spec.adj) == "pre" else [*words, adj]
    if np.definite and spec.article == "word":
        words = [lex.article, *words]
    if is_obj and spec.obj_case == "particle":
        words = [*words, lex.obj]
    return words


def render_sentence(sent: Sentence, lang: str, *, order: str | None = None,
                    agree_plural: bool | None = None, adj_side: str | None = None) -> str:
    """Write one semantic draw in `lang`; the keyword overrides make ungrammatical variants."""
    spec, lex = LANGUAGES[lang], lexicon(lang)
    plural = sent.subj.plural if agree_plural is None else agree_plural
    parts = {
        "S": _np_words(spec, lex, sent.subj, adj_side=adj_side),
        "V": verb_words(spec, lex, sent.verb, sent.past, plural),
        "O": _np_words(spec, lex, sent.obj, is_obj=True),
    }
    words = [w for role in (order or spec.order) for w in parts[role]]
    if sent.place is not None:
        place = _np_words(spec, lex, sent.place)
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


def _check_langs(langs: Iterable[str] | None) -> list[str]:
    langs = list(PRETRAIN_LANGS if langs is None else langs)
    for lang in langs:
        check_choice("sandbox language", lang, LANGUAGES)
    return langs


def generate(split: str, langs: Iterable[str] | None = None, n_docs: int | None = None,
             seed: int = 0) -> dict[str, list[str]]:
    """`{lang: [document, ...]}` for one split (default languages: the pre-training ones).

    Eval documents are parallel (document i renders the same draws in every language); train and
    importance documents are drawn independently per language, like real monolingual corpora.
    """
    check_choice("sandbox split", split, SPLITS)
    langs = _check_langs(langs)
    n = DEFAULT_DOCS[split] if n_docs is None else n_docs
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n_docs {n_docs!r} is not a non-negative integer")
    if split == "eval":
        docs = documents(split, n, seed)
        return {lang: [render_document(d, lang) for d in docs] for lang in langs}
    return {lang: [render_document(d, lang) for d in documents(split, n, seed, lang)]
            for lang in langs}


def minimal_pairs(lang: str, n: int, seed: int = 0) -> list[dict]:
    """BLiMP-like pairs: one sentence, grammatical and with one violation; kinds take turns.

    Drawn from their own stream (disjoint from train); the meaning is parallel across languages.
    """
    spec = LANGUAGES[check_choice("sandbox language", lang, LANGUAGES)]
    pairs = []
    for i in range(n):
        rng = _stream("pairs", seed, i)
        kind = PAIR_KINDS[i % len(PAIR_KINDS)]
        sent = draw_sentence(rng)
        if kind == "adj_position" and sent.subj.adj is None:
            sent = replace(sent, subj=replace(sent.subj, adj=_pick(rng, N_ADJS)))
        good = render_sentence(sent, lang)
        if kind == "agreement":
            bad = render_sentence(sent, lang, agree_plural=not sent.subj.plural)
        elif kind == "adj_position":
            wrong = "post" if spec.adj == "pre" else "pre"
            bad = render_sentence(sent, lang, adj_side=wrong)
        else:
            others = [o for o in ORDERS if o != spec.order]
            rng.shuffle(others)
            # Identical subject and object make swapping them invisible; an order that moves the
            # verb always shows, so some order in the list differs.
            bad = next(b for b in (render_sentence(sent, lang, order=o) for o in others)
                       if b != good)
        pairs.append({"good": good, "bad": bad, "kind": kind})
    return pairs

